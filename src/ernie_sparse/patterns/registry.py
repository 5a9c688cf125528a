"""Build a layout from a pattern name and keyword parameters (configs and the CLI)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from ._common import num_blocks_for
from .bigbird import bigbird
from .blockbert import blockbert
from .dense import dense
from .fixed import fixed
from .local import local
from .window import global_blocks, window

PATTERNS: dict[str, Callable[..., torch.Tensor]] = {
    "dense": dense,
    "local": local,
    "window": window,
    "global": global_blocks,
    "bigbird": bigbird,
    "blockbert": blockbert,
    "fixed": fixed,
}


def pattern_parameters(name: str) -> list[str]:
    """Keyword parameters a pattern takes besides ``num_blocks``."""
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; choose one of {', '.join(PATTERNS)}")
    signature = inspect.signature(PATTERNS[name])
    return [p for p in signature.parameters if p != "num_blocks"]


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
