"""How far information travels in an encoder: block reachability of its frozen layouts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..patterns.reachability import block_knowledge, reachable_fraction, readout_sources
from .encoder import Encoder
from .structure import internal_key_mask, representative_mask


@dataclass(frozen=True)
class Reachability:
    """Block-level reachability of an encoder on inputs of one length."""

    layers: int  # sparse layers
    fraction: float  # share of (dst, src) pairs of token blocks connected, HST route included
    fraction_without_hst: float  # the same with the hierarchical attention left out
    readout_blocks: int  # token blocks whose tokens reach the pooled output
    token_blocks: int  # blocks holding input tokens
    source_token: int | None = None  # the input token asked about, if any
    source_reaches_readout: bool | None = None  # whether its block reaches the readout
    note: str = ""  # e.g. why no layout was analysed

    @property
    def readout_fraction(self) -> float:
        """Share of the token blocks whose tokens reach the readout."""
        return self.readout_blocks / self.token_blocks

    def describe(self) -> str:
        layers = f"{self.layers} layer{'s' if self.layers != 1 else ''}"
        text = (
            f"reachability over {layers}: {self.fraction:.0%} of block pairs "
            f"(HST route off: {self.fraction_without_hst:.0%}); "
            f"readout sees {self.readout_blocks} of {self.token_blocks} blocks"
        )
        if self.source_token is not None:
            answer = "yes" if self.source_reaches_readout else "no"
            text += f"; token {self.source_token} -> readout: {answer}"
        return f"{text} ({self.note})" if self.note else text


def encoder_reachability(
    encoder: Encoder, input_len: int, *, source_token: int | None = None
) -> Reachability:
    """Reachability of ``encoder``'s frozen (evaluation) layouts, all heads and random
    blocks included, on an unpadded input of ``input_len`` tokens."""
    if source_token is not None and not 0 <= source_token < input_len:
        raise ValueError(f"source_token must be in [0, {input_len}), got {source_token}")
    config = encoder.config
    plan = encoder.plan(input_len)
    token_block = plan.token_positions // plan.block_size  # [n] internal block of each token
    has_tokens = torch.zeros(plan.num_blocks, dtype=torch.bool)
    has_tokens[token_block] = True
    if encoder._layout_free():
        kind = "combiner" if config.attention.kind == "combiner" else "causal dense"
        return Reachability(
            layers=config.num_layers,
            fraction=1.0,
            fraction_without_hst=1.0,
            readout_blocks=int(has_tokens.sum()),
            token_blocks=int(has_tokens.sum()),
            source_token=source_token,
            source_reaches_readout=None if source_token is None else True,
            note=f"{kind} attention has no block layout: reported as dense",
        )
    mask = torch.ones(1, input_len, dtype=torch.bool)
    rep_mask = representative_mask(plan, mask) if plan.hst else None
    real = internal_key_mask(plan, mask, rep_mask).view(plan.num_blocks, -1).any(1)  # [nb]
    local = range(plan.global_blocks, plan.global_blocks + plan.local_blocks) if plan.hst else None
    layouts = [keyed.tensor for keyed in encoder.layouts.for_layers(plan, training=False)]
    hierarchical = [layer.has_hierarchical for layer in encoder.layers]
    common = dict(real_blocks=real, local_blocks=local, distribute=config.hst.distribute)
    tokens, reps = block_knowledge(layouts, hierarchical=hierarchical, **common)
    without_hst, _ = block_knowledge(layouts, **common)
    readout = readout_sources(
        tokens,
        reps,
        real_blocks=real,
        pooling=config.hst.pooling,
        local_blocks=local,
        first_block=int(token_block[0]),
    )
    return Reachability(
        layers=config.num_layers,
        fraction=reachable_fraction(tokens, has_tokens),
        fraction_without_hst=reachable_fraction(without_hst, has_tokens),
        readout_blocks=int((readout & has_tokens).sum()),
        token_blocks=int(has_tokens.sum()),
        source_token=source_token,
        source_reaches_readout=(
            None if source_token is None else bool(readout[token_block[source_token]])
        ),
    )
