"""An experiment's report from whatever runs are finished: results.json, report.md, PNG."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ...plotting import pyplot, save_figure
from ..plot import plot_runs
from .runner import RESULT, is_done, run_dir
from .spec import (
    PAPER_TABLE5,
    PAPER_TABLE6,
    PAPER_TABLE7,
    TABLE5_KEYS,
    TABLE6_ROWS,
    ExperimentSpec,
)


def collect(spec: ExperimentSpec, folder: Path) -> list[dict]:
    """The result of every finished run."""
    results = []
    for cell in spec.cells:
        for seed in spec.seeds:
            directory = run_dir(folder, cell, seed)
            if is_done(directory):
                results.append(json.loads((directory / RESULT).read_text()))
    return results


def summarize(values: list[float]) -> dict:
    """mean, sample standard deviation (0 for one value) and count; None when empty."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def cell_summaries(spec: ExperimentSpec, results: list[dict]) -> dict[str, dict]:
    """Per cell: test accuracy summary, attacked accuracy per roll (robustness), how
    many seeds learned the task and when, and the reachability of its runs."""
    summaries = {}
    for cell in spec.cells:
        mine = [r for r in results if r["cell"] == cell.key]
        solved = [r["solved_at"] for r in mine if r.get("solved_at") is not None]
        summary = {
            "label": cell.label,
            "test": summarize([r["test_accuracy"] for r in mine]),
            "seeds_done": sorted(r["seed"] for r in mine),
            "solved": len(solved),
            "solved_at": summarize(solved),
            "reachability": _reachability(mine),
            "route_gradient": summarize(
                [
                    r["route_gradient_at_init"]["ratio"]
                    for r in mine
                    if "route_gradient_at_init" in r
                ]
            ),
        }
        if spec.attack_rolls:
            summary["attacked"] = {
                str(roll): summarize([r["test_attacked"][str(roll)] for r in mine])
                for roll in spec.attack_rolls
            }
        summaries[cell.key] = summary
    return summaries


def _reachability(results: list[dict]) -> dict:
    """Mean share of connected block pairs over the runs, and in how many of them the
    probe's far token reaches the readout (None when the task has no such token)."""
    found = [r["reachability"] for r in results if r.get("reachability")]
    if not found:
        return {"fraction": None, "source_reaches": None, "n": 0}
    answers = [f["source_reaches_readout"] for f in found]
    reaches = None if None in answers else sum(answers)
    return {
        "fraction": statistics.fmean(f["fraction"] for f in found),
        "without_hst": statistics.fmean(f["fraction_without_hst"] for f in found),
        "source_reaches": reaches,
        "n": len(found),
    }


def reach_text(summary: dict) -> str:
    """ "38% pairs; far token reaches the readout in 1 of 3 runs" """
    found = summary["reachability"]
    if not found["n"]:
        return "-"
    text = f"{found['fraction']:.0%}"
    if found["without_hst"] != found["fraction"]:
        text += f" ({found['without_hst']:.0%} w/o HST)"
    if found["source_reaches"] is not None:
        text += f", route {found['source_reaches']}/{found['n']}"
    return text


def solved_text(summary: dict) -> str:
    """ "3/3 at 150 ± 50" """
    done = summary["test"]["n"]
    if not done:
        return "-"
    steps = summary["solved_at"]
    if not steps["n"]:
        return f"0/{done}"
    spread = f" ± {steps['std']:.0f}" if steps["n"] > 1 else ""
    return f"{summary['solved']}/{done} at {steps['mean']:.0f}{spread}"


def cell_text(summary: dict) -> str:
    """ "37.8 ± 0.4 (5)" in percent; "37.8 (1)" for one seed (no spread to show yet);
    "-" before any seed has finished."""
    if not summary["n"]:
        return "-"
    if summary["n"] == 1:
        return f"{100 * summary['mean']:.2f} (1)"
    return f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f} ({summary['n']})"


def _paper(values: tuple | None, index: int) -> str:
    return "-" if values is None else f"{values[index]:.2f}"


