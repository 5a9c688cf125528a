"""Causal language-modelling tasks, scored in bits per token (lower is better).

- ``image-lm``: images as pixel sequences, ``bits_per_dim``. ``train.data`` is a
  folder of CIFAR-10 python batches (3072 tokens per image) or of Fashion-MNIST
  IDX files (784 tokens; the Debian package's folder when ``train.data`` is empty).
- ``bytes-lm``: a folder of text files as byte chunks of ``train.max_length``,
  ``bits_per_byte``.

The model is a :class:`~ernie_sparse.models.CausalLM`, so the model config must be
causal (presets ``causal-dense``, ``causal-combiner-*``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.base import TaskInfo
from ..data.collate import pad_sequences
from ..data.images import FASHION_MNIST_DIR, is_cifar10
from ..data.pixels import read_cifar10_pixels, read_fashion_mnist_pixels, read_text_bytes
from ..models import CausalLM, ModelConfig, nats_to_bits
from ..models.causal import lm_labels, token_nll_sum
from ..models.heads import IGNORE_INDEX
from .config import TrainConfig
from .distributed import World, all_sum
from .evaluation import Collate, Transform, eval_batches
from .tasks import Task, check_split, data_root, register_task


def lm_collate(examples: Sequence[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Right-pad inputs with 0 and labels with -100; deterministic (generator unused)."""
    del generator
    input_ids, attention_mask = pad_sequences([example["input_ids"] for example in examples])
    labels = torch.nn.utils.rnn.pad_sequence(
        [example["labels"] for example in examples], batch_first=True, padding_value=IGNORE_INDEX
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    world: World,
    max_batches: int = 0,
    collate: Collate = lm_collate,
    transform: Transform | None = None,
    metric: str = "bits_per_token",
) -> dict[str, float]:
    """{"loss" (nats per token), ``metric`` (bits per token), "examples", "tokens"},
    averaged over tokens, not over batches."""
    totals = torch.zeros(3, dtype=torch.float64)  # summed NLL (nats), tokens, examples
    for indices, batch in eval_batches(
        model,
        dataset,
        batch_size=batch_size,
        world=world,
        max_batches=max_batches,
        collate=collate,
        transform=transform,
    ):
        out = model(**batch)
        nll, count = token_nll_sum(out.logits, lm_labels(batch["labels"], batch["attention_mask"]))
        totals += torch.tensor([nll, count, len(indices)], dtype=torch.float64)
    nll, tokens, examples = all_sum(totals, world).tolist()
    if tokens == 0:
        raise ValueError("evaluation scored no tokens (empty split)")
    loss = nll / tokens
    return {"loss": loss, metric: nats_to_bits(loss), "examples": int(examples), "tokens": tokens}


def _read_image_lm(train: TrainConfig, split: str) -> Dataset:
    check_split(split)
    root = Path(train.data) if train.data else FASHION_MNIST_DIR
    reader = read_cifar10_pixels if is_cifar10(root) else read_fashion_mnist_pixels
    dataset = reader(root, split=split)
    if dataset.info.max_length > train.max_length:
        raise ValueError(
            f"image-lm sequences from {root} are {dataset.info.max_length} tokens but "
            f"train.max_length={train.max_length}; raise it (images are never cut)"
        )
    return dataset


def _read_bytes_lm(train: TrainConfig, split: str) -> Dataset:
    check_split(split)
    return read_text_bytes(data_root(train), split=split, chunk_length=train.max_length)


def _causal_lm(config: ModelConfig, info: TaskInfo) -> nn.Module:
    del info  # the loop checks config.vocab_size against info.vocab_size
    return CausalLM(config)


for _name, _read, _metric in (
    ("image-lm", _read_image_lm, "bits_per_dim"),
    ("bytes-lm", _read_bytes_lm, "bits_per_byte"),
):
    register_task(
        Task(
            _name,
            read=_read,
            build=_causal_lm,
            collate=lm_collate,
            evaluate=functools.partial(evaluate_lm, metric=_metric),
            metric=_metric,
            higher_is_better=False,
        )
    )
