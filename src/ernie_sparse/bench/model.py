"""``ernie-sparse bench model``: training-step time and peak memory of whole models vs length.

The dense Transformer, BigBird and ERNIE-Sparse (BigBird pattern + HST) as
sequence classifiers at LRA-Text size (ERNIE-Sparse Table 11: hidden 256,
4 layers, 4 heads, MLP 1024), one forward + backward of the classification
loss per step, like the paper's Figure 4. SAOR is left out of ``ernie-sparse``:
it is a second pass of the same model (twice the step) and only at training
time; ``ernie-sparse+saor`` measures it when asked for. ``HST overhead`` in
the table is ernie-sparse time / bigbird time - 1.

Figure 4 goes "until out of memory": ``--memory-cap MiB`` stops a model at the
first length whose peak memory exceeds the cap -- measured, or predicted from the
model's two previous lengths (a power law) so that a step that would exhaust the
host is never started -- and records it as "capped"; a real out-of-memory error
(CUDA, or a failed CPU allocation) is recorded as "oom". Either way the model is
not run at longer lengths. ``--inference-grid B1,B2,...`` times forward passes
without gradients over batch x length instead (BlockBERT Table 5, with
``--models dense,blockbert-2,blockbert-3``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..cli_args import int_list, str_list
from ..models import ModelConfig, SequenceClassifier, preset
from ..objectives import saor_forward
from .common import (
    device_name,
    is_out_of_memory,
    save_time_memory_figure,
    synchronize,
    time_memory_cell,
    time_memory_figure,
    write_results,
)
from .memory import peak_memory_mb

FULL_SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
QUICK_SEQ_LENS = (1024, 2048, 4096)


@dataclass(frozen=True)
class BenchModel:
    """One model of the bench: its preset and what the bench does differently with it."""

    preset: str  # models.presets name
    overrides: Callable[[int], dict[str, Any]] | None = None  # num_heads -> preset overrides
    quadratic: bool = False  # all pairs: "skipped" past dense_max_len, no memory-growth column


def _blockbert_parts(parts: int) -> Callable[[int], dict[str, Any]]:
    """BlockBERT with n = ``parts`` permutations (its Table 5), the heads spread evenly."""
    return lambda heads: {"pattern_params": {"head_split": _even_split(parts, heads)}}


BENCH_MODELS: dict[str, BenchModel] = {
    "dense": BenchModel("dense", quadratic=True),
    "bigbird": BenchModel("bigbird"),
    "ernie-sparse": BenchModel("ernie-sparse-no-saor"),
    "ernie-sparse+saor": BenchModel("ernie-sparse"),
    "blockbert-2": BenchModel("blockbert", overrides=_blockbert_parts(2)),
    "blockbert-3": BenchModel("blockbert", overrides=_blockbert_parts(3)),
}
MODELS = tuple(BENCH_MODELS)
DEFAULT_MODELS = ("dense", "bigbird", "ernie-sparse")
PRESET_OF = {name: model.preset for name, model in BENCH_MODELS.items()}
HST_OVERHEAD = ("ernie-sparse", "bigbird")  # the table's "HST overhead": time ratio - 1
STOPPING = ("oom", "capped")  # statuses after which a model is not run at longer lengths


@dataclass
class ModelBenchConfig:
    seq_lens: tuple[int, ...] = FULL_SEQ_LENS  # input lengths n
    models: tuple[str, ...] = DEFAULT_MODELS  # see MODELS
    batch: int = 1  # sequences per step
    hidden_size: int = 256  # LRA Text (Table 11)
    num_layers: int = 4
    num_heads: int = 4
    mlp_size: int = 1024
    block_size: int = 64  # attention block; 2 global blocks, 3-block window, 3 random
    vocab_size: int = 257  # byte-level, as LRA Text
    dense_max_len: int = 8192  # dense (quadratic) only up to here; longer rows say "skipped"
    repeats: int = 5  # timed rounds (one step of each model per round)
    warmup: int = 1  # untimed rounds first
    max_seconds: float = 20.0  # per model: stop after this long (at least 3 rounds)
    memory: bool = True  # one more step under the peak-memory tracker
    memory_cap_mb: float = 0.0  # peak (measured or predicted) above this = "capped"; 0 = none
    inference_batches: tuple[int, ...] = ()  # non-empty: time no-grad forwards, batch x length
    device: str = "cpu"
    seed: int = 0


def model_config(name: str, config: ModelBenchConfig) -> ModelConfig:
    """The model ``name`` at the bench's size; ``name@backend`` (``ernie-sparse@fused``)
    runs its attention with that backend instead of ``auto``."""
    name, _, backend = name.partition("@")
    if name not in BENCH_MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    model = BENCH_MODELS[name]
    extra = {"attention_backend": backend} if backend else {}
    if model.overrides is not None:
        extra.update(model.overrides(config.num_heads))
    return preset(
        model.preset,
        **extra,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        mlp_size=config.mlp_size,
        block_size=config.block_size,
        max_positions=max(config.seq_lens),
        dropout=0.0,  # timing without dropout's random masks
        attention_dropout=0.0,
    )


def _even_split(parts: int, heads: int) -> str:
    """BlockBERT head split: ``heads`` spread over ``parts`` permutations ("2:1" for 3, 2)."""
    if heads < parts:
        raise ValueError(f"blockbert-{parts} needs at least {parts} heads, got {heads}")
    return ":".join(str(heads // parts + (i < heads % parts)) for i in range(parts))


def _quadratic(name: str) -> bool:
    """A model that scores all pairs (by its exact name: ``dense@blocked`` is not looked up)."""
    model = BENCH_MODELS.get(name)
    return model is not None and model.quadratic


def predict_peak_mb(points: list[tuple[int, float]], seq_len: int) -> float | None:
    """Peak memory at ``seq_len`` extrapolated from the last two (length, MiB) points as
    ``c * n^p`` through both; None with fewer than two points. p can err both ways (fixed
    overheads make it low, a pattern still dense at short lengths high); a prediction
    under the cap is checked by measuring before the model is timed."""
    if len(points) < 2:
        return None
    (n1, m1), (n2, m2) = points[-2], points[-1]
    if n2 == n1 or m1 <= 0 or m2 <= 0:
        return None
    power = max(0.0, math.log(m2 / m1) / math.log(n2 / n1))
    return m2 * (seq_len / n2) ** power


def _training_step(model: SequenceClassifier, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """The loss each preset trains with (one pass unless its SAOR alpha > 0), then backward."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        saor_forward(model, batch).loss.backward()

    return step


