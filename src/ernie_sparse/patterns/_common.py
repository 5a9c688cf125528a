"""Helpers shared by the pattern families: the layout type, validation and block counts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PatternConstraints:
    """What a layout built from given parameters demands of the model around it."""

    field: str = ""  # the pattern parameter these follow from (errors name it)
    num_heads: int | None = None  # the layout has exactly this many heads (None: any count)
    block_multiple: int = 1  # the block count must be a multiple of this (the plan pads up)


def check_layout(layout: torch.Tensor) -> None:
    """A layout is a bool tensor [H or 1, nb, nb]."""
    if not isinstance(layout, torch.Tensor):
        raise TypeError(f"layout must be a torch.Tensor, got {type(layout).__name__}")
    if layout.dtype != torch.bool:
        raise TypeError(f"layout must have dtype torch.bool, got {layout.dtype}")
    if layout.dim() != 3 or layout.shape[1] != layout.shape[2]:
        raise ValueError(f"layout must have shape [H or 1, nb, nb], got {tuple(layout.shape)}")


def num_blocks_for(seq_len: int, block_size: int) -> int:
    """Number of layout blocks covering ``seq_len`` tokens (the last one may be partial)."""
    if seq_len < 1 or block_size < 1:
        raise ValueError(f"seq_len and block_size must be positive, got {seq_len}, {block_size}")
    return math.ceil(seq_len / block_size)


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_non_negative(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def block_distance(num_blocks: int) -> torch.Tensor:
    """Signed distance key_block - query_block, shape [nb, nb]."""
    index = torch.arange(num_blocks)
    return index[None, :] - index[:, None]


def as_layout(mask: torch.Tensor) -> torch.Tensor:
    """Give a [nb, nb] or [H, nb, nb] boolean mask the layout shape [H or 1, nb, nb]."""
    if mask.dim() == 2:
        mask = mask[None]
    return mask.to(torch.bool).contiguous()
