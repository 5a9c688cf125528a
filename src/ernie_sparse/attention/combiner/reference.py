"""The slow, obvious definition: each query's partition written as sets, its full distribution.

A partition maps a query position i to (direct support, regions) as lists of positions in
[0, length) of the padded sequence; ``reference_probabilities`` turns it into the [N, N]
distribution the fast paths must reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Partition = Callable[[int], tuple[list[int], list[list[int]]]]
PartitionBuilder = Callable[..., Partition]  # (*, length, span, causal) -> Partition


def _visible(j: int, i: int, causal: bool) -> bool:
    return j <= i or not causal


def _blocks(i: int, size: int, *, length: int, causal: bool) -> tuple[list[int], list[list[int]]]:
    positions = range(length)
    direct = [j for j in positions if j // size == i // size and _visible(j, i, causal)]
    regions = [
        [j for j in positions if j // size == r]
        for r in range(length // size)
        if r != i // size and _visible(r, i // size, causal)
    ]
    return direct, regions


def fixed_partition(*, length: int, span: int, causal: bool) -> Partition:
    """Direct = own span (causal: up to i); regions = every other span (causal: earlier)."""
    return lambda i: _blocks(i, span, length=length, causal=causal)


def _axial_direct(i: int, *, length: int, span: int, causal: bool) -> list[int]:
    row, col = divmod(i, span)
    return [
        j for j in range(length) if (j // span == row or j % span == col) and _visible(j, i, causal)
    ]


def axial_vertical_partition(*, length: int, span: int, causal: bool) -> Partition:
    """Direct = own row and column; regions = every other column minus the query's row
    (causal: the part of column r above the query's row)."""

    def partition(i: int) -> tuple[list[int], list[list[int]]]:
        row, col = divmod(i, span)
        regions = [
            [
                j
                for j in range(length)
                if j % span == r and j // span != row and _visible(j // span, row - 1, causal)
            ]
            for r in range(span)
            if r != col
        ]
        return _axial_direct(i, length=length, span=span, causal=causal), regions

    return partition


def axial_horizontal_partition(*, length: int, span: int, causal: bool) -> Partition:
    """Direct = own row and column; regions = every other row minus the query's column
    (causal: rows above only)."""

    def partition(i: int) -> tuple[list[int], list[list[int]]]:
        row, col = divmod(i, span)
        regions = [
            [j for j in range(length) if j // span == r and j % span != col]
            for r in range(length // span)
            if r != row and _visible(r, row - 1, causal)
        ]
        return _axial_direct(i, length=length, span=span, causal=causal), regions

    return partition


def logsparse_partition(*, length: int, span: int, causal: bool) -> Partition:
    """Direct = the aligned block of ``span``; regions = the sibling of the query's ancestor
    block at every level (causal: siblings before it)."""

    def partition(i: int) -> tuple[list[int], list[list[int]]]:
        direct, _ = _blocks(i, span, length=length, causal=causal)
        regions = []
        for level in range(span.bit_length() - 1, length.bit_length() - 1):
            sibling = (i >> level) ^ 1
            if _visible(sibling, i >> level, causal):
                regions.append([j for j in range(length) if j >> level == sibling])
        return direct, regions

    return partition


def in_order(partition: Partition, order: list[int]) -> Partition:
    """``partition`` applied to the tokens sorted by ``order`` (rank r holds position
    order[r]), in sequence positions: what a routed variant's kernel computes."""
    rank_of = {position: rank for rank, position in enumerate(order)}

    def routed(i: int) -> tuple[list[int], list[list[int]]]:
        direct, regions = partition(rank_of[i])
        return [order[r] for r in direct], [[order[r] for r in region] for region in regions]

    return routed


def _safe_softmax(logits: torch.Tensor) -> torch.Tensor:
    top = logits.amax(-1, keepdim=True)
    weights = torch.exp(logits - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def reference_probabilities(
    q: torch.Tensor, k: torch.Tensor, real: torch.Tensor, partition: Partition
) -> torch.Tensor:
    """[B, H, N, N]: row i = direct keys as themselves, region r's keys as p(r) x p(j | r)."""
    batch, heads, length, dim = q.shape
    scale = 1 / math.sqrt(dim)
    neg = float("-inf")
    rows = []
    for i in range(length):
        direct, regions = partition(i)
        regions = [region for region in regions if region]  # e.g. no rows above the first
        index = torch.tensor(direct, dtype=torch.long, device=q.device)
        logits = [
            ((q[:, :, i, None] * k[:, :, index]).sum(-1) * scale).masked_fill(
                ~real[:, None, index], neg
            )
        ]
        within = []
        for region in regions:
            member = torch.tensor(region, dtype=torch.long, device=q.device)
            is_real = real[:, None, member, None]  # [B, 1, T, 1]
            count = is_real.sum(2)  # [B, 1, 1]
            k_bar = torch.where(count > 0, k[:, :, member].masked_fill(~is_real, neg).amax(2), 0.0)
            q_bar = torch.where(count > 0, q[:, :, member].masked_fill(~is_real, neg).amax(2), 0.0)
            inner = (q_bar[:, :, None] * k[:, :, member]).sum(-1) * scale
            within.append(_safe_softmax(inner.masked_fill(~is_real[..., 0], neg)))
            region_logit = (q[:, :, i] * k_bar).sum(-1) * scale + count[..., 0].to(q.dtype).log()
            logits.append(region_logit[..., None])
        p = _safe_softmax(torch.cat(logits, dim=-1))
        row = q.new_zeros(batch, heads, length).index_add(-1, index, p[..., : len(direct)])
        for r, region in enumerate(regions):
            weight = p[..., len(direct) + r, None] * within[r]
            row = row.index_add(-1, torch.tensor(region, dtype=torch.long, device=q.device), weight)
        rows.append(row)
    return torch.stack(rows, dim=2)
