"""Task models: an encoder plus a head; each returns logits, and a loss given labels.

Every model's loss is the plain NLL of its logits against ``labels`` (rows with
label -100 left out), so SAOR (``ernie_sparse.objectives.saor_forward``) can run
any of them twice. Two class attributes tell SAOR how:

- ``SEQUENCE_INPUTS``: groups of batch keys ``(ids, mask, *same-shaped)`` whose
  local tokens the second pass rolls together.
- ``LOGITS_SEQUENCE_DIM``: the logits dimension that follows the input tokens
  (rolled back before comparing the passes), or None for per-sequence logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .encoder import Encoder, EncoderOutput, as_bool_mask

IGNORE_INDEX = -100
TOKEN_INPUTS = (("input_ids", "attention_mask", "token_type_ids"),)


@dataclass
class TaskOutput:
    logits: torch.Tensor  # per task: [B, C], [B, n, V], [B, 2, n], [B, choices]
    loss: torch.Tensor | None = None  # mean NLL over labelled rows when labels are given
    encoder: EncoderOutput | None = None  # the encoder's states (the first tower's for matching)


def nll_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Cross-entropy over the last logits dimension; label -100 rows are skipped."""
    if labels is None:
        return None
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not fit logits {tuple(logits.shape)} "
            f"(expected labels of shape {tuple(logits.shape[:-1])})"
        )
    classes = logits.shape[-1]
    valid = (labels == IGNORE_INDEX) | ((labels >= 0) & (labels < classes))
    if not bool(valid.all()):
        bad = labels[~valid][0]
        raise ValueError(f"label {int(bad)} is outside [0, {classes}) (use -100 to ignore a row)")
    return F.cross_entropy(
        logits.reshape(-1, classes).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


class ClassifierHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> dense (BERT/RoBERTa style)."""

    def __init__(self, config: ModelConfig, in_features: int, num_labels: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.output = nn.Linear(config.hidden_size, num_labels)
        self.dropout = nn.Dropout(config.dropout)
        for linear in (self.dense, self.output):
            nn.init.normal_(linear.weight, std=config.initializer_range)
            nn.init.zeros_(linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.dense(self.dropout(features)))
        return self.output(self.dropout(hidden))


class SequenceClassifier(nn.Module):
    """Pooled encoder state -> classes (LRA ListOps/Text/Image/Pathfinder, documents)."""

    SEQUENCE_INPUTS = TOKEN_INPUTS
    LOGITS_SEQUENCE_DIM = None

    def __init__(self, config: ModelConfig, num_labels: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.classifier = ClassifierHead(config, config.hidden_size, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TaskOutput:
        encoded = self.encoder(input_ids, attention_mask, token_type_ids)
        logits = self.classifier(encoded.pooled)  # [B, C]
        return TaskOutput(logits, nll_loss(logits, labels), encoded)


class TwoTowerMatcher(nn.Module):
    """LRA Retrieval: one shared encoder on both documents, a classifier over
    [u, v, u * v, u - v] of their pooled states."""

    SEQUENCE_INPUTS = (
        ("input_ids", "attention_mask", "token_type_ids"),
        ("input_ids_2", "attention_mask_2", "token_type_ids_2"),
    )
    LOGITS_SEQUENCE_DIM = None

    def __init__(self, config: ModelConfig, num_labels: int = 2) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.classifier = ClassifierHead(config, 4 * config.hidden_size, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        input_ids_2: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attention_mask_2: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TaskOutput:
        if input_ids.shape[0] != input_ids_2.shape[0]:
            raise ValueError(
                f"input_ids and input_ids_2 need one batch size, got "
                f"{input_ids.shape[0]} and {input_ids_2.shape[0]}"
            )
        ids, mask = _stack_padded(
            [input_ids, input_ids_2],
            [as_bool_mask(attention_mask, input_ids), as_bool_mask(attention_mask_2, input_ids_2)],
        )
        encoded = self.encoder(ids, mask)  # both towers as one batch of 2B
        first, second = encoded.pooled.chunk(2)
        features = torch.cat([first, second, first * second, first - second], dim=-1)
        logits = self.classifier(features)  # [B, C]
        return TaskOutput(logits, nll_loss(logits, labels), encoded)


def _stack_padded(
    ids: list[torch.Tensor], masks: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate [B, n_i] batches along B, right-padding to the longest (masked out)."""
    length = max(x.shape[1] for x in ids)
    ids = [F.pad(x, (0, length - x.shape[1])) for x in ids]
    masks = [F.pad(m, (0, length - m.shape[1]), value=False) for m in masks]
    return torch.cat(ids), torch.cat(masks)


class MaskedLM(nn.Module):
    """Masked language model; the output projection is tied to the word embeddings."""

    SEQUENCE_INPUTS = TOKEN_INPUTS
    LOGITS_SEQUENCE_DIM = 1

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, final_representatives=False)
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        nn.init.normal_(self.transform.weight, std=config.initializer_range)
        nn.init.zeros_(self.transform.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TaskOutput:
        encoded = self.encoder(input_ids, attention_mask, token_type_ids)
        hidden = self.norm(F.gelu(self.transform(encoded.hidden_states)))
        logits = F.linear(hidden, self.encoder.embeddings.word.weight, self.bias)  # [B, n, V]
        return TaskOutput(logits, nll_loss(logits, labels), encoded)


class SpanQA(nn.Module):
    """Extractive QA: start and end logits over the input tokens.

    ``labels`` is [B, 2] (start, end token index; -100 for no answer in this window).
    Padding positions get the lowest logit, so they are never predicted.
    """

    SEQUENCE_INPUTS = TOKEN_INPUTS
    LOGITS_SEQUENCE_DIM = 2

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, final_representatives=False)
        self.span = nn.Linear(config.hidden_size, 2)
        nn.init.normal_(self.span.weight, std=config.initializer_range)
        nn.init.zeros_(self.span.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TaskOutput:
        encoded = self.encoder(input_ids, attention_mask, token_type_ids)
        logits = self.span(encoded.hidden_states).transpose(1, 2)  # [B, 2, n]
        lowest = torch.finfo(logits.dtype).min
        logits = logits.masked_fill(~encoded.attention_mask[:, None, :], lowest)
        return TaskOutput(logits, nll_loss(logits, labels), encoded)


class MultipleChoice(nn.Module):
    """Inputs [B, choices, n]; one score per choice from its pooled state (WikiHop)."""

    SEQUENCE_INPUTS = TOKEN_INPUTS
    LOGITS_SEQUENCE_DIM = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.classifier = ClassifierHead(config, config.hidden_size, 1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TaskOutput:
        if input_ids.dim() != 3:
            raise ValueError(f"input_ids must be [B, choices, n], got {tuple(input_ids.shape)}")
        batch, choices, length = input_ids.shape

        def flat(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.reshape(batch * choices, length)

        encoded = self.encoder(flat(input_ids), flat(attention_mask), flat(token_type_ids))
        logits = self.classifier(encoded.pooled).view(batch, choices)  # [B, choices]
        return TaskOutput(logits, nll_loss(logits, labels), encoded)


TASKS: dict[str, type[nn.Module]] = {
    "classification": SequenceClassifier,
    "matching": TwoTowerMatcher,
    "mlm": MaskedLM,
    "span_qa": SpanQA,
    "multiple_choice": MultipleChoice,
}
