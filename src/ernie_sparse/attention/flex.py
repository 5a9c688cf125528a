"""FlexAttention backend: a BlockMask built straight from the block layout.

CUDA: training and inference through the compiled Triton kernel. CPU: compiled
inference only (PyTorch has no CPU backward for FlexAttention), so this backend
refuses a CPU call that needs gradients instead of falling back.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layout_cache import LayoutKey, allowed_blocks_first, layout_from_key, layout_key
from .padding import effective_block_size, pad_to_multiple


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
    counts, order = allowed_blocks_first(layout)
    return counts.to(torch.int32)[None].contiguous(), order.to(torch.int32)[None].contiguous()


# Triton tiles that divide 64-token blocks; measured on an H100 to compile and run in
# float32 (fwd+bwd 5.0 ms vs 9.1 ms for the 128-token mask at N=4096). In bfloat16 no
# 64-token tiling compiled there, so half precision uses the 128-token mask.
_TILES_FOR_64 = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64,
                 "BLOCK_M2": 64, "BLOCK_N2": 32, "num_stages": 2, "num_warps": 4}  # fmt: skip


def _kernel_options(block_size: int, device: torch.device, dtype: torch.dtype) -> dict | None:
    if device.type == "cuda" and block_size == 64 and dtype == torch.float32:
        return _TILES_FOR_64
    return None


def flex_block_size(block_size: int, device: torch.device, dtype: torch.dtype) -> int:
    """Block size of the BlockMask: the layout's where the kernel tiles it, else 128 on CUDA."""
    if device.type != "cuda" or block_size % 128 == 0 or _kernel_options(block_size, device, dtype):
        return block_size
    if 128 % block_size:
        raise ValueError(
            f"backend 'flex' on CUDA needs a block_size that divides 128 or is a multiple of 128, "
            f"got {block_size}; use backend='blocked'"
        )
    return 128


@dataclass(frozen=True)
class FlexMasks:
    """BlockMasks of one layout at the kernel's block size, and the padded layout."""

    full: object | None  # every visited block complete (no mask_mod), when that is exact
    partial: object  # every visited block checked token by token through mask_mod
    layout: torch.Tensor  # [Hl, nbp, nbp] on the device, padded with False to the mask's size


@functools.lru_cache(maxsize=64)
def _cached_masks(key: LayoutKey, block_size: int, mask_block: int, device: str) -> FlexMasks:
    from torch.nn.attention.flex_attention import BlockMask

    layout = layout_from_key(key)
    shape = tuple(layout.shape)
    factor = mask_block // block_size
    coarse_blocks = -(-shape[-1] // factor)
    padded = F.pad(layout, (0, coarse_blocks * factor - shape[-1]) * 2)  # [Hl, nbp, nbp]
    grouped = padded.view(shape[0], coarse_blocks, factor, coarse_blocks, factor)
    visited = grouped.any(dim=4).any(dim=2)  # [Hl, nc, nc]
    counts, indices = (t.to(device) for t in _to_kv_indices(visited))
    partial = BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=mask_block)
    full = None
    if factor == 1:
        no_blocks = torch.zeros_like(counts)
        full = BlockMask.from_kv_blocks(no_blocks, indices, counts, indices, BLOCK_SIZE=mask_block)
    return FlexMasks(full=full, partial=partial, layout=padded.to(device))


def layout_block_mask(
    layout: torch.Tensor,
    block_size: int,
    key_valid: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
):
    """BlockMask of ``layout`` for a padded length; ``key_valid`` [B, Np] masks padded keys."""
    mask_block = flex_block_size(block_size, device, dtype)
    masks = _cached_masks(layout_key(layout), block_size, mask_block, str(device))
    # Inductor's CPU template fails to compile masks of full blocks (torch 2.13), so CPU
    # always checks the layout token by token.
    if key_valid is None and masks.full is not None and device.type == "cuda":
        return masks.full
    token_layout = masks.layout
    shared_heads = token_layout.shape[0] == 1

    def allowed(batch, head, q_index, kv_index):
        head_index = 0 if shared_heads else head
        keep = token_layout[head_index, q_index // block_size, kv_index // block_size]
        return keep if key_valid is None else keep & key_valid[batch, kv_index]

    block_mask = copy.copy(masks.partial)
    block_mask.mask_mod = allowed
    return block_mask


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
    if q.device.type == "meta":
        raise ValueError(
            "backend 'flex' cannot infer shapes on meta tensors (FlexAttention runs only on "
            "real devices); use backend='blocked', 'fused' or 'reference' on meta"
        )
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if q.device.type == "cpu" and needs_grad:
        raise RuntimeError(
            "backend 'flex' has no CPU backward in PyTorch; run it under torch.no_grad() "
            "or use backend='blocked' for CPU training"
        )
    if q.device.type == "cpu":  # flex refuses CPU inputs that require grad, even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    seq_len = q.shape[2]
    # One block over the whole sequence: tile it at 128 (what the kernel needs), not block_size.
    block_size = effective_block_size(block_size, seq_len, multiple=128)
    mask_block = flex_block_size(block_size, q.device, q.dtype)
    q, k, v, key_valid = pad_to_multiple(q, k, v, key_padding_mask, mask_block)
    block_mask = layout_block_mask(layout, block_size, key_valid, q.device, q.dtype)
    # Each new length compiles anew; past dynamo's default limit of 8 it would silently run
    # flex eagerly, materializing N x N scores. Allow more, and fail loudly past that.
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        out = _compiled_flex()(
            q,
            k,
            v,
            block_mask=block_mask,
            kernel_options=_kernel_options(block_size, q.device, q.dtype),
        )
    return out[:, :, :seq_len]
