"""Rolling a batch's local tokens, as every head declares them (``SEQUENCE_INPUTS``).

SAOR's second pass (section 3.3) and the word-order-shift attack (section 5.2) are
the same operation: each sequence's local (non-global) tokens roll right by k
within its real length; global tokens and padding stay. What moves with the tokens
comes from the head's :class:`~ernie_sparse.models.heads.SequenceInputs`:

- every declared sequence (ids and the inputs shaped like them) rolls along its
  token axis, the last one, also for multiple choice's [B, C, n];
- token labels (masked LM) roll with their tokens; position labels (span QA's start
  and end) are remapped to where their tokens went; per-example labels stay;
- token-level logits of a rolled batch roll back with :func:`restore_token_logits`,
  so they score the original token order (SAOR's KL, span QA's answer text).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..models.heads import SequenceInputs, sequence_inputs


def _check_padding_mask(attention_mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != tuple(shape[:2]):
        raise ValueError(
            f"attention_mask must be bool [B, N] = {tuple(shape[:2])} (True = real token), "
            f"got {attention_mask.dtype} {tuple(attention_mask.shape)}"
        )
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask, positions[None, :] < lengths[:, None]):
        raise ValueError("attention_mask must mark a prefix of real tokens (padding at the end)")
    return lengths


def roll_local_tokens(
    tokens: torch.Tensor,
    *,
    shift: int,
    num_global: int = 0,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Roll each sequence's local tokens right by ``shift`` within its real length.

    ``tokens`` is [B, N] (ids) or [B, N, ...] (embeddings). The first ``num_global``
    positions and the padding after each sequence's real length stay where they are:
    with x = (g, t1, ..., t8, pad) and shift 2 the result is (g, t7, t8, t1, ..., t6, pad),
    the paper's x'. A negative shift rolls left. Also the word-order-shift attack (5.2).
    """
    if tokens.dim() < 2:
        raise ValueError(f"tokens must be [B, N] or [B, N, ...], got {tuple(tokens.shape)}")
    batch, seq_len = tokens.shape[:2]
    if not 0 <= num_global <= seq_len:
        raise ValueError(f"num_global={num_global} must be in [0, N={seq_len}]")
    if attention_mask is None:
        lengths = torch.full((batch,), seq_len, device=tokens.device)
    else:
        lengths = _check_padding_mask(attention_mask.to(tokens.device), tokens.shape)
    positions = torch.arange(seq_len, device=tokens.device)[None, :]  # [1, N]
    local_count = (lengths - num_global).clamp_min(1)[:, None]  # [B, 1]
    is_local = (positions >= num_global) & (positions < lengths[:, None])
    source = num_global + (positions - num_global - shift) % local_count  # [B, N]
    source = torch.where(is_local, source, positions)
    index = source.view(batch, seq_len, *([1] * (tokens.dim() - 2))).expand_as(tokens)
    return tokens.gather(1, index)


def shift_positions(
    positions: torch.Tensor, lengths: torch.Tensor, *, shift: int, num_global: int
) -> torch.Tensor:
    """Where token index ``positions`` [B, ...] moves when the local tokens of sequences of
    real ``lengths`` [B] roll right by ``shift``. Negative entries (-100: no answer) stay."""
    local_count = (lengths - num_global).clamp_min(1).view(-1, *([1] * (positions.dim() - 1)))
    is_local = (positions >= num_global) & (positions < lengths.view_as(local_count))
    moved = num_global + (positions - num_global + shift) % local_count
    return torch.where(is_local, moved, positions)


def _roll_rows(
    tokens: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    batch_dims: int,
    shift: int,
    num_global: int,
) -> torch.Tensor:
    """roll_local_tokens along the token axis of [*lead, n, ...] (``batch_dims`` leading
    axes: [B, n], [B, C, n]); every leading row is one sequence."""
    lead, length = tokens.shape[:batch_dims], tokens.shape[batch_dims]
    rows = tokens.reshape(-1, *tokens.shape[batch_dims:])  # [R, n, ...]
    row_mask = None if mask is None else mask.reshape(-1, length).bool()  # [R, n]
    rolled = roll_local_tokens(rows, shift=shift, num_global=num_global, attention_mask=row_mask)
    return rolled.view(*lead, *tokens.shape[batch_dims:])


def _check_ids(ids: torch.Tensor, key: str, inputs: SequenceInputs) -> None:
    if ids.dim() != inputs.batch_dims + 1:
        raise ValueError(
            f"{key} must be {inputs.layout} for this head (tokens on the last axis), "
            f"got {tuple(ids.shape)}"
        )


