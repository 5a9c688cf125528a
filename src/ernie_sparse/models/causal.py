"""Causal language model: a decoder (the encoder with ``causal=True``) and an LM head.

Labels are already aligned with the logits: ``labels[:, i]`` is the token that
follows position ``i`` (the data builds them; :func:`shift_labels` does it for
plain sequences). Positions with label -100 or a False attention mask are left
out of the loss. Losses are in nats per token; :func:`nats_to_bits` turns a mean
loss into bits per dimension (pixels) or per byte.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .encoder import Encoder, as_bool_mask
from .heads import IGNORE_INDEX, TOKEN_INPUTS, TaskOutput, nll_loss


def nats_to_bits(nats: float | torch.Tensor) -> float | torch.Tensor:
    """A mean loss in nats per token -> bits per token (bits/dim, bits/byte)."""
    return nats / math.log(2)


def shift_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token labels for plain sequences: ``labels[:, i] = input_ids[:, i + 1]``;
    the last position and positions whose next token is padding get -100."""
    mask = as_bool_mask(attention_mask, input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE_INDEX)
    return labels


def lm_labels(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Labels with padding positions (mask False) ignored."""
    if labels.shape != attention_mask.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} must match input_ids {tuple(attention_mask.shape)}"
        )
    return labels.masked_fill(~attention_mask, IGNORE_INDEX)


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(summed NLL in nats, number of scored tokens): for token-weighted averages."""
    scored = labels != IGNORE_INDEX
    if not bool(scored.any()):
        return 0.0, 0
    nll = F.cross_entropy(logits[scored].float(), labels[scored], reduction="sum")
    return float(nll), int(scored.sum())


class CausalLM(nn.Module):
    """Decoder + next-token head; the output projection is the word embedding
    (``tie_embeddings``, the default) or a separate linear layer."""

    SEQUENCE_INPUTS = TOKEN_INPUTS
    LOGITS_SEQUENCE_DIM = 1

    def __init__(self, config: ModelConfig, *, tie_embeddings: bool = True) -> None:
        super().__init__()
        if not config.causal:
            raise ValueError(
                "CausalLM needs a causal config (causal=True): a bidirectional model "
                "would see the tokens it predicts"
            )
        self.config = config
        self.encoder = Encoder(config, final_representatives=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.output = None
        if not tie_embeddings:
            self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            nn.init.normal_(self.output.weight, std=config.initializer_range)

    @property
    def output_weight(self) -> torch.Tensor:
        """[V, d]: the word embedding when tied."""
        if self.output is None:
            return self.encoder.embeddings.word.weight
        return self.output.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TaskOutput:
        encoded = self.encoder(input_ids, attention_mask, token_type_ids)
        logits = F.linear(encoded.hidden_states, self.output_weight, self.bias)  # [B, n, V]
        if labels is not None:
            labels = lm_labels(labels, encoded.attention_mask)
        return TaskOutput(logits, nll_loss(logits, labels), encoded)
