"""Word Order Shift Attack (ERNIE-Sparse section 5.2, Table 7).

The adversarial version of a dataset rolls each input's local tokens right by k
(global tokens and padding stay), exactly like SAOR's second pass. A dense
Transformer with learned positions would see a different sentence too, but a
sparse one additionally sees its blocks cut in other places; the attack measures
how much a model depends on where the pattern's blocks fall.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..objectives.saor import roll_local_tokens

TOKEN_KEYS = ("input_ids", "token_type_ids")


def shift_positions(
    positions: torch.Tensor, lengths: torch.Tensor, *, shift: int, num_global: int
) -> torch.Tensor:
    """Where token index ``positions`` [B, ...] moves when the local tokens of sequences of
    real ``lengths`` [B] roll right by ``shift``. Negative entries (-100: no answer) stay."""
    local_count = (lengths - num_global).clamp_min(1).view(-1, *([1] * (positions.dim() - 1)))
    is_local = (positions >= num_global) & (positions < lengths.view_as(local_count))
    moved = num_global + (positions - num_global + shift) % local_count
    return torch.where(is_local, moved, positions)


@dataclass(frozen=True)
class WordOrderShift:
    """Batch transform for evaluation: ``WordOrderShift(shift=8, num_global=128)(batch)``.

    Rolls ``input_ids`` and ``token_type_ids`` (and ``*_2`` for two-tower batches)
    within each sequence's real length. Labels follow their tokens: token labels
    shaped like ``input_ids`` roll with them; ``span_labels=True`` treats ``labels``
    [B, 2] as (start, end) indices and moves them. Batches are [B, n] or a single
    example [n].
    """

    shift: int
    num_global: int = 0
    span_labels: bool = False

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        single = batch["input_ids"].dim() == 1
        out = {k: _add_batch_dim(v) if single else v for k, v in batch.items()}
        for suffix in ("", "_2"):
            if f"input_ids{suffix}" in out:
                self._roll_group(out, suffix)
        return {k: _drop_batch_dim(v) if single else v for k, v in out.items()}

    def _roll_group(self, out: dict[str, torch.Tensor], suffix: str) -> None:
        ids = out[f"input_ids{suffix}"]
        mask = out.get(f"attention_mask{suffix}")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        keys = [key + suffix for key in TOKEN_KEYS]
        labels = out.get("labels")
        token_labels = suffix == "" and labels is not None and labels.shape == ids.shape
        if token_labels and not self.span_labels:
            keys.append("labels")
        for key in keys:
            if key in out:
                out[key] = roll_local_tokens(
                    out[key], shift=self.shift, num_global=self.num_global, attention_mask=mask
                )
        if self.span_labels and suffix == "":
            out["labels"] = shift_positions(
                labels, mask.sum(dim=1), shift=self.shift, num_global=self.num_global
            )


def _add_batch_dim(value: object) -> object:
    return value[None] if isinstance(value, torch.Tensor) else value


def _drop_batch_dim(value: object) -> object:
    return value[0] if isinstance(value, torch.Tensor) else value
