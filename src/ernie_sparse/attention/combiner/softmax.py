"""Building blocks of the fast paths: one softmax over several parts, from per-part pieces.

Each part of a query's distribution (its direct keys, the summaries of its regions) gives
``Stats`` (row max, sum of exp, exp-weighted values); ``merge_parts`` combines the parts into
one softmax without materializing a row of N probabilities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # row max, exp-sum, weighted values


def part_stats(
    logits: torch.Tensor, values: torch.Tensor, equation: str, dropout_p: float
) -> Stats:
    """Softmax pieces of one part: (row max or -inf, sum of exp, exp-weighted values)."""
    row_max = logits.amax(-1)
    safe_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(logits - safe_max[..., None])  # masked logits (-inf) give 0
    total = weights.sum(-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)  # = dropout on the normalized probabilities
    return row_max, total, torch.einsum(equation, weights, values)


def merge_parts(parts: list[Stats]) -> torch.Tensor:
    """One softmax over all parts from their pieces; rows with nothing allowed give zeros."""
    top = torch.stack([row_max for row_max, _, _ in parts]).amax(0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total, weighted = 0.0, 0.0
    for row_max, part_total, part_weighted in parts:
        scale = torch.exp(row_max - top)  # 0 for an empty part (row_max = -inf)
        total = total + scale * part_total
        weighted = weighted + scale[..., None] * part_weighted
    return weighted / torch.where(total > 0, total, torch.ones_like(total))[..., None]


def direct_part(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    real: torch.Tensor,
    *,
    allowed: torch.Tensor | None,
    dropout_p: float,
) -> Stats:
    """Attention inside groups: q, k, v [B, H, G, T, D], real [B, 1|H, G, T], allowed [T, T]."""
    logits = torch.einsum("bhgtd,bhgud->bhgtu", q, k) / math.sqrt(q.shape[-1])
    mask = real[:, :, :, None, :]
    if allowed is not None:
        mask = mask & allowed
    logits = logits.masked_fill(~mask, float("-inf"))
    return part_stats(logits, v, "bhgtu,bhgud->bhgtd", dropout_p)  # [B, H, G, T(, D)]


def exclusive_cummax(x: torch.Tensor, dim: int, *, reverse: bool) -> torch.Tensor:
    """max over positions strictly before (or after, reverse) each one; -inf where none."""
    if reverse:
        x = x.flip(dim)
    running = torch.cummax(x, dim=dim).values
    running = running.narrow(dim, 0, x.shape[dim] - 1)
    pad_shape = list(x.shape)
    pad_shape[dim] = 1
    out = torch.cat([running.new_full(pad_shape, float("-inf")), running], dim=dim)
    return out.flip(dim) if reverse else out


def line_summaries(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, real: torch.Tensor, *, mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summaries of lines q, k, v [B, H, P, T, D] with real [B, 1|H, P, T].

    mode "all": the whole line (E = 1); "prefix": positions t < e; "exclude": t != e
    (E = T). Returns kbar, vbar [B, H, E, P, D] and log counts [B, 1|H, E, P].
    """
    neg = float("-inf")
    keys = k.masked_fill(~real[..., None], neg)
    queries = q.masked_fill(~real[..., None], neg)
    count = real.sum(-1, keepdim=True)  # [B, 1|H, P, 1]
    if mode == "all":
        k_max, q_max = keys.amax(3, keepdim=True), queries.amax(3, keepdim=True)
        member = torch.ones(1, real.shape[-1], dtype=torch.bool, device=q.device)
    elif mode == "prefix":
        k_max = exclusive_cummax(keys, 3, reverse=False)  # [B, H, P, E, D]
        q_max = exclusive_cummax(queries, 3, reverse=False)
        count = real.cumsum(-1) - real.long()  # real tokens strictly before e
        member = tril(real.shape[-1], q.device).tril(-1)  # [E, T]: t < e
    elif mode == "exclude":
        k_max = torch.maximum(
            exclusive_cummax(keys, 3, reverse=False), exclusive_cummax(keys, 3, reverse=True)
        )
        q_max = torch.maximum(
            exclusive_cummax(queries, 3, reverse=False),
            exclusive_cummax(queries, 3, reverse=True),
        )
        count = count - real.long()
        member = ~torch.eye(real.shape[-1], dtype=torch.bool, device=q.device)
    else:
        raise ValueError(f"unknown summary mode {mode!r}")
    present = (count > 0).transpose(-1, -2)  # [B, 1|H, E, P]
    k_max = torch.where(present[..., None], k_max.transpose(2, 3), 0.0)  # [B, H, E, P, D]
    q_max = torch.where(present[..., None], q_max.transpose(2, 3), 0.0)
    within = torch.einsum("bhepd,bhptd->bhept", q_max, k) / math.sqrt(q.shape[-1])
    mask = member[:, None, :] & real[:, :, None, :, :]  # [B, 1|H, E, P, T]
    within = within.masked_fill(~mask, neg)
    _, total, weighted = part_stats(within, v, "bhept,bhptd->bhepd", 0.0)
    v_bar = weighted / torch.where(total > 0, total, torch.ones_like(total))[..., None]
    log_count = count.transpose(-1, -2).to(q.dtype).log()  # -inf for an empty region
    return k_max, v_bar, log_count


def summary_part(
    q: torch.Tensor,
    k_bar: torch.Tensor,
    v_bar: torch.Tensor,
    log_count: torch.Tensor,
    *,
    allowed: torch.Tensor,
    dropout_p: float,
) -> Stats:
    """Queries [B, H, G, Q, D] against summaries [B, H, G, S, D]; allowed [G, Q, S]."""
    logits = torch.einsum("bhgqd,bhgsd->bhgqs", q, k_bar) / math.sqrt(q.shape[-1])
    logits = (logits + log_count[:, :, :, None, :]).masked_fill(~allowed, float("-inf"))
    return part_stats(logits, v_bar, "bhgqs,bhgsd->bhgqd", dropout_p)


def flat(stats: Stats) -> Stats:
    """Group layout [B, H, G, T(, D)] -> query order [B, H, G*T(, D)]."""
    row_max, total, weighted = stats
    batch, heads = row_max.shape[:2]
    return (
        row_max.reshape(batch, heads, -1),
        total.reshape(batch, heads, -1),
        weighted.reshape(batch, heads, -1, weighted.shape[-1]),
    )


def transposed(stats: Stats) -> Stats:
    """Column-grouped stats [B, H, m, n(, D)] -> row-grouped [B, H, n, m(, D)]."""
    row_max, total, weighted = stats
    return row_max.transpose(2, 3), total.transpose(2, 3), weighted.transpose(2, 3)


def tril(size: int, device: torch.device) -> torch.Tensor:
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()
