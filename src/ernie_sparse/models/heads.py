"""Task models: an encoder plus a head; each returns logits, and a loss given labels.

Every model's loss is :func:`nll_loss` of its logits against ``labels`` (rows with
label -100 left out): the one definition of the loss, used by training (SAOR's
``saor_terms``) and by evaluation alike.

Each head declares its batch in ``SEQUENCE_INPUTS`` (a :class:`SequenceInputs`):
which keys hold token sequences (ids, padding mask and inputs shaped like the
ids), their layout ([B, n], or [B, C, n] for multiple choice), what ``labels``
index (one per example, one per token, or token positions such as a span's start
and end), and which logits dimension follows the tokens. Everything that moves or
batches tokens reads it: SAOR's roll (``objectives``), the word-order-shift attack
(``analysis``) and padding (``data.collate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .checks import require
from .config import ModelConfig
from .encoder import Encoder, EncoderOutput, as_bool_mask

IGNORE_INDEX = -100
LabelKind = Literal["example", "token", "position"]
LABEL_KINDS = ("example", "token", "position")


@dataclass(frozen=True)
class TokenSequence:
    """One token sequence of a batch: its ids, its padding mask (True = real token, a
    prefix of each row) and the other inputs shaped like the ids."""

    ids: str = "input_ids"
    mask: str = "attention_mask"
    per_token: tuple[str, ...] = ("token_type_ids",)

    @property
    def token_keys(self) -> tuple[str, ...]:
        """The keys whose entries follow the tokens (the ids first)."""
        return (self.ids, *self.per_token)


FIRST_SEQUENCE = TokenSequence()
SECOND_SEQUENCE = TokenSequence("input_ids_2", "attention_mask_2", ("token_type_ids_2",))


@dataclass(frozen=True)
class SequenceInputs:
    """A head's declaration of its batch, read by everything that moves or pads tokens.

    - ``sequences``: the token sequences (a two-tower model has two).
    - ``batch_dims``: the axes before the token axis: 1 for ids [B, n], 2 for
      [B, C, n] (multiple choice: C sequences per example). Tokens are always the
      last axis.
    - ``labels``: what ``labels`` holds. ``example``: one label per example (a class,
      a choice), never moved. ``token``: one per token of the first sequence, shaped
      like its ids (masked LM), moved with the tokens. ``position``: token indices into
      the first sequence, [B, k] (span QA's start and end; negative = none), remapped
      to where their tokens go.
    - ``logits_token_dim``: the logits dimension that follows the input tokens, or
      None for per-example logits.
    """

    sequences: tuple[TokenSequence, ...] = (FIRST_SEQUENCE,)
    batch_dims: int = 1
    labels: LabelKind = "example"
    logits_token_dim: int | None = None

    def __post_init__(self) -> None:
        if not self.sequences:
            raise ValueError("SequenceInputs needs at least one token sequence")
        if self.batch_dims not in (1, 2):
            raise ValueError(
                f"batch_dims must be 1 ([B, n]) or 2 ([B, C, n]), got {self.batch_dims}"
            )
        if self.labels not in LABEL_KINDS:
            raise ValueError(f"labels must be one of {', '.join(LABEL_KINDS)}, got {self.labels!r}")
        if self.labels == "position" and self.batch_dims != 1:
            raise ValueError("position labels index [B, n] sequences (batch_dims=1)")

    @property
    def layout(self) -> str:
        """The ids' shape in words: [B, n] or [B, C, n]."""
        return "[B, n]" if self.batch_dims == 1 else "[B, C, n]"

    @property
    def first(self) -> TokenSequence:
        """The sequence that token and position labels refer to."""
        return self.sequences[0]


PER_EXAMPLE = SequenceInputs()  # [B, n] ids, one label per example (classification)
PER_TOKEN = SequenceInputs(labels="token", logits_token_dim=1)  # masked / causal LM
TOKEN_INPUTS = PER_TOKEN  # the name models.causal uses (its labels are per token)


def sequence_inputs(model: nn.Module) -> SequenceInputs:
    """The declaration of ``model`` (or of the module a DistributedDataParallel wraps)."""
    spec = getattr(model, "module", model)
    inputs = getattr(spec, "SEQUENCE_INPUTS", None)
    if not isinstance(inputs, SequenceInputs):
        raise TypeError(
            f"{type(spec).__name__}.SEQUENCE_INPUTS must be a models.heads.SequenceInputs "
            f"(the declaration of its token inputs and labels), got {inputs!r}"
        )
    return inputs


@dataclass
class TaskOutput:
    logits: torch.Tensor  # per task: [B, C], [B, n, V], [B, 2, n], [B, choices]
    loss: torch.Tensor | None = None  # mean NLL over labelled rows when labels are given
    encoder: EncoderOutput | None = None  # the encoder's states (the first tower's for matching)


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (bf16, fp16) as float32 for the loss; others as they are
    (float64 stays float64)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def nll_loss(
    logits: torch.Tensor, labels: torch.Tensor | None, *, reduction: str = "mean"
) -> torch.Tensor | None:
    """Cross-entropy over the last logits dimension; label -100 rows are skipped.

    The one loss of every head, in training and evaluation. ``reduction="mean"``: mean
    over the labelled rows; ``"sum"``: their sum (for token-weighted averages).
    """
    if labels is None:
        return None
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not fit logits {tuple(logits.shape)} "
            f"(expected labels of shape {tuple(logits.shape[:-1])})"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
    classes = logits.shape[-1]
    valid = (labels == IGNORE_INDEX) | ((labels >= 0) & (labels < classes))

    def first_bad() -> str:
        bad = int(labels[~valid][0])
        return f"label {bad} is outside [0, {classes}) (use -100 to ignore a row)"

    require(valid, f"labels must be in [0, {classes}) or -100", first_bad)
    # ignore_index skips the unlabelled rows without selecting the others (a selection's
    # shape depends on the values, which torch.compile cannot trace).
    flat_logits = upcast(logits).reshape(-1, classes)  # [rows, C]
    return F.cross_entropy(
        flat_logits, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction
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

    SEQUENCE_INPUTS = PER_EXAMPLE

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

    SEQUENCE_INPUTS = SequenceInputs(sequences=(FIRST_SEQUENCE, SECOND_SEQUENCE))

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

    SEQUENCE_INPUTS = PER_TOKEN

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

    SEQUENCE_INPUTS = SequenceInputs(labels="position", logits_token_dim=2)

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

    SEQUENCE_INPUTS = SequenceInputs(batch_dims=2)

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


class CandidateChoice(MultipleChoice):
    """MultipleChoice whose examples have different numbers of candidates: ``choice_mask``
    [B, C] is False at filler choices, whose logits get the lowest value (never chosen,
    no probability, no loss)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        choice_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TaskOutput:
        out = super().forward(input_ids, attention_mask, token_type_ids)
        logits = self.mask_choices(out.logits, choice_mask)
        return TaskOutput(logits, nll_loss(logits, labels), out.encoder)

    @staticmethod
    def mask_choices(logits: torch.Tensor, choice_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, C] logits with the lowest value at filler choices (choice_mask False)."""
        if choice_mask is None:
            return logits
        return logits.masked_fill(~choice_mask.bool(), torch.finfo(logits.dtype).min)


TASKS: dict[str, type[nn.Module]] = {
    "classification": SequenceClassifier,
    "matching": TwoTowerMatcher,
    "mlm": MaskedLM,
    "span_qa": SpanQA,
    "multiple_choice": MultipleChoice,
}
