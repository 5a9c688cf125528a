"""Command line: ``ernie-sparse <command> ...`` (also ``python -m ernie_sparse``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ernie-sparse",
        description="Block-sparse attention and long-sequence transformers.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ernie-sparse {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = commands.add_parser("bench", help="speed and memory benchmarks")
    bench_kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    from .bench.attention import add_arguments as add_attention_bench

    add_attention_bench(bench_kinds.add_parser("attention", help="attention backends vs length"))
    from .bench.model import add_arguments as add_model_bench

    add_model_bench(bench_kinds.add_parser("model", help="whole models' training step vs length"))
    layout = commands.add_parser("layout", help="render a sparse pattern as a PNG")
    from .patterns.cli import add_arguments as add_layout_arguments

    add_layout_arguments(layout)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"ernie-sparse: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
