"""Evaluate a trained run: the function behind ``ernie-sparse evaluate`` and the
experiments (which call it directly, not through the command line)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..files import same_path
from ..objectives.roll import TokenRoll
from .config import load_run
from .distributed import init_world
from .run_dir import RunDir
from .tasks import get_task, validation_note

log = logging.getLogger("ernie_sparse.training")


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    data: str | None = None,
    weights: str = "best",
    roll: int | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Score the run's ``weights`` (``best``, ``final`` or a file in the run) on ``split``
    of its data (or of ``data``), under the word-order-shift attack when ``roll`` is given;
    the result is also written to the run's ``eval-SPLIT[-rollK].json``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    run = RunDir(run_dir)
    config = load_run(run.path)
    same_data = not data or same_path(data, config.train.data)
    note = validation_note(config.train) if same_data and split != "train" else ""
    if data:
        config.train.data = str(data)
    task = get_task(config.train.task)
    dataset = task.read(config.train, split)
    model = task.build(config.model, dataset.info)
    run.load_weights_into(model, weights)
    if note:  # the run chose its best weights on the data evaluated here
        log.warning("%s: %s", run.path, note)
    attack = (
        None
        if roll is None
        else TokenRoll(shift=roll, num_global=config.model.attention.num_global)
    )
    world = init_world()
    model.to(world.device)
    metrics = task.evaluate(
        model, dataset, batch_size=batch_size, world=world, collate=task.collate, transform=attack
    )
    result = {
        "split": split,
        "attack": None if roll is None else f"roll={roll}",
        "weights": weights,
        **metrics,
    }
    if note:
        result["validation"] = note
    if world.is_main:
        run.write_json(run.eval_result(split, roll), result)
    return result
