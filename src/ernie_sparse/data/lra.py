"""Readers for the LRA release files a user brings: Text, Retrieval and Image.

ListOps and Pathfinder have their own modules (they also generate data).
Every reader returns a ``TokenDataset``; a malformed record raises
``DataFormatError`` naming file and line, or is skipped and counted (``skip_bad``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .base import TaskInfo, TokenDataset
from .documents import split_of
from .errors import BadRecords, DataFormatError
from .images import (
    CIFAR_CLASSES,
    IMAGE_VOCAB_SIZE,
    is_cifar10,
    read_cifar_split,
    read_fashion_mnist,
)
from .tokenize import BYTE_VOCAB_SIZE, byte_ids

TEXT_LABELS = {"neg": 0, "pos": 1, "0": 0, "1": 1}
RETRIEVAL_MAX_BYTES = 10_000  # LRA cuts each AAN text to this many bytes first
RETRIEVAL_SPLITS = {"train": "train", "val": "eval", "test": "test"}  # new_aan_pairs.NAME.tsv

csv.field_size_limit(sys.maxsize)  # AAN rows hold two whole papers
log = logging.getLogger("ernie_sparse.data")


# --- Text (IMDB) ---


SPLITS = ("train", "val", "test")
TEXT_FILES = (".tsv", ".jsonl")


def read_text(
    source: str | Path,
    *,
    split: str | None = None,
    max_length: int = 1000,
    skip_bad: bool = False,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> TokenDataset:
    """IMDB reviews, byte level (labels neg/pos or 0/1), from one of:

    - an ``aclImdb`` folder: ``train/`` and ``test/`` (and ``val/``), each ``{neg,pos}/*.txt``;
    - a folder of split files: ``train.tsv`` and ``test.tsv`` (and ``val.tsv``), header
      ``label<TAB>text``, or the same names in ``.jsonl`` (``{"text": ..., "label": ...}``);
    - one such file: a single split. It is read whole (``split`` None, ``val`` or ``test``:
      ``evaluate --data FILE``); as the ``train`` split it is refused, because validation
      would then read the very rows the model trains on.

    Validation (``split="val"``) is the folder's val split when it has one; else, with
    ``val_fraction > 0``, that share of the train split, chosen by a hash of each text and
    ``seed`` (and left out of ``train``); else the test split, LRA's convention for IMDB,
    which has no validation split (said in the log).
    """
    source = Path(source)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be train, val or test, not {split!r}")
    if not (isinstance(val_fraction, int | float) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    info = TaskInfo("text", BYTE_VOCAB_SIZE, 2, max_length)
    dataset = TokenDataset(info, bad=BadRecords(skip_bad), label_names=("neg", "pos"))
    if source.is_file():
        rows = _single_file_rows(source, split, dataset.bad)
    elif source.is_dir():
        if split is None:
            raise ValueError(f"{source}: a folder holds several splits; give split=train/val/test")
        rows = _split_rows(source, split, dataset.bad, val_fraction=val_fraction, seed=seed)
    else:
        raise FileNotFoundError(
            f"{source}: no such file or folder (expected an aclImdb folder, a folder of "
            "train/test .tsv or .jsonl files, or one such file)"
        )
    for path, where, label, text in rows:
        if label not in TEXT_LABELS:
            dataset.bad.report(path, where, f"label {label!r} is not one of neg, pos, 0, 1")
        elif text is None:
            dataset.bad.report(path, where, "not UTF-8 text")
        elif not text.strip():
            dataset.bad.report(path, where, "empty text")
        else:
            dataset.add(TEXT_LABELS[label], byte_ids(text))
    return dataset.finish(str(source) if split is None else f"{source} [{split}]", empty=False)


def _single_file_rows(path: Path, split: str | None, bad: BadRecords) -> Iterator[tuple]:
    if split == "train":
        raise ValueError(
            f"{path}: one file cannot be the training split: validation would read the same "
            "rows, and the best weights would be chosen on training data. Give a folder "
            "holding train.tsv and test.tsv (or .jsonl), or an aclImdb folder; a single "
            "file can be evaluated (ernie-sparse evaluate RUN --data FILE)"
        )
    if split is not None:
        log.info("%s: a single file, read whole as the %s split", path, split)
    return _file_rows(path, bad)


def _file_rows(path: Path, bad: BadRecords) -> Iterator[tuple]:
    if path.suffix == ".jsonl":
        return _jsonl_rows(path, bad)
    if path.suffix == ".tsv":
        return _tsv_rows(path, bad)
    raise ValueError(f"{path}: expected a .tsv or .jsonl file of reviews, or a folder")


def _split_source(root: Path, split: str) -> Path | None:
    """Where ``split`` lives in a text folder (aclImdb or split files), None if absent."""
    if (root / "train").is_dir():
        return root / split if (root / split).is_dir() else None
    for suffix in TEXT_FILES:
        if (root / f"train{suffix}").is_file():
            path = root / f"{split}{suffix}"
            return path if path.is_file() else None
    raise FileNotFoundError(
        f"{root}: neither an aclImdb folder (train/, test/) nor a folder of split files "
        "(train.tsv and test.tsv, or .jsonl)"
    )


def has_text_val_split(root: str | Path) -> bool:
    """Whether a Text folder has its own validation split (``val/``, ``val.tsv``, ...)."""
    return _split_source(Path(root), "val") is not None


def _split_rows(
    root: Path, split: str, bad: BadRecords, *, val_fraction: float, seed: int
) -> Iterator[tuple]:
    has_val = _split_source(root, "val") is not None
    carve = val_fraction > 0 and not has_val
    if split == "val" and not has_val:
        if not carve:
            log.info(
                "%s: no validation split: validation reads the test split (LRA's convention "
                "for IMDB)",
                root,
            )
            return _rows_of(root, "test", bad)
        log.info(
            "%s: validation = %g of the train split, held out by a hash of each text (seed %d)",
            root,
            val_fraction,
            seed,
        )
        held_out = True
    elif split == "train" and carve:
        held_out = False
    else:
        return _rows_of(root, split, bad)
    return (
        row
        for row in _rows_of(root, "train", bad)
        if (split_of(row[3], seed) < val_fraction) == held_out
    )


def _rows_of(root: Path, split: str, bad: BadRecords) -> Iterator[tuple]:
    where = _split_source(root, split)
    if where is None:
        found = "train/ is there" if (root / "train").is_dir() else "train.* is there"
        raise FileNotFoundError(f"{root}: no {split} split ({found})")
    if where.is_dir():
        return _imdb_folder_rows(where)
    return _file_rows(where, bad)


def _imdb_folder_rows(folder: Path) -> Iterator[tuple]:
    """An aclImdb split folder: ``neg/*.txt`` and ``pos/*.txt``."""
    for label in ("neg", "pos"):
        labelled = folder / label
        if not labelled.is_dir():
            raise FileNotFoundError(f"{labelled}: missing (expected aclImdb/<split>/{label}/*.txt)")
        for path in sorted(labelled.glob("*.txt")):
            yield path, None, label, _read_utf8(path)


def _read_utf8(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # reported as not UTF-8


def _tsv_rows(path: Path, bad: BadRecords) -> Iterator[tuple]:
    with _utf8(path) as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or sorted(header) != ["label", "text"]:
            raise DataFormatError(path, 1, f"header must be 'label<TAB>text', got {header}")
        label_at, text_at = header.index("label"), header.index("text")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2:
                bad.report(path, line, f"expected 2 tab-separated columns, got {len(row)}")
                continue
            yield path, line, row[label_at].strip(), row[text_at]


def _jsonl_rows(path: Path, bad: BadRecords) -> Iterator[tuple]:
    with _utf8(path) as handle:
        for line, raw in enumerate(handle, start=1):
            try:
                record = json.loads(raw)
                yield path, line, str(record["label"]).strip(), str(record["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                bad.report(path, line, f"expected a JSON object with text and label ({error})")


@contextlib.contextmanager
def _utf8(path: Path) -> Iterator:
    """``path`` open as UTF-8 text; bytes that are not UTF-8 are an error naming the file."""
    with path.open(encoding="utf-8", newline="") as handle:
        try:
            yield handle
        except UnicodeDecodeError as error:
            raise DataFormatError(path, None, f"not UTF-8 text ({error.reason})") from None


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
    return dataset.finish(str(path), empty=False)


def retrieval_split_path(root: str | Path, split: str) -> Path:
    """The AAN file of ``split`` (train, val = ``eval``, test) in ``root``; a file given as
    ``root`` is itself the split (val or test: ``evaluate --data FILE``), never train."""
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split must be train, val or test, not {split!r}")
    if root.is_file():
        if split == "train":
            raise ValueError(
                f"{root}: one file cannot be the training split (validation would read the "
                "same pairs); give the folder holding new_aan_pairs.train.tsv and "
                "new_aan_pairs.eval.tsv"
            )
        return root
    return root / f"new_aan_pairs.{RETRIEVAL_SPLITS[split]}.tsv"


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
    images, labels = read_cifar_split(root, split)
    pixels = grayscale_tokens(images)
    info = TaskInfo("image", IMAGE_VOCAB_SIZE, 10, 1024)
    dataset = TokenDataset(info, label_names=CIFAR_CLASSES)
    for row, label in zip(pixels, labels, strict=True):
        dataset.add(int(label), row)
    return dataset.finish(str(root))


def read_image(root: str | Path, *, split: str) -> TokenDataset:
    """LRA Image from ``root``: CIFAR-10 batches when it holds them, else Fashion-MNIST."""
    reader = read_cifar10 if is_cifar10(root) else read_fashion_mnist
    return reader(root, split=split)
