"""Transformer sublayers: multi-head attention (any attention function) and feed-forward."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

# (q, k, v) [B, H, N, Dh] -> context [B, H, N, Dh]
AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class AttentionSublayer(nn.Module):
    """Residual multi-head attention; *how* queries meet keys is passed in.

    The same weights serve the sparse attention of a layer and, with HST's
    shared-weights option, the dense attention among representatives.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.pre_norm = config.layer_norm == "pre"
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: torch.Tensor, attend: AttendFn) -> torch.Tensor:
        return self.combine(hidden, self.update(hidden, attend))

    def update(self, hidden: torch.Tensor, attend: AttendFn) -> torch.Tensor:
        """The attention's contribution [B, L, d], before the residual sum."""
        batch, length, width = hidden.shape
        x = self.norm(hidden) if self.pre_norm else hidden
        qkv = self.query_key_value(x).view(batch, length, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, Dh]
        context = attend(q, k, v).transpose(1, 2).reshape(batch, length, width)  # [B, L, d]
        return self.dropout(self.output(context))

    def combine(self, hidden: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """The residual sum, normalized after it (post-LN) or not (pre-LN)."""
        return hidden + update if self.pre_norm else self.norm(hidden + update)


class FeedForwardSublayer(nn.Module):
    """Residual two-layer MLP."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = config.layer_norm == "pre"
        self.intermediate = nn.Linear(config.hidden_size, config.mlp_size)
        self.output = nn.Linear(config.mlp_size, config.hidden_size)
        self.activation = ACTIVATIONS[config.activation]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.norm(hidden) if self.pre_norm else hidden
        update = self.dropout(self.output(self.activation(self.intermediate(x))))
        return hidden + update if self.pre_norm else self.norm(hidden + update)


def dense_attend(key_mask: torch.Tensor | None, *, dropout_p: float) -> AttendFn:
    """Plain multi-head attention over all keys, padded keys (False in [B, N]) excluded."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, N]

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)

    return attend


def causal_attend(key_mask: torch.Tensor | None, *, dropout_p: float) -> AttendFn:
    """Dense causal attention: query i sees keys j <= i that are real (True in [B, N]).

    Each position may always see itself, so a padded query never has an empty row
    (its output is unused; a real query never sees a padded key).
    """

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if key_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        length = q.shape[2]
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=q.device)
        mask = (causal & key_mask[:, None, None, :].to(q.device)) | eye  # [B, 1, N, N]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)

    return attend
