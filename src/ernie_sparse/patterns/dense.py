"""Dense attention: every query block sees every key block."""

from __future__ import annotations

import torch

from ._common import check_positive


def dense(num_blocks: int) -> torch.Tensor:
    """All-True layout ``[1, nb, nb]``."""
    check_positive("num_blocks", num_blocks)
    return torch.ones(1, num_blocks, num_blocks, dtype=torch.bool)
