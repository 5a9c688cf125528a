"""Sparse-Attention-Oriented Regularization (ERNIE-Sparse, section 3.3).

A second forward pass sees the input with its local (non-global) tokens rolled,
which shifts the sparse pattern relative to the content; the loss ties the two
predictions together with a symmetric KL:

    L = NLL(p1) + NLL(p2) + alpha * (KL(p1 || p2) + KL(p2 || p1)) / 2

With alpha = 0 the second pass is skipped and L = NLL(p1). R-Drop (the second
pass differs only by dropout) uses the same loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.config import SAORConfig
from ..models.heads import IGNORE_INDEX, nll_loss, sequence_inputs, upcast
from .roll import restore_token_logits, roll_batch, roll_local_tokens

__all__ = [
    "SAOROutput",
    "roll_local_tokens",
    "saor_forward",
    "saor_loss",
    "saor_terms",
    "symmetric_kl",
]


def _labelled_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[..., C] logits (shaped labels + [C], checked by nll_loss) -> [R, C], the rows
    whose label is not -100."""
    keep = labels.reshape(-1) != IGNORE_INDEX
    return logits.reshape(-1, logits.shape[-1])[keep]


def symmetric_kl(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """(KL(p1 || p2) + KL(p2 || p1)) / 2, summed over classes, mean over rows [R, C].
    Half-precision logits are upcast to float32; float32 and float64 stay as they are."""
    log_p1 = F.log_softmax(upcast(logits1), dim=-1)
    log_p2 = F.log_softmax(upcast(logits2), dim=-1)
    kl_12 = F.kl_div(log_p2, log_p1, log_target=True, reduction="batchmean")  # KL(p1 || p2)
    kl_21 = F.kl_div(log_p1, log_p2, log_target=True, reduction="batchmean")  # KL(p2 || p1)
    return (kl_12 + kl_21) / 2


def saor_terms(
    logits1: torch.Tensor,
    logits2: torch.Tensor | None,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(NLL(p1), NLL(p2), symmetric KL), batch means; with no second pass (NLL(p1), None, 0).

    Each NLL is the heads' own loss (``models.heads.nll_loss``), the one evaluation
    reports as ``loss``.
    """
    nll_first = nll_loss(logits1, labels)
    if logits2 is None:
        return nll_first, None, torch.zeros_like(nll_first)
    if logits2.shape != logits1.shape:
        raise ValueError(
            f"logits2 {tuple(logits2.shape)} must match logits1 {tuple(logits1.shape)}"
        )
    first, second = _labelled_rows(logits1, labels), _labelled_rows(logits2, labels)
    return nll_first, nll_loss(logits2, labels), symmetric_kl(first, second)


def saor_loss(
    logits1: torch.Tensor,
    logits2: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    alpha: float,
) -> torch.Tensor:
    """NLL(p1) + NLL(p2) + alpha * (KL(p1||p2) + KL(p2||p1)) / 2, each a batch mean.

    ``logits*`` are [..., C] and ``labels`` [...] (-100 rows are left out, as for masked
    LM or span QA). ``logits2=None`` is the single pass of alpha = 0: NLL(p1). Half
    precision is computed in float32; float32 and float64 in their own precision.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if logits2 is None and alpha != 0:
        raise ValueError(f"alpha={alpha} needs the second pass's logits2")
    nll_first, nll_second, kl = saor_terms(logits1, logits2, labels)
    if nll_second is None:
        return nll_first
    return (nll_first + nll_second) + alpha * kl


@dataclass
class SAOROutput:
    """One step's loss and what it is made of, per forward pass."""

    loss: torch.Tensor  # NLL(p1) [+ NLL(p2) + alpha * KL]: what training minimizes
    nll: torch.Tensor  # NLL per forward pass, the mean over passes (comparable with val loss)
    kl: torch.Tensor  # symmetric KL between the passes (0 with one pass)
    logits: torch.Tensor  # first pass (the unrolled input)
    second_logits: torch.Tensor | None  # second pass, aligned with the input's tokens
    nll_first: torch.Tensor | None = None  # NLL(p1), the unrolled input's
    nll_second: torch.Tensor | None = None  # NLL(p2), the second pass's; None with one pass

    @property
    def passes(self) -> int:
        return 1 if self.nll_second is None else 2


def saor_forward(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    config: SAORConfig | None = None,
    as_one_batch: bool = True,
) -> SAOROutput:
    """One training step's loss for any task model, with SAOR as ``config`` says
    (default: ``model.config.saor``).

    alpha = 0: one plain forward pass, loss = NLL(p1). Otherwise a second pass sees
    the input with its local tokens rolled by ``roll_tokens`` (mode ``roll``, every
    sequence the head declares in ``SEQUENCE_INPUTS``, along its token axis) or the
    same input under other dropout (mode ``dropout``, R-Drop); token-level logits of a
    rolled pass are rolled back so both passes score the same tokens.
    ``as_one_batch`` runs both passes as one batch of 2B (faster; twice the memory).
    """
    spec = getattr(model, "module", model)  # a DistributedDataParallel wrapper's model
    config = config if config is not None else spec.config.saor
    labels = batch["labels"]
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    if config.alpha == 0:
        logits = model(**inputs).logits
        nll, _, kl = saor_terms(logits, None, labels)
        return SAOROutput(nll, nll, kl, logits, None, nll_first=nll)
    rolled = config.mode == "roll"
    shift = config.roll_tokens
    num_global = spec.config.attention.num_global
    declared = sequence_inputs(spec)
    second = roll_batch(inputs, declared, shift=shift, num_global=num_global) if rolled else inputs
    if as_one_batch:
        joined = {
            key: None if value is None else torch.cat([value, second[key]])
            for key, value in inputs.items()
        }
        logits, second_logits = model(**joined).logits.chunk(2)
    else:
        logits, second_logits = model(**inputs).logits, model(**second).logits
    if rolled:
        second_logits = restore_token_logits(
            second_logits, inputs, declared, shift=shift, num_global=num_global
        )
    nll_first, nll_second, kl = saor_terms(logits, second_logits, labels)
    both = nll_first + nll_second
    return SAOROutput(
        both + config.alpha * kl,
        both / 2,
        kl,
        logits,
        second_logits,
        nll_first=nll_first,
        nll_second=nll_second,
    )
