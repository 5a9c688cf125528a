"""Combiner attention (Ren et al., 2021): full attention at sparse cost, one softmax per query.

Each query i splits the allowed keys into a direct support Omega_i^0 and regions Omega_i^r
(a partition of the rest). It attends to every direct key itself and to one *summary* per
region, all in one softmax, so every allowed key gets positive probability in one layer:

    p(j | i) = exp(s_ij) / Z_i                          for j in Omega_i^0
    p(j | i) = exp(s_ir) / Z_i * p(j | Omega_i^r)       for j in Omega_i^r
    s_ij = q_i . k_j / sqrt(D)
    s_ir = q_i . kbar_r / sqrt(D) + log |Omega_i^r|
    p(j | Omega_i^r) = softmax over j in Omega_i^r of qbar_r . k_j / sqrt(D)

Parameterization (the paper's "identity-max" local summary, as in its sqrt_fixed code):
kbar_r and qbar_r are the element-wise max of the region's real keys and queries; the
within-region distribution uses the region's pooled query qbar_r, so it does not depend on i
and one summary value E[v | Omega_r] = sum_j p(j | Omega_r) v_j serves every query that sees
the region. The added log |Omega_i^r| (real keys only) makes a region of n identical keys
weigh as much as those n keys attended directly; Z_i sums the direct and region terms, so
each row of p is a proper distribution. Padded keys belong to no region; an empty region
is no term at all; a query with no allowed key returns zeros.

Partitions (positions 0-based; the sequence is padded inside and cut back):

- ``fixed``: spans of ``span`` tokens (default ceil(sqrt N)); direct = own span, regions =
  every other span (causal: own span up to i, earlier spans).
- ``axial-rowmajor``: the same partition on the rows of an n x m grid (m = span); the paper
  (sections 4.1, 4.3) defines the two identically, so the outputs are equal for equal span.
- ``axial-vertical``: grid n x m, row-major; direct = own row and own column (causal: row up
  to i, column above); regions = every other column r minus the query's row (causal: column
  r above the query's row, a prefix summarized with cummax).
- ``axial-horizontal``: direct as vertical; regions = every other row r minus the query's
  column (causal: rows above only).
- ``logsparse``: aligned dyadic blocks. direct = the query's aligned block of ``span`` tokens
  (a power of two, default 1: the token itself); regions = the sibling of the query's
  ancestor block at every level (sizes span, 2 span, 4 span, ...), i.e. ceil(log2) supports
  before the token and, in the MLM case, also after it (appendix B). Siblings are aligned so
  each summary is computed once: O(N log N).
- ``mixture``: the first ceil(H/2) heads use ``fixed`` (with ``span``), the others
  ``logsparse`` (block 1); needs H >= 2.
- ``learnable`` (appendix D, routing): k-means on each head's real keys (centroids start at
  evenly spaced real keys, 3 Lloyd iterations, no gradient), tokens sorted stably by cluster
  (padding last), then cut into chunks of ``span`` tokens as the routing transformer
  balances its clusters; ``fixed`` runs on that order. Not causal (sorting by content
  mixes past and future): ``causal=True`` is refused.

Memory is O(N sqrt N) for fixed and axial (logits [N, span + N/span]), O(N log N D) for
logsparse. ``combiner_reference`` builds every row's full distribution [B, H, N, N] with
Python-level partitions; it defines what the fast paths must compute.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .validation import check_key_padding_mask, check_qkv

COMBINER_VARIANTS = (
    "fixed",
    "logsparse",
    "axial-vertical",
    "axial-horizontal",
    "axial-rowmajor",
    "mixture",
    "learnable",
)
KMEANS_ITERATIONS = 3

Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # row max, exp-sum, weighted values


# ---------------------------------------------------------------- input checks


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    span: int | None,
    num_clusters: int | None,
    dropout_p: float = 0.0,
) -> None:
    if variant not in COMBINER_VARIANTS:
        raise ValueError(f"unknown Combiner variant {variant!r}; choose from {COMBINER_VARIANTS}")
    check_qkv(q, k, v)
    batch, heads, seq_len, _ = q.shape
    check_key_padding_mask(key_padding_mask, batch=batch, seq_len=seq_len)
    if span is not None and (isinstance(span, bool) or not isinstance(span, int) or span < 1):
        raise ValueError(f"span must be a positive integer, got {span!r}")
    if variant == "logsparse" and span is not None and span & (span - 1):
        raise ValueError(
            f"logsparse needs span (its direct block) to be a power of two, got {span}"
        )
    if num_clusters is not None:
        if variant != "learnable":
            raise ValueError(f"num_clusters applies only to variant 'learnable', not {variant!r}")
        if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or num_clusters < 1:
            raise ValueError(f"num_clusters must be a positive integer, got {num_clusters!r}")
    if variant == "learnable" and causal:
        raise ValueError(
            "variant 'learnable' cannot be causal: clusters mix past and future tokens"
        )
    if variant == "mixture" and heads < 2:
        raise ValueError(
            f"variant 'mixture' splits heads between fixed and logsparse; needs H >= 2, got {heads}"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")


def _default_span(variant: str, seq_len: int, span: int | None) -> int:
    if span is not None:
        return span
    return 1 if variant == "logsparse" else math.isqrt(seq_len - 1) + 1  # ceil(sqrt(N))


def _padded_length(variant: str, seq_len: int, span: int) -> int:
    if variant == "logsparse":
        return max(span, 1 << (seq_len - 1).bit_length())  # a power of two >= N
    return -(-seq_len // span) * span


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, length - x.shape[2]))


def _real_mask(q: torch.Tensor, key_padding_mask: torch.Tensor | None, length: int) -> torch.Tensor:
    """[B, 1, length] bool: real (unpadded) tokens."""
    batch, _, seq_len, _ = q.shape
    if key_padding_mask is None:
        key_padding_mask = torch.ones(batch, seq_len, dtype=torch.bool, device=q.device)
    return F.pad(key_padding_mask, (0, length - seq_len), value=False)[:, None, :]


# ---------------------------------------------------------------- k-means routing


def cluster_order(k: torch.Tensor, real: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """[B, H, N] long: positions sorted stably by k-means cluster of their key, padding last.

    k [B, H, N, D]; real [B, 1 or H, N]. Deterministic: centroids start at evenly spaced real
    keys, KMEANS_ITERATIONS Lloyd steps, empty clusters keep their centroid; no gradient.
    """
    batch, heads, seq_len, dim = k.shape
    with torch.no_grad():
        keys = k.detach()
        if keys.dtype in (torch.float16, torch.bfloat16):
            keys = keys.float()  # distances in half precision tie and flip assignments
        real = real.expand(batch, heads, seq_len)
        ranks = real.long().cumsum(-1)  # [B, H, N]: real tokens up to and including each
        n_real = ranks[..., -1:]
        targets = torch.arange(num_clusters, device=k.device) * n_real // num_clusters + 1
        start = torch.searchsorted(ranks, targets).clamp(max=seq_len - 1)  # [B, H, C]
        centroids = keys.gather(2, start[..., None].expand(-1, -1, -1, dim))  # [B, H, C, D]
        weights = real.to(keys.dtype)[..., None]
        for _ in range(KMEANS_ITERATIONS):
            assign = _nearest(keys, centroids)
            onehot = F.one_hot(assign, num_clusters).to(keys.dtype) * weights  # [B, H, N, C]
            sums = onehot.transpose(-1, -2) @ keys  # [B, H, C, D]
            counts = onehot.sum(2)[..., None]
            centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        assign = _nearest(keys, centroids).masked_fill(~real, num_clusters)
        positions = torch.arange(seq_len, device=k.device)
        return torch.argsort(assign * seq_len + positions, dim=-1)


def _nearest(keys: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    distance = (centroids * centroids).sum(-1)[..., None, :] - 2 * keys @ centroids.transpose(
        -1, -2
    )
    return distance.argmin(-1)  # [B, H, N]


# ---------------------------------------------------------------- fast building blocks


def _stats(logits: torch.Tensor, values: torch.Tensor, equation: str, dropout_p: float) -> Stats:
    """Softmax pieces of one part: (row max or -inf, sum of exp, exp-weighted values)."""
    row_max = logits.amax(-1)
    safe_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(logits - safe_max[..., None])  # masked logits (-inf) give 0
    total = weights.sum(-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)  # = dropout on the normalized probabilities
    return row_max, total, torch.einsum(equation, weights, values)


def _merge(parts: list[Stats]) -> torch.Tensor:
    """One softmax over all parts from their pieces; rows with nothing allowed give zeros."""
    top = torch.stack([row_max for row_max, _, _ in parts]).amax(0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total, weighted = 0.0, 0.0
    for row_max, part_total, part_weighted in parts:
        scale = torch.exp(row_max - top)  # 0 for an empty part (row_max = -inf)
        total = total + scale * part_total
        weighted = weighted + scale[..., None] * part_weighted
    return weighted / torch.where(total > 0, total, torch.ones_like(total))[..., None]


def _direct(
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
    return _stats(logits, v, "bhgtu,bhgud->bhgtd", dropout_p)  # [B, H, G, T(, D)]


def _exclusive_cummax(x: torch.Tensor, dim: int, *, reverse: bool) -> torch.Tensor:
    """max over positions strictly before (or after, reverse) each one; -inf where none."""
    if reverse:
        x = x.flip(dim)
    running = torch.cummax(x, dim=dim).values
    running = running.narrow(dim, 0, x.shape[dim] - 1)
    pad_shape = list(x.shape)
    pad_shape[dim] = 1
    out = torch.cat([running.new_full(pad_shape, float("-inf")), running], dim=dim)
    return out.flip(dim) if reverse else out


def _line_summaries(
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
        k_max = _exclusive_cummax(keys, 3, reverse=False)  # [B, H, P, E, D]
        q_max = _exclusive_cummax(queries, 3, reverse=False)
        count = real.cumsum(-1) - real.long()  # real tokens strictly before e
        member = _tril(real.shape[-1], q.device).tril(-1)  # [E, T]: t < e
    elif mode == "exclude":
        k_max = torch.maximum(
            _exclusive_cummax(keys, 3, reverse=False), _exclusive_cummax(keys, 3, reverse=True)
        )
        q_max = torch.maximum(
            _exclusive_cummax(queries, 3, reverse=False),
            _exclusive_cummax(queries, 3, reverse=True),
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
    _, total, weighted = _stats(within, v, "bhept,bhptd->bhepd", 0.0)
    v_bar = weighted / torch.where(total > 0, total, torch.ones_like(total))[..., None]
    log_count = count.transpose(-1, -2).to(q.dtype).log()  # -inf for an empty region
    return k_max, v_bar, log_count


def _summary_part(
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
    return _stats(logits, v_bar, "bhgqs,bhgsd->bhgqd", dropout_p)


def _flat(stats: Stats) -> Stats:
    """Group layout [B, H, G, T(, D)] -> query order [B, H, G*T(, D)]."""
    row_max, total, weighted = stats
    batch, heads = row_max.shape[:2]
    return (
        row_max.reshape(batch, heads, -1),
        total.reshape(batch, heads, -1),
        weighted.reshape(batch, heads, -1, weighted.shape[-1]),
    )


def _transposed(stats: Stats) -> Stats:
    """Column-grouped stats [B, H, m, n(, D)] -> row-grouped [B, H, n, m(, D)]."""
    row_max, total, weighted = stats
    return row_max.transpose(2, 3), total.transpose(2, 3), weighted.transpose(2, 3)


# ---------------------------------------------------------------- the variants (padded inputs)


def _fixed(q, k, v, real, *, span: int, causal: bool, dropout_p: float) -> torch.Tensor:
    batch, heads, length, dim = q.shape
    spans = length // span
    blocks = [t.view(batch, heads, spans, span, dim) for t in (q, k, v)]  # [B, H, P, T, D]
    block_real = real.view(batch, -1, spans, span)
    causal_block = _tril(span, q.device) if causal else None
    direct = _flat(_direct(*blocks, block_real, allowed=causal_block, dropout_p=dropout_p))
    k_bar, v_bar, log_count = _line_summaries(*blocks, block_real, mode="all")  # E = 1
    own = torch.arange(length, device=q.device) // span
    other = torch.arange(spans, device=q.device)
    allowed = (other < own[:, None]) if causal else (other != own[:, None])  # [N, P]
    queries = q.view(batch, heads, 1, length, dim)  # one group holding every query
    summary = _summary_part(
        queries, k_bar, v_bar, log_count, allowed=allowed[None], dropout_p=dropout_p
    )
    return _merge([direct, _flat(summary)])


def _axial(q, k, v, real, *, span: int, causal: bool, variant: str, dropout_p: float):
    batch, heads, length, dim = q.shape
    rows = length // span
    grid = [t.view(batch, heads, rows, span, dim) for t in (q, k, v)]  # [B, H, n, m, D]
    columns = [t.transpose(2, 3) for t in grid]  # [B, H, m, n, D]
    grid_real = real.view(batch, -1, rows, span)
    column_real = grid_real.transpose(2, 3)
    device = q.device
    row_allowed = _tril(span, device) if causal else None
    column_allowed = (
        _tril(rows, device).tril(-1)
        if causal
        else ~torch.eye(rows, dtype=torch.bool, device=device)
    )
    parts = [
        _direct(*grid, grid_real, allowed=row_allowed, dropout_p=dropout_p),
        _transposed(_direct(*columns, column_real, allowed=column_allowed, dropout_p=dropout_p)),
    ]
    if variant == "axial-vertical":
        # Region r of query (row e, col c): column r without row e (causal: rows above e).
        mode = "prefix" if causal else "exclude"
        k_bar, v_bar, log_count = _line_summaries(*columns, column_real, mode=mode)  # E = n
        col = torch.arange(span, device=device)
        allowed = (col[:, None] != col)[None]  # [1, m(c), m(r)]
        parts.append(
            _summary_part(grid[0], k_bar, v_bar, log_count, allowed=allowed, dropout_p=dropout_p)
        )
    else:
        # Region r of query (row e, col c): row r without column c (causal: rows r < e).
        k_bar, v_bar, log_count = _line_summaries(*grid, grid_real, mode="exclude")  # E = m
        row = torch.arange(rows, device=device)
        allowed = (row < row[:, None]) if causal else (row != row[:, None])
        summary = _summary_part(
            columns[0], k_bar, v_bar, log_count, allowed=allowed[None], dropout_p=dropout_p
        )
        parts.append(_transposed(summary))
    return _merge([_flat(part) for part in parts])


def _logsparse(q, k, v, real, *, span: int, causal: bool, dropout_p: float) -> torch.Tensor:
    batch, heads, length, dim = q.shape
    blocks = [t.view(batch, heads, length // span, span, dim) for t in (q, k, v)]
    block_real = real.view(batch, -1, length // span, span)
    causal_block = _tril(span, q.device) if causal else None
    direct = _flat(_direct(*blocks, block_real, allowed=causal_block, dropout_p=dropout_p))
    position = torch.arange(length, device=q.device)
    summaries, allowed = [], []
    for level in range(span.bit_length() - 1, length.bit_length() - 1):  # block 2^level
        size = 1 << level
        lines = [t.view(batch, heads, length // size, size, dim) for t in (q, k, v)]
        line_real = real.view(batch, -1, length // size, size)
        k_bar, v_bar, log_count = _line_summaries(*lines, line_real, mode="all")  # E = 1
        sibling = (position >> level) ^ 1  # [N]: the other half of the parent block
        summaries.append(
            (k_bar[:, :, 0, sibling], v_bar[:, :, 0, sibling], log_count[:, :, 0, sibling])
        )
        allowed.append(
            sibling < (position >> level) if causal else torch.ones_like(sibling, dtype=torch.bool)
        )
    if not summaries:
        return _merge([direct])
    k_bar, v_bar = (torch.stack([s[i] for s in summaries], 3) for i in (0, 1))  # [B, H, N, L, D]
    log_count = torch.stack([s[2] for s in summaries], -1)  # [B, 1|H, N, L]
    queries = q.view(batch, heads, length, 1, dim)  # each query its own group
    mask = torch.stack(allowed, -1)[:, None, :]  # [N, 1, L]
    summary = _summary_part(queries, k_bar, v_bar, log_count, allowed=mask, dropout_p=dropout_p)
    return _merge([direct, _flat(summary)])


def _tril(size: int, device: torch.device) -> torch.Tensor:
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()


# ---------------------------------------------------------------- public entry points


def combiner_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    span: int | None = None,
    num_clusters: int | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Combiner attention: q, k, v [B, H, N, D] -> [B, H, N, D] (see the module docstring).

    key_padding_mask bool [B, N], True = real token; padded keys never receive weight and a
    query with no allowed key returns zeros. ``span``: span / row length (default
    ceil(sqrt N)), or logsparse's direct block (a power of two, default 1). ``num_clusters``
    (learnable only): k-means clusters, default ceil(sqrt N). ``dropout_p`` drops attention
    probabilities (direct keys and whole region summaries) whenever it is > 0, as SDPA does:
    pass 0.0 in eval.
    """
    _check_inputs(
        q,
        k,
        v,
        variant=variant,
        causal=causal,
        key_padding_mask=key_padding_mask,
        span=span,
        num_clusters=num_clusters,
        dropout_p=dropout_p,
    )
    if variant == "mixture":
        return _mixture(
            combiner_attention,
            q,
            k,
            v,
            causal=causal,
            key_padding_mask=key_padding_mask,
            span=span,
            dropout_p=dropout_p,
        )
    seq_len = q.shape[2]
    span = _default_span(variant, seq_len, span)
    length = _padded_length(variant, seq_len, span)
    real = _real_mask(q, key_padding_mask, length)
    q, k, v = (_pad(t, length) for t in (q, k, v))
    options = {"span": span, "causal": causal, "dropout_p": dropout_p}
    if variant in ("fixed", "axial-rowmajor"):
        out = _fixed(q, k, v, real, **options)
    elif variant == "logsparse":
        out = _logsparse(q, k, v, real, **options)
    elif variant == "learnable":
        clusters = num_clusters or _default_span("fixed", seq_len, None)
        out = _learnable(q, k, v, real, num_clusters=clusters, **options)
    else:
        out = _axial(q, k, v, real, variant=variant, **options)
    return out[:, :, :seq_len]