def ablation_tables(spec: ExperimentSpec, summaries: dict[str, dict]) -> str:
    task = spec.task
    lines = [
        f"Table 5 (test accuracy %, mean ± std (seeds) on {task}):",
        "",
        f"| Model | {task} (ours) | {task} (paper) |",
        "|---|---|---|",
    ]
    for index, key in enumerate(TABLE5_KEYS):
        summary = summaries[key]
        paper = _paper(PAPER_TABLE5.get(task), index)
        lines.append(f"| {summary['label']} | {cell_text(summary['test'])} | {paper} |")
    lines += ["", f"Table 6 (HST pooling, test accuracy % on {task}):", ""]
    lines += [f"| Setting | {task} (ours) | {task} (paper) |", "|---|---|---|"]
    for index, (label, key) in enumerate(TABLE6_ROWS):
        paper = _paper(PAPER_TABLE6.get(task), index)
        lines.append(f"| {label} | {cell_text(summaries[key]['test'])} | {paper} |")
    return "\n".join(lines)


def bottleneck_table(spec: ExperimentSpec, summaries: dict[str, dict]) -> str:
    lines = [
        f"Figure 3 ({spec.task}, test accuracy %, mean ± std (seeds); reachability = share of "
        "block pairs connected, and runs whose far token reaches the readout):",
        "",
        "| pattern | #global tokens | Sparse Transformer (no HST) | reach | HST | reach |",
        "|---|---|---|---|---|---|",
    ]
    for pattern in spec.patterns:
        for count in spec.global_tokens:
            st, hst = summaries[f"st-{pattern}-g{count}"], summaries[f"hst-{pattern}-g{count}"]
            lines.append(
                f"| {pattern} | {count} | {cell_text(st['test'])} | {reach_text(st)} | "
                f"{cell_text(hst['test'])} | {reach_text(hst)} |"
            )
    dense = summaries["dense"]
    lines.append(
        f"| dense (reference) | - | {cell_text(dense['test'])} | {reach_text(dense)} | | |"
    )
    return "\n".join(lines)


def robustness_table(spec: ExperimentSpec, summaries: dict[str, dict]) -> str:
    task, rolls = spec.task, spec.attack_rolls
    paper = PAPER_TABLE7.get(task)
    lines = [
        f"Table 7 ({task}; test accuracy %, mean ± std; Adv k: the local tokens "
        f"{', '.join(f'rolled by {k}' for k in rolls)}):",
        "",
        f"| Model | {task} | "
        + " | ".join(f"Adv {k}" for k in rolls)
        + " | reach |"
        + (f" paper {task} | paper Adv |" if paper else ""),
        "|---|---|" + "---|" * len(rolls) + "---|" + ("---|---|" if paper else ""),
    ]
    for index, summary in enumerate(summaries.values()):
        attacked = " | ".join(cell_text(summary["attacked"][str(k)]) for k in rolls)
        row = f"| {summary['label']} | {cell_text(summary['test'])} | {attacked} | "
        row += f"{reach_text(summary)} |"
        if paper:
            theirs = tuple(f"{v:.2f}" for v in paper[index]) if index < len(paper) else "--"
            row += f" {theirs[0]} | {theirs[1]} |"
        lines.append(row)
    return "\n".join(lines)


def hst_route_table(spec: ExperimentSpec, summaries: dict[str, dict]) -> str:
    lines = [
        f"HST route ({spec.task}; learned = validation accuracy >= 95%, at the step shown "
        "(mean ± std over the runs that learned it); test accuracy %, mean ± std):",
        "",
        "| Model | learned (runs, step) | test accuracy | reach | far / near gradient at init |",
        "|---|---|---|---|---|",
    ]
    for summary in summaries.values():
        ratio = summary["route_gradient"]
        ratio_text = "-" if ratio["n"] == 0 else f"{ratio['mean']:.1e}"
        lines.append(
            f"| {summary['label']} | {solved_text(summary)} | {cell_text(summary['test'])} | "
            f"{reach_text(summary)} | {ratio_text} |"
        )
    return "\n".join(lines)


