"""One entry point that checks inputs and picks a backend."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .blocked import block_plan, blocked_attention
from .flex import flex_available, flex_layout_block, flex_sparse_attention, layout_block_mask
from .fused import FUSED_DTYPES, fused_available, fused_sparse_attention, layout_csr
from .layout_cache import KeyedLayout, layout_tensor
from .reference import reference_attention
from .validation import check_attention_inputs

BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": reference_attention,
    "blocked": blocked_attention,
    "flex": flex_sparse_attention,
    # FlexAttention's FlashAttention-4 kernel (Hopper+, bf16/fp16, flash-attn installed)
    "flex-fa4": functools.partial(flex_sparse_attention, kernel="flash"),
    "fused": fused_sparse_attention,
}


def choose_backend(q: torch.Tensor, *, dropout_p: float = 0.0) -> str:
    """The fastest exact backend for this device and request (``backend="auto"``).

    CUDA: ``flex`` (fused Triton kernel, training and inference) unless attention
    dropout is asked for, which ``flex`` lacks. CPU: the C++ kernel ``fused``, faster
    than ``blocked`` at every length ``ernie-sparse bench attention`` measures (see
    docs/bench/cpu-2core-fp32/); where it cannot be built (no compiler, or
    ``ERNIE_SPARSE_FUSED=0``), ``blocked``, after one logged warning that says why.
    Never the dense ``reference``: its memory is quadratic in the length.
    """
    if q.device.type == "cuda" and flex_available() and dropout_p == 0.0:
        return "flex"
    if q.device.type in ("cpu", "meta") and q.dtype in FUSED_DTYPES and fused_available():
        return "fused"
    return "blocked"


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor | KeyedLayout,
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
            query block attends a key block. A ``KeyedLayout`` (what models pass) carries
            its content key and the backends' derived plans, so repeated calls skip hashing.
        block_size: tokens per layout block.
        key_padding_mask: bool ``[B, N]``, True for real tokens; padded keys are never attended.
        backend: ``"auto"``, ``"reference"``, ``"blocked"``, ``"flex"``, ``"flex-fa4"``
            (flex with its FlashAttention-4 kernel; opt-in) or ``"fused"`` (the C++ CPU
            kernel, compiled on first use; see ``fused.py``).
        dropout_p: attention dropout probability (pass 0.0 in eval mode).

    Returns:
        ``[B, H, N, D]``; a query whose allowed keys are all masked gets zeros.
    """
    check_attention_inputs(
        q,
        k,
        v,
        layout_tensor(layout),
        block_size=block_size,
        key_padding_mask=key_padding_mask,
        dropout_p=dropout_p,
    )
    if backend == "auto":
        backend = choose_backend(q, dropout_p=dropout_p)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    meta_layout = layout_tensor(layout).device.type == "meta"
    if meta_layout and (q.device.type != "meta" or backend != "reference"):
        raise ValueError(
            f"backend {backend!r} needs the layout's values and a layout on the meta device "
            "has none; pass the layout as a CPU tensor (q, k and v may stay on meta)"
            + ("" if q.device.type != "meta" else ", or use backend='reference'")
        )
    if key_padding_mask is not None:
        if key_padding_mask.device.type == "meta" and q.device.type != "meta":
            raise ValueError(
                f"key_padding_mask is on the meta device (no values) but q is on {q.device}"
            )
        key_padding_mask = key_padding_mask.to(q.device)
    # Backends read the layout where it is (its content keys their caches) and put what
    # they derive from it on q's device; q, k, v on meta with a CPU layout infer shapes.
    return BACKENDS[backend](
        q,
        k,
        v,
        layout,
        block_size=block_size,
        key_padding_mask=key_padding_mask,
        dropout_p=dropout_p,
    )


def prepare_layout(
    layout: KeyedLayout,
    q: torch.Tensor,
    *,
    block_size: int,
    backend: str = "auto",
    dropout_p: float = 0.0,
) -> str:
    """Build now what ``backend`` derives from ``layout`` for inputs like ``q`` [B, H, N, D]
    (visiting plan, CSR or BlockMask), as its first call would; returns the backend's name.

    For timing that cost apart from attention (``bench model`` with a resampled pattern)
    and for building before ``torch.compile(fullgraph=True)`` traces a model.
    """
    if backend == "auto":
        backend = choose_backend(q, dropout_p=dropout_p)
    seq_len = q.shape[2]
    if backend == "blocked":
        block_plan(layout, q.device)
    elif backend == "fused":
        layout_csr(layout)
    elif backend in ("flex", "flex-fa4"):
        flex_block = flex_layout_block(block_size, seq_len)
        layout_block_mask(layout, flex_block, None, q.device, q.dtype)
    elif backend != "reference":
        raise ValueError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    return backend
