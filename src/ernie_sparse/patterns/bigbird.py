"""BigBird ITC pattern: global + sliding window + random blocks per head."""

from __future__ import annotations

import torch

from ._common import check_non_negative, check_positive
from .window import global_blocks, window


def bigbird(
    num_blocks: int,
    *,
    num_heads: int = 1,
    num_global: int = 2,
    window_width: int = 1,
    num_random: int = 3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BigBird layout ``[num_heads, nb, nb]`` (Zaheer et al., 2020, ITC).

    The first ``num_global`` blocks are global (see all, seen by all); every block
    sees ``window_width`` blocks on each side; every non-global query block also
    sees ``num_random`` key blocks drawn uniformly, per head, from the blocks
    outside its window and the global blocks (fewer when fewer remain).
    """
    check_positive("num_heads", num_heads)
    check_non_negative("num_random", num_random)
    fixed = global_blocks(num_blocks, num_global) | window(num_blocks, window_width)
    fixed = fixed.expand(num_heads, num_blocks, num_blocks)
    if num_random == 0:
        return fixed.contiguous()
    # Random scores in [0, 1) for candidates, -1 elsewhere; the top r per row
    # with a non-negative score are a uniform draw without replacement.
    scores = torch.rand(num_heads, num_blocks, num_blocks, generator=generator)
    scores = scores.masked_fill(fixed, -1.0)
    top = scores.topk(min(num_random, num_blocks), dim=-1)
    chosen = torch.zeros_like(fixed).scatter(-1, top.indices, top.values >= 0)
    return fixed | chosen
