"""Scoring a model on a dataset: batching shared by every task, and accuracy.

Each process takes its share of every batch; totals are summed across
processes, so the figures do not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.collate import pad_collate
from .distributed import World, all_sum

Transform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
Collate = Callable[[Sequence[dict], torch.Generator], dict[str, torch.Tensor]]

EVAL_SEED = 1234  # evaluation batches that draw randomness (MLM masks) draw the same each time


def default_collate(examples: Sequence[dict], generator: torch.Generator) -> dict:
    del generator
    return pad_collate(examples)


def batches(
    dataset: Dataset,
    *,
    batch_size: int,
    world: World,
    max_batches: int = 0,
    collate: Collate = default_collate,
    transform: Transform | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(example indices, device batch) for this process's share of each batch."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"evaluation batch_size must be an integer >= 1, got {batch_size!r}")
    generator = generator or torch.Generator().manual_seed(EVAL_SEED)
    starts = range(0, len(dataset), batch_size)
    if max_batches:
        starts = starts[:max_batches]
    for start in starts:
        indices = list(range(start, min(start + batch_size, len(dataset))))[
            world.rank :: world.size
        ]
        if not indices:
            continue
        batch = collate([dataset[i] for i in indices], generator)
        if transform is not None:
            batch = transform(batch)
        yield indices, {key: value.to(world.device) for key, value in batch.items()}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; its own mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def eval_batches(model: nn.Module, dataset: Dataset, **options) -> Iterator:
    """``batches(dataset, **options)`` with ``model`` in eval mode meanwhile."""
    with eval_mode(model):
        yield from batches(dataset, **options)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    world: World,
    max_batches: int = 0,
    collate: Collate = default_collate,
    transform: Transform | None = None,
) -> dict[str, float]:
    """{"accuracy", "loss", "examples"} of a classifier over the dataset."""
    totals = torch.zeros(3, dtype=torch.float64)  # correct, summed loss, examples
    for _, batch in eval_batches(
        model,
        dataset,
        batch_size=batch_size,
        world=world,
        max_batches=max_batches,
        collate=collate,
        transform=transform,
    ):
        out = model(**batch)
        labels = batch["labels"]
        totals[0] += float((out.logits.argmax(-1) == labels).sum())
        totals[1] += float(out.loss) * len(labels)
        totals[2] += len(labels)
    correct, loss, count = all_sum(totals, world).tolist()
    if count == 0:
        raise ValueError("evaluation saw no examples (empty split)")
    return {"accuracy": correct / count, "loss": loss / count, "examples": int(count)}
