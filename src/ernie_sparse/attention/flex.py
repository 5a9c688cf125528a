"""FlexAttention backend: a BlockMask built straight from the block layout.

CUDA: training and inference through the compiled Triton kernel. CPU: compiled
inference only (PyTorch has no CPU backward for FlexAttention), so this backend
refuses a CPU call that needs gradients instead of falling back.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layout_cache import (
    KeyedLayout,
    LayoutKey,
    allowed_blocks_first,
    derived_from_layout,
    layout_from_key,
)
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


# Triton tiles that divide 64-token blocks; measured on an H100 to compile and run in
# float32 (fwd+bwd 5.0 ms vs 9.1 ms for the 128-token mask at N=4096). In bfloat16 no
# 64-token tiling compiled there, so half precision uses the 128-token mask.
_TILES_FOR_64 = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64,
                 "BLOCK_M2": 64, "BLOCK_N2": 32, "num_stages": 2, "num_warps": 4}  # fmt: skip


# FlexAttention's FlashAttention-4 (CuteDSL) kernel: needs the flash-attn package's
# flash_attn.cute, a Hopper or newer GPU and half precision; exact like the Triton one.
FLASH_KERNEL = {"BACKEND": "FLASH"}


def _kernel_options(
    block_size: int, device: torch.device, dtype: torch.dtype, kernel: str = "triton"
) -> dict | None:
    if kernel == "flash":
        return FLASH_KERNEL
    if device.type == "cuda" and block_size == 64 and dtype == torch.float32:
        return _TILES_FOR_64
    return None


def check_flash_kernel(device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, naming why, a request for the FlashAttention-4 kernel it cannot serve."""
    problem = None
    if device.type != "cuda":
        problem = f"runs on CUDA only, got {device.type} tensors"
    elif dtype not in (torch.bfloat16, torch.float16):
        problem = f"needs bfloat16 or float16, got {dtype}"
    elif torch.cuda.get_device_capability(device)[0] < 9:
        problem = "needs a Hopper (sm90) or newer GPU"
    elif importlib.util.find_spec("flash_attn") is None or (
        importlib.util.find_spec("flash_attn.cute") is None
    ):
        problem = "needs flash-attn's CuteDSL kernels (pip install flash-attn-4 or flash-attn)"
    if problem:
        raise RuntimeError(f"backend 'flex-fa4' {problem}; use backend='flex'")


def flex_layout_block(block_size: int, seq_len: int) -> int:
    """The layout block flex works with: ``block_size``, or for one block over the whole
    sequence a tile of 128 (what the kernel needs)."""
    return effective_block_size(block_size, seq_len, multiple=128)


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
    """One layout at the kernel's block size: which coarse blocks are complete (every
    token pair allowed: the kernel skips mask_mod there) and which are partial."""

    full: torch.Tensor  # bool [Hl, nc, nc] on the device
    partial: torch.Tensor  # bool [Hl, nc, nc] visited, but some token pair is not allowed
    layout: torch.Tensor  # [Hl, nbp, nbp] on the device, padded with False to the mask's size
    unpadded: object  # the BlockMask (full + partial) of inputs without padded keys


