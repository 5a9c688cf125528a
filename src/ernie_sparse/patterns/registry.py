"""Pattern families by name (configs and the CLI): a layout builder and what each declares
about itself, so that nothing downstream branches on a pattern's name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ._common import PatternConstraints, num_blocks_for
from .bigbird import bigbird
from .blockbert import blockbert, blockbert_constraints
from .dense import dense
from .fixed import fixed
from .local import local
from .window import global_blocks, window


@dataclass(frozen=True)
class PatternSpec:
    """One pattern family as data."""

    build: Callable[..., torch.Tensor]  # (num_blocks, **params) -> layout [H or 1, nb, nb]
    example: dict[str, Any] = field(default_factory=dict)  # parameters of a small valid layout
    full: bool = False  # every block sees every block: layout-free attention may stand in
    constraints: Callable[..., PatternConstraints] | None = None  # params -> what it needs


SPECS: dict[str, PatternSpec] = {
    "dense": PatternSpec(dense, full=True),
    "local": PatternSpec(local),
    "window": PatternSpec(window, example={"width": 1}),
    "global": PatternSpec(global_blocks, example={"count": 1}),
    "bigbird": PatternSpec(bigbird, example={"window_width": 1, "num_random": 1}),
    "blockbert": PatternSpec(
        blockbert, example={"head_split": "1:1"}, constraints=blockbert_constraints
    ),
    "fixed": PatternSpec(fixed, example={"stride": 2}),
}
# name -> layout builder, for callers that only build layouts
PATTERNS: dict[str, Callable[..., torch.Tensor]] = {name: s.build for name, s in SPECS.items()}


def _spec(name: str) -> PatternSpec:
    if name not in SPECS:
        raise ValueError(f"unknown pattern {name!r}; choose one of {', '.join(SPECS)}")
    return SPECS[name]


def pattern_parameters(name: str) -> list[str]:
    """Keyword parameters a pattern takes besides ``num_blocks``."""
    signature = inspect.signature(_spec(name).build)
    return [p for p in signature.parameters if p != "num_blocks"]


def pattern_constraints(name: str, params: dict[str, Any]) -> PatternConstraints:
    """What pattern ``name`` with ``params`` (its own parameters) needs of the model."""
    constraints = _spec(name).constraints
    if constraints is None:
        return PatternConstraints()
    takes = inspect.signature(constraints).parameters
    return constraints(**{key: value for key, value in params.items() if key in takes})


def full_patterns() -> tuple[str, ...]:
    """Patterns whose layout is every block: attention without a layout computes them."""
    return tuple(name for name, spec in SPECS.items() if spec.full)


def make_layout(
    name: str,
    *,
    seq_len: int,
    block_size: int,
    num_heads: int = 1,
    generator: torch.Generator | None = None,
    **params: object,
) -> torch.Tensor:
    """Layout of pattern ``name`` for ``seq_len`` tokens; ``params`` are the pattern's own."""
    accepted = pattern_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "no parameters"
        raise ValueError(f"pattern {name!r} takes {takes}; got unknown {', '.join(unknown)}")
    if "num_heads" in accepted:
        params["num_heads"] = num_heads
    if "generator" in accepted:
        params["generator"] = generator
    return PATTERNS[name](num_blocks_for(seq_len, block_size), **params)
