"""HST (ERNIE-Sparse section 3.2): hierarchical attention among representatives, pooling.

After a sparse layer, the representative states R_s = (r_1 .. r_m) are taken out
of the sequence, pass through a residual multi-head dense attention
(R = Attention(R_s)) and are written back at their positions.
"""

from __future__ import annotations

import torch

from .layers import AttentionSublayer, dense_attend


def hierarchical_attention(
    hidden: torch.Tensor,
    sublayer: AttentionSublayer,
    *,
    positions: torch.Tensor,
    representative_mask: torch.Tensor,
    dropout_p: float,
) -> torch.Tensor:
    """hidden [B, L, d] with the representatives at ``positions`` [m] updated by ``sublayer``.

    ``representative_mask`` [B, m] is False for blocks that are all padding: those
    representatives are never attended (their own rows are computed and ignored).
    """
    representatives = hidden.index_select(1, positions)  # [B, m, d]
    attend = dense_attend(representative_mask, dropout_p=dropout_p)
    updated = sublayer(representatives, attend)
    return hidden.index_copy(1, positions, updated)


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
