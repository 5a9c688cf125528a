"""Accuracy and loss of a model on a dataset (optionally under the word-order-shift attack)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..data.base import TokenDataset
from ..data.collate import pad_collate
from .distributed import World, all_sum

Transform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: TokenDataset,
    *,
    batch_size: int,
    world: World,
    max_batches: int = 0,
    transform: Transform | None = None,
) -> dict[str, float]:
    """{"accuracy", "loss", "examples"} over the dataset (each process takes its share)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # correct, summed loss, examples
    starts = range(0, len(dataset), batch_size)
    if max_batches:
        starts = starts[:max_batches]
    for start in starts:
        indices = range(start, min(start + batch_size, len(dataset)))[world.rank :: world.size]
        if not indices:
            continue
        batch = pad_collate([dataset[i] for i in indices])
        if transform is not None:
            batch = transform(batch)
        batch = {k: v.to(world.device) for k, v in batch.items()}
        out = model(**batch)
        labels = batch["labels"]
        totals[0] += float((out.logits.argmax(-1) == labels).sum())
        totals[1] += float(out.loss) * len(labels)
        totals[2] += len(labels)
    model.train(was_training)
    correct, loss, count = all_sum(totals, world).tolist()
    if count == 0:
        raise ValueError("evaluation saw no examples (empty split)")
    return {"accuracy": correct / count, "loss": loss / count, "examples": int(count)}
