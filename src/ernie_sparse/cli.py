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
    _add_data_commands(commands)
    from .training.cli import add_evaluate_arguments, add_train_arguments

    add_train_arguments(commands.add_parser("train", help="train a model from a preset"))
    from .training import pretrain

    pretrain.add_arguments(commands.add_parser("pretrain", help="masked-LM pretraining"))
    add_evaluate_arguments(commands.add_parser("evaluate", help="evaluate a trained run"))
    from .analysis import demo
    from .training import plot

    plot.add_arguments(commands.add_parser("plot", help="loss and accuracy curves of runs"))
    demo.add_arguments(
        commands.add_parser("demo", help="ERNIE-Sparse vs BigBird where sparse attention has a gap")
    )
    from .analysis.cli import add_arguments as add_experiment_arguments

    add_experiment_arguments(
        commands.add_parser("experiment", help="the papers' ablations, sweeps and profiles")
    )
    from .models import convert

    convert.add_arguments(
        commands.add_parser("convert", help="warm-start from a BERT/RoBERTa checkpoint")
    )
    from .training import export

    export.add_arguments(commands.add_parser("export", help="a training run as a HF folder"))
    layout = commands.add_parser("layout", help="render a sparse pattern as a PNG")
    from .patterns.cli import add_arguments as add_layout_arguments

    add_layout_arguments(layout)
    return parser


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="generate, read and describe task data")
    kinds = data.add_subparsers(dest="data_kind", required=True, metavar="KIND")
    from .data import info, listops, pathfinder, probes

    listops.add_arguments(kinds.add_parser("listops", help="generate LRA ListOps TSV files"))
    pathfinder.add_arguments(kinds.add_parser("pathfinder", help="generate LRA Pathfinder images"))
    probe_help = "generate long-range probe tasks (copy-far, match, majority)"
    probes.add_arguments(kinds.add_parser("probe", help=probe_help))
    info.add_arguments(kinds.add_parser("info", help="counts, lengths and labels of a dataset"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, OSError) as error:
        print(f"ernie-sparse: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
