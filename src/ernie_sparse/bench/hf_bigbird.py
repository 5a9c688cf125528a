"""Hugging Face BigBird's block-sparse attention as a benchmark baseline (needs transformers)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def hf_bigbird_available() -> bool:
    try:
        from transformers.models.big_bird import modeling_big_bird  # noqa: F401
    except ImportError:
        return False
    return True


def hf_bigbird_attention(
    *, seq_len: int, batch: int, heads: int, head_dim: int, block_size: int, num_random: int
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(q, k, v)`` running HF's ITC block-sparse attention (2 global, 3 window blocks).

    The module is put in training mode so that its random blocks are drawn, as in
    training; HF fixes global blocks at the first and last block and the window at 3.
    """
    from transformers import BigBirdConfig
    from transformers.models.big_bird.modeling_big_bird import (
        BigBirdBlockSparseAttention,
        BigBirdModel,
    )

    config = BigBirdConfig(
        hidden_size=heads * head_dim,
        num_attention_heads=heads,
        attention_type="block_sparse",
        block_size=block_size,
        num_random_blocks=num_random,
        max_position_embeddings=seq_len,
    )
    module = BigBirdBlockSparseAttention(config, seed=0).train()
    mask = torch.ones(batch, seq_len)
    blocked_mask, band_mask, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(
        mask, block_size
    )

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        masks = [m.to(q.device, q.dtype) for m in (band_mask, from_mask, to_mask, blocked_mask)]
        context, _ = module.bigbird_block_sparse_attention(
            q, k, v, *masks, masks[3], heads, num_random, head_dim, block_size, block_size,
            batch, seq_len, seq_len, seed=0, plan_from_length=None, plan_num_rand_blocks=None,
        )  # fmt: skip
        return context  # [B, N, H, D]

    return attend
