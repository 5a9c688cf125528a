"""Input checks shared by every backend: each error names what was wrong."""

from __future__ import annotations

import math

import torch

from ..patterns import check_layout as check_layout  # the patterns' own type; re-exported


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q, k, v: 4-d [B, H, N, D] floating tensors of one shape, dtype and device, N > 0."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
            raise ValueError(f"{name} must be a 4-d tensor [B, H, N, D], got {shape}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {tensor.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must have the same shape [B, H, N, D], got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[2] == 0:
        raise ValueError("q, k, v have sequence length 0")


def check_block_size(block_size: int) -> None:
    """A positive Python int; a bool (an int subclass, so True would pass as 1) is refused."""
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(
            f"block_size must be a positive int, got {type(block_size).__name__} {block_size!r}"
        )
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")


def check_key_padding_mask(mask: torch.Tensor | None, *, batch: int, seq_len: int) -> None:
    """None, or a bool [B, N] tensor (True = real token)."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"key_padding_mask must be bool (True = real token), got {got}")
    if tuple(mask.shape) != (batch, seq_len):
        raise ValueError(
            f"key_padding_mask must have shape [B, N] = {(batch, seq_len)}, got {tuple(mask.shape)}"
        )


def check_attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None,
    dropout_p: float,
) -> None:
    """Refuse shape, dtype and device mismatches before any work is done."""
    check_qkv(q, k, v)
    check_block_size(block_size)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    batch, heads, seq_len, _ = q.shape
    check_layout(layout)
    num_blocks = math.ceil(seq_len / block_size)
    if layout.shape[1] != num_blocks:
        raise ValueError(
            f"layout has {layout.shape[1]} blocks per side but sequence length {seq_len} with "
            f"block_size {block_size} needs ceil({seq_len}/{block_size}) = {num_blocks}"
        )
    if layout.shape[0] not in (1, heads):
        raise ValueError(f"layout has {layout.shape[0]} heads; q has {heads} (use 1 or {heads})")
    check_key_padding_mask(key_padding_mask, batch=batch, seq_len=seq_len)
