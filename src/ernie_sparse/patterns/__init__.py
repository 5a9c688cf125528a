"""Sparse patterns as data: pure functions returning a boolean block layout.

A layout is a ``torch.bool`` tensor ``[H or 1, nb, nb]`` (query block x key
block). Layouts compose with ``|`` and ``&`` (broadcasting over heads).
"""

from ._common import PatternConstraints, check_layout, num_blocks_for
from .bigbird import bigbird
from .blockbert import blockbert, blockbert_constraints, parse_head_split
from .dense import dense
from .fixed import fixed
from .local import local
from .reachability import (
    block_knowledge,
    block_reachability,
    reachable_fraction,
    readout_sources,
)
from .registry import (
    PATTERNS,
    SPECS,
    PatternSpec,
    full_patterns,
    make_layout,
    pattern_constraints,
    pattern_parameters,
)
from .render import render_layout
from .window import global_blocks, window

__all__ = [
    "PATTERNS",
    "SPECS",
    "PatternConstraints",
    "PatternSpec",
    "bigbird",
    "block_knowledge",
    "block_reachability",
    "blockbert",
    "blockbert_constraints",
    "check_layout",
    "dense",
    "fixed",
    "full_patterns",
    "global_blocks",
    "local",
    "make_layout",
    "num_blocks_for",
    "parse_head_split",
    "pattern_constraints",
    "pattern_parameters",
    "reachable_fraction",
    "readout_sources",
    "render_layout",
    "window",
]
