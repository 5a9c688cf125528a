"""The fast paths, one per partition family, on inputs padded to the variant's length.

Every kernel takes q, k, v [B, H, Np, D] and real [B, 1|H, Np] (True = a real token) and
returns [B, H, Np, D]; the partitions they compute are written out in ``reference.py``.
``*_pairs`` count the scores a kernel computes per head, for useful-GFLOP/s figures.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .softmax import (
    Stats,
    direct_part,
    flat,
    line_summaries,
    merge_parts,
    summary_part,
    transposed,
    tril,
)

Kernel = Callable[..., torch.Tensor]  # (q, k, v, real, *, span, causal, dropout_p) -> out


def fixed_kernel(q, k, v, real, *, span: int, causal: bool, dropout_p: float) -> torch.Tensor:
    """Direct = own span (causal: up to i); regions = every other span (causal: earlier)."""
    batch, heads, length, dim = q.shape
    spans = length // span
    blocks = [t.view(batch, heads, spans, span, dim) for t in (q, k, v)]  # [B, H, P, T, D]
    block_real = real.view(batch, -1, spans, span)
    causal_block = tril(span, q.device) if causal else None
    direct = flat(direct_part(*blocks, block_real, allowed=causal_block, dropout_p=dropout_p))
    k_bar, v_bar, log_count = line_summaries(*blocks, block_real, mode="all")  # E = 1
    own = torch.arange(length, device=q.device) // span
    other = torch.arange(spans, device=q.device)
    allowed = (other < own[:, None]) if causal else (other != own[:, None])  # [N, P]
    queries = q.view(batch, heads, 1, length, dim)  # one group holding every query
    summary = summary_part(
        queries, k_bar, v_bar, log_count, allowed=allowed[None], dropout_p=dropout_p
    )
    return merge_parts([direct, flat(summary)])


def _axial(
    q, k, v, real, *, span: int, causal: bool, dropout_p: float, regions: Callable[..., Stats]
) -> torch.Tensor:
    """Grid n x m (m = span), row-major: direct = own row and own column (causal: row up to
    i, column above); ``regions`` adds the summaries (vertical or horizontal lines)."""
    batch, heads, length, dim = q.shape
    rows = length // span
    grid = [t.view(batch, heads, rows, span, dim) for t in (q, k, v)]  # [B, H, n, m, D]
    columns = [t.transpose(2, 3) for t in grid]  # [B, H, m, n, D]
    grid_real = real.view(batch, -1, rows, span)
    column_real = grid_real.transpose(2, 3)
    device = q.device
    row_allowed = tril(span, device) if causal else None
    column_allowed = (
        tril(rows, device).tril(-1) if causal else ~torch.eye(rows, dtype=torch.bool, device=device)
    )
    parts = [
        direct_part(*grid, grid_real, allowed=row_allowed, dropout_p=dropout_p),
        transposed(direct_part(*columns, column_real, allowed=column_allowed, dropout_p=dropout_p)),
        regions(grid, columns, grid_real, column_real, causal=causal, dropout_p=dropout_p),
    ]
    return merge_parts([flat(part) for part in parts])


def _column_regions(grid, columns, grid_real, column_real, *, causal: bool, dropout_p: float):
    """Region r of query (row e, col c): column r without row e (causal: rows above e)."""
    mode = "prefix" if causal else "exclude"
    k_bar, v_bar, log_count = line_summaries(*columns, column_real, mode=mode)  # E = n
    col = torch.arange(grid[0].shape[3], device=grid[0].device)
    allowed = (col[:, None] != col)[None]  # [1, m(c), m(r)]
    return summary_part(grid[0], k_bar, v_bar, log_count, allowed=allowed, dropout_p=dropout_p)


def _row_regions(grid, columns, grid_real, column_real, *, causal: bool, dropout_p: float):
    """Region r of query (row e, col c): row r without column c (causal: rows r < e)."""
    k_bar, v_bar, log_count = line_summaries(*grid, grid_real, mode="exclude")  # E = m
    row = torch.arange(grid[0].shape[2], device=grid[0].device)
    allowed = (row < row[:, None]) if causal else (row != row[:, None])
    summary = summary_part(
        columns[0], k_bar, v_bar, log_count, allowed=allowed[None], dropout_p=dropout_p
    )
    return transposed(summary)


axial_vertical_kernel = functools.partial(_axial, regions=_column_regions)
axial_horizontal_kernel = functools.partial(_axial, regions=_row_regions)


def logsparse_kernel(q, k, v, real, *, span: int, causal: bool, dropout_p: float) -> torch.Tensor:
    """Direct = the aligned block of ``span``; regions = the sibling of each ancestor block."""
    batch, heads, length, dim = q.shape
    blocks = [t.view(batch, heads, length // span, span, dim) for t in (q, k, v)]
    block_real = real.view(batch, -1, length // span, span)
    causal_block = tril(span, q.device) if causal else None
    direct = flat(direct_part(*blocks, block_real, allowed=causal_block, dropout_p=dropout_p))
    position = torch.arange(length, device=q.device)
    summaries, allowed = [], []
    for level in range(span.bit_length() - 1, length.bit_length() - 1):  # block 2^level
        size = 1 << level
        lines = [t.view(batch, heads, length // size, size, dim) for t in (q, k, v)]
        line_real = real.view(batch, -1, length // size, size)
        k_bar, v_bar, log_count = line_summaries(*lines, line_real, mode="all")  # E = 1
        sibling = (position >> level) ^ 1  # [N]: the other half of the parent block
        summaries.append(
            (k_bar[:, :, 0, sibling], v_bar[:, :, 0, sibling], log_count[:, :, 0, sibling])
        )
        allowed.append(
            sibling < (position >> level) if causal else torch.ones_like(sibling, dtype=torch.bool)
        )
    if not summaries:
        return merge_parts([direct])
    k_bar, v_bar = (torch.stack([s[i] for s in summaries], 3) for i in (0, 1))  # [B, H, N, L, D]
    log_count = torch.stack([s[2] for s in summaries], -1)  # [B, 1|H, N, L]
    queries = q.view(batch, heads, length, 1, dim)  # each query its own group
    mask = torch.stack(allowed, -1)[:, None, :]  # [N, 1, L]
    summary = summary_part(queries, k_bar, v_bar, log_count, allowed=mask, dropout_p=dropout_p)
    return merge_parts([direct, flat(summary)])


def routed_kernel(
    q, k, v, real, *, kernel: Kernel, order: torch.Tensor, **options: object
) -> torch.Tensor:
    """``kernel`` on each head's tokens in ``order`` [B, H, Np], scattered back to sequence
    order (Combiner-Learnable: ``fixed`` on k-means cluster order)."""
    index = order[..., None].expand(-1, -1, -1, q.shape[-1])
    sorted_qkv = [t.gather(2, index) for t in (q, k, v)]
    sorted_real = real.expand(-1, q.shape[1], -1).gather(2, order)
    out = kernel(*sorted_qkv, sorted_real, **options)
    return torch.empty_like(out).scatter(2, index, out)  # back to sequence order


# ---------------------------------------------------------------- scores per head (padded length)


def span_pairs(length: int, span: int) -> int:
    """Fixed spans: direct, one score per other span, and each span's within-summary scores."""
    return length * (span + length // span + 1)


def _axial_pairs(length: int, span: int, *, crossing: int) -> int:
    lines = length // span
    return length * (span + lines + max(span, lines) + crossing)


def axial_vertical_pairs(length: int, span: int) -> int:
    return _axial_pairs(length, span, crossing=length // span)  # within-summary: a column


def axial_horizontal_pairs(length: int, span: int) -> int:
    return _axial_pairs(length, span, crossing=span)  # within-summary: a row


def logsparse_pairs(length: int, span: int) -> int:
    levels = length.bit_length() - span.bit_length()
    return length * (span + 2 * levels)  # direct + sibling scores + within-block scores
