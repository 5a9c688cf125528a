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
    try:
        from tokenizers import Tokenizer
    except ImportError as error:
        raise ValueError("subword tokenization needs: pip install tokenizers") from error
    tokenizer = Tokenizer.from_file(str(path))

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return encode, tokenizer.get_vocab_size()
