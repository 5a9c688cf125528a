"""Shape presets of the benchmarks (``--shape``): the sizes people train at.

``small`` is each benchmark's CPU default (LRA Text width, ERNIE-Sparse Table 11);
``bert-base`` and ``roberta-large`` are the widths of those checkpoints, with a batch
large enough that batch x heads >= 64, so a GPU's multiprocessors all get work.
Explicit ``--batch``, ``--heads``, ... flags override the preset's values.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class ShapePreset:
    attention_batch: int  # B of ``bench attention``
    model_batch: int  # sequences per step of ``bench model``
    heads: int  # H
    head_dim: int  # D; hidden size = H x D
    num_layers: int
    mlp_size: int

    @property
    def hidden_size(self) -> int:
        return self.heads * self.head_dim


SHAPES: dict[str, ShapePreset] = {
    # Today's defaults: attention B=2, model B=1 (a CPU step of a whole model is slow).
    "small": ShapePreset(2, 1, heads=4, head_dim=64, num_layers=4, mlp_size=1024),
    "bert-base": ShapePreset(8, 8, heads=12, head_dim=64, num_layers=12, mlp_size=3072),
    "roberta-large": ShapePreset(4, 4, heads=16, head_dim=64, num_layers=24, mlp_size=4096),
}
DEFAULT_SHAPE = "small"


def shape_preset(name: str) -> ShapePreset:
    """The preset ``name``; an unknown name is refused with the choices."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape preset {name!r}; choose from {', '.join(SHAPES)}")
    return SHAPES[name]


def add_shape_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shape",
        default=DEFAULT_SHAPE,
        help=f"shape preset: {', '.join(SHAPES)} (default {DEFAULT_SHAPE}); "
        "explicit size flags override it",
    )


def resolve_sizes(args: argparse.Namespace, preset: dict[str, int]) -> dict[str, int]:
    """``preset`` (argument name -> preset value) with every size flag given on the
    command line (not None) in place of the preset's value."""
    return {
        name: value if getattr(args, name) is None else getattr(args, name)
        for name, value in preset.items()
    }
