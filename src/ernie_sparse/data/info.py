"""``ernie-sparse data info PATH``: what a data folder holds, per split.

Recognizes the layouts the readers take (ListOps TSVs, a probe folder, a Pathfinder release,
``aclImdb``, AAN pair files, CIFAR-10 batches, Fashion-MNIST IDX files, a
Text TSV/JSONL file, a folder of label subfolders) and prints counts, length
percentiles (50/90/95/max, before truncation, as ERNIE-Sparse Table 10), label
balance, and how many records were skipped or cut.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import TokenDataset

Loader = Callable[[], TokenDataset]


def find_splits(path: Path, *, skip_bad: bool) -> tuple[str, dict[str, Loader]]:
    """(kind, split name -> loader) for the data at ``path``."""
    from . import classification, documents, images, listops, lra, pathfinder, probes
    from .lra import TEXT_FILES

    if path.is_file():
        if path.name.startswith("new_aan_pairs"):
            return "retrieval", {path.name: lambda: lra.read_retrieval(path, skip_bad=skip_bad)}
        if path.suffix == ".tsv" and _first_line(path) == listops.HEADER:
            return "listops", {path.name: lambda: listops.read_listops(path, skip_bad=skip_bad)}
        if path.suffix in (".tsv", ".jsonl"):
            return "text", {path.name: lambda: lra.read_text(path, skip_bad=skip_bad)}
        raise ValueError(f"{path}: not a data file this tool reads (.tsv, .jsonl)")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if (path / probes.PARAMETERS_FILE).is_file():
        names = [s for s in probes.SPLITS if (path / f"{s}.tsv").is_file()]
        return f"probe ({probes.read_spec(path).kind})", {
            s: (lambda s=s: probes.read_probe(path, s, skip_bad=skip_bad)) for s in names
        }
    if any(path.glob("basic_*.tsv")):
        names = [s for s in ("train", "val", "test") if (path / f"basic_{s}.tsv").is_file()]
        return "listops", {
            s: (lambda s=s: listops.read_listops_dir(path, s, skip_bad=skip_bad)) for s in names
        }
    folders = [*pathfinder.FOLDERS.values(), *pathfinder.OLD_FOLDERS.values()]
    pathfinder_dirs = [path / name for name in folders]
    pathfinder_dirs = [folder for folder in pathfinder_dirs if folder.is_dir()]
    if pathfinder_dirs or (path / "metadata").is_dir():
        return "pathfinder", _pathfinder_splits(path, pathfinder_dirs, skip_bad, pathfinder)
    if (path / "train" / "pos").is_dir():
        return "text", {
            s: (lambda s=s: lra.read_text(path, split=s, skip_bad=skip_bad))
            for s in ("train", "test")
            if (path / s / "pos").is_dir()
        }
    split_files = [f"{s}{suffix}" for s in ("train", "val", "test") for suffix in TEXT_FILES]
    if any((path / name).is_file() for name in split_files[:2]):
        return "split files (text / classification)", {
            s: (lambda s=s: classification.read_classification(path, split=s))
            for s in ("train", "val", "test")
            if any((path / f"{s}{suffix}").is_file() for suffix in TEXT_FILES)
        }
    aan = sorted(path.glob("new_aan_pairs.*.tsv"))
    if aan:
        return "retrieval", {
            f.name.split(".")[1]: (lambda f=f: lra.read_retrieval(f, skip_bad=skip_bad))
            for f in aan
        }
    if images.is_cifar10(path):
        return "image (CIFAR-10)", {
            s: (lambda s=s: lra.read_cifar10(path, split=s)) for s in ("train", "val", "test")
        }
    if any(path.glob("train-images-idx3-ubyte*")):
        return "image (Fashion-MNIST)", {
            s: (lambda s=s: images.read_fashion_mnist(path, split=s))
            for s in ("train", "val", "test")
        }
    return "documents", {
        s: (lambda s=s: documents.read_documents(path, split=s, skip_bad=skip_bad))
        for s in ("train", "val", "test")
    }


def _first_line(path: Path) -> str:
    with path.open("rb") as handle:
        return handle.readline().rstrip(b"\r\n").decode("utf-8", errors="replace")


def _pathfinder_splits(path, difficulty_dirs, skip_bad, pathfinder) -> dict[str, Loader]:
    if not difficulty_dirs:
        return {path.name: lambda: pathfinder.read_pathfinder(path, skip_bad=skip_bad)}
    names = {folder: difficulty for difficulty, folder in pathfinder.FOLDERS.items()}
    names.update({folder: difficulty for difficulty, folder in pathfinder.OLD_FOLDERS.items()})
    return {
        folder.name: (
            lambda folder=folder: pathfinder.read_pathfinder(
                path, difficulty=names[folder.name], skip_bad=skip_bad
            )
        )
        for folder in difficulty_dirs
        if folder.name in names
    }


def describe(dataset: TokenDataset) -> dict:
    """Counts, raw length percentiles and label balance of one split."""
    lengths = np.asarray(dataset.raw_lengths or [0])
    percentiles = np.percentile(lengths, [50, 90, 95, 100]).round().astype(int).tolist()
    labels = Counter(int(example["labels"]) for example in dataset.examples)
    names = list(dataset.label_names)
    balance = {
        (names[label] if label < len(names) else str(label)): count
        for label, count in sorted(labels.items())
    }
    return {
        "count": len(dataset),
        "length_p50_p90_p95_max": percentiles,
        "labels": balance,
        "skipped_bad": dataset.bad.count,
        "truncated": dataset.truncated,
        "max_length": dataset.info.max_length,
    }


def format_split(name: str, stats: dict) -> str:
    p50, p90, p95, longest = stats["length_p50_p90_p95_max"]
    total = max(stats["count"], 1)
    balance = ", ".join(
        f"{label} {count} ({100 * count / total:.1f}%)" for label, count in stats["labels"].items()
    )
    return (
        f"{name}: {stats['count']} examples; length p50 {p50}, p90 {p90}, p95 {p95}, "
        f"max {longest}; {stats['truncated']} cut to {stats['max_length']}; "
        f"{stats['skipped_bad']} bad skipped\n  labels: {balance}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="a data folder or file")
    parser.add_argument("--skip-bad", action="store_true", help="skip and count malformed records")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    kind, splits = find_splits(args.path, skip_bad=args.skip_bad)
    print(f"{args.path}: {kind}")
    for name, load in splits.items():
        dataset = load()
        if len(dataset) == 0 and kind == "documents":
            continue
        print(format_split(name, describe(dataset)))
    return 0
