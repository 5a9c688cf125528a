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

The variants and their partitions are records in ``variants.py`` (``VARIANTS``); their fast
paths are in ``kernels.py`` (on ``softmax.py``'s building blocks), their partitions written
as sets in ``reference.py``, k-means routing in ``routing.py``.

Memory is O(N sqrt N) for fixed and axial (logits [N, span + N/span]), O(N log N D) for
logsparse. ``combiner_reference`` builds every row's full distribution [B, H, N, N] with
Python-level partitions; it defines what the fast paths must compute.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..padding import zero_padded_keys
from ..validation import check_key_padding_mask, check_qkv
from .kernels import routed_kernel
from .reference import in_order, reference_probabilities
from .routing import KMEANS_ITERATIONS, cluster_order
from .variants import (
    ARGUMENT_NAMES,
    COMBINER_VARIANTS,
    VARIANTS,
    CombinerVariant,
    HeadGroup,
    OptionNames,
    ceil_sqrt,
    check_variant_options,
    get_variant,
)

__all__ = [
    "ARGUMENT_NAMES",
    "COMBINER_VARIANTS",
    "KMEANS_ITERATIONS",
    "VARIANTS",
    "CombinerVariant",
    "HeadGroup",
    "OptionNames",
    "ceil_sqrt",
    "check_variant_options",
    "cluster_order",
    "combiner_attention",
    "combiner_pairs",
    "combiner_reference",
    "get_variant",
]


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
) -> CombinerVariant:
    record = get_variant(variant)
    check_qkv(q, k, v)
    batch, heads, seq_len, _ = q.shape
    check_key_padding_mask(key_padding_mask, batch=batch, seq_len=seq_len)
    if span is not None and not _positive_int(span):
        raise ValueError(f"span must be a positive integer, got {span!r}")
    if num_clusters is not None and record.takes_clusters and not _positive_int(num_clusters):
        raise ValueError(f"num_clusters must be a positive integer, got {num_clusters!r}")
    check_variant_options(
        record, span=span, clusters=num_clusters is not None, causal=causal, heads=heads
    )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    return record


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, length - x.shape[2]))


def _real_mask(q: torch.Tensor, key_padding_mask: torch.Tensor | None, length: int) -> torch.Tensor:
    """[B, 1, length] bool: real (unpadded) tokens."""
    batch, _, seq_len, _ = q.shape
    if key_padding_mask is None:
        key_padding_mask = torch.ones(batch, seq_len, dtype=torch.bool, device=q.device)
    return F.pad(key_padding_mask, (0, length - seq_len), value=False)[:, None, :]


def _padded(record: CombinerVariant, q, k, v, key_padding_mask, span: int | None):
    """The variant's span and padded length, the real-token mask [B, 1, Np], and q, k, v
    padded to that length with zeros at padded keys (no NaN or inf from padding)."""
    span = record.span_for(q.shape[2], span)
    length = record.padded_length(q.shape[2], span)
    real = _real_mask(q, key_padding_mask, length)
    k, v = zero_padded_keys(k, v, key_padding_mask)
    q, k, v = (_pad(t, length) for t in (q, k, v))
    return span, length, real, q, k, v


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
    record = _check_inputs(
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
    if record.heads:
        return _mixture(
            combiner_attention,
            q,
            k,
            v,
            record=record,
            causal=causal,
            key_padding_mask=key_padding_mask,
            span=span,
            dropout_p=dropout_p,
        )
    seq_len = q.shape[2]
    span, _, real, q, k, v = _padded(record, q, k, v, key_padding_mask, span)
    options = {"span": span, "causal": causal, "dropout_p": dropout_p}
    if record.routing is None:
        out = record.kernel(q, k, v, real, **options)
    else:
        order = record.routing(k, real, num_clusters or ceil_sqrt(seq_len))  # [B, H, Np]
        out = routed_kernel(q, k, v, real, kernel=record.kernel, order=order, **options)
    return out[:, :, :seq_len]


def _mixture(fn: Callable, q, k, v, *, record: CombinerVariant, span: int | None, **options):
    """``fn`` on each head group of a mixture, concatenated along heads."""
    outputs = [
        fn(
            q[:, heads],
            k[:, heads],
            v[:, heads],
            variant=group.variant,
            span=span if group.takes_span else None,
            **options,
        )
        for group, heads in record.head_groups(q.shape[1])
    ]
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*outputs, strict=True))
    return torch.cat(outputs, dim=1)


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
    record = _check_inputs(
        q,
        k,
        v,
        variant=variant,
        causal=causal,
        key_padding_mask=key_padding_mask,
        span=span,
        num_clusters=num_clusters,
    )
    if record.heads:
        return _mixture(
            combiner_reference,
            q,
            k,
            v,
            record=record,
            causal=causal,
            key_padding_mask=key_padding_mask,
            span=span,
        )
    batch, heads, seq_len, _ = q.shape
    span, length, real, q, k, v = _padded(record, q, k, v, key_padding_mask, span)
    real = real[:, 0]  # [B, Np]
    partition = record.partition(length=length, span=span, causal=causal)
    if record.routing is None:
        probs = reference_probabilities(q, k, real, partition)
    else:
        order = record.routing(k, real[:, None], num_clusters or ceil_sqrt(seq_len))
        probs = torch.cat(
            [
                torch.cat(
                    [
                        reference_probabilities(
                            q[b : b + 1, h : h + 1],
                            k[b : b + 1, h : h + 1],
                            real[b : b + 1],
                            in_order(partition, order[b, h].tolist()),
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


def combiner_pairs(variant: str, seq_len: int, span: int | None = None) -> int:
    """Query-key (or query-summary) scores one head computes, for useful-GFLOP/s counts.

    Direct scores, region scores and the within-region scores of the summaries, on the
    padded length; a mixture is the mean of its head groups'.
    """
    record = get_variant(variant)
    if record.heads:
        shares = [
            combiner_pairs(group.variant, seq_len, span if group.takes_span else None)
            for group in record.heads
        ]
        return sum(shares) // len(shares)
    span = record.span_for(seq_len, span)
    return record.pairs(record.padded_length(seq_len, span), span)