def _learnable(q, k, v, real, *, num_clusters: int, span: int, causal: bool, dropout_p: float):
    order = cluster_order(k, real, num_clusters)  # [B, H, Np]
    index = order[..., None].expand(-1, -1, -1, q.shape[-1])
    sorted_qkv = [t.gather(2, index) for t in (q, k, v)]
    sorted_real = real.expand(-1, q.shape[1], -1).gather(2, order)
    out = _fixed(*sorted_qkv, sorted_real, span=span, causal=causal, dropout_p=dropout_p)
    return torch.empty_like(out).scatter(2, index, out)  # back to sequence order


def _mixture(fn: Callable, q, k, v, **options):
    """First ceil(H/2) heads Combiner-Fixed, the rest Combiner-Logsparse (block 1)."""
    split = (q.shape[1] + 1) // 2
    span = options.pop("span")
    fixed = fn(q[:, :split], k[:, :split], v[:, :split], variant="fixed", span=span, **options)
    logsparse = fn(q[:, split:], k[:, split:], v[:, split:], variant="logsparse", **options)
    if isinstance(fixed, tuple):
        return tuple(torch.cat(pair, dim=1) for pair in zip(fixed, logsparse, strict=True))
    return torch.cat([fixed, logsparse], dim=1)


# ---------------------------------------------------------------- the slow, obvious reference


