"""Command-line value types shared by every command (a neutral module: any layer's
CLI may import it)."""

from __future__ import annotations

import argparse
from typing import Any


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def str_list(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def merge_nested(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, nested mappings merged key by key (``hst.pooling=max`` over a
    preset keeps the preset's other ``hst`` values)."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merge_nested(merged[key], value)
        merged[key] = value
    return merged
