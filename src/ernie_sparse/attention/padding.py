"""Pad a request to whole blocks: backends compute on full blocks and cut the result back."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    multiple: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """q, k, v [B, H, N, D] zero-padded to a multiple of ``multiple`` tokens, and the key mask
    [B, Np] (True = real) that hides the added keys; the mask stays None if nothing was added."""
    batch, _, seq_len, _ = q.shape
    pad = -seq_len % multiple
    if not pad:
        return q, k, v, key_padding_mask
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    if key_padding_mask is None:
        key_padding_mask = torch.ones(batch, seq_len, dtype=torch.bool, device=q.device)
    return q, k, v, F.pad(key_padding_mask, (0, pad), value=False)
