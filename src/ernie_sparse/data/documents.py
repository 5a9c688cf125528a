"""Long-document classification from a folder with one subfolder per label.

Every file under ``root/<label>/`` (recursively) is one document of that label.
Files directly in ``root`` belong to no label: they are counted and logged, not
read. Works on the reST sources of the Debian package ``python3.11-doc``
(/usr/share/doc/python3.11/html/_sources: library, c-api, howto, ...).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from .base import TaskInfo, TokenDataset
from .errors import BadRecords
from .tokenize import load_tokenizer

log = logging.getLogger("ernie_sparse.data")
PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
SPLITS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0), "all": (0.0, 1.0)}


def split_of(relative_path: str, seed: int) -> float:
    """A stable position in [0, 1) for a document: the same split on every machine."""
    digest = hashlib.sha256(f"{seed}:{relative_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def read_documents(
    root: str | Path,
    *,
    split: str = "all",
    tokenizer: str = "bytes",
    max_length: int = 4096,
    min_labels: int = 2,
    seed: int = 0,
    skip_bad: bool = False,
) -> TokenDataset:
    """Documents of ``split`` (80/10/10 by a hash of each file's path, or ``all``)."""
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of label subfolders")
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(labels) < min_labels:
        raise ValueError(f"{root}: found {len(labels)} label subfolders, need {min_labels}")
    unlabelled = [p for p in root.iterdir() if p.is_file()]
    if unlabelled:
        log.info("%s: %d files outside label folders not read", root, len(unlabelled))
    encode, vocab_size = load_tokenizer(tokenizer)
    info = TaskInfo("documents", vocab_size, len(labels), max_length)
    dataset = TokenDataset(info, bad=BadRecords(skip_bad), label_names=tuple(labels))
    low, high = SPLITS[split]
    for label_id, label in enumerate(labels):
        for path in sorted(p for p in (root / label).rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            if low <= split_of(relative, seed) < high:
                _add_document(dataset, path, label_id, encode)
    return dataset.finish(str(root))


def _add_document(dataset: TokenDataset, path: Path, label: int, encode) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        dataset.bad.report(path, None, f"not UTF-8 text ({error.reason} at byte {error.start})")
        return
    if not text.strip():
        dataset.bad.report(path, None, "empty document")
        return
    dataset.add(label, encode(text))
