"""Sliding window (Longformer-style, block granular) and global blocks."""

from __future__ import annotations

import torch

from ._common import as_layout, block_distance, check_non_negative, check_positive


def window(num_blocks: int, width: int = 1) -> torch.Tensor:
    """Each query block sees the ``width`` key blocks on each side of it and itself.

    ``width=1`` is the 3-block window of BigBird and ERNIE-Sparse.
    """
    check_positive("num_blocks", num_blocks)
    check_non_negative("width", width)
    return as_layout(block_distance(num_blocks).abs() <= width)


def global_blocks(num_blocks: int, count: int) -> torch.Tensor:
    """The first ``count`` blocks see all blocks and are seen by all blocks."""
    check_positive("num_blocks", num_blocks)
    check_non_negative("count", count)
    if count > num_blocks:
        raise ValueError(f"count={count} global blocks exceed num_blocks={num_blocks}")
    is_global = torch.arange(num_blocks) < count
    return as_layout(is_global[:, None] | is_global[None, :])
