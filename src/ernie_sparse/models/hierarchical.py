"""HST (ERNIE-Sparse section 3.2): hierarchical attention among representatives, pooling.

After a sparse layer, the representative states R_s = (r_1 .. r_m) are taken out
of the sequence, pass through a residual multi-head dense attention
(R = Attention(R_s)) and are "distributed back": written at their positions, or
(``hst.distribute: block``) added to every position of their block.
"""

from __future__ import annotations

import torch

from .layers import AttentionSublayer, dense_attend
from .structure import SequencePlan


def hierarchical_attention(
    hidden: torch.Tensor,
    sublayer: AttentionSublayer,
    *,
    plan: SequencePlan,
    representative_mask: torch.Tensor,
    dropout_p: float,
    distribute: str = "representative",
) -> torch.Tensor:
    """hidden [B, L, d] after the plan's representatives [m] attended each other.

    ``distribute``: ``representative`` writes each updated representative back at its
    position (the paper's reading); ``block`` adds each representative's attention
    update to every position of its block too (one attention hop less between a
    token and the other blocks). ``representative_mask`` [B, m] is False for blocks
    that are all padding: those representatives are never attended.
    """
    positions = plan.representative_positions.to(hidden.device)
    representatives = hidden.index_select(1, positions)  # [B, m, d]
    attend = dense_attend(representative_mask, dropout_p=dropout_p)
    update = sublayer.update(representatives, attend)  # [B, m, d]
    if distribute == "representative":
        return hidden.index_copy(1, positions, sublayer.combine(representatives, update))
    # The local blocks are contiguous: representative i starts block i.
    start = plan.global_blocks * plan.block_size
    span = plan.local_blocks * plan.block_size
    local = hidden[:, start : start + span]  # [B, m * block, d]
    local = sublayer.combine(local, update.repeat_interleave(plan.block_size, dim=1))
    return torch.cat([hidden[:, :start], local, hidden[:, start + span :]], dim=1)


def pool(states: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[B, S, d] states, [B, S] mask -> [B, d]: ``mean`` / ``max`` over the masked-in states,
    or ``cls``, the first state."""
    if how == "cls":
        return states[:, 0]
    keep = mask[..., None]  # [B, S, 1]
    if how == "mean":
        total = states.masked_fill(~keep, 0.0).sum(dim=1)
        return total / keep.sum(dim=1).clamp_min(1).to(states.dtype)
    if how == "max":
        return states.masked_fill(~keep, torch.finfo(states.dtype).min).amax(dim=1)
    raise ValueError(f"pooling must be mean, max or cls; got {how!r}")
