"""Command line: ``ernie-sparse <command> ...`` (also ``python -m ernie_sparse``).

Every command takes ``--log-level`` (default info: warnings, what reading data cut or
skipped, a line per evaluation, all on stderr), ``key=value`` overrides anywhere on the
line, and ends quietly when its output pipe closes (``ernie-sparse ... | head``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
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
    from .bench.targets import add_arguments as add_targets

    add_targets(bench_kinds.add_parser("check-targets", help="the GPU acceptance targets"))
    _add_data_commands(commands)
    from .training.cli import add_evaluate_arguments, add_train_arguments

    add_train_arguments(commands.add_parser("train", help="train a model from a preset"))
    from .training import pretrain

    pretrain.add_arguments(commands.add_parser("pretrain", help="masked-LM pretraining"))
    add_evaluate_arguments(commands.add_parser("evaluate", help="evaluate a trained run"))
    from .analysis import demo, plot

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
    from .training import predict

    predict.add_arguments(commands.add_parser("predict", help="a trained run's predictions"))
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
    try:
        parser = build_parser()
        add_log_level(parser)
        try:
            args = parse_arguments(parser, argv)
        except SystemExit:  # --help, --version or a usage error: printed, maybe into a pipe
            sys.stdout.flush()
            raise
        configure_logging(args.log_level)
        try:
            code = int(args.run(args) or 0)
        except BrokenPipeError:
            raise
        except (ValueError, TypeError, OSError) as error:
            print(f"ernie-sparse: error: {error}", file=sys.stderr)
            return 2
        finally:
            from .training.distributed import close_world

            close_world()
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # `ernie-sparse ... | head`: the reader has all it wanted
        return _closed_stdout()


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def add_log_level(parser: argparse.ArgumentParser, *, top: bool = True) -> None:
    """``--log-level`` on the command and every subcommand, so it may come anywhere."""
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.lower,
        default="info" if top else argparse.SUPPRESS,  # a subcommand's keeps the top's
        help="messages shown on stderr (default info: warnings, truncation counts, "
        "one line per evaluation)",
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in dict.fromkeys(action.choices.values()):
                add_log_level(subparser, top=False)


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """``parse_args``, except that ``key=value`` overrides may come anywhere on the line
    (argparse takes only the first run of them, before or between options)."""
    args, extra = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    if isinstance(overrides, list):
        kept = [item for item in extra if "=" in item and not item.startswith("-")]
        overrides.extend(kept)
        extra = [item for item in extra if item not in kept]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def configure_logging(level: str) -> None:
    """The package's log lines (``ernie_sparse.*``) on stderr from ``level`` up (other
    libraries' logging is left as Python has it). Replaces an earlier call's handler, so
    ``main`` can run many times in one process."""
    logger = logging.getLogger("ernie_sparse")
    for handler in list(logger.handlers):
        if getattr(handler, "ernie_sparse_cli", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    handler.setFormatter(logging.Formatter(prefix + LOG_FORMAT))
    handler.ernie_sparse_cli = True
    logger.addHandler(handler)
    logger.setLevel(level.upper())


def _closed_stdout() -> int:
    """Point stdout at /dev/null so the interpreter's final flush finds no closed pipe;
    exit as a process killed by SIGPIPE would (128 + 13), with no message."""
    with contextlib.suppress(OSError, ValueError):  # stdout is no file (captured): no flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


if __name__ == "__main__":
    raise SystemExit(main())