def _prepare(name: str, seq_len: int, config: ModelBenchConfig, batch: int) -> Callable[[], None]:
    """One training step of the model (or, for the inference grid, one no-grad forward)."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = SequenceClassifier(model_config(name, config), num_labels=2).to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    ids = torch.randint(1, config.vocab_size, (batch, seq_len), generator=generator).to(device)
    if config.inference_batches:
        model.eval()

        @torch.no_grad()
        def forward() -> None:
            model(input_ids=ids)

        return forward
    labels = torch.zeros(batch, dtype=torch.long)
    return _training_step(model, {"input_ids": ids, "labels": labels.to(device)})


def _out_of_memory(run: Callable[[], object]) -> tuple[object, bool]:
    """(run(), False), or (None, True) when it ran out of memory (the cache is emptied)."""
    try:
        return run(), False
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_out_of_memory(error):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None, True


def _precheck(name: str, row: dict, config: ModelBenchConfig, *, points, stopped) -> str | None:
    """The status of a model that will not run at this point, else None."""
    batch, seq_len = row["batch"], row["seq_len"]
    if name in stopped and batch >= stopped[name][1]:
        return stopped[name][0]  # it ran out of memory (or over the cap) at a smaller size
    if _quadratic(name) and seq_len > config.dense_max_len:
        return "skipped"
    if config.memory_cap_mb:
        axis = batch if config.inference_batches else seq_len
        predicted = predict_peak_mb(points, axis)
        if predicted is not None and predicted > config.memory_cap_mb:
            row["predicted_peak_mb"] = round(predicted, 1)
            return "capped"
    return None


def bench_length(
    seq_len: int,
    config: ModelBenchConfig,
    *,
    batch: int | None = None,
    history: dict[str, list[tuple[int, float]]] | None = None,
    stopped: dict[str, tuple[str, int]] | None = None,
) -> list[dict]:
    """One row per model at one length (and batch). The models' steps are timed in turns
    (one step of each per round), so drift of a shared machine hits them alike.
    ``history``: each model's earlier (length or batch, peak MiB) points, for the cap's
    prediction; ``stopped``: model -> (status, batch) of an earlier oom / cap."""
    device = torch.device(config.device)
    batch = batch or config.batch
    history, stopped = history or {}, stopped or {}
    rows = {
        name: {
            "model": name,
            "seq_len": seq_len,
            "batch": batch,
            "median_ms": None,
            "peak_mem_mb": None,
        }
        for name in config.models
    }
    steps = {}
    for name in config.models:
        status = _precheck(name, rows[name], config, points=history.get(name, []), stopped=stopped)
        if status is None:
            steps[name], failed = _out_of_memory(
                lambda name=name: _prepare(name, seq_len, config, batch)
            )
            status = "oom" if failed else None
        if status is not None:
            rows[name]["status"] = status
            steps.pop(name, None)
    if config.memory_cap_mb:  # measure first: a step over the cap is not timed
        for name in list(steps):
            _measure_peak(rows[name], steps, name, device, cap=config.memory_cap_mb)
    times = _time_in_turns(steps, rows, config, device)
    for name in list(steps):
        rows[name]["median_ms"] = round(statistics.median(times[name]), 1)
        rows[name]["status"] = "ok"
        if config.memory and rows[name]["peak_mem_mb"] is None:
            _measure_peak(rows[name], steps, name, device, cap=0.0)
    return list(rows.values())


def _measure_peak(row: dict, steps: dict, name: str, device: torch.device, *, cap: float) -> None:
    peak, failed = _out_of_memory(lambda: peak_memory_mb(steps[name], device))
    if failed:
        row["status"] = "oom"
        row["median_ms"] = None
    else:
        row["peak_mem_mb"] = round(peak, 1)
        if cap and peak > cap:
            row["status"] = "capped"
    if failed or (cap and peak > cap):
        del steps[name]


def _time_in_turns(steps: dict, rows: dict, config: ModelBenchConfig, device: torch.device):
    times: dict[str, list[float]] = {name: [] for name in steps}
    started = time.perf_counter()
    for round_index in range(config.warmup + config.repeats):
        for name in list(steps):
            elapsed, failed = _out_of_memory(lambda name=name: _time_ms(steps[name], device))
            if failed:
                rows[name]["status"] = "oom"
                del steps[name]
            elif round_index >= config.warmup:
                times[name].append(elapsed)
        timed = round_index + 1 - config.warmup
        if timed >= 3 and time.perf_counter() - started > config.max_seconds * len(steps):
            break
    return times


def _time_ms(step: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def run_bench(config: ModelBenchConfig, *, log: Callable[[str], None] = print) -> dict:
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available here")
    for name in config.models:
        model_config(name, config)  # refuse unknown models before any work
    meta = {
        "device": device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": asdict(config),
    }
    log(f"device {meta['device']} ({device.type}), {meta['threads']} threads")
    rows = []
    stopped: dict[str, tuple[str, int]] = {}
    for seq_len in config.seq_lens:
        history: dict[str, list[tuple[int, float]]] = {}  # along the batch axis at this n
        for batch in config.inference_batches or (config.batch,):
            points = history if config.inference_batches else _length_history(rows)
            for row in bench_length(seq_len, config, batch=batch, history=points, stopped=stopped):
                rows.append(row)
                log(_format_row(row))
                _remember(row, history, stopped)
    return {"meta": meta, "rows": rows}


def _length_history(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    points: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row["peak_mem_mb"] and row["status"] == "ok":
            points.setdefault(row["model"], []).append((row["seq_len"], row["peak_mem_mb"]))
    return points


def _remember(row: dict, history: dict, stopped: dict) -> None:
    name = row["model"]
    if row["status"] in STOPPING and name not in stopped:
        stopped[name] = (row["status"], row["batch"])
    if row["status"] == "ok" and row["peak_mem_mb"]:
        history.setdefault(name, []).append((row["batch"], row["peak_mem_mb"]))


def _format_row(row: dict) -> str:
    head = f"  b={row['batch']:>3} n={row['seq_len']:>6} {row['model']:>17}:"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    memory = "-" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:.1f} MiB"
    return f"{head} {row['median_ms']:>10.1f} ms {memory:>14}"


def summary_table(result: dict) -> str:
    """Markdown: time (peak MiB) per model and length, HST overhead, memory growth."""
    rows = result["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    by_key = {(r["seq_len"], r["model"]): r for r in rows}
    lengths = list(dict.fromkeys(r["seq_len"] for r in rows))
    header = ["n", *(f"{m} ms (MiB)" for m in models)]
    has_hst = set(HST_OVERHEAD) <= set(models)
    if has_hst:
        header.append("HST overhead")
    header += [f"{m} memory vs n/2" for m in models if not _quadratic(m)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, seq_len in enumerate(lengths):
        cells = [str(seq_len)] + [
            time_memory_cell(by_key.get((seq_len, m)), decimals=0) for m in models
        ]
        if has_hst:
            cells.append(_ratio(by_key, seq_len, *HST_OVERHEAD, minus_one=True))
        previous = lengths[index - 1] if index else None
        for model in (m for m in models if not _quadratic(m)):
            cells.append(_growth(by_key, model, seq_len, previous))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inference_table(result: dict) -> str:
    """BlockBERT Table 5: seconds per no-grad forward, one column per batch x length."""
    rows = result["rows"]
    sizes = list(dict.fromkeys((r["batch"], r["seq_len"]) for r in rows))
    by_key = {(r["model"], r["batch"], r["seq_len"]): r for r in rows}
    lines = [
        "| model | " + " | ".join(f"{b} x {n}" for b, n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = []
        for batch, seq_len in sizes:
            row = by_key.get((model, batch, seq_len))
            if row is None:
                cells.append("-")
            elif row["status"] != "ok":
                cells.append(row["status"].upper() if row["status"] == "oom" else row["status"])
            else:
                cells.append(f"{row['median_ms'] / 1e3:.4f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(by_key: dict, seq_len: int, top: str, bottom: str, *, minus_one: bool) -> str:
    a, b = by_key.get((seq_len, top)), by_key.get((seq_len, bottom))
    if not (a and b and a["median_ms"] and b["median_ms"]):
        return "-"
    ratio = a["median_ms"] / b["median_ms"]
    return f"{(ratio - 1) * 100:+.1f}%" if minus_one else f"{ratio:.2f}x"


def _growth(by_key: dict, model: str, seq_len: int, previous: int | None) -> str:
    """Peak memory ratio to the previous length (2.00x for linear growth when n doubles)."""
    if previous is None:
        return "-"
    now, before = by_key.get((seq_len, model)), by_key.get((previous, model))
    if not (now and before and now["peak_mem_mb"] and before["peak_mem_mb"]):
        return "-"
    return f"{now['peak_mem_mb'] / before['peak_mem_mb']:.2f}x (n {seq_len / previous:.0f}x)"


def plot_bench(result: dict, path: Path) -> Path | None:
    """Time and memory vs length, log-log, one line per model."""
    figure = time_memory_figure()
    if figure is None:
        return None
    fig, axes = figure
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    for index, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        points = [r for r in rows if r["model"] == model]
        lengths = [r["seq_len"] for r in points]
        style = {"color": f"C{index}", "marker": "o", "label": model}
        axes[0].plot(lengths, [r["median_ms"] for r in points], **style)
        if all(r["peak_mem_mb"] for r in points):
            axes[1].plot(lengths, [r["peak_mem_mb"] for r in points], **style)
    meta = result["meta"]
    title = f"models at LRA-Text size, {meta['device']}, {meta['threads']} threads"
    save_time_memory_figure(fig, axes, time_label="forward + backward (ms)", title=title, path=path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ModelBenchConfig()
    parser.add_argument("--quick", action="store_true", help=f"lengths {QUICK_SEQ_LENS}")
    parser.add_argument("--seq-lens", type=int_list, help="comma-separated input lengths")
    parser.add_argument(
        "--models",
        type=str_list,
        help=f"from {', '.join(MODELS)}; NAME@BACKEND picks its attention backend "
        "(ernie-sparse@fused, ernie-sparse@blocked)",
    )
    for name in ("batch", "hidden_size", "num_layers", "num_heads", "mlp_size", "block_size"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=getattr(defaults, name))
    parser.add_argument("--dense-max-len", type=int, default=defaults.dense_max_len)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory runs")
    parser.add_argument(
        "--memory-cap", type=float, default=0.0, help="MiB; a model over it is 'capped' from there"
    )
    parser.add_argument(
        "--inference-grid", type=int_list, help="batch sizes: time no-grad forwards (B x N grid)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/bench-model", help="output directory")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = ModelBenchConfig(
        seq_lens=args.seq_lens or (QUICK_SEQ_LENS if args.quick else FULL_SEQ_LENS),
        models=tuple(args.models or DEFAULT_MODELS),
        batch=args.batch,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        mlp_size=args.mlp_size,
        block_size=args.block_size,
        dense_max_len=args.dense_max_len,
        repeats=args.repeats,
        memory=not args.no_memory,
        memory_cap_mb=args.memory_cap,
        inference_batches=tuple(args.inference_grid or ()),
        device=args.device,
    )
    result = run_bench(config)
    if config.inference_batches:
        table, plot = inference_table(result), lambda result, path: None
    else:
        table, plot = summary_table(result), plot_bench
    write_results(Path(args.out), result, table=table, plot=plot, name="model.png")
    return 0
