"""Render a layout as a PNG, one panel per head."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..plotting import save_figure
from ._common import check_layout


def render_layout(
    layout: torch.Tensor, path: str | Path, *, title: str | None = None, max_heads: int = 16
) -> Path:
    """Draw each head's block layout (query block rows, key block columns) into ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "render_layout needs matplotlib: pip install 'ernie-sparse[plot]'"
        ) from error
    check_layout(layout)
    heads = min(layout.shape[0], max_heads)
    cols = min(heads, 4)
    rows = math.ceil(heads / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for head, axis in enumerate(axes.flat):
        axis.axis("off")
        if head >= heads:
            continue
        axis.imshow(layout[head].cpu().numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="none")
        density = layout[head].float().mean().item()
        axis.set_title(f"head {head}: {density:.1%}", fontsize=9)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=100)
