"""``ernie-sparse plot RUN_DIR ...``: training loss and validation accuracy curves to PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..plotting import pyplot, save_figure
from ..training.run_dir import RunDir


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of a run's metrics.jsonl."""
    run = RunDir(run_dir)
    if not run.metrics.is_file():
        raise FileNotFoundError(f"{run.metrics}: not a run directory (no metrics.jsonl)")
    records = run.read_metrics()  # a half-written last line (a kill mid-write) is left out
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_accuracy" in r]
    return train, evals


def passes_per_step(run_dir: Path) -> int:
    """2 when the run trained with SAOR, else 1 (runs from before ``nll`` was logged per
    pass summed both passes' NLL in it)."""
    config = RunDir(run_dir).config_values()
    return 2 if config["model"]["saor"]["alpha"] > 0 else 1


def training_nll(record: dict, run_dir: Path) -> float:
    """A training record's NLL per forward pass: ``nll`` as logged (a run with a second
    pass also logs ``nll_pass2``); an older SAOR run's ``nll`` summed both passes."""
    if "nll_pass2" in record:
        return record["nll"]
    return record["nll"] / passes_per_step(run_dir)


def plot_runs(run_dirs: list[Path], path: Path, *, labels: list[str] | None = None) -> Path:
    plt = pyplot()
    labels = labels or [Path(d).name for d in run_dirs]
    fig, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (run_dir, label) in enumerate(zip(run_dirs, labels, strict=True)):
        train, evals = read_metrics(run_dir)
        color = f"C{index}"
        nll = [training_nll(r, run_dir) for r in train]
        loss_axis.plot([r["step"] for r in train], nll, color=color, label=label)
        steps = [r["step"] for r in evals]
        accuracy_axis.plot(
            steps, [r["val_accuracy"] for r in evals], "o-", color=color, label=label
        )
    loss_axis.set(xlabel="step", ylabel="training NLL per forward pass", title="loss")
    accuracy_axis.set(xlabel="step", ylabel="validation accuracy", title="accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", help="run directories")
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="PNG to write")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(f"wrote {plot_runs(args.run_dirs, args.out)}")
    return 0