def roll_batch(
    batch: Mapping[str, Any], inputs: SequenceInputs, *, shift: int, num_global: int
) -> dict[str, Any]:
    """``batch`` with every declared sequence's local tokens rolled right by ``shift``;
    labels follow their tokens as ``inputs.labels`` says (see the module docstring).
    Keys the declaration does not name (and absent ones) are left as they are."""
    out = dict(batch)
    for number, sequence in enumerate(inputs.sequences):
        ids = batch.get(sequence.ids)
        if ids is None:
            continue
        _check_ids(ids, sequence.ids, inputs)
        mask = batch.get(sequence.mask)
        keys = list(sequence.token_keys)
        labels = batch.get("labels") if number == 0 else None
        if labels is not None and inputs.labels == "token":
            if labels.shape != ids.shape:
                raise ValueError(
                    f"token labels {tuple(labels.shape)} must be shaped like "
                    f"{sequence.ids} {tuple(ids.shape)}"
                )
            keys.append("labels")
        for key in keys:
            if batch.get(key) is not None:
                out[key] = _roll_rows(
                    batch[key], mask, batch_dims=inputs.batch_dims, shift=shift,
                    num_global=num_global,
                )  # fmt: skip
        if labels is not None and inputs.labels == "position":
            out["labels"] = _move_positions(labels, ids, mask, shift=shift, num_global=num_global)
    return out


def _move_positions(
    labels: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    shift: int,
    num_global: int,
) -> torch.Tensor:
    """Position labels [B, k] (token indices into ids [B, n]) -> where those tokens went."""
    if labels.dim() < 1 or labels.shape[0] != ids.shape[0]:
        raise ValueError(
            f"position labels {tuple(labels.shape)} need one row per sequence of {tuple(ids.shape)}"
        )
    lengths = (
        torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
        if mask is None
        else mask.bool().sum(dim=-1)
    )
    return shift_positions(labels, lengths.to(labels.device), shift=shift, num_global=num_global)


def restore_token_logits(
    logits: torch.Tensor,
    batch: Mapping[str, Any],
    inputs: SequenceInputs,
    *,
    shift: int,
    num_global: int,
) -> torch.Tensor:
    """Token-level logits of a batch rolled by ``shift``, rolled back to the original
    token order (the first sequence's); per-example logits are returned as they are."""
    dim = inputs.logits_token_dim
    if dim is None:
        return logits
    mask = batch.get(inputs.first.mask)
    moved = logits.movedim(dim, inputs.batch_dims)  # [*lead, n, ...]
    back = _roll_rows(
        moved, mask, batch_dims=inputs.batch_dims, shift=-shift, num_global=num_global
    )
    return back.movedim(inputs.batch_dims, dim)


@dataclass(frozen=True)
class TokenRoll:
    """A batch transform: roll the local tokens right by ``shift`` (labels following),
    as the head's declaration ``inputs`` says; ``for_model(model)`` takes the model's.

    Batches are as the head takes them, or a single example (no batch axis).
    ``restore_logits(logits, rolled_batch)`` rolls token-level logits back.
    """

    shift: int
    num_global: int = 0
    inputs: SequenceInputs | None = None  # the head's declaration; None = not bound yet

    def for_model(self, model: nn.Module) -> TokenRoll:
        """This roll for ``model``'s declared inputs (a DDP wrapper's model's)."""
        return replace(self, inputs=sequence_inputs(model))

    def _declared(self) -> SequenceInputs:
        if self.inputs is None:
            name = type(self).__name__
            raise ValueError(
                f"{name} needs the head's declaration of its inputs: {name}(..., "
                f"inputs=Head.SEQUENCE_INPUTS) or {name}(...).for_model(model)"
            )
        return self.inputs

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        inputs = self._declared()
        first = batch[inputs.first.ids]
        single = first.dim() == inputs.batch_dims
        if single:
            batch = {k: _add_batch_dim(v) for k, v in batch.items()}
        out = roll_batch(batch, inputs, shift=self.shift, num_global=self.num_global)
        return {k: _drop_batch_dim(v) for k, v in out.items()} if single else out

    def restore_logits(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """The model's logits on ``batch`` (this roll's output) in the original token order."""
        return restore_token_logits(
            logits, batch, self._declared(), shift=self.shift, num_global=self.num_global
        )


def bind_to_model(transform: Any, model: nn.Module) -> Any:
    """A :class:`TokenRoll` bound to ``model``'s declaration; other transforms as they are."""
    return transform.for_model(model) if isinstance(transform, TokenRoll) else transform


def _add_batch_dim(value: object) -> object:
    return value[None] if isinstance(value, torch.Tensor) else value


def _drop_batch_dim(value: object) -> object:
    return value[0] if isinstance(value, torch.Tensor) else value
