"""``ernie-sparse train`` and ``ernie-sparse evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from safetensors.torch import load_file

from ..analysis import WordOrderShift
from ..models.config import parse_overrides
from .config import RunConfig, merge_values, preset_values, resolve
from .distributed import init_world
from .loop import Run
from .tasks import get_task


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


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    if args.resume and (args.out / "config.yaml").is_file() and not (args.preset or args.config):
        values = yaml.safe_load((args.out / "config.yaml").read_text())
        return RunConfig.from_dict(values)
    if bool(args.preset) == bool(args.config):
        raise ValueError("give exactly one of --preset NAME or --config FILE")
    values = preset_values(str(args.config or args.preset))
    overrides = parse_overrides(args.overrides)
    if args.data:
        overrides = merge_values(overrides, {"train": {"data": args.data}})
    if args.max_steps is not None:
        overrides = merge_values(overrides, {"train": {"max_steps": args.max_steps}})
    return resolve(merge_values(values, overrides))


def run_train(args: argparse.Namespace) -> int:
    run = Run(run_config_from_args(args), args.out, resume=args.resume, quiet=args.quiet)
    final = run.train()
    if run.world.is_main:
        print(json.dumps({"step": run.state.step, **final}))
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (config.yaml + weights)")
    parser.add_argument("--data", help="data folder or file (default: the run's train.data)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--weights", default="best.safetensors", help="file in the run dir")
    parser.add_argument("--attack", help="roll=K: the word-order-shift attack (section 5.2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.set_defaults(run=run_evaluate)


def parse_attack(text: str | None, num_global: int) -> WordOrderShift | None:
    if text is None:
        return None
    name, _, value = text.partition("=")
    if name != "roll" or not value.lstrip("-").isdigit():
        raise ValueError(f"--attack must look like roll=K (an integer K), got {text!r}")
    return WordOrderShift(shift=int(value), num_global=num_global)


def run_evaluate(args: argparse.Namespace) -> int:
    config_path = args.run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not a run directory")
    config = RunConfig.from_dict(yaml.safe_load(config_path.read_text()))
    if args.data:
        config.train.data = args.data
    task = get_task(config.train.task)
    dataset = task.read(config.train, args.split)
    model = task.build(config.model, dataset.info)
    weights = args.run_dir / args.weights
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such weights file in the run directory")
    model.load_state_dict(load_file(str(weights)))
    attack = parse_attack(args.attack, config.model.num_global)
    world = init_world()
    model.to(world.device)
    metrics = task.evaluate(
        model,
        dataset,
        batch_size=args.batch_size,
        world=world,
        collate=task.collate,
        transform=attack,
    )
    result = {"split": args.split, "attack": args.attack, "weights": args.weights, **metrics}
    suffix = f"-{args.attack.replace('=', '')}" if args.attack else ""
    (args.run_dir / f"eval-{args.split}{suffix}.json").write_text(json.dumps(result) + "\n")
    print(json.dumps(result))
    return 0
