"""Masked-language-model inputs (BERT/RoBERTa): choose 15% of the maskable tokens;
of those, 80% become the mask token, 10% a random token, 10% stay as they are.

Every draw comes from the passed ``torch.Generator``, so the same generator state
gives the same masks (a resumed run masks its batches as the uninterrupted one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # the label the models' losses skip (models.heads.IGNORE_INDEX)


@dataclass(frozen=True)
class MaskingSpec:
    """What masking needs to know about the vocabulary, and the rates."""

    mask_id: int  # the <mask> / [MASK] token
    vocab_size: int  # random replacements are drawn uniformly from [0, vocab_size)
    probability: float = 0.15  # share of maskable tokens chosen for prediction
    mask_fraction: float = 0.8  # of the chosen: replaced by the mask token
    random_fraction: float = 0.1  # of the chosen: replaced by a random token (the rest kept)

    def __post_init__(self) -> None:
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"masking probability must be in (0, 1], got {self.probability}")
        if min(self.mask_fraction, self.random_fraction) < 0 or (
            self.mask_fraction + self.random_fraction > 1.0
        ):
            raise ValueError(
                f"mask_fraction={self.mask_fraction} and random_fraction={self.random_fraction} "
                "must be >= 0 and sum to at most 1"
            )
        if not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask_id={self.mask_id} is outside [0, {self.vocab_size})")


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    spec: MaskingSpec,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked ids, labels) for ids [B, n]; ``maskable`` [B, n] is False at special tokens
    and padding, which are never chosen. Labels hold the original id at chosen positions
    and -100 elsewhere.

    Each maskable token is chosen independently with ``spec.probability``; a sequence
    whose draw chose nothing gets one chosen token (its highest draw), so every
    sequence with a maskable token contributes to the loss.
    """
    if input_ids.shape != maskable.shape:
        raise ValueError(
            f"maskable {tuple(maskable.shape)} must match input_ids {tuple(input_ids.shape)}"
        )
    draws = torch.rand(input_ids.shape, generator=generator)
    draws = draws.masked_fill(~maskable, 2.0)  # never below the probability
    chosen = draws < spec.probability
    empty = ~chosen.any(dim=1) & maskable.any(dim=1)  # [B]
    lowest = draws.argmin(dim=1)  # [B] a maskable position where any exists
    chosen[empty, lowest[empty]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(spec.vocab_size, input_ids.shape, generator=generator)
    to_mask = chosen & (action < spec.mask_fraction)
    to_random = chosen & ~to_mask & (action < spec.mask_fraction + spec.random_fraction)
    masked = input_ids.masked_fill(to_mask, spec.mask_id)
    masked = torch.where(to_random, random_ids.to(input_ids.dtype), masked)
    return masked, labels
