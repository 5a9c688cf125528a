"""FlexAttention backend: a BlockMask built straight from the block layout.

CUDA: training and inference through the compiled Triton kernel. CPU: compiled
inference only (PyTorch has no CPU backward for FlexAttention), so this backend
refuses a CPU call that needs gradients instead of falling back.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _to_kv_indices(layout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts [1, Hl, nb] and ordered key block indices [1, Hl, nb, nb] of a layout."""
    counts = layout.sum(dim=-1, dtype=torch.int32)
    order = torch.sort((~layout).to(torch.uint8), dim=-1, stable=True).indices.to(torch.int32)
    return counts[None].contiguous(), order[None].contiguous()


@functools.lru_cache(maxsize=64)
def _cached_block_masks(layout_bytes: bytes, shape: tuple[int, ...], block_size: int, device: str):
    """(all-full BlockMask, all-partial BlockMask) of one layout; cached by content."""
    from torch.nn.attention.flex_attention import BlockMask

    layout = torch.frombuffer(bytearray(layout_bytes), dtype=torch.bool).view(shape)
    counts, indices = _to_kv_indices(layout)
    counts, indices = counts.to(device), indices.to(device)
    no_blocks = torch.zeros_like(counts)
    full = BlockMask.from_kv_blocks(no_blocks, indices, counts, indices, BLOCK_SIZE=block_size)
    partial = BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=block_size)
    return full, partial


def layout_block_mask(
    layout: torch.Tensor, block_size: int, key_valid: torch.Tensor | None, device: torch.device
):
    """BlockMask of ``layout``; with ``key_valid`` [B, N] its blocks also mask padded keys."""
    cpu_layout = layout.detach().to("cpu", torch.bool).contiguous()
    full, partial = _cached_block_masks(
        cpu_layout.numpy().tobytes(), tuple(cpu_layout.shape), block_size, str(device)
    )
    if key_valid is None:
        return full

    def key_is_real(batch, head, q_index, kv_index):
        return key_valid[batch, kv_index]

    block_mask = copy.copy(partial)
    block_mask.mask_mod = key_is_real
    return block_mask


def _kernel_options(block_size: int, device: torch.device) -> dict[str, int] | None:
    # The Triton tiles must divide the mask's blocks; default tiles are up to 128.
    if device.type != "cuda" or block_size >= 128:
        return None
    return {"BLOCK_M": block_size, "BLOCK_N": block_size}


def flex_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Block-sparse attention with FlexAttention; N is padded to the block size inside."""
    if dropout_p > 0:
        raise ValueError("backend 'flex' has no attention dropout; use backend='blocked'")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if q.device.type == "cpu" and needs_grad:
        raise RuntimeError(
            "backend 'flex' has no CPU backward in PyTorch; run it under torch.no_grad() "
            "or use backend='blocked' for CPU training"
        )
    batch, heads, seq_len, dim = q.shape
    num_blocks = layout.shape[-1]
    pad = num_blocks * block_size - seq_len
    key_valid = key_padding_mask
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        if key_valid is None:
            key_valid = torch.ones(batch, seq_len, dtype=torch.bool, device=q.device)
        key_valid = F.pad(key_valid, (0, pad), value=False)
    block_mask = layout_block_mask(layout, block_size, key_valid, q.device)
    out = _compiled_flex()(
        q, k, v, block_mask=block_mask, kernel_options=_kernel_options(block_size, q.device)
    )
    return out[:, :, :seq_len]
