"""Reachability at block level: which blocks' tokens can influence which, after L layers.

Each layer's layout (any head) moves information from key blocks to query blocks; keys
of blocks that are all padding carry nothing. With HST, the representative token of
every real local block also meets the others densely after a hierarchical layer, and
(``distribute="block"``) hands what it learned to every token of its block. Cost:
one [nb, nb] x [nb, nb] boolean product per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DISTRIBUTE = ("representative", "block")
POOLINGS = ("mean", "max", "cls")


def block_knowledge(
    layouts: Sequence[torch.Tensor],
    *,
    real_blocks: torch.Tensor,
    local_blocks: slice | range | None = None,
    hierarchical: Sequence[bool] = (),
    distribute: str = "representative",
) -> tuple[torch.Tensor, torch.Tensor]:
    """What each block knows after all layers: ``(tokens, representatives)``, each
    [nb dst, nb src] bool (True: the block's non-representative tokens, or its
    representative, hold information from the tokens of block src).

    ``real_blocks`` [nb]: blocks holding a real key. ``local_blocks``: the blocks with a
    representative (None: no HST). ``hierarchical``: per layer, whether the
    representatives attend each other after it (empty: no layer does).
    """
    if distribute not in DISTRIBUTE:
        raise ValueError(f"distribute must be one of {DISTRIBUTE}, got {distribute!r}")
    hierarchical = list(hierarchical) or [False] * len(layouts)
    if len(hierarchical) != len(layouts):
        raise ValueError(f"{len(hierarchical)} hierarchical flags for {len(layouts)} layouts")
    if any(hierarchical) and local_blocks is None:
        raise ValueError("hierarchical layers need local_blocks (the blocks with a representative)")
    num_blocks = real_blocks.shape[0]
    device = layouts[0].device if layouts else real_blocks.device
    real = real_blocks.to(device=device, dtype=torch.bool)
    is_local = torch.zeros(num_blocks, dtype=torch.bool, device=device)
    if local_blocks is not None:
        is_local[local_blocks] = True
    pooled_from = is_local & real  # representatives that are keys of the hierarchical attention
    tokens = torch.eye(num_blocks, dtype=torch.bool, device=device)
    reps = torch.zeros_like(tokens)
    for layout, with_hst in zip(layouts, hierarchical, strict=True):
        if layout.shape[-2:] != (num_blocks, num_blocks):
            raise ValueError(f"layout {tuple(layout.shape)} does not cover {num_blocks} blocks")
        attends = (layout.any(0) & real[None, :]).float()  # [nb query, nb key]
        received = (attends @ (tokens | reps).float()) > 0  # [nb dst, nb src]
        tokens = tokens | received
        reps = reps | (received & is_local[:, None])
        if with_hst:
            pooled = reps[pooled_from].any(0)  # [nb src]: all real representatives, merged
            reps = reps | (pooled_from[:, None] & pooled[None, :])
            if distribute == "block":
                tokens = tokens | (pooled_from[:, None] & pooled[None, :])
    return tokens, reps


def block_reachability(
    layouts: Sequence[torch.Tensor],
    *,
    real_blocks: torch.Tensor,
    local_blocks: slice | range | None = None,
    hierarchical: Sequence[bool] = (),
    distribute: str = "representative",
) -> torch.Tensor:
    """[nb dst, nb src] bool: information in any (non-representative) token of block src
    reaches the tokens of block dst after all layers (arguments as ``block_knowledge``)."""
    tokens, _ = block_knowledge(
        layouts,
        real_blocks=real_blocks,
        local_blocks=local_blocks,
        hierarchical=hierarchical,
        distribute=distribute,
    )
    return tokens


def readout_sources(
    tokens: torch.Tensor,
    representatives: torch.Tensor,
    *,
    real_blocks: torch.Tensor,
    pooling: str,
    local_blocks: slice | range | None = None,
    first_block: int = 0,
) -> torch.Tensor:
    """[nb src] bool: the blocks whose tokens reach the pooled output.

    ``cls`` reads the tokens of ``first_block`` (the first input token's); ``mean`` /
    ``max`` read the representatives of the real local blocks with HST
    (``local_blocks`` given), else the tokens of every real block.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "cls":
        return tokens[first_block].clone()
    real = real_blocks.to(device=tokens.device, dtype=torch.bool)
    if local_blocks is None:
        return tokens[real].any(0)
    is_local = torch.zeros_like(real)
    is_local[local_blocks] = True
    return representatives[is_local & real].any(0)


def reachable_fraction(reach: torch.Tensor, real_blocks: torch.Tensor) -> float:
    """Share of (dst, src) pairs of real blocks with dst reached from src."""
    real = real_blocks.to(device=reach.device, dtype=torch.bool)
    pairs = reach[real][:, real]
    return float(pairs.float().mean()) if pairs.numel() else 0.0
