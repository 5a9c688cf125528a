"""Long-document classification (ERNIE-Sparse 4.2.2: Arxiv, IMDB, Hyperpartisan).

``root`` holds one of:

- split files ``train.tsv`` / ``val.tsv`` / ``test.tsv`` (``label<TAB>text`` per line;
  a first line ``label<TAB>text`` is a header) or ``train.jsonl`` / ... (one
  ``{"label": ..., "text": ...}`` object per line);
- split folders ``train/`` / ``val/`` / ``test/``, each with one subfolder per label
  (IMDB's layout; every file under ``<split>/<label>/`` is a document);
- label folders directly (``root/<label>/...``), split 80/10/10 by a hash of the path;
- or ``root`` is one TSV/JSONL file: a single split to evaluate (``evaluate RUN --data
  FILE``), never the train split (validation would read the same records); label ids
  come from the train split file beside it, else from its own labels (logged).

Labels are the train split's, sorted (numerically when all are integers); a
val/test record with another label is an error. A malformed record raises an
error naming the file and line. With a subword tokenizer each document is
``<s> text </s>``; documents longer than ``max_length`` are cut (counted, logged).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from .base import TaskInfo, TokenDataset
from .documents import SPLITS, split_of
from .errors import DataFormatError
from .tokenize import Subword, load_tokenizer

Record = tuple[tuple[Path, int | None], tuple[str, str]]  # ((file, line), (label, text))
log = logging.getLogger("ernie_sparse.data")


def tsv_records(path: Path) -> Iterator[Record]:
    for number, line in enumerate(_lines(path), start=1):
        if number == 1 and line.strip().lower() == "label\ttext":
            continue
        if not line.strip():
            continue
        label, tab, text = line.rstrip("\r\n").partition("\t")
        if not tab:
            raise DataFormatError(path, number, "expected label<TAB>text, found no tab")
        yield (path, number), _check(path, number, label.strip(), text)


def jsonl_records(path: Path) -> Iterator[Record]:
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(path, number, f"invalid JSON: {error.msg}") from error
        if not isinstance(record, dict) or "label" not in record or "text" not in record:
            raise DataFormatError(path, number, 'expected an object with "label" and "text"')
        if not isinstance(record["text"], str):
            raise DataFormatError(path, number, '"text" must be a string')
        if not isinstance(record["label"], str | int) or isinstance(record["label"], bool):
            raise DataFormatError(path, number, '"label" must be a string or an integer')
        yield (path, number), _check(path, number, str(record["label"]), record["text"])


def _lines(path: Path) -> Iterator[str]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataFormatError(path, number, f"not UTF-8 ({error.reason})") from error


def _check(path: Path, number: int, label: str, text: str) -> tuple[str, str]:
    if not label:
        raise DataFormatError(path, number, "empty label")
    if not text.strip():
        raise DataFormatError(path, number, "empty text")
    return label, text


def _folder_records(folder: Path, keep: Callable[[Path], bool]) -> Iterator[Record]:
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(p for p in label_dir.rglob("*") if p.is_file()):
            if not keep(path):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as error:
                raise DataFormatError(path, None, f"not UTF-8 ({error.reason})") from error
            if not text.strip():
                raise DataFormatError(path, None, "empty document")
            yield (path, None), (label_dir.name, text)


def split_records(root: Path, split: str, seed: int = 0) -> Iterator[Record]:
    """The records of ``split`` from whichever layout ``root`` has (see module)."""
    for suffix, reader in ((".tsv", tsv_records), (".jsonl", jsonl_records)):
        if (root / f"train{suffix}").is_file():
            path = root / f"{split}{suffix}"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing (train{suffix} is there)")
            return reader(path)
    if (root / "train").is_dir():
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing (train/ is there)")
        return _folder_records(folder, lambda path: True)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a classification data folder")
    low, high = SPLITS[split]

    def keep(path: Path) -> bool:
        return low <= split_of(path.relative_to(root).as_posix(), seed) < high

    return _folder_records(root, keep)


def label_names(root: Path, seed: int = 0) -> list[str]:
    names = {label for _, (label, _) in split_records(root, "train", seed)}
    return _sorted_labels(root, names, what="the train split")


def _sorted_labels(source: Path, names: set[str], what: str = "it") -> list[str]:
    if len(names) < 2:
        raise ValueError(f"{source}: {what} has {len(names)} label(s), need 2 or more")
    numeric = all(name.lstrip("-").isdigit() for name in names)
    return sorted(names, key=int) if numeric else sorted(names)


def read_classification(
    root: str | Path,
    *,
    split: str,
    tokenizer: str = "bytes",
    max_length: int = 4096,
    seed: int = 0,
) -> TokenDataset:
    """The ``split`` (train / val / test) of a classification folder; see the module."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, not {split!r}")
    if root.is_file():
        labels, records = _single_file(root, split, seed)
    else:
        labels, records = label_names(root, seed), split_records(root, split, seed)
    index = {name: i for i, name in enumerate(labels)}
    encode, vocab_size = _encoder(tokenizer)
    info = TaskInfo("classification", vocab_size, len(labels), max_length)
    dataset = TokenDataset(info, label_names=tuple(labels))
    for where, (label, text) in records:
        if label not in index:
            raise DataFormatError(
                *where, f"label {label!r} is not a train label ({', '.join(labels)})"
            )
        dataset.add(index[label], encode(text))
    if not dataset.examples:
        raise ValueError(f"{root}: the {split} split is empty")
    return dataset.finish(f"{root} [{split}]")


def _single_file(path: Path, split: str, seed: int) -> tuple[list[str], Iterator[Record]]:
    """A TSV/JSONL file given as the data: one split to evaluate, never the train split.
    Label ids come from the train split beside it (``train.tsv`` / ``train.jsonl`` in the
    same folder) when there is one, else from the file's own labels (logged)."""
    if split == "train":
        raise ValueError(
            f"{path}: one file cannot be the training split (validation would read the "
            "same records); give the folder holding train and val (or test) split files. "
            "A single file can be evaluated: ernie-sparse evaluate RUN --data FILE"
        )
    readers = {".tsv": tsv_records, ".jsonl": jsonl_records}
    if path.suffix not in readers:
        raise ValueError(f"{path}: expected a .tsv or .jsonl file of label/text records")
    if any((path.parent / f"train{suffix}").is_file() for suffix in readers):
        labels = label_names(path.parent, seed)
    else:
        labels = _sorted_labels(path, {label for _, (label, _) in readers[path.suffix](path)})
        log.warning(
            "%s: no train split beside it: label ids are this file's own labels in order "
            "(%s); they match the model only if it was trained on exactly these labels",
            path,
            ", ".join(labels),
        )
    log.info("%s: a single file, read as the %s split", path, split)
    return labels, readers[path.suffix](path)


def _encoder(tokenizer: str) -> tuple[Callable[[str], list[int]], int]:
    """bytes (LRA) as is; a tokenizer.json wraps each document in <s> ... </s>."""
    if tokenizer == "bytes":
        return load_tokenizer(tokenizer)
    subword = Subword(tokenizer)
    cls, sep = subword.require("cls"), subword.require("sep")
    return (lambda text: [cls, *subword.encode(text), sep]), subword.vocab_size
