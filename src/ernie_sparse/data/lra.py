"""Readers for the LRA release files a user brings: Text, Retrieval and Image.

ListOps and Pathfinder have their own modules (they also generate data).
Every reader returns a ``TokenDataset``; a malformed record raises
``DataFormatError`` naming file and line, or is skipped and counted (``skip_bad``).
"""

from __future__ import annotations

import csv
import json
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .base import TaskInfo, TokenDataset
from .errors import BadRecords
from .safe_pickle import load_data_pickle
from .tokenize import BYTE_VOCAB_SIZE, byte_ids

TEXT_LABELS = {"neg": 0, "pos": 1, "0": 0, "1": 1}
RETRIEVAL_MAX_BYTES = 10_000  # LRA cuts each AAN text to this many bytes first
IMAGE_VOCAB_SIZE = 256  # grayscale pixel values; images are always 1024 long, never padded
CIFAR_CLASSES = (
    "airplane automobile bird cat deer dog frog horse ship truck".split()  # noqa: SIM905
)

csv.field_size_limit(sys.maxsize)  # AAN rows hold two whole papers


# --- Text (IMDB) ---


def read_text(
    source: str | Path, *, split: str = "train", max_length: int = 1000, skip_bad: bool = False
) -> TokenDataset:
    """IMDB reviews, byte level: an ``aclImdb`` folder (``split``/{neg,pos}/*.txt), or a
    TSV (header ``label<TAB>text``) or JSONL (``{"text": ..., "label": ...}``) file.
    Labels: neg/pos or 0/1. LRA's test split doubles as validation."""
    source = Path(source)
    info = TaskInfo("text", BYTE_VOCAB_SIZE, 2, max_length)
    dataset = TokenDataset(info, bad=BadRecords(skip_bad), label_names=("neg", "pos"))
    if source.is_dir():
        rows = _imdb_folder_rows(source, split)
    elif source.suffix == ".jsonl":
        rows = _jsonl_rows(source, dataset.bad)
    elif source.suffix == ".tsv":
        rows = _tsv_rows(source, dataset.bad)
    else:
        raise FileNotFoundError(f"{source}: expected an aclImdb folder, a .tsv or a .jsonl file")
    for path, where, label, text in rows:
        if label not in TEXT_LABELS:
            dataset.bad.report(path, where, f"label {label!r} is not one of neg, pos, 0, 1")
        elif not text.strip():
            dataset.bad.report(path, where, "empty text")
        else:
            dataset.add(TEXT_LABELS[label], byte_ids(text))
    return dataset.finish(str(source))


def _imdb_folder_rows(root: Path, split: str) -> Iterator[tuple]:
    if split not in ("train", "test"):
        raise ValueError(f"aclImdb has splits train and test, not {split!r}")
    for label in ("neg", "pos"):
        folder = root / split / label
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing (expected aclImdb/{split}/{label}/*.txt)")
        for path in sorted(folder.glob("*.txt")):
            yield path, None, label, _read_utf8(path)


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""  # reported as an empty text: not valid UTF-8


def _tsv_rows(path: Path, bad: BadRecords) -> Iterator[tuple]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or sorted(header) != ["label", "text"]:
            raise ValueError(f"{path}:1: header must be 'label<TAB>text', got {header}")
        label_at, text_at = header.index("label"), header.index("text")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2:
                bad.report(path, line, f"expected 2 tab-separated columns, got {len(row)}")
                continue
            yield path, line, row[label_at].strip(), row[text_at]


def _jsonl_rows(path: Path, bad: BadRecords) -> Iterator[tuple]:
    with path.open(encoding="utf-8") as handle:
        for line, raw in enumerate(handle, start=1):
            try:
                record = json.loads(raw)
                yield path, line, str(record["label"]).strip(), str(record["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                bad.report(path, line, f"expected a JSON object with text and label ({error})")


# --- Retrieval (AAN) ---


def read_retrieval(
    path: str | Path, *, max_length: int = 4000, skip_bad: bool = False
) -> TokenDataset:
    """``new_aan_pairs.{train,eval,test}.tsv``: no header; label, id1, id2, text1, text2.
    Each text is cut to 10,000 bytes (LRA), then to ``max_length`` tokens (counted)."""
    path = Path(path)
    info = TaskInfo("retrieval", BYTE_VOCAB_SIZE, 2, max_length)
    dataset = TokenDataset(info, bad=BadRecords(skip_bad))
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        for line, row in enumerate(reader, start=1):
            if len(row) != 5:
                dataset.bad.report(path, line, f"expected 5 tab-separated columns, got {len(row)}")
                continue
            label = _binary_label(row[0])
            if label is None:
                dataset.bad.report(path, line, f"label {row[0]!r} is not 0 or 1")
            elif not row[3].strip() or not row[4].strip():
                dataset.bad.report(path, line, "empty text")
            else:
                first = row[3].encode("utf-8")[:RETRIEVAL_MAX_BYTES]
                second = row[4].encode("utf-8")[:RETRIEVAL_MAX_BYTES]
                dataset.add(label, byte_ids(first), byte_ids(second))
    return dataset.finish(str(path))


def _binary_label(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value in (0.0, 1.0) else None


# --- Image (CIFAR-10) ---


def grayscale_tokens(rgb: np.ndarray) -> np.ndarray:
    """[N, 3, 32, 32] uint8 -> [N, 1024] grayscale pixel tokens (ITU-R 601 luma, rounded)."""
    weights = np.array([0.2989, 0.5870, 0.1140])[None, :, None, None]
    gray = np.rint((rgb.astype(np.float64) * weights).sum(axis=1))
    return gray.clip(0, 255).astype(np.int64).reshape(len(rgb), -1)


def read_cifar10(root: str | Path, *, split: str = "train") -> TokenDataset:
    """CIFAR-10 "python version" pickle batches; LRA splits: train = data_batch_1..5[:90%],
    val = [90%:], test = test_batch."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, not {split!r}")
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    images, labels = [], []
    for name in names:
        data, batch_labels = _cifar_batch(root / name)
        images.append(data)
        labels += batch_labels
    pixels = grayscale_tokens(np.concatenate(images).reshape(-1, 3, 32, 32))
    labels = np.asarray(labels)
    if split != "test":
        cut = int(len(pixels) * 0.9)
        pixels, labels = (
            (pixels[:cut], labels[:cut]) if split == "train" else (pixels[cut:], labels[cut:])
        )
    info = TaskInfo("image", IMAGE_VOCAB_SIZE, 10, 1024)
    dataset = TokenDataset(info, label_names=CIFAR_CLASSES)
    for row, label in zip(pixels, labels, strict=True):
        dataset.add(int(label), row)
    return dataset.finish(str(root))


def _cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing CIFAR-10 batch (python version)")
    try:
        batch = load_data_pickle(path)  # restricted: refuses anything but data, never runs it
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = [int(x) for x in batch[b"labels"]]
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError) as error:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({error!r})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: data must be [N, 3072] with N labels, got {data.shape}")
    bad = [i for i, label in enumerate(labels) if not 0 <= label < 10]
    if bad:
        raise ValueError(f"{path}: record {bad[0]} has label {labels[bad[0]]}, not 0-9")
    return data, labels
