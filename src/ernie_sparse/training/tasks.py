"""Task -> data splits and model head."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..data.base import TokenDataset
from ..models import ModelConfig, SequenceClassifier, TwoTowerMatcher
from .config import TrainConfig

SPLITS = ("train", "val", "test")


def load_split(train: TrainConfig, split: str) -> TokenDataset:
    """The task's ``split`` (train / val / test) from ``train.data``."""
    if split not in SPLITS:
        raise ValueError(f"split must be train, val or test, not {split!r}")
    if not train.data:
        raise ValueError(f"task {train.task} needs train.data (the data folder or file)")
    root = Path(train.data)
    task, length = train.task, train.max_length
    if task == "listops":
        from ..data.listops import read_listops_dir

        return read_listops_dir(root, split, max_length=length)
    if task == "text":
        from ..data.lra import read_text

        return read_text(root, split="train" if split == "train" else "test", max_length=length)
    if task == "retrieval":
        from ..data.lra import read_retrieval

        name = {"train": "train", "val": "eval", "test": "test"}[split]
        return read_retrieval(root / f"new_aan_pairs.{name}.tsv", max_length=length)
    if task == "image":
        from ..data.images import read_fashion_mnist
        from ..data.lra import read_cifar10

        reader = read_cifar10 if (root / "data_batch_1").is_file() else read_fashion_mnist
        return reader(root, split=split)
    if task == "pathfinder":
        from ..data.pathfinder import read_pathfinder

        return read_pathfinder(root, split=split)
    if task == "documents":
        from ..data.documents import read_documents

        return read_documents(root, split=split, max_length=length)
    raise ValueError(f"unknown task {task!r}")


def build_model(task: str, config: ModelConfig, num_labels: int) -> nn.Module:
    if task == "retrieval":
        return TwoTowerMatcher(config, num_labels)
    return SequenceClassifier(config, num_labels)
