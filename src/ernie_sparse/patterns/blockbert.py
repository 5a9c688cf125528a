"""BlockBERT blockwise attention: per-head block permutations (Qiu et al., 2020)."""

from __future__ import annotations

import torch

from ._common import PatternConstraints, check_positive


def parse_head_split(head_split: str) -> list[int]:
    """``"10:2"`` -> ``[10, 2]``: the number of heads given permutation sigma^k, k = 0, 1, ..."""
    try:
        counts = [int(part) for part in head_split.split(":")]
    except ValueError:
        raise ValueError(
            f"head_split must look like '10:2' or '8:2:2', got {head_split!r}"
        ) from None
    if len(counts) < 1 or any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(
            f"head_split needs non-negative head counts summing > 0, got {head_split!r}"
        )
    return counts


def blockbert_constraints(head_split: str = "") -> PatternConstraints:
    """The layout has sum(split) heads and cuts the blocks into len(split) equal parts."""
    counts = parse_head_split(str(head_split))
    return PatternConstraints(field="head_split", num_heads=sum(counts), block_multiple=len(counts))


def blockbert(num_blocks: int, head_split: str) -> torch.Tensor:
    """BlockBERT layout ``[H, nb, nb]``, H = sum of the head split.

    The sequence is cut into n = len(split) equal parts; heads of group k use the
    shifted permutation sigma^k: query part i attends key part (i + k) mod n. Each
    part spans nb / n layout blocks, so ``num_blocks`` must be a multiple of n
    (with block_size = N / n the layout is the paper's n x n masking matrix).
    """
    check_positive("num_blocks", num_blocks)
    counts = parse_head_split(head_split)
    parts = len(counts)
    if num_blocks % parts:
        raise ValueError(
            f"blockbert with head_split {head_split!r} cuts the sequence into {parts} parts, "
            f"but num_blocks={num_blocks} is not a multiple of {parts}"
        )
    part_of_block = torch.arange(num_blocks) // (num_blocks // parts)
    shift = torch.repeat_interleave(torch.arange(parts), torch.tensor(counts))  # [H]
    target = (part_of_block[None, :, None] + shift[:, None, None]) % parts  # [H, nb, 1]
    return target == part_of_block[None, None, :]