def combiner_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    span: int | None = None,
    num_clusters: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [B, H, N, D], probabilities [B, H, N, N]) from each query's full distribution."""
    _check_inputs(
        q,
        k,
        v,
        variant=variant,
        causal=causal,
        key_padding_mask=key_padding_mask,
        span=span,
        num_clusters=num_clusters,
    )
    if variant == "mixture":
        return _mixture(
            combiner_reference, q, k, v, causal=causal, key_padding_mask=key_padding_mask, span=span
        )
    batch, heads, seq_len, _ = q.shape
    span = _default_span(variant, seq_len, span)
    length = _padded_length(variant, seq_len, span)
    real = _real_mask(q, key_padding_mask, length)[:, 0]  # [B, Np]
    q, k, v = (_pad(t, length) for t in (q, k, v))
    if variant != "learnable":
        partition = _reference_partition(variant, length=length, span=span, causal=causal)
        probs = _reference_probabilities(q, k, real, partition)
    else:
        order = cluster_order(
            k, real[:, None], num_clusters or _default_span("fixed", seq_len, None)
        )
        probs = torch.cat(
            [
                torch.cat(
                    [
                        _reference_probabilities(
                            q[b : b + 1, h : h + 1],
                            k[b : b + 1, h : h + 1],
                            real[b : b + 1],
                            _chunk_partition(order[b, h].tolist(), span),
                        )
                        for h in range(heads)
                    ],
                    dim=1,
                )
                for b in range(batch)
            ]
        )
    out = probs @ v
    return out[:, :, :seq_len], probs[:, :, :seq_len, :seq_len]


