"""Sparse Transformer "fixed" pattern (Child et al., 2019), block granular, bidirectional."""

from __future__ import annotations

import torch

from ._common import as_layout, check_positive


def fixed(num_blocks: int, *, stride: int, summary: int = 1) -> torch.Tensor:
    """Fixed pattern ``[1, nb, nb]`` with ``stride`` and ``summary`` in blocks.

    Query block i sees key block j when both lie in the same segment of
    ``stride`` blocks (A1: floor(j/l) == floor(i/l)), or when j is one of the last
    ``summary`` blocks of its segment (A2: j mod l >= l - c). Bidirectional: no
    causal cut.
    """
    check_positive("num_blocks", num_blocks)
    check_positive("stride", stride)
    check_positive("summary", summary)
    if summary > stride:
        raise ValueError(f"summary={summary} must not exceed stride={stride}")
    index = torch.arange(num_blocks)
    same_segment = (index[:, None] // stride) == (index[None, :] // stride)
    is_summary = (index % stride) >= stride - summary
    return as_layout(same_segment | is_summary[None, :])
