"""Block-sparse attention that visits only the key blocks each query block needs.

Query blocks whose layout row is full for every head (global rows) attend to the
whole sequence through one dense SDPA call; every other query block attends to
its own key blocks, gathered chunk by chunk (see ``gathered.py``). Memory is
O(N * max_blocks_per_row * block_size) at most, linear in N for a fixed
pattern. Autograd works on every device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .gathered import gathered_block_attention
from .layout_cache import (
    KeyedLayout,
    LayoutKey,
    allowed_blocks_first,
    derived_from_layout,
    layout_from_key,
    layout_tensor,
)
from .padding import effective_block_size, pad_to_multiple
from .reference import masked_attention


@dataclass(frozen=True)
class BlockPlan:
    """Which key blocks each query block visits; derived from a layout once."""

    dense_rows: torch.Tensor  # [nd] query blocks that see every key block in every head
    sparse_rows: torch.Tensor  # [ns] the other query blocks
    key_blocks: torch.Tensor  # [H or 1, ns, slots] key block per slot (0 in unused slots)
    slot_valid: torch.Tensor | None  # [H or 1, ns, slots] False for unused slots; None: all used
    block_order: torch.Tensor | None  # [nb] output order after cat(dense, sparse); None: identity
    dense_range: tuple[int, int] | None  # (first, count) when dense_rows is a range, else None
    sparse_range: tuple[int, int] | None  # the same for sparse_rows

    @property
    def slots(self) -> int:
        return self.key_blocks.shape[-1]


def _as_range(rows: torch.Tensor) -> tuple[int, int] | None:
    """(first, count) of sorted, distinct block indices that form a range, else None."""
    if not rows.numel() or int(rows[-1]) - int(rows[0]) + 1 != rows.numel():
        return None
    return int(rows[0]), rows.numel()


def _build_plan(layout: torch.Tensor) -> BlockPlan:
    num_blocks = layout.shape[-1]
    is_dense_row = layout.all(dim=-1).all(dim=0)  # [nb]
    dense_rows = is_dense_row.nonzero().flatten()
    sparse_rows = (~is_dense_row).nonzero().flatten()
    rows = layout[:, sparse_rows]  # [Hl, ns, nb]
    counts, order = allowed_blocks_first(rows)  # [Hl, ns], [Hl, ns, nb]
    slots = max(1, int(counts.max())) if sparse_rows.numel() else 1
    order = order[..., :slots]
    slot_valid = torch.arange(slots) < counts[..., None]
    block_order = torch.cat([dense_rows, sparse_rows]).argsort()
    identity = torch.equal(block_order, torch.arange(num_blocks))
    return BlockPlan(
        dense_rows=dense_rows,
        sparse_rows=sparse_rows,
        key_blocks=order.masked_fill(~slot_valid, 0),
        slot_valid=None if bool(slot_valid.all()) else slot_valid,
        block_order=None if identity else block_order,
        dense_range=_as_range(dense_rows),
        sparse_range=_as_range(sparse_rows),
    )


@functools.lru_cache(maxsize=64)
def _cached_plan(key: LayoutKey, device: str) -> BlockPlan:
    plan = _build_plan(layout_from_key(key))
    moved = {
        name: value.to(device) if isinstance(value, torch.Tensor) else value
        for name, value in vars(plan).items()
    }
    return BlockPlan(**moved)


def block_plan(
    layout: torch.Tensor | KeyedLayout, device: torch.device | str | None = None
) -> BlockPlan:
    """The visiting plan of ``layout``, cached by content (so resampled layouts just work),
    with its tensors on ``device`` (default: the layout's; ``meta`` for shape inference)."""
    where = str(layout_tensor(layout).device if device is None else device)
    return derived_from_layout(layout, ("blocked", where), lambda key: _cached_plan(key, where))


def _flat_key_index(plan: BlockPlan, batch: int, heads: int, num_blocks: int) -> torch.Tensor:
    """Index [B*H*ns, slots] of each slot's key block in the flattened [B*H*nb] blocks."""
    device = plan.key_blocks.device
    base = torch.arange(batch * heads, device=device).view(batch, heads, 1, 1) * num_blocks
    return (base + plan.key_blocks[None]).reshape(-1, plan.slots)


def _sparse_key_mask(
    plan: BlockPlan, key_valid: torch.Tensor | None, flat_index: torch.Tensor, shape: tuple
) -> torch.Tensor | None:
    """Key mask [B*H*ns, 1, slots*bs] of the visited keys, or None when every key is real."""
    if plan.slot_valid is None and key_valid is None:
        return None
    batch, heads, _, block_size, _ = shape
    rows, slots = flat_index.shape
    mask = torch.ones(rows, slots, block_size, dtype=torch.bool, device=flat_index.device)
    if plan.slot_valid is not None:
        slot_valid = plan.slot_valid[None].expand(batch, heads, -1, -1)  # [B, H, ns, slots]
        mask &= slot_valid.reshape(rows, slots, 1)
    if key_valid is not None:
        valid_blocks = key_valid.view(batch, 1, -1, block_size).expand(-1, heads, -1, -1)
        valid_blocks = valid_blocks.reshape(-1, block_size)  # [B*H*nb, bs]
        mask &= valid_blocks.index_select(0, flat_index.flatten()).view(rows, slots, block_size)
    return mask.view(rows, 1, slots * block_size)


def _select_rows(
    blocks: torch.Tensor, rows: torch.Tensor, row_range: tuple[int, int] | None
) -> torch.Tensor:
    """blocks[:, :, rows] for [B, H, nb, bs, D]; a slice (no copy) when rows are a range."""
    if row_range is not None:
        first, count = row_range
        return blocks[:, :, first : first + count]
    return blocks[:, :, rows]


def _sparse_rows_attention(q_blocks, k_blocks, v_blocks, plan, key_valid, dropout_p):
    batch, heads, num_blocks, block_size, dim = q_blocks.shape
    sparse_rows = plan.sparse_rows.numel()
    queries = _select_rows(q_blocks, plan.sparse_rows, plan.sparse_range)
    flat_index = _flat_key_index(plan, batch, heads, num_blocks)
    out = gathered_block_attention(
        queries.reshape(batch * heads * sparse_rows, block_size, dim),
        k_blocks.reshape(batch * heads * num_blocks, block_size, dim),
        v_blocks.reshape(batch * heads * num_blocks, block_size, dim),
        flat_index,
        _sparse_key_mask(plan, key_valid, flat_index, q_blocks.shape),
        dropout_p,
    )
    return out.view(batch, heads, sparse_rows, block_size, dim)


def _dense_rows_attention(q_blocks, k, v, plan, key_valid, dropout_p):
    batch, heads, _, block_size, dim = q_blocks.shape
    dense_rows = plan.dense_rows.numel()
    queries = _select_rows(q_blocks, plan.dense_rows, plan.dense_range).reshape(
        batch, heads, dense_rows * block_size, dim
    )
    queries = queries.to(k.dtype)  # float32 where k, v were widened (_widen_shared_keys)
    if key_valid is None:
        out = F.scaled_dot_product_attention(queries, k, v, dropout_p=dropout_p)
    else:
        out = masked_attention(queries, k, v, key_valid[:, None, None, :], dropout_p=dropout_p)
    return out.to(q_blocks.dtype).view(batch, heads, dense_rows, block_size, dim)


def _widen_shared_keys(q, k, v, plan):
    """Half-precision k, v that both the dense rows (SDPA) and the sparse rows read, widened
    to float32 once when a backward will run, and the dense rows then computed in float32:
    the two gradient contributions of a key are summed in float32 and rounded once, not
    rounded apart and summed in half precision (up to twice SDPA's error). The values stay
    exact (float32 holds every half-precision value); outputs are rounded once either way."""
    half = q.dtype in (torch.float16, torch.bfloat16)
    both_paths = plan.dense_rows.numel() and plan.sparse_rows.numel()
    needs_grad = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)
    if not (half and both_paths and needs_grad):
        return k, v
    return k.float(), v.float()


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor | KeyedLayout,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Block-sparse attention over [B, H, N, D] inputs; N is padded to the block size inside
    (a block larger than N is cut to N: one block, the same attention)."""
    batch, heads, seq_len, dim = q.shape
    block_size = effective_block_size(block_size, seq_len)
    num_blocks = layout_tensor(layout).shape[-1]
    q, k, v, key_valid = pad_to_multiple(q, k, v, key_padding_mask, block_size)
    plan = block_plan(layout, q.device)
    k, v = _widen_shared_keys(q, k, v, plan)
    shape = (batch, heads, num_blocks, block_size, dim)
    q_blocks, k_blocks, v_blocks = (t.reshape(shape) for t in (q, k, v))  # [B, H, nb, bs, D]
    parts = []
    if plan.dense_rows.numel():
        parts.append(_dense_rows_attention(q_blocks, k, v, plan, key_valid, dropout_p))
    if plan.sparse_rows.numel():
        parts.append(
            _sparse_rows_attention(q_blocks, k_blocks, v_blocks, plan, key_valid, dropout_p)
        )
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)  # [B, H, nb, bs, D]
    if plan.block_order is not None:
        out = out.index_select(2, plan.block_order)
    return out.reshape(batch, heads, num_blocks * block_size, dim)[:, :, :seq_len]
