"""Attention backends over block layouts; ``sparse_attention`` picks one."""

from .blocked import block_plan, blocked_attention
from .dispatch import BACKENDS, choose_backend, sparse_attention
from .flex import flex_available, flex_sparse_attention
from .reference import expand_layout, reference_attention

__all__ = [
    "BACKENDS",
    "block_plan",
    "blocked_attention",
    "choose_backend",
    "expand_layout",
    "flex_available",
    "flex_sparse_attention",
    "reference_attention",
    "sparse_attention",
]
