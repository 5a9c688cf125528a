"""Local attention: block diagonal, each block sees only itself."""

from __future__ import annotations

import torch

from ._common import check_positive


def local(num_blocks: int) -> torch.Tensor:
    """Block-diagonal layout ``[1, nb, nb]``."""
    check_positive("num_blocks", num_blocks)
    return torch.eye(num_blocks, dtype=torch.bool)[None]
