"""The models of ``bench model`` and one training step of each.

A step is the forward of the loss each model trains with (under bf16 autocast when
asked for) and its backward; no optimizer update. The model is kept beside the
step so that its attention calls can be timed (``attention_time.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models import ModelConfig, SequenceClassifier, preset
from ..objectives import saor_forward
from .hf_bigbird import hf_bigbird_available, hf_bigbird_classifier, hf_bigbird_shortest

DTYPES = ("float32", "bfloat16")  # bfloat16: the forward under bf16 autocast
HF_NUM_RANDOM = 3  # HF BigBird's random blocks, as our bigbird preset's


@dataclass(frozen=True)
class BenchModel:
    """One model of the bench: its preset and what the bench does differently with it."""

    preset: str  # models.presets name; "" for Hugging Face BigBird
    overrides: Callable[[int], dict[str, Any]] | None = None  # heads -> attention overrides
    quadratic: bool = False  # all pairs: "skipped" past dense_max_len, no memory-growth column
    backend: str | None = None  # attention backend unless NAME@BACKEND asks for another
    huggingface: bool = False  # transformers' BigBirdForSequenceClassification


@dataclass
class BenchStep:
    """One training step (or no-grad forward) of a built model."""

    run: Callable[[], None]
    model: nn.Module


@dataclass(frozen=True)
class ModelSizes:
    """What every benchmarked model shares."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_size: int
    block_size: int
    max_positions: int


def attention_overrides(model: BenchModel, backend: str, sizes: ModelSizes) -> dict[str, Any]:
    """The preset overrides of the attention settings: block size, no dropout, the
    backend, the model's own (the one place that names those config fields)."""
    attention: dict[str, Any] = {"block_size": sizes.block_size, "dropout": 0.0}
    if backend:
        attention["backend"] = backend
    if model.overrides is not None:
        attention.update(model.overrides(sizes.num_heads))
    return {"attention": attention}


def build_config(model: BenchModel, backend: str, sizes: ModelSizes) -> ModelConfig:
    """Our model at the bench's sizes, without dropout (timing without its random masks)."""
    return preset(
        model.preset,
        **attention_overrides(model, backend, sizes),
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.hidden_size,
        num_layers=sizes.num_layers,
        num_heads=sizes.num_heads,
        mlp_size=sizes.mlp_size,
        max_positions=sizes.max_positions,
        dropout=0.0,
    )


def check_hf_model(name: str, backend: str) -> None:
    if backend:
        raise ValueError(f"{name} runs Hugging Face's own attention; drop @{backend}")
    if not hf_bigbird_available():
        raise ValueError(f"model {name} needs transformers: pip install 'ernie-sparse[hf]'")


def hf_skip_reason(block_size: int, seq_len: int) -> str | None:
    shortest = hf_bigbird_shortest(block_size, HF_NUM_RANDOM)
    return f"skipped (HF BigBird needs n > {shortest})" if seq_len <= shortest else None


def build_model(model: BenchModel, backend: str, sizes: ModelSizes) -> nn.Module:
    if not model.huggingface:
        return SequenceClassifier(build_config(model, backend, sizes), num_labels=2)
    return hf_bigbird_classifier(
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.hidden_size,
        num_layers=sizes.num_layers,
        num_heads=sizes.num_heads,
        mlp_size=sizes.mlp_size,
        block_size=sizes.block_size,
        num_random=HF_NUM_RANDOM,
        max_positions=sizes.max_positions,
    )


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def training_step(
    model: nn.Module, batch: dict[str, torch.Tensor], *, dtype: str
) -> Callable[[], None]:
    """The loss each model trains with (ours: one pass unless its SAOR alpha > 0; HF: its
    classification loss), then backward."""
    device = batch["input_ids"].device
    ours = isinstance(model, SequenceClassifier)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = saor_forward(model, batch).loss if ours else model(**batch).loss
        loss.backward()

    return step


def inference_step(model: nn.Module, ids: torch.Tensor, *, dtype: str) -> Callable[[], None]:
    model.eval()

    @torch.no_grad()
    def forward() -> None:
        with autocast(ids.device, dtype):
            model(input_ids=ids)

    return forward
