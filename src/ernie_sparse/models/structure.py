"""Where each input token, global token and representative sits inside the encoder.

The encoder works on an internal sequence of whole attention blocks:

    [ g global tokens, padded to G blocks ] [ block 1 ] [ block 2 ] ... [ block m ]

Each local block is ``block_size`` positions. With HST the first one holds the
block's representative token and the other ``block_size - 1`` hold input tokens
(ERNIE-Sparse eq. 1); without HST all of them hold input tokens. Unused
positions (the tail of the global region, the tail of the last block) are
masked keys, so the layout's blocks are exactly the paper's local blocks.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SequencePlan:
    """Index maps between the input [B, n] and the internal sequence [B, L]."""

    input_len: int  # n
    block_size: int  # positions per attention block
    num_global: int  # g leading input tokens that are global
    global_blocks: int  # G = ceil(g / block_size)
    local_blocks: int  # m = ceil((n - g) / tokens per block), at least 1 with HST
    tokens_per_block: int  # input tokens per local block
    num_blocks: int  # G + m, rounded up to the pattern's block multiple (empty blocks)
    token_positions: torch.Tensor  # [n] internal position of input token i
    representative_positions: torch.Tensor  # [m] (HST) or [0]

    @property
    def length(self) -> int:
        """L, internal positions: a whole number of blocks."""
        return self.num_blocks * self.block_size

    @property
    def hst(self) -> bool:
        return self.tokens_per_block < self.block_size


@functools.lru_cache(maxsize=256)
def plan_sequence(
    input_len: int, *, block_size: int, num_global: int, hst: bool, block_multiple: int = 1
) -> SequencePlan:
    """The internal layout for inputs of ``input_len`` tokens (cached; CPU index tensors).

    ``block_multiple``: the block count is rounded up to a multiple of it with empty
    blocks (BlockBERT cuts the sequence into that many equal parts).
    """
    if input_len < 1:
        raise ValueError(f"input length must be >= 1, got {input_len}")
    per_block = block_size - 1 if hst else block_size
    num_global = min(num_global, input_len)
    global_blocks = math.ceil(num_global / block_size)
    local_len = input_len - num_global
    # With HST a document of global tokens only still gets one (empty) local block: its
    # representative is what mean / max pooling read.
    local_blocks = max(math.ceil(local_len / per_block), int(hst))
    local_index = torch.arange(local_len)
    block, offset = local_index // per_block, local_index % per_block
    local_positions = (global_blocks + block) * block_size + offset + int(hst)
    token_positions = torch.cat([torch.arange(num_global), local_positions])
    representatives = (global_blocks + torch.arange(local_blocks if hst else 0)) * block_size
    return SequencePlan(
        input_len=input_len,
        block_size=block_size,
        num_global=num_global,
        global_blocks=global_blocks,
        local_blocks=local_blocks,
        num_blocks=math.ceil((global_blocks + local_blocks) / block_multiple) * block_multiple,
        tokens_per_block=per_block,
        token_positions=token_positions,
        representative_positions=representatives,
    )


def representative_mask(plan: SequencePlan, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, m] True where a local block holds at least one real token, and always for the
    first block (a document no longer than its global tokens keeps one representative)."""
    batch = attention_mask.shape[0]
    local = attention_mask[:, plan.num_global :]  # [B, n - g]
    padded_len = plan.local_blocks * plan.tokens_per_block
    local = torch.nn.functional.pad(local, (0, padded_len - local.shape[1]), value=False)
    mask = local.view(batch, plan.local_blocks, plan.tokens_per_block).any(dim=-1)  # [B, m]
    # Out of place: the TorchScript ONNX exporter loses an in-place write here.
    return mask | (torch.arange(plan.local_blocks, device=mask.device) == 0)


def internal_key_mask(
    plan: SequencePlan, attention_mask: torch.Tensor, rep_mask: torch.Tensor | None
) -> torch.Tensor:
    """[B, L] True at real tokens and at the representatives of non-empty blocks."""
    device = attention_mask.device
    mask = attention_mask.new_zeros(attention_mask.shape[0], plan.length)
    mask[:, plan.token_positions.to(device)] = attention_mask
    if rep_mask is not None:
        mask[:, plan.representative_positions.to(device)] = rep_mask
    return mask