Partition = Callable[[int], tuple[list[int], list[list[int]]]]


def _reference_partition(variant: str, *, length: int, span: int, causal: bool) -> Partition:
    """i -> (direct support, regions) as lists of positions in [0, length), written as sets."""
    positions = range(length)

    def visible(j: int, i: int) -> bool:
        return j <= i or not causal

    def blocks(i: int, size: int) -> tuple[list[int], list[list[int]]]:
        direct = [j for j in positions if j // size == i // size and visible(j, i)]
        regions = [
            [j for j in positions if j // size == r]
            for r in range(length // size)
            if r != i // size and visible(r, i // size)
        ]
        return direct, regions

    def axial(i: int) -> tuple[list[int], list[list[int]]]:
        row, col = divmod(i, span)
        direct = [j for j in positions if (j // span == row or j % span == col) and visible(j, i)]
        if variant == "axial-vertical":
            regions = [
                [
                    j
                    for j in positions
                    if j % span == r and j // span != row and visible(j // span, row - 1)
                ]
                for r in range(span)
                if r != col
            ]
        else:
            regions = [
                [j for j in positions if j // span == r and j % span != col]
                for r in range(length // span)
                if r != row and visible(r, row - 1)
            ]
        return direct, regions

    def logsparse(i: int) -> tuple[list[int], list[list[int]]]:
        direct, _ = blocks(i, span)
        regions = []
        for level in range(span.bit_length() - 1, length.bit_length() - 1):
            sibling = (i >> level) ^ 1
            if visible(sibling, i >> level):
                regions.append([j for j in positions if j >> level == sibling])
        return direct, regions

    if variant in ("fixed", "axial-rowmajor"):
        return lambda i: blocks(i, span)
    if variant == "logsparse":
        return logsparse
    return axial


def _chunk_partition(order: list[int], span: int) -> Partition:
    """Learnable: chunks of ``span`` consecutive tokens in cluster order, like fixed spans."""
    chunk_of = {position: rank // span for rank, position in enumerate(order)}
    chunks = [order[start : start + span] for start in range(0, len(order), span)]

    def partition(i: int) -> tuple[list[int], list[list[int]]]:
        own = chunk_of[i]
        return chunks[own], [chunk for c, chunk in enumerate(chunks) if c != own]

    return partition


def _safe_softmax(logits: torch.Tensor) -> torch.Tensor:
    top = logits.amax(-1, keepdim=True)
    weights = torch.exp(logits - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def _reference_probabilities(
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


def combiner_pairs(variant: str, seq_len: int, span: int | None = None) -> int:
    """Query-key (or query-summary) scores one head computes, for useful-GFLOP/s counts.

    Direct scores, region scores and the within-region scores of the summaries, on the
    padded length; mixture is the mean of its fixed and logsparse halves.
    """
    if variant not in COMBINER_VARIANTS:
        raise ValueError(f"unknown Combiner variant {variant!r}; choose from {COMBINER_VARIANTS}")
    if variant == "mixture":
        return (combiner_pairs("fixed", seq_len, span) + combiner_pairs("logsparse", seq_len)) // 2
    span = _default_span(variant, seq_len, span)
    length = _padded_length(variant, seq_len, span)
    lines = length // span
    if variant == "logsparse":
        levels = length.bit_length() - span.bit_length()
        return length * (span + 2 * levels)  # direct + sibling scores + within-block scores
    if variant in ("axial-vertical", "axial-horizontal"):
        crossing = lines if variant == "axial-vertical" else span  # within-summary line length
        return length * (span + lines + max(span, lines) + crossing)
    return length * (span + lines + 1)
