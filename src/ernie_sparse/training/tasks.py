"""Tasks as data: how to read a split, build the model, batch examples and score a model.

The training loop and ``ernie-sparse train/evaluate`` know nothing about any
task; they look one up by name with :func:`get_task`. A module adds tasks by
calling :func:`register_task` at import and naming itself in ``TASK_MODULES``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.base import TaskInfo, TokenDataset
from ..data.collate import pad_collate
from ..models import ModelConfig, SequenceClassifier, TwoTowerMatcher
from ..objectives.roll import bind_to_model
from .evaluation import evaluate_accuracy

SPLITS = ("train", "val", "test")

# Modules whose import registers more tasks (imported on the first lookup).
TASK_MODULES: tuple[str, ...] = (
    "ernie_sparse.training.lm_tasks",
    "ernie_sparse.training.finetune_tasks",
)

Collate = Callable[[Sequence[dict], torch.Generator], dict[str, torch.Tensor]]


class TextSettings(Protocol):
    """``training.config.TextConfig``: task text's own settings."""

    val_from_train: float


class TrainSettings(Protocol):
    """What a task's reader takes: ``training.config.TrainConfig`` (named by its fields,
    so that config, which looks tasks up, and the tasks do not import each other)."""

    task: str
    data: str
    max_length: int
    seed: int
    text: TextSettings