def split_blocks(
    layout: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layout padded with False to whole coarse blocks of ``factor`` x ``factor`` layout
    blocks [Hl, nc*f, nc*f], and its coarse blocks [Hl, nc, nc] that are full (every layout
    block allowed) and partial (some allowed, not all)."""
    heads, num_blocks = layout.shape[0], layout.shape[-1]
    coarse = -(-num_blocks // factor)
    padded = F.pad(layout, (0, coarse * factor - num_blocks) * 2)  # [Hl, nbp, nbp]
    grouped = padded.view(heads, coarse, factor, coarse, factor).transpose(2, 3)
    full = grouped.all(dim=-1).all(dim=-1)  # [Hl, nc, nc]
    partial = grouped.any(dim=-1).any(dim=-1) & ~full
    return padded, full, partial


def _block_mask(full: torch.Tensor, partial: torch.Tensor, mask_block: int):
    """BlockMask of [B or 1, Hl, nc, nc] full and partial coarse blocks."""
    from torch.nn.attention.flex_attention import BlockMask

    full_counts, full_indices = _to_kv_indices(full)
    counts, indices = _to_kv_indices(partial)
    return BlockMask.from_kv_blocks(
        counts, indices, full_counts, full_indices, BLOCK_SIZE=mask_block
    )


def _to_kv_indices(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts [B, Hl, nc] and ordered key block indices [B, Hl, nc, nc] of [B, Hl, nc, nc]
    blocks (a leading batch axis of 1 is added to [Hl, nc, nc])."""
    if blocks.dim() == 3:
        blocks = blocks[None]
    counts, order = allowed_blocks_first(blocks)
    return counts.to(torch.int32).contiguous(), order.to(torch.int32).contiguous()


@functools.lru_cache(maxsize=64)
def _cached_masks(key: LayoutKey, block_size: int, mask_block: int, device: str) -> FlexMasks:
    padded, full, partial = split_blocks(layout_from_key(key), mask_block // block_size)
    if not device.startswith("cuda"):
        # Inductor's CPU template fails to compile masks of full blocks (torch 2.13), so
        # CPU checks every visited block token by token.
        full, partial = torch.zeros_like(full), full | partial
    full, partial = full.to(device), partial.to(device)
    unpadded = _block_mask(full, partial, mask_block)
    return FlexMasks(full=full, partial=partial, layout=padded.to(device), unpadded=unpadded)


def _with_padding(masks: FlexMasks, key_valid: torch.Tensor, mask_block: int):
    """Per example [B, Hl, nc, nc]: full blocks holding a padded key become partial (the
    mask_mod masks the padded keys there). Device tensor ops only: no host sync."""
    batch = key_valid.shape[0]
    padded_keys = ~key_valid.view(batch, -1, mask_block).all(dim=-1)  # [B, nc]
    full = masks.full[None] & ~padded_keys[:, None, None, :]  # [B, Hl, nc, nc]
    partial = (masks.full | masks.partial)[None] & ~full
    return _block_mask(full, partial, mask_block)


def layout_block_mask(
    layout: torch.Tensor | KeyedLayout,
    block_size: int,
    key_valid: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
):
    """BlockMask of ``layout`` for a padded length; ``key_valid`` [B, Np] masks padded keys.

    Built once per (layout, block size, device) and reused by every layer and step that
    share the layout; with padding, only which coarse blocks are full changes per batch.
    """
    mask_block = flex_block_size(block_size, device, dtype)
    what = ("flex", block_size, mask_block, str(device))
    masks = derived_from_layout(
        layout, what, lambda key: _cached_masks(key, block_size, mask_block, str(device))
    )
    token_layout = masks.layout
    shared_heads = token_layout.shape[0] == 1

    def allowed(batch, head, q_index, kv_index):
        head_index = 0 if shared_heads else head
        keep = token_layout[head_index, q_index // block_size, kv_index // block_size]
        return keep if key_valid is None else keep & key_valid[batch, kv_index]

    if key_valid is None:
        block_mask = copy.copy(masks.unpadded)
    else:
        block_mask = _with_padding(masks, key_valid, mask_block)
    block_mask.mask_mod = allowed
    return block_mask


def flex_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor | KeyedLayout,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    kernel: str = "triton",
) -> torch.Tensor:
    """Block-sparse attention with FlexAttention; N is padded to the block size inside.
    ``kernel="flash"`` (backend ``flex-fa4``) asks for its FlashAttention-4 kernel."""
    if kernel == "flash":
        check_flash_kernel(q.device, q.dtype)
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
    block_size = flex_layout_block(block_size, seq_len)
    mask_block = flex_block_size(block_size, q.device, q.dtype)
    q, k, v, key_valid = pad_to_multiple(q, k, v, key_padding_mask, mask_block)
    block_mask = layout_block_mask(layout, block_size, key_valid, q.device, q.dtype)
    options = _kernel_options(block_size, q.device, q.dtype, kernel)
    if torch.compiler.is_compiling():  # inside the caller's graph: the kernel compiles with it
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, block_mask=block_mask, kernel_options=options)[
            :, :, :seq_len
        ]
    # Each new length compiles anew; past dynamo's default limit of 8 it would silently run
    # flex eagerly, materializing N x N scores. Allow more, and fail loudly past that.
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        out = _compiled_flex()(q, k, v, block_mask=block_mask, kernel_options=options)
    return out[:, :, :seq_len]