def plot_bottleneck(spec: ExperimentSpec, summaries: dict[str, dict], path: Path) -> Path | None:
    """Accuracy vs global tokens, ST (blue) and HST (red) per pattern (solid, dashed...),
    error bars = std over seeds."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(5, 4))
    positions = list(range(len(spec.global_tokens)))
    for pattern, style in zip(spec.patterns, ("-", "--", ":", "-."), strict=False):
        for prefix, label, color in (("st", "Sparse Transformer", "C0"), ("hst", "HST", "C3")):
            points = [summaries[f"{prefix}-{pattern}-g{g}"]["test"] for g in spec.global_tokens]
            shown = [(x, p) for x, p in zip(positions, points, strict=True) if p["n"]]
            if shown:
                axis.errorbar(
                    [x for x, _ in shown],
                    [p["mean"] for _, p in shown],
                    yerr=[p["std"] for _, p in shown],
                    color=color, linestyle=style, marker="o", capsize=4,
                    label=f"{label} ({pattern})",
                )  # fmt: skip
    dense = summaries["dense"]["test"]
    if dense["n"]:
        axis.axhline(dense["mean"], color="0.4", linestyle=":", label="dense attention")
    axis.set_xticks(positions, [str(g) for g in spec.global_tokens])
    axis.set_xlabel("#global tokens")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"{spec.task}: bottleneck (error bar = std over seeds)")
    axis.grid(True, alpha=0.3)
    if axis.get_lines():
        axis.legend(fontsize=8)
    return save_figure(fig, path)


def plot_bars(spec: ExperimentSpec, summaries: dict[str, dict], path: Path) -> Path | None:
    """One bar per cell (mean test accuracy, std error bar); attacked bars beside them."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(max(5, 1.2 * len(summaries)), 4))
    labels = [s["label"] for s in summaries.values()]
    series = [(lambda s: s["test"], "clean")] + [
        (lambda s, k=str(k): s["attacked"][k], f"rolled by {k}") for k in spec.attack_rolls
    ]
    width = 0.8 / len(series)
    for index, (pick, name) in enumerate(series):
        values = [pick(s) for s in summaries.values()]
        axis.bar(
            [i + index * width for i in range(len(values))],
            [v["mean"] or 0.0 for v in values],
            width=width,
            yerr=[v["std"] or 0.0 for v in values],
            capsize=3,
            label=name,
        )
    axis.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))], labels)
    axis.tick_params(axis="x", labelrotation=30)
    axis.set_ylabel("test accuracy")
    axis.set_title(f"{spec.task}: {spec.kind}")
    axis.legend()
    return save_figure(fig, path)


def plot_first_seed_curves(spec: ExperimentSpec, folder: Path, path: Path) -> Path | None:
    """Training NLL and validation accuracy per step of every cell's first finished seed."""
    runs, labels = [], []
    for cell in spec.cells:
        done = [s for s in spec.seeds if is_done(run_dir(folder, cell, s))]
        if done:
            runs.append(run_dir(folder, cell, done[0]))
            labels.append(f"{cell.label} (seed {done[0]})")
    return plot_runs(runs, path, labels=labels) if runs else None


PLOTS = {"bottleneck": plot_bottleneck}

TABLES = {
    "ablation": ablation_tables,
    "bottleneck": bottleneck_table,
    "robustness": robustness_table,
    "hst-route": hst_route_table,
}


def write_report(spec: ExperimentSpec, folder: Path) -> str:
    """(Re)write results.json, report.md and <kind>.png from the finished runs; returns the
    table text."""
    folder = Path(folder)
    results = collect(spec, folder)
    summaries = cell_summaries(spec, results)
    table = TABLES[spec.kind](spec, summaries)
    plot = PLOTS.get(spec.kind, plot_bars)
    picture = plot(spec, summaries, folder / f"{spec.kind}.png")
    if spec.kind == "hst-route":  # the learning curves of the first seed, per cell
        picture = plot_first_seed_curves(spec, folder, folder / "curves.png") or picture
    total = len(spec.cells) * len(spec.seeds)
    payload = {"experiment": spec.kind, "task": spec.task, "scale": spec.scale}
    payload.update(runs_done=len(results), runs_total=total, cells=summaries, runs=results)
    (folder / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    overrides = json.dumps(spec.overrides) if spec.overrides else "none"
    report = [
        f"# {spec.kind}: {spec.task} ({spec.scale} scale)",
        "",
        f"Runs finished: {len(results)} of {total} ({len(spec.cells)} cells x "
        f"{len(spec.seeds)} seeds). Preset `{spec.preset}`, overrides: {overrides}.",
        "",
        table,
        "",
        f"![{spec.kind}]({picture.name})" if picture else "",
        "",
    ]
    (folder / "report.md").write_text("\n".join(report))
    return table
