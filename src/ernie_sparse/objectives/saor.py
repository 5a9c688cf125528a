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


def _flatten(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    """[..., C] logits and [...] labels -> the rows whose label is not ignored."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} + [classes]"
        )
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    return logits[keep], labels[keep]


def symmetric_kl(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """(KL(p1 || p2) + KL(p2 || p1)) / 2, summed over classes, mean over rows [R, C]."""
    log_p1 = F.log_softmax(logits1.float(), dim=-1)
    log_p2 = F.log_softmax(logits2.float(), dim=-1)
    kl_12 = F.kl_div(log_p2, log_p1, log_target=True, reduction="batchmean")  # KL(p1 || p2)
    kl_21 = F.kl_div(log_p1, log_p2, log_target=True, reduction="batchmean")  # KL(p2 || p1)
    return (kl_12 + kl_21) / 2


def saor_terms(
    logits1: torch.Tensor,
    logits2: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL(p1) + NLL(p2), symmetric KL), batch means; with no second pass (NLL(p1), 0)."""
    first, kept = _flatten(logits1, labels, ignore_index)
    nll = F.cross_entropy(first.float(), kept)
    if logits2 is None:
        return nll, torch.zeros_like(nll)
    if logits2.shape != logits1.shape:
        raise ValueError(
            f"logits2 {tuple(logits2.shape)} must match logits1 {tuple(logits1.shape)}"
        )
    second, _ = _flatten(logits2, labels, ignore_index)
    return nll + F.cross_entropy(second.float(), kept), symmetric_kl(first, second)


def saor_loss(
    logits1: torch.Tensor,
    logits2: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    alpha: float,
    ignore_index: int = -100,
) -> torch.Tensor:
    """NLL(p1) + NLL(p2) + alpha * (KL(p1||p2) + KL(p2||p1)) / 2, each a batch mean.

    ``logits*`` are [..., C] and ``labels`` [...] (``ignore_index`` rows are left out, as
    for masked LM or span QA). ``logits2=None`` is the single pass of alpha = 0: NLL(p1).
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if logits2 is None and alpha != 0:
        raise ValueError(f"alpha={alpha} needs the second pass's logits2")
    nll, kl = saor_terms(logits1, logits2, labels, ignore_index=ignore_index)
    return nll + alpha * kl if logits2 is not None else nll


@dataclass
class SAOROutput:
    loss: torch.Tensor  # NLL(p1) [+ NLL(p2) + alpha * KL]
    nll: torch.Tensor  # NLL(p1) + NLL(p2), or NLL(p1) with one pass
    kl: torch.Tensor  # symmetric KL between the passes (0 with one pass)
    logits: torch.Tensor  # first pass (the unrolled input)
    second_logits: torch.Tensor | None  # second pass, aligned with the input's tokens


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
    the input with its local tokens rolled by ``roll_tokens`` (mode ``roll``) or
    the same input under other dropout (mode ``dropout``, R-Drop); token-level
    logits of a rolled pass are rolled back so both passes score the same tokens.
    ``as_one_batch`` runs both passes as one batch of 2B (faster; twice the memory).
    """
    spec = getattr(model, "module", model)  # a DistributedDataParallel wrapper's model
    config = config if config is not None else spec.config.saor
    labels = batch["labels"]
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    if config.alpha == 0:
        logits = model(**inputs).logits
        nll, kl = saor_terms(logits, None, labels)
        return SAOROutput(nll, nll, kl, logits, None)
    rolled = config.mode == "roll"
    shift = config.roll_tokens
    num_global = spec.config.num_global
    second = _roll_inputs(spec, inputs, shift=shift, num_global=num_global) if rolled else inputs
    if as_one_batch:
        joined = {
            key: None if value is None else torch.cat([value, second[key]])
            for key, value in inputs.items()
        }
        logits, second_logits = model(**joined).logits.chunk(2)
    else:
        logits, second_logits = model(**inputs).logits, model(**second).logits
    if rolled and spec.LOGITS_SEQUENCE_DIM is not None:
        second_logits = _roll_logits_back(spec, second_logits, inputs, shift, num_global)
    nll, kl = saor_terms(logits, second_logits, labels)
    return SAOROutput(nll + config.alpha * kl, nll, kl, logits, second_logits)


def _roll_inputs(
    model: nn.Module, inputs: dict[str, torch.Tensor], *, shift: int, num_global: int
) -> dict[str, torch.Tensor]:
    """The batch with each sequence group's local tokens rolled right by ``shift``."""
    rolled = dict(inputs)
    for ids_key, mask_key, *others in model.SEQUENCE_INPUTS:
        mask = inputs.get(mask_key)
        for key in (ids_key, *others):
            if key in inputs:
                rolled[key] = _roll_flat(inputs[key], mask, shift=shift, num_global=num_global)
    return rolled


def _roll_flat(
    tokens: torch.Tensor, mask: torch.Tensor | None, *, shift: int, num_global: int
) -> torch.Tensor:
    """roll_local_tokens over the last dimension of [..., n] ids (e.g. [B, choices, n])."""
    length = tokens.shape[-1]
    flat_mask = None if mask is None else mask.reshape(-1, length).bool()
    flat = roll_local_tokens(
        tokens.reshape(-1, length), shift=shift, num_global=num_global, attention_mask=flat_mask
    )
    return flat.view(tokens.shape)


def _roll_logits_back(
    model: nn.Module,
    logits: torch.Tensor,
    inputs: dict[str, torch.Tensor],
    shift: int,
    num_global: int,
) -> torch.Tensor:
    """Undo the roll on the token dimension of the second pass's logits."""
    _, mask_key, *_ = model.SEQUENCE_INPUTS[0]
    mask = inputs.get(mask_key)
    token_dim = model.LOGITS_SEQUENCE_DIM
    moved = logits.movedim(token_dim, 1)  # [B, n, ...]
    flat_mask = None if mask is None else mask.bool()
    back = roll_local_tokens(moved, shift=-shift, num_global=num_global, attention_mask=flat_mask)
    return back.movedim(1, token_dim)
