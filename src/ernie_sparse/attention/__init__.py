"""Attention backends over block layouts; ``sparse_attention`` picks one."""

from .blocked import block_plan, blocked_attention
from .combiner import COMBINER_VARIANTS, combiner_attention, combiner_reference
from .dispatch import BACKENDS, choose_backend, prepare_layout, sparse_attention
from .flex import flex_available, flex_sparse_attention
from .fused import fused_available, fused_sparse_attention
from .layout_cache import KeyedLayout
from .reference import expand_layout, reference_attention

__all__ = [
    "BACKENDS",
    "COMBINER_VARIANTS",
    "KeyedLayout",
    "block_plan",
    "blocked_attention",
    "choose_backend",
    "combiner_attention",
    "combiner_reference",
    "expand_layout",
    "flex_available",
    "flex_sparse_attention",
    "fused_available",
    "fused_sparse_attention",
    "prepare_layout",
    "reference_attention",
    "sparse_attention",
]
