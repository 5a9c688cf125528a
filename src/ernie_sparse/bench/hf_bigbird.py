"""Hugging Face BigBird as a benchmark baseline (needs transformers): its block-sparse
attention alone (``bench attention``) and its sequence classifier (``bench model``)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

HF_METHOD = "bigbird_block_sparse_attention"  # BigBirdBlockSparseAttention's attention proper


def hf_bigbird_available() -> bool:
    try:
        from transformers.models.big_bird import modeling_big_bird  # noqa: F401
    except ImportError:
        return False
    return True


def hf_bigbird_shortest(block_size: int, num_random: int) -> int:
    """HF BigBird runs full attention at lengths up to (5 + 2r) blocks (and its block-sparse
    kernel fails there): a benchmark needs N above this."""
    return (5 + 2 * num_random) * block_size


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


def hf_bigbird_classifier(
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    mlp_size: int,
    block_size: int,
    num_random: int,
    max_positions: int,
) -> nn.Module:
    """``BigBirdForSequenceClassification`` (2 labels) at these sizes, ITC block-sparse
    attention, no dropout (as the bench's own models), GELU as ours."""
    from transformers import BigBirdConfig, BigBirdForSequenceClassification

    config = BigBirdConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=mlp_size,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=max_positions,
        attention_type="block_sparse",
        block_size=block_size,
        num_random_blocks=num_random,
        num_labels=2,
    )
    model = BigBirdForSequenceClassification(config)
    for module in block_sparse_modules(model):
        setattr(module, HF_METHOD, _outside_autocast(getattr(module, HF_METHOD)))
    return model


def _outside_autocast(method: Callable) -> Callable:
    """HF's block-sparse attention in the dtype of its q, k, v, with autocast off: under
    bf16 autocast its softmax runs in float32 and writing those probabilities into its
    bf16 attention-probability tensor fails (scatter dtype mismatch, transformers 5.x).
    Without autocast it runs wholly in bf16, as ``bench attention`` runs it."""

    @functools.wraps(method)
    def attend(q, k, v, *masks_and_sizes, **kwargs):
        masks = [mask.to(q.dtype) for mask in masks_and_sizes[:5]]  # band, from, to, 2 blocked
        with torch.autocast(q.device.type, enabled=False):
            return method(q, k, v, *masks, *masks_and_sizes[5:], **kwargs)

    return attend


def block_sparse_modules(model: nn.Module) -> list[nn.Module]:
    """Every ``BigBirdBlockSparseAttention`` in ``model`` ([] without transformers)."""
    if not hf_bigbird_available():
        return []
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

    return [m for m in model.modules() if isinstance(m, BigBirdBlockSparseAttention)]
