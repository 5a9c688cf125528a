"""``ernie-sparse layout PATTERN ...``: draw a pattern's layout to a PNG."""

from __future__ import annotations

import argparse

import torch

from .registry import PATTERNS, make_layout
from .render import render_layout


def _parse_value(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        return text


def parse_params(items: list[str]) -> dict[str, object]:
    """``["num_random=3", "head_split=10:2"]`` -> ``{"num_random": 3, "head_split": "10:2"}``."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"pattern parameter {item!r} must look like key=value")
        params[key] = _parse_value(value)
    return params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", choices=sorted(PATTERNS))
    parser.add_argument("params", nargs="*", metavar="KEY=VALUE", help="pattern parameters")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    layout = make_layout(
        args.pattern,
        seq_len=args.seq_len,
        block_size=args.block_size,
        num_heads=args.heads,
        generator=torch.Generator().manual_seed(args.seed),
        **parse_params(args.params),
    )
    title = f"{args.pattern} N={args.seq_len} block={args.block_size}"
    path = render_layout(layout, args.out, title=title)
    density = layout.float().mean().item()
    print(f"wrote {path}: layout {tuple(layout.shape)}, density {density:.1%}")
    return 0
