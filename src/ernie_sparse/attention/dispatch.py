"""One entry point that checks inputs and picks a backend."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .blocked import blocked_attention
from .flex import flex_available, flex_sparse_attention
from .fused import fused_sparse_attention
from .reference import reference_attention
from .validation import check_attention_inputs

BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": reference_attention,
    "blocked": blocked_attention,
    "flex": flex_sparse_attention,
    "fused": fused_sparse_attention,
}


def choose_backend(q: torch.Tensor, *, dropout_p: float = 0.0) -> str:
    """The fastest exact backend for this device and request (``backend="auto"``).

    CUDA: ``flex`` (fused Triton kernel, training and inference) unless attention
    dropout is asked for, which ``flex`` lacks. CPU: ``blocked``, which has a
    backward and beat compiled CPU flex in ``ernie-sparse bench attention``. The fused
    CPU kernel (``backend="fused"``) is only used when asked for by name.
    Never the dense ``reference``: its memory is quadratic in the length.
    """
    if q.device.type == "cuda" and flex_available() and dropout_p == 0.0:
        return "flex"
    return "blocked"


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None = None,
    backend: str = "auto",
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Block-sparse attention: ``softmax(q k^T / sqrt(D) + mask) v`` restricted to ``layout``.

    Args:
        q, k, v: ``[B, H, N, D]``, any N (padded to ``block_size`` inside, cut back after).
        layout: bool ``[H or 1, nb, nb]`` with ``nb = ceil(N / block_size)``; True where a
            query block attends a key block.
        block_size: tokens per layout block.
        key_padding_mask: bool ``[B, N]``, True for real tokens; padded keys are never attended.
        backend: ``"auto"``, ``"reference"``, ``"blocked"``, ``"flex"`` or ``"fused"`` (the
            C++ CPU kernel, compiled on first use; see ``fused.py``).
        dropout_p: attention dropout probability (pass 0.0 in eval mode).

    Returns:
        ``[B, H, N, D]``; a query whose allowed keys are all masked gets zeros.
    """
    check_attention_inputs(
        q,
        k,
        v,
        layout,
        block_size=block_size,
        key_padding_mask=key_padding_mask,
        dropout_p=dropout_p,
    )
    if backend == "auto":
        backend = choose_backend(q, dropout_p=dropout_p)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.to(q.device)
    return BACKENDS[backend](
        q,
        k,
        v,
        layout.to(q.device),
        block_size=block_size,
        key_padding_mask=key_padding_mask,
        dropout_p=dropout_p,
    )
