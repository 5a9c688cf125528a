"""Pad a request to whole blocks: backends compute on full blocks and cut the result back.

Padded keys (``key_padding_mask`` False) are also zeroed in k and v, so that NaN or inf
there cannot reach a real output or gradient: a masked score is -inf and its probability
exactly 0, but 0 * NaN is still NaN in P V and in the backward's products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def effective_block_size(block_size: int, seq_len: int, multiple: int = 1) -> int:
    """The block size to compute with: ``block_size``, or when one block holds the whole
    sequence (``block_size >= seq_len``, so the layout is [H or 1, 1, 1]) the smallest
    multiple of ``multiple`` that holds it. The attention is the same; its cost then depends
    on ``seq_len``, not on ``block_size``."""
    if block_size <= seq_len:
        return block_size
    return min(block_size, -(-seq_len // multiple) * multiple)


def zero_padded_keys(
    k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v [B, H, N, D] with zeros at padded keys (``key_padding_mask`` [B, N] False), so
    non-finite values there cannot reach real outputs or gradients; unchanged without a mask.
    Gradients of the zeroed entries are zero, as they are for any key that is never attended."""
    if key_padding_mask is None:
        return k, v
    real = key_padding_mask[:, None, :, None]  # [B, 1, N, 1]
    return torch.where(real, k, 0.0), torch.where(real, v, 0.0)


def pad_to_multiple(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    multiple: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """q, k, v [B, H, N, D] zero-padded to a multiple of ``multiple`` tokens (k, v also zeroed
    at padded keys), and the key mask [B, Np] (True = real) that hides the added keys; the
    mask stays None if nothing was added."""
    batch, _, seq_len, _ = q.shape
    k, v = zero_padded_keys(k, v, key_padding_mask)
    pad = -seq_len % multiple
    if not pad:
        return q, k, v, key_padding_mask
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    if key_padding_mask is None:
        key_padding_mask = torch.ones(batch, seq_len, dtype=torch.bool, device=q.device)
    return q, k, v, F.pad(key_padding_mask, (0, pad), value=False)
