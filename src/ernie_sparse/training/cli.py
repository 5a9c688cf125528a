"""``ernie-sparse train`` and ``ernie-sparse evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_args import merge_nested, positive_int
from ..models.config import parse_overrides
from .config import RunConfig, load_run_config, preset_values, resolve
from .evaluate import evaluate_run
from .loop import Run
from .resume import apply_resume_changes, check_source
from .run_dir import RunDir


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="a preset under configs/ (e.g. lra/listops-tiny)")
    parser.add_argument("--config", type=Path, help="a YAML file (model/train sections)")
    parser.add_argument("--data", help="the task's data folder or file (train.data)")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--max-steps", type=int, help="train.max_steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=0.01")
    parser.set_defaults(run=run_train)


def command_line_values(args: argparse.Namespace) -> dict:
    """What this command line asks for: ``key=value`` overrides, --data, --max-steps."""
    overrides = parse_overrides(args.overrides)
    unknown = sorted(set(overrides) - {"model", "train"})
    if unknown:
        raise ValueError(
            f"override section(s) {', '.join(unknown)} unknown; keys start with model. or train."
        )
    if args.data:
        overrides = merge_nested(overrides, {"train": {"data": args.data}})
    if args.max_steps is not None:
        overrides = merge_nested(overrides, {"train": {"max_steps": args.max_steps}})
    return overrides


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """A new run: the preset or config file + the command line. A resumed one: the run's
    saved config.yaml with what ``resume.apply_resume_changes`` allows (said in lines)."""
    config, _ = run_config_and_notes(args)
    return config


def run_config_and_notes(args: argparse.Namespace) -> tuple[RunConfig, list[str]]:
    """The run's config and the lines saying what a resume changes in it."""
    saved = RunDir(args.out).config
    if args.resume and saved.is_file():
        return resumed_config(args, saved)
    if bool(args.preset) == bool(args.config):
        if args.resume:
            raise ValueError(
                f"{args.out} holds no config.yaml to resume from; give --preset NAME or "
                "--config FILE to start the run"
            )
        raise ValueError("give exactly one of --preset NAME or --config FILE")
    if args.config:
        check_config_file(Path(args.config))
    source = str(args.preset) if args.preset else str(Path(args.config).resolve())
    config = resolve(merge_nested(preset_values(str(args.config or args.preset)),
                                  command_line_values(args)))  # fmt: skip
    config.source = source
    return config, []


def check_config_file(path: Path) -> None:
    """--config names a YAML file that exists (a preset name goes to --preset)."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"--config {path}: the file {what} (a preset goes to --preset)")
    if path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"--config {path}: expected a .yaml or .yml file")


def resumed_config(args: argparse.Namespace, saved: Path) -> tuple[RunConfig, list[str]]:
    run = load_run_config(saved)
    asked = command_line_values(args)
    if args.preset and args.config:
        raise ValueError("give at most one of --preset NAME or --config FILE")
    config, notes = apply_resume_changes(run, asked, run_dir=args.out)
    if args.preset or args.config:
        flag = "--preset" if args.preset else "--config"
        given = str(args.preset or args.config)
        notes += check_source(config, given, flag=flag, asked=asked, run_dir=args.out)
    return config, notes


def run_train(args: argparse.Namespace) -> int:
    config, notes = run_config_and_notes(args)
    run = Run(config, args.out, resume=args.resume, quiet=args.quiet, notes=notes)
    final = run.train()
    if run.world.is_main:
        print(json.dumps({"step": run.state.step, **final}))
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (config.yaml + weights)")
    parser.add_argument("--data", help="data folder or file (default: the run's train.data)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument(
        "--weights", default="best", help="best, final, or a weights file in the run folder"
    )
    parser.add_argument("--attack", help="roll=K: the word-order-shift attack (section 5.2)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="examples per batch")
    parser.set_defaults(run=run_evaluate)


def parse_attack(text: str | None) -> int | None:
    """``roll=K`` -> K (the word-order-shift attack rolls local tokens by K)."""
    if text is None:
        return None
    name, _, value = text.partition("=")
    if name != "roll" or not value.lstrip("-").isdigit():
        raise ValueError(f"--attack must look like roll=K (an integer K), got {text!r}")
    return int(value)


def run_evaluate(args: argparse.Namespace) -> int:
    result = evaluate_run(
        args.run_dir,
        split=args.split,
        data=args.data,
        weights=args.weights,
        roll=parse_attack(args.attack),
        batch_size=args.batch_size,
    )
    print(json.dumps(result))
    return 0
