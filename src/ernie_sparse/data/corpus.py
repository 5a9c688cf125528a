"""A pretraining corpus: a folder of text files -> tokenized documents packed into
examples of at most ``max_length`` tokens (RoBERTa's FULL-SENTENCES packing).

Every ``.txt``, ``.rst`` and ``.md`` file under the folder (recursively) is one
document. Documents are held out for validation by a stable hash of their path.
A split's documents are tokenized, joined into one stream with ``</s>`` after
each document, and cut into chunks of ``max_length - 1`` stream tokens, each
prefixed with ``<s>``. Nothing is dropped and no example is left too short for
the model: the last chunk is filled up to full length with the stream tokens just
before it, which it holds as context only (never masked, so no token is scored
twice). Every non-special stream token is maskable in exactly one example; a stream
shorter than one chunk gives a short example (counted in ``short_chunks``).

Each token also records how many characters of its document it covers, for bits
per character: a token covers the text from its start offset up to the next
token's start (the first token from the document's start, the last to its end),
so a document's counts sum to its length in characters; special tokens cover 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .base import TaskInfo
from .documents import split_of
from .errors import DataFormatError
from .masking import MaskingSpec
from .tokenize import Subword

log = logging.getLogger("ernie_sparse.data")
TEXT_SUFFIXES = (".txt", ".rst", ".md")
# Special tokens of a tokenizer trained here: <pad> = 0 matches the collate's padding.
TRAINED_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")


def find_text_files(root: str | Path) -> list[Path]:
    """The corpus's documents, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a corpus folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise ValueError(
            f"{root}: no {', '.join(TEXT_SUFFIXES)} files found (searched recursively)"
        )
    return files


def split_files(
    files: Sequence[Path], root: str | Path, *, split: str, val_fraction: float, seed: int = 0
) -> list[Path]:
    """``train`` or the held-out documents (``val``; ``test`` names the same held-out set).

    Documents are ordered by a hash of their relative path; the last
    ``ceil(val_fraction * n)`` (at least one when there are two or more) are held out.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, not {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(root)
    ordered = sorted(files, key=lambda p: split_of(p.relative_to(root).as_posix(), seed))
    held = math.ceil(val_fraction * len(ordered))
    if val_fraction > 0 and len(ordered) >= 2:
        held = max(held, 1)
    chosen = ordered[len(ordered) - held :] if split != "train" else ordered[: len(ordered) - held]
    if not chosen:
        raise ValueError(
            f"{root}: the {split} split is empty ({len(ordered)} documents, "
            f"val_fraction={val_fraction}); add documents or change train.mlm.val_fraction"
        )
    return sorted(chosen)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(
            path, None, f"not UTF-8 text ({error.reason} at byte {error.start})"
        ) from error


def train_tokenizer(files: Sequence[Path], out: str | Path, *, vocab_size: int) -> Path:
    """Train a byte-level BPE on the files and write it to ``out`` (a tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TRAINED_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((read_text(path) for path in files), trainer=trainer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".tmp")
    tokenizer.save(str(temporary))
    temporary.replace(out)
    return out


def char_counts(offsets: Sequence[tuple[int, int]], text_length: int) -> list[int]:
    """Characters each token covers: from its start to the next token's start (see module)."""
    if not offsets:
        return []
    starts = [0] + [start for start, _ in offsets[1:]] + [text_length]
    return [max(starts[i + 1] - starts[i], 0) for i in range(len(offsets))]


@dataclass
class Stream:
    """A split's documents as one token stream with per-token character counts."""

    ids: list[int] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)
    documents: int = 0
    empty_documents: int = 0  # files with no text (counted, contribute nothing)

    def add_document(self, ids: Sequence[int], chars: Sequence[int], *, separator: int) -> None:
        self.ids.extend(ids)
        self.chars.extend(chars)
        self.ids.append(separator)
        self.chars.append(0)
        self.documents += 1


def tokenize_documents(files: Sequence[Path], tokenizer: Subword) -> Stream:
    stream = Stream()
    separator = tokenizer.require("sep")
    for path in files:
        text = read_text(path)
        if not text.strip():
            stream.empty_documents += 1
            continue
        ids, offsets = tokenizer.encode_with_offsets(text)
        stream.add_document(ids, char_counts(offsets, len(text)), separator=separator)
    return stream


def pack(ids: Sequence[int], *, max_length: int) -> list[tuple[int, int]]:
    """Cut a stream into pieces of ``max_length - 1`` tokens: (start, first new token).

    Pieces are ``ids[start : start + max_length - 1]``. The tokens before ``first new``
    are context only: the last piece is filled up to full length with tokens the piece
    before it already holds, instead of being left short (a stream shorter than one
    piece gives one short piece).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (<s> plus a token), got {max_length}")
    size = max_length - 1
    pieces = [(start, start) for start in range(0, len(ids), size)]
    if len(pieces) > 1 and pieces[-1][0] + size > len(ids):
        pieces[-1] = (len(ids) - size, pieces[-1][1])
    return pieces


@dataclass
class CorpusDataset(Dataset):
    """Packed MLM examples: input_ids, maskable (False at specials), chars, masking."""

    info: TaskInfo
    examples: list[dict]
    documents: int  # documents in this split with text
    empty_documents: int  # documents without text (skipped, counted)
    tokens: int  # stream tokens (document tokens + one </s> per document)
    characters: int  # characters of the split's documents
    short_chunks: int  # examples shorter than max_length (only a stream shorter than one)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


def read_corpus(
    root: str | Path,
    tokenizer: Subword,
    *,
    split: str,
    max_length: int,
    val_fraction: float = 0.05,
    seed: int = 0,
    mask_probability: float = 0.15,
) -> CorpusDataset:
    """The ``split`` of the corpus under ``root``, packed for masked LM."""
    files = split_files(
        find_text_files(root), root, split=split, val_fraction=val_fraction, seed=seed
    )
    stream = tokenize_documents(files, tokenizer)
    if not stream.ids:
        raise ValueError(f"{root}: the {split} split's {len(files)} documents hold no text")
    cls = tokenizer.require("cls")
    spec = MaskingSpec(
        tokenizer.require("mask"), tokenizer.vocab_size, probability=mask_probability
    )
    special = torch.tensor(sorted(tokenizer.special_ids | {cls, tokenizer.require("sep")}))
    examples = []
    for start, first_new in pack(stream.ids, max_length=max_length):
        end = start + max_length - 1
        ids = torch.tensor([cls, *stream.ids[start:end]], dtype=torch.long)
        chars = torch.tensor([0, *stream.chars[start:end]], dtype=torch.long)
        maskable = ~torch.isin(ids, special)
        maskable[1 : 1 + first_new - start] = False  # context already scored in a piece before
        examples.append({"input_ids": ids, "maskable": maskable, "chars": chars, "masking": spec})
    info = TaskInfo("mlm", tokenizer.vocab_size, tokenizer.vocab_size, max_length)
    dataset = CorpusDataset(
        info,
        examples,
        documents=stream.documents,
        empty_documents=stream.empty_documents,
        tokens=len(stream.ids),
        characters=sum(stream.chars),
        short_chunks=sum(len(e["input_ids"]) < max_length for e in examples),
    )
    log.info(
        "%s [%s]: %d documents (%d empty) -> %d tokens -> %d examples of <= %d (%d shorter)",
        root,
        split,
        dataset.documents,
        dataset.empty_documents,
        dataset.tokens,
        len(examples),
        max_length,
        dataset.short_chunks,
    )
    return dataset
