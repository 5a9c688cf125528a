"""Combiner variants as data: one record each, read by the attention entry points, by
``ModelConfig``'s validation and by the presets. Adding a variant is one record here plus
its compute functions (a kernel in ``kernels.py``, a partition in ``reference.py``).

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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .kernels import (
    Kernel,
    axial_horizontal_kernel,
    axial_horizontal_pairs,
    axial_vertical_kernel,
    axial_vertical_pairs,
    fixed_kernel,
    logsparse_kernel,
    logsparse_pairs,
    span_pairs,
)
from .reference import (
    PartitionBuilder,
    axial_horizontal_partition,
    axial_vertical_partition,
    fixed_partition,
    logsparse_partition,
)
from .routing import cluster_order

Routing = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (k, real, clusters) -> order


def ceil_sqrt(n: int) -> int:
    """ceil(sqrt(n)) for n >= 1: the default span, row length and cluster count."""
    return math.isqrt(n - 1) + 1


def whole_spans(seq_len: int, span: int) -> int:
    """The length padded to a multiple of ``span``."""
    return -(-seq_len // span) * span


def power_of_two(seq_len: int, span: int) -> int:
    """The length padded to a power of two (and at least ``span``): aligned dyadic blocks."""
    return max(span, 1 << (seq_len - 1).bit_length())


class HeadGroup(NamedTuple):
    """One share of a mixture's heads: the variant it runs, and whether it gets the span."""

    variant: str
    takes_span: bool


@dataclass(frozen=True)
class CombinerVariant:
    """One Combiner variant. A plain variant has a kernel, a partition and a pairs count; a
    routed one (``routing``) runs them on each head's tokens sorted by the routing; a
    mixture (``heads``) splits the heads between other variants and has none of its own."""

    name: str
    kernel: Kernel | None = None  # the fast path on padded inputs (kernels.py)
    partition: PartitionBuilder | None = None  # the reference's partition (reference.py)
    pairs: Callable[[int, int], int] | None = None  # (padded length, span) -> scores per head
    default_span: int | None = None  # span when none is given; None = ceil(sqrt N)
    padded_length: Callable[[int, int], int] = whole_spans  # (N, span) -> length it runs on
    span_power_of_two: bool = False  # span must be a power of two (aligned dyadic blocks)
    causal_refusal: str = ""  # why causal=True is refused; "" = causal is allowed
    routing: Routing | None = None  # sorts each head's tokens first; takes num_clusters
    heads: tuple[HeadGroup, ...] = ()  # a mixture: heads split evenly between these, in order

    def __post_init__(self) -> None:
        own = (self.kernel, self.partition, self.pairs)
        if self.heads and any(f is not None for f in own):
            raise ValueError(f"Combiner variant {self.name!r}: a mixture has no kernel of its own")
        if not self.heads and any(f is None for f in own):
            raise ValueError(f"Combiner variant {self.name!r} needs a kernel, partition and pairs")

    @property
    def causal(self) -> bool:
        """Whether causal=True (a decoder) is allowed."""
        return not self.causal_refusal

    @property
    def min_heads(self) -> int:
        """Heads it needs: one per group of a mixture."""
        return max(1, len(self.heads))

    @property
    def takes_clusters(self) -> bool:
        return self.routing is not None

    def span_for(self, seq_len: int, span: int | None) -> int:
        """The span it runs with on ``seq_len`` tokens."""
        if span is not None:
            return span
        return self.default_span if self.default_span is not None else ceil_sqrt(seq_len)

    def head_groups(self, heads: int) -> list[tuple[HeadGroup, slice]]:
        """A mixture's groups with their heads: H // n each, the first H % n one more."""
        count, start, groups = len(self.heads), 0, []
        for index, group in enumerate(self.heads):
            size = heads // count + (index < heads % count)
            groups.append((group, slice(start, start + size)))
            start += size
        return groups


_ROUTING_REFUSAL = "k-means clusters mix past and future tokens"

VARIANTS: dict[str, CombinerVariant] = {
    variant.name: variant
    for variant in (
        CombinerVariant("fixed", kernel=fixed_kernel, partition=fixed_partition, pairs=span_pairs),
        CombinerVariant(
            "logsparse",
            kernel=logsparse_kernel,
            partition=logsparse_partition,
            pairs=logsparse_pairs,
            default_span=1,
            padded_length=power_of_two,
            span_power_of_two=True,
        ),
        CombinerVariant(
            "axial-vertical",
            kernel=axial_vertical_kernel,
            partition=axial_vertical_partition,
            pairs=axial_vertical_pairs,
        ),
        CombinerVariant(
            "axial-horizontal",
            kernel=axial_horizontal_kernel,
            partition=axial_horizontal_partition,
            pairs=axial_horizontal_pairs,
        ),
        # The paper defines row-major axial as fixed spans on the grid's rows.
        CombinerVariant(
            "axial-rowmajor", kernel=fixed_kernel, partition=fixed_partition, pairs=span_pairs
        ),
        CombinerVariant(
            "mixture",
            heads=(HeadGroup("fixed", takes_span=True), HeadGroup("logsparse", takes_span=False)),
        ),
        CombinerVariant(
            "learnable",
            kernel=fixed_kernel,
            partition=fixed_partition,
            pairs=span_pairs,
            routing=cluster_order,
            causal_refusal=_ROUTING_REFUSAL,
        ),
    )
}
COMBINER_VARIANTS = tuple(VARIANTS)


def get_variant(name: str) -> CombinerVariant:
    if name not in VARIANTS:
        raise ValueError(f"unknown Combiner variant {name!r}; choose from {COMBINER_VARIANTS}")
    return VARIANTS[name]


class OptionNames(NamedTuple):
    """How the caller spells the options in its errors (arguments, or config fields)."""

    variant: str
    span: str
    clusters: str
    heads: str
    assign: str = " "  # between a name and its value: "variant 'fixed'", "combiner_variant='fixed'"

    def value(self, name: str, value: object) -> str:
        return f"{name}{self.assign}{value!r}"


ARGUMENT_NAMES = OptionNames("variant", "span", "num_clusters", "H")


def check_variant_options(
    variant: CombinerVariant,
    *,
    span: int | None,
    clusters: bool,
    causal: bool,
    heads: int,
    names: OptionNames = ARGUMENT_NAMES,
) -> None:
    """Refuse what the variant's record rules out; ``clusters``: a cluster count was given."""
    label = names.value(names.variant, variant.name)
    if span and variant.span_power_of_two and span & (span - 1):
        raise ValueError(f"{label} needs {names.span} to be a power of two, got {span}")
    if clusters and not variant.takes_clusters:
        routed = " or ".join(
            names.value(names.variant, v.name) for v in VARIANTS.values() if v.takes_clusters
        )
        raise ValueError(f"{names.clusters} applies only to {routed}, not {variant.name!r}")
    if causal and not variant.causal:
        raise ValueError(f"{label} cannot be causal (causal=True): {variant.causal_refusal}")
    if heads < variant.min_heads:
        shares = " and ".join(group.variant for group in variant.heads)
        raise ValueError(
            f"{label} splits heads between {shares}; needs {names.heads} >= "
            f"{variant.min_heads}, got {heads}"
        )
