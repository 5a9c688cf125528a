"""``ernie-sparse experiment ...``: the papers' analyses as commands.

ernie-sparse experiment ablation   --task listops --seeds 5 [--scale tiny|paper]
ernie-sparse experiment bottleneck --task probe-copy-far --patterns window,bigbird --seeds 3
ernie-sparse experiment robustness --task listops [--attack-roll 4,8,16]
ernie-sparse experiment hst-route  --task probe-copy-far --seeds 3
ernie-sparse experiment resume     runs/experiments/ablation-listops-tiny [--workers 2]
ernie-sparse experiment memory-profile [--tokens 4096] [--lengths 128,...,2048]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_args import int_list
from ..models.config import parse_overrides
from ..training.config import merge_values
from .experiments import ExperimentSpec, make_spec, spawn_workers, work, write_report
from .experiments.runner import ensure_data, unfinished_runs
from .experiments.spec import PATTERN_FIELDS, PROBE_TASKS, SCALES

TASKS = ("listops", "text", "retrieval", "image", "pathfinder", *PROBE_TASKS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="experiment_kind", required=True, metavar="KIND")
    helps = {
        "ablation": "ERNIE-Sparse Table 5 (components) and Table 6 (HST pooling)",
        "bottleneck": "ERNIE-Sparse Figure 3: accuracy vs global tokens, ST vs HST",
        "robustness": "ERNIE-Sparse Table 7: word-order-shift attack with / without SAOR",
        "hst-route": "is HST's long-range route learned: HST variants x initialization",
    }
    for kind, text in helps.items():
        sub = kinds.add_parser(kind, help=text)
        _add_common(sub)
        if kind == "bottleneck":
            sub.add_argument(
                "--global-tokens", type=int_list, help="default: 2, 1, 0 blocks (128,64,0 at 64)"
            )
            sub.add_argument(
                "--patterns",
                type=lambda text: tuple(text.split(",")),
                help=f"comma-separated, of {', '.join(p for p in PATTERN_FIELDS if p != 'dense')}"
                " (default bigbird)",
            )
        if kind == "hst-route":
            sub.add_argument(
                "--inits",
                type=lambda text: tuple(float(x) for x in text.split(",")),
                help="initialization stds (default 0.02,0.125: BERT's, 1/sqrt(64))",
            )
        if kind == "robustness":
            sub.add_argument(
                "--attack-roll", type=int_list, help="k or k1,k2,... (default: SAOR's roll_tokens)"
            )
        sub.set_defaults(run=run_experiment, kind=kind)
    resume = kinds.add_parser("resume", help="finish an experiment folder's unfinished runs")
    resume.add_argument("folder", type=Path, help="an experiment folder (experiment.json)")
    _add_execution(resume)
    resume.set_defaults(run=run_resume)
    from .memory_profile import add_arguments as add_memory_profile

    add_memory_profile(
        kinds.add_parser("memory-profile", help="BlockBERT section 2.2: activation memory vs N")
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--seeds", type=int, default=1, help="runs per cell (seeds 0..S-1)")
    parser.add_argument("--scale", default="tiny", choices=SCALES, help="configs/lra/TASK-SCALE")
    parser.add_argument("--data", help="the task's data folder (train.data)")
    parser.add_argument("--out", type=Path, help="experiment folder (default runs/experiments/…)")
    _add_execution(parser)
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. train.max_steps=200")


def _add_execution(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1, help="parallel training processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)


def run_experiment(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    if args.data:
        # Absolute, so that workers started elsewhere find it.
        overrides = merge_values(overrides, {"train": {"data": str(Path(args.data).resolve())}})
    spec = make_spec(
        args.kind,
        args.task,
        scale=args.scale,
        seeds=args.seeds,
        overrides=overrides,
        global_tokens=getattr(args, "global_tokens", None),
        attack_roll=getattr(args, "attack_roll", None),
        patterns=getattr(args, "patterns", None),
        inits=getattr(args, "inits", None),
    )
    folder = args.out or Path("runs/experiments") / f"{args.kind}-{args.task}-{args.scale}"
    if (folder / "experiment.json").is_file():
        _check_same_spec(ExperimentSpec.load(folder), spec, folder)
    ensure_data(spec)
    spec.save(folder)
    return _execute(spec, folder, args)


def run_resume(args: argparse.Namespace) -> int:
    return _execute(ExperimentSpec.load(args.folder), args.folder, args)


def _execute(spec: ExperimentSpec, folder: Path, args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    total = len(spec.cells) * len(spec.seeds)
    print(f"{spec.kind} on {spec.task}: {total} runs in {folder}")
    failure = None
    if args.workers > 1:
        try:
            spawn_workers(folder, args.workers, quiet=args.quiet)
        except RuntimeError as error:  # report what did finish, then fail
            failure = str(error)
    else:
        try:
            counts = work(spec, folder, quiet=args.quiet)
        except Exception:  # the error itself follows (main prints it)
            if not args.no_report:
                _print_unfinished(spec, folder, total)
            raise
        print(f"runs: {counts['ran']} trained now, {counts['done']} already done, "
              f"{counts['busy']} held by other processes")  # fmt: skip
    if not args.no_report:
        table = write_report(spec, folder)
        print(f"\n{table}\n\nwrote {folder / 'report.md'}")
    if failure:
        print(f"ernie-sparse: error: {failure}", file=sys.stderr)
    # A worker (--no-report) leaves the folder-wide check to its parent: its siblings
    # are still training the runs it skipped.
    unfinished = not args.no_report and _print_unfinished(spec, folder, total)
    return 1 if failure or unfinished else 0


def _print_unfinished(spec: ExperimentSpec, folder: Path, total: int) -> bool:
    """List the experiment's runs that are not done (on stderr); True when there are."""
    unfinished = unfinished_runs(spec, folder)
    if unfinished:
        lines = "".join(f"\n  {line}" for line in unfinished)
        print(f"ernie-sparse: error: {len(unfinished)} of {total} runs not finished:{lines}\n"
              f"finish them with: ernie-sparse experiment resume {folder}",
              file=sys.stderr)  # fmt: skip
    return bool(unfinished)


def _check_same_spec(saved: ExperimentSpec, wanted: ExperimentSpec, folder: Path) -> None:
    """A folder holds one experiment; more seeds may be added, nothing else may change."""
    mismatch = [
        name
        for name in ("kind", "task", "scale", "cells", "overrides", "attack_rolls", "global_tokens")
        if getattr(saved, name) != getattr(wanted, name)
    ]
    if mismatch:
        raise ValueError(
            f"{folder} holds another experiment (differs in {', '.join(mismatch)}); "
            "use another --out"
        )
