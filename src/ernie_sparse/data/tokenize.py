"""Tokenizers: LRA's byte level (id = UTF-8 byte + 1, 0 = pad) and subword (tokenizer.json)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

BYTE_VOCAB_SIZE = 257  # 256 byte values + padding


def byte_ids(text: str | bytes) -> list[int]:
    """LRA Text/Retrieval tokens: each UTF-8 byte + 1."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return [byte + 1 for byte in data]


def load_tokenizer(spec: str) -> tuple[Callable[[str], list[int]], int]:
    """``"bytes"`` or the path of a Hugging Face ``tokenizer.json``: (encode, vocab size).

    Subword tokenizers need the ``tokenizers`` package (``pip install tokenizers``).
    """
    if spec == "bytes":
        return byte_ids, BYTE_VOCAB_SIZE
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer must be 'bytes' or a tokenizer.json file; {spec!r}")
    tokenizer = read_tokenizer_file(path)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return encode, tokenizer.get_vocab_size()


def read_tokenizer_file(path: Path):
    """A ``tokenizers.Tokenizer`` from tokenizer.json, with the file's own truncation and
    padding turned off: many checkpoints ship ``truncation: 128``, which would cut every
    document silently; our readers cut (and count) at the task's max_length instead."""
    try:
        from tokenizers import Tokenizer
    except ImportError as error:
        raise ValueError("subword tokenization needs: pip install tokenizers") from error
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


# Special-token names looked up in a tokenizer.json, RoBERTa's first, then BERT's.
SPECIAL_NAMES = {
    "pad": ("<pad>", "[PAD]"),
    "cls": ("<s>", "[CLS]"),
    "sep": ("</s>", "[SEP]"),
    "mask": ("<mask>", "[MASK]"),
}


class Subword:
    """A Hugging Face ``tokenizer.json`` with its special-token ids and character offsets.

    ``pad``, ``cls``, ``sep`` and ``mask`` are the ids of RoBERTa's ``<pad> <s> </s> <mask>``
    or BERT's ``[PAD] [CLS] [SEP] [MASK]`` (None where the vocabulary has neither);
    ``special_ids`` holds every id the file marks special (never masked by MLM).
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such tokenizer.json")
        self.path = path
        self.tokenizer = read_tokenizer_file(path)
        self.vocab_size = self.tokenizer.get_vocab_size()
        for role, names in SPECIAL_NAMES.items():
            ids = [self.tokenizer.token_to_id(name) for name in names]
            setattr(self, role, next((i for i in ids if i is not None), None))
        decoder = self.tokenizer.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, token in decoder.items() if token.special)

    def require(self, role: str) -> int:
        """The id of special token ``role`` (pad, cls, sep, mask), or a clear error."""
        value = getattr(self, role)
        if value is None:
            names = " or ".join(SPECIAL_NAMES[role])
            raise ValueError(f"{self.path}: the vocabulary has no {names} token")
        return value

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's (start, end) character offsets in ``text``."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, [tuple(span) for span in encoding.offsets]