def plain_collate(examples: Sequence[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Pad and mask; deterministic tasks ignore the generator."""
    del generator
    return pad_collate(examples)


def head_collate(head: type[nn.Module]) -> Collate:
    """plain_collate for the sequences ``head`` declares (``SEQUENCE_INPUTS``)."""

    def collate(examples: Sequence[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
        del generator
        return pad_collate(examples, head.SEQUENCE_INPUTS)

    return collate


def model_bound(evaluate: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``evaluate`` with its ``transform`` bound to the model it scores: a token roll
    (the word-order-shift attack) follows that head's ``SEQUENCE_INPUTS``."""
    if getattr(evaluate, "binds_transform", False):
        return evaluate

    @functools.wraps(evaluate)
    def bound(model: nn.Module, dataset: Dataset, *args: Any, **options: Any) -> dict[str, Any]:
        if options.get("transform") is not None:
            options["transform"] = bind_to_model(options["transform"], model)
        return evaluate(model, dataset, *args, **options)

    bound.binds_transform = True  # type: ignore[attr-defined]
    return bound


@dataclass(frozen=True)
class Task:
    """What the loop needs from a task. ``evaluate`` returns at least "loss",
    "examples" and ``metric``, the value that picks the best checkpoint."""

    name: str
    read: Callable[[Any, str], Dataset]  # (TrainConfig, split) -> dataset with .info
    build: Callable[[ModelConfig, TaskInfo], nn.Module]  # a module with .encoder -> TaskOutput
    collate: Collate = plain_collate  # training batches get a generator seeded per step
    evaluate: Callable[..., dict[str, Any]] = evaluate_accuracy
    metric: str = "accuracy"
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "evaluate", model_bound(self.evaluate))

    def is_better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best


_REGISTRY: dict[str, Task] = {}
_imported = False


def register_task(task: Task) -> Task:
    if task.name in _REGISTRY and _REGISTRY[task.name] is not task:
        raise ValueError(f"task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def _import_task_modules() -> None:
    global _imported
    if not _imported:
        _imported = True
        for module in TASK_MODULES:
            importlib.import_module(module)


def task_names() -> list[str]:
    _import_task_modules()
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    _import_task_modules()
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be train, val or test, not {split!r}")


def data_root(train: TrainSettings) -> Path:
    if not train.data:
        raise ValueError(f"task {train.task} needs train.data (the data folder or file)")
    return Path(train.data)


# --- the classification tasks of Long Range Arena, the document demo and the probes ---


def _read_listops(train: TrainSettings, split: str) -> TokenDataset:
    from ..data.listops import read_listops_dir

    return read_listops_dir(data_root(train), split, max_length=train.max_length)


def _read_probe(train: TrainSettings, split: str) -> TokenDataset:
    """A probe folder (``ernie-sparse data probe``); a probe is never cut to fit."""
    from ..data.probes import read_probe, read_spec

    root = data_root(train)
    length = read_spec(root).length
    if train.max_length < length:
        raise ValueError(
            f"train.max_length={train.max_length} is shorter than the probe length={length} "
            f"of {root}; probes are never cut (their symbols sit far from the readout): "
            f"set train.max_length >= {length}"
        )
    return read_probe(root, split)


def validation_note(train: TrainSettings) -> str:
    """What the validation split is when it is not held out from test ("" when it is):
    said in the run's log and in its evaluation records."""
    if not train.data:
        return ""
    root = Path(train.data)
    if train.task == "text" and not train.text.val_from_train and not _has_text_val(root):
        return (
            "validation reads the test split (LRA's convention for IMDB, which has no "
            "validation split): the best weights are chosen on test data; "
            "train.text.val_from_train=0.1 holds a share of train out instead"
        )
    if train.task in ("wikihop", "triviaqa") and root.is_dir():
        from ..data.qa import qa_split_file as split_file

        try:
            val, test = split_file(root, "val"), split_file(root, "test")
        except FileNotFoundError:
            return ""  # the read fails with its own message
        if val == test:
            return (
                f"validation and test both read {val.name} (there is no separate test "
                "file): the best weights are chosen on test data"
            )
        if val.name == "dev.json":
            return "validation reads dev.json"
    return ""


def _has_text_val(root: Path) -> bool:
    from ..data.lra import has_text_val_split

    return root.is_dir() and has_text_val_split(root)


def _read_text(train: TrainSettings, split: str) -> TokenDataset:
    """IMDB has no validation split: validation is the folder's val split, else the share
    ``train.text.val_from_train`` of train, else the test split (LRA's convention; logged)."""
    from ..data.lra import read_text

    return read_text(
        data_root(train),
        split=split,
        max_length=train.max_length,
        val_fraction=train.text.val_from_train,
        seed=train.seed,
    )


def _read_retrieval(train: TrainSettings, split: str) -> TokenDataset:
    from ..data.lra import read_retrieval, retrieval_split_path

    path = retrieval_split_path(data_root(train), split)
    return read_retrieval(path, max_length=train.max_length)


def _read_image(train: TrainSettings, split: str) -> TokenDataset:
    from ..data.lra import read_image

    return read_image(data_root(train), split=split)


def _read_pathfinder(train: TrainSettings, split: str) -> TokenDataset:
    from ..data.pathfinder import read_pathfinder

    return read_pathfinder(data_root(train), split=split)


def _read_documents(train: TrainSettings, split: str) -> TokenDataset:
    from ..data.documents import read_documents

    return read_documents(data_root(train), split=split, max_length=train.max_length)


def _classifier(config: ModelConfig, info: TaskInfo) -> nn.Module:
    return SequenceClassifier(config, info.num_labels)


def _matcher(config: ModelConfig, info: TaskInfo) -> nn.Module:
    return TwoTowerMatcher(config, info.num_labels)


for _name, _read in (
    ("listops", _read_listops),
    ("text", _read_text),
    ("image", _read_image),
    ("pathfinder", _read_pathfinder),
    ("documents", _read_documents),
    ("probe", _read_probe),
):
    register_task(
        Task(_name, read=_read, build=_classifier, collate=head_collate(SequenceClassifier))
    )
register_task(
    Task("retrieval", read=_read_retrieval, build=_matcher, collate=head_collate(TwoTowerMatcher))
)


# --- what the loop and the CLI call ---


def load_split(train: TrainSettings, split: str) -> Dataset:
    """The task's ``split`` (train / val / test) from ``train.data``."""
    check_split(split)
    return get_task(train.task).read(train, split)


def build_model(task: str, config: ModelConfig, info: TaskInfo) -> nn.Module:
    return get_task(task).build(config, info)
