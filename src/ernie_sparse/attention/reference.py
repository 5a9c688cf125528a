"""The oracle: expand the block layout to a token mask, then dense attention.

Memory O(N^2): for tests and short inputs only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout_cache import KeyedLayout, layout_tensor
from .padding import zero_padded_keys


def expand_layout(layout: torch.Tensor, block_size: int, seq_len: int) -> torch.Tensor:
    """Token mask [H or 1, N, N] from a block layout [H or 1, nb, nb].

    Built by indexing, so its cost is O(N^2) whatever the block size (a block of 16384 over
    32 tokens costs a 32 x 32 mask, not 16384 x 16384)."""
    token_block = torch.arange(seq_len, device=layout.device) // block_size  # [N]
    return layout[:, token_block][:, :, token_block]  # [H or 1, N, N]


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """SDPA with a boolean mask (True = attend); rows with no allowed key give zeros."""
    has_key = mask.any(dim=-1, keepdim=True)
    # A row with no key would be NaN in softmax: let it see everything, then zero it.
    safe_mask = mask | ~has_key
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe_mask, dropout_p=dropout_p)
    return out * has_key.to(out.dtype)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor | KeyedLayout,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(QK^T / sqrt(D) + mask) V with the layout expanded to tokens."""
    layout = layout_tensor(layout)
    seq_len = q.shape[-2]
    k, v = zero_padded_keys(k, v, key_padding_mask)
    mask = expand_layout(layout.to(q.device), block_size, seq_len)[None]  # [1, H, N, N]
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :]  # [B, H, N, N]
    return masked_attention(q, k, v, mask, dropout_p=dropout_p)
