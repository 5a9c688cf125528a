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
from .layout_cache import LayoutKey, allowed_blocks_first, layout_from_key, layout_key
from .padding import pad_to_multiple
from .reference import masked_attention


@dataclass(frozen=True)
class BlockPlan:
    """Which key blocks each query block visits; derived from a layout once."""

    dense_rows: torch.Tensor  # [nd] query blocks that see every key block in every head
    sparse_rows: torch.Tensor  # [ns] the other query blocks
    key_blocks: torch.Tensor  # [H or 1, ns, slots] key block per slot (0 in unused slots)
    slot_valid: torch.Tensor | None  # [H or 1, ns, slots] False for unused slots; None: all used
    block_order: torch.Tensor | None  # [nb] output order after cat(dense, sparse); None: identity

    @property
    def slots(self) -> int:
        return self.key_blocks.shape[-1]


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
    )


@functools.lru_cache(maxsize=64)
def _cached_plan(key: LayoutKey, device: str) -> BlockPlan:
    plan = _build_plan(layout_from_key(key))
    moved = {name: None if t is None else t.to(device) for name, t in vars(plan).items()}
    return BlockPlan(**moved)


def block_plan(layout: torch.Tensor) -> BlockPlan:
    """The visiting plan of ``layout``, cached by content (so resampled layouts just work)."""
    return _cached_plan(layout_key(layout), str(layout.device))


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


def _select_rows(blocks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """blocks[:, :, rows] for [B, H, nb, bs, D]; a slice (no copy) when rows are a range."""
    first, count = int(rows[0]), rows.numel()
    if int(rows[-1]) - first + 1 == count:  # rows are sorted and distinct
        return blocks[:, :, first : first + count]
    return blocks[:, :, rows]


def _sparse_rows_attention(q_blocks, k_blocks, v_blocks, plan, key_valid, dropout_p):
    batch, heads, num_blocks, block_size, dim = q_blocks.shape
    sparse_rows = plan.sparse_rows.numel()
    queries = _select_rows(q_blocks, plan.sparse_rows)
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
    queries = _select_rows(q_blocks, plan.dense_rows).reshape(
        batch, heads, dense_rows * block_size, dim
    )
    if key_valid is None:
        out = F.scaled_dot_product_attention(queries, k, v, dropout_p=dropout_p)
    else:
        out = masked_attention(queries, k, v, key_valid[:, None, None, :], dropout_p=dropout_p)
    return out.view(batch, heads, dense_rows, block_size, dim)


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Block-sparse attention over [B, H, N, D] inputs; N is padded to the block size inside."""
    batch, heads, seq_len, dim = q.shape
    num_blocks = layout.shape[-1]
    q, k, v, key_valid = pad_to_multiple(q, k, v, key_padding_mask, block_size)
    plan = block_plan(layout)
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
