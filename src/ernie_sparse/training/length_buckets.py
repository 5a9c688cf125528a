"""Pad batches to a few fixed lengths, so that a compiled model compiles once per length.

``torch.compile`` specializes a graph to its input shapes; batches padded to their own
longest sequence would compile anew for almost every batch. Padding each batch up to
the shortest of a few bucket lengths (doubling up to the model's longest input) bounds
that to one compilation per bucket. Padding changes no result: padded keys are masked
and padded labels ignored (the models' padding-invariance tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..models.heads import IGNORE_INDEX, SequenceInputs

Batch = dict[str, torch.Tensor]


def bucket_lengths(longest: int, count: int, *, multiple: int = 1) -> tuple[int, ...]:
    """``count`` lengths that double up to ``longest`` (its own bucket), each rounded up to
    ``multiple`` (the attention block) and none above ``longest``: 4096, 3 -> 1024, 2048, 4096."""
    if count < 1 or longest < 1 or multiple < 1:
        raise ValueError(
            f"bucket_lengths needs count, longest and multiple >= 1, got {count}, {longest}, "
            f"{multiple}"
        )
    lengths = set()
    for halvings in range(count):
        length = math.ceil(longest / 2**halvings)
        lengths.add(min(longest, math.ceil(length / multiple) * multiple))
    return tuple(sorted(lengths))


def _padded(tensor: torch.Tensor, length: int, value: int | bool) -> torch.Tensor:
    """``tensor`` with its last (token) axis padded at the end to ``length``."""
    return F.pad(tensor, (0, length - tensor.shape[-1]), value=value)


def pad_to_bucket(batch: Mapping[str, torch.Tensor], declared: SequenceInputs, buckets) -> Batch:
    """Each declared token sequence padded at the end to its bucket; masks with False,
    ids and the inputs shaped like them with 0, token labels with -100."""
    padded = dict(batch)
    for sequence in declared.sequences:
        if sequence.ids not in batch:
            continue
        length = batch[sequence.ids].shape[-1]
        target = next((bucket for bucket in buckets if bucket >= length), None)
        if target is None:
            raise ValueError(
                f"a batch's {sequence.ids} holds {length} tokens, more than the longest "
                f"length bucket ({buckets[-1]})"
            )
        for key in sequence.token_keys:
            if batch.get(key) is not None:
                padded[key] = _padded(batch[key], target, 0)
        if batch.get(sequence.mask) is not None:
            padded[sequence.mask] = _padded(batch[sequence.mask], target, False)
        if sequence == declared.first and declared.labels == "token" and "labels" in batch:
            padded["labels"] = _padded(batch["labels"], target, IGNORE_INDEX)
    return padded


Collate = Callable[[Sequence[dict], torch.Generator], Batch]


def bucketed(collate: Collate, declared: SequenceInputs, buckets: Sequence[int]) -> Collate:
    """``collate`` whose batches are padded to their length bucket."""

    def collate_to_bucket(examples: Sequence[dict], generator: torch.Generator) -> Batch:
        return pad_to_bucket(collate(examples, generator), declared, tuple(buckets))

    return collate_to_bucket
