"""``ernie-sparse bench model``: training-step time and peak memory of whole models vs length.

The dense Transformer, BigBird and ERNIE-Sparse (BigBird pattern + HST) as
sequence classifiers, by default at LRA-Text size (ERNIE-Sparse Table 11: hidden
256, 4 layers, 4 heads, MLP 1024; ``--shape bert-base`` / ``roberta-large`` for
those widths), one forward + backward of the classification loss per step, like
the paper's Figure 4. SAOR is left out of ``ernie-sparse``: it is a second pass of
the same model (twice the step) and only at training time; ``ernie-sparse+saor``
measures it when asked for. ``hf-bigbird`` is Hugging Face's
BigBirdForSequenceClassification at the same sizes. ``dense`` is PyTorch's SDPA
over all pairs; each row names the SDPA kernels its step ran (read off the
profiler). ``HST overhead`` in the table is ernie-sparse time / bigbird time - 1.

Each row also gives training tokens/s (batch x n per step) and, from separate steps
with timers hooked around every attention call (``attention_time.py``), the time
inside attention and outside it. ``--dtype bfloat16`` runs the forward under bf16
autocast. On CUDA the default models are all five of dense, hf-bigbird (with
transformers), bigbird, ernie-sparse and ernie-sparse+saor.

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
from torch import nn

from ..attention import prepare_layout
from ..cli_args import int_list, str_list
from ..models import ModelConfig
from .attention_time import AttentionClock, time_attention
from .common import (
    caption,
    device_name,
    is_out_of_memory,
    no_plot,
    save_time_memory_figure,
    synchronize,
    time_memory_cell,
    time_memory_figure,
    write_results,
)
from .hf_bigbird import hf_bigbird_available
from .memory import peak_memory_mb
from .model_steps import (
    DTYPES,
    BenchModel,
    BenchStep,
    ModelSizes,
    build_config,
    build_model,
    check_hf_model,
    hf_skip_reason,
    inference_step,
    training_step,
)
from .sdpa import sdpa_kernels_used
from .shapes import DEFAULT_SHAPE, add_shape_argument, resolve_sizes, shape_preset

FULL_SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
QUICK_SEQ_LENS = (1024, 2048, 4096)


def _blockbert_parts(parts: int) -> Callable[[int], dict[str, Any]]:
    """BlockBERT with n = ``parts`` permutations (its Table 5), the heads spread evenly."""
    return lambda heads: {"pattern_params": {"head_split": _even_split(parts, heads)}}


BENCH_MODELS: dict[str, BenchModel] = {
    # Dense = SDPA over all pairs: the blocked backend sends a layout whose rows are all
    # full through one unmasked SDPA call on the whole sequence (attention/blocked.py).
    "dense": BenchModel("dense", quadratic=True, backend="blocked"),
    "hf-bigbird": BenchModel("", huggingface=True),
    "bigbird": BenchModel("bigbird"),
    "ernie-sparse": BenchModel("ernie-sparse-no-saor"),
    "ernie-sparse+saor": BenchModel("ernie-sparse"),
    # New random blocks every step: their cost (drawing them, building the backend's
    # plans) is also timed on its own, the row's "new masks ms".
    "bigbird+resample": BenchModel("bigbird", overrides=lambda heads: {"resample_pattern": True}),
    "ernie-sparse+resample": BenchModel(
        "ernie-sparse-no-saor", overrides=lambda heads: {"resample_pattern": True}
    ),
    "blockbert-2": BenchModel("blockbert", overrides=_blockbert_parts(2)),
    "blockbert-3": BenchModel("blockbert", overrides=_blockbert_parts(3)),
}
MODELS = tuple(BENCH_MODELS)
DEFAULT_MODELS = ("dense", "bigbird", "ernie-sparse")
CUDA_MODELS = ("dense", "hf-bigbird", "bigbird", "ernie-sparse", "ernie-sparse+saor")
HST_OVERHEAD = ("ernie-sparse", "bigbird")  # the table's "HST overhead": time ratio - 1
BASELINES = ("dense", "hf-bigbird")  # every row's speed-up and memory ratio vs these, if run
STOPPING = ("oom", "capped")  # statuses after which a model is not run at longer lengths
ATTENTION_ROUNDS = 3  # instrumented steps per model for the time inside attention


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
    dtype: str = "float32"  # float32 | bfloat16 (the forward under bf16 autocast)
    attention_time: bool = True  # also time the attention calls (training steps only)
    shape: str = DEFAULT_SHAPE  # the --shape preset the sizes came from
    seed: int = 0


def model_sizes(config: ModelBenchConfig) -> ModelSizes:
    return ModelSizes(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        mlp_size=config.mlp_size,
        block_size=config.block_size,
        max_positions=max(config.seq_lens),
    )


def _bench_model(name: str) -> tuple[BenchModel, str]:
    """(the model, its attention backend: NAME@BACKEND's, else the model's, else "")."""
    name, _, backend = name.partition("@")
    if name not in BENCH_MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    model = BENCH_MODELS[name]
    return model, backend or model.backend or ""


def model_config(name: str, config: ModelBenchConfig) -> ModelConfig:
    """The model ``name`` at the bench's size; ``name@backend`` (``ernie-sparse@fused``)
    runs its attention with that backend instead of the model's (``auto`` for most)."""
    model, backend = _bench_model(name)
    if model.huggingface:
        raise ValueError(f"{name} is a Hugging Face model; it has no ModelConfig")
    return build_config(model, backend, model_sizes(config))


def check_model(name: str, config: ModelBenchConfig) -> None:
    """Refuses an unknown or unbuildable model before any work."""
    model, backend = _bench_model(name)
    if model.huggingface:
        check_hf_model(name, backend)
    else:
        model_config(name, config)


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


def _prepare(name: str, seq_len: int, config: ModelBenchConfig, batch: int) -> BenchStep:
    """One training step of the model (or, for the inference grid, one no-grad forward)."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model, backend = _bench_model(name)
    module = build_model(model, backend, model_sizes(config))
    module = module.to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    ids = torch.randint(1, config.vocab_size, (batch, seq_len), generator=generator).to(device)
    if config.inference_batches:
        return BenchStep(inference_step(module, ids, dtype=config.dtype), module)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    batch_inputs = {"input_ids": ids, "labels": labels}
    return BenchStep(training_step(module, batch_inputs, dtype=config.dtype), module)


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
    too_short = _bench_model(name)[0].huggingface and hf_skip_reason(config.block_size, seq_len)
    if too_short:
        return too_short
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
    rows = {name: _empty_row(name, seq_len, batch) for name in config.models}
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
        _record_time(rows[name], times[name])
        if config.memory and rows[name]["peak_mem_mb"] is None:
            _measure_peak(rows[name], steps, name, device, cap=0.0)
    for name, step in steps.items():
        rows[name]["sdpa_kernels"], _ = _out_of_memory(lambda run=step.run: sdpa_kernels_used(run))
    if config.attention_time and not config.inference_batches:
        _time_attention_in_turns(steps, rows, device)
    for name, step in steps.items():
        rows[name]["new_masks_ms"] = _time_new_masks(step.model, seq_len, batch, config)
    return list(rows.values())


def _time_new_masks(model: nn.Module, seq_len: int, batch: int, config: ModelBenchConfig):
    """Per step of a model whose pattern is resampled every step: drawing every layer's
    new layout and building its backend's plan (part of the step time too); None for
    models that keep their layouts."""
    encoder = getattr(model, "encoder", None)
    if encoder is None or not encoder.config.attention.resample_pattern:
        return None
    device = torch.device(config.device)
    attention = encoder.config.attention
    plan = encoder.plan(seq_len)
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    head_dim = encoder.config.hidden_size // encoder.config.num_heads
    queries = torch.empty(batch, encoder.config.num_heads, plan.length, head_dim, dtype=dtype)
    queries = queries.to(device)

    def build() -> None:
        for layout in encoder.layouts.for_layers(plan, training=True):
            prepare_layout(
                layout, queries, block_size=attention.block_size, backend=attention.backend
            )

    return round(statistics.median(_time_ms(build, device) for _ in range(5)), 2)


def _record_time(row: dict, times: list[float]) -> None:
    row["median_ms"] = round(statistics.median(times), 1)
    row["tokens_per_s"] = round(row["batch"] * row["seq_len"] / (row["median_ms"] / 1e3), 1)
    row["status"] = "ok"


def _empty_row(name: str, seq_len: int, batch: int) -> dict:
    return {
        "model": name,
        "seq_len": seq_len,
        "batch": batch,
        "median_ms": None,
        "peak_mem_mb": None,
        "tokens_per_s": None,
        "sdpa_kernels": None,  # kernels of F.scaled_dot_product_attention seen in a step
        "attention_ms": None,  # per step, inside the attention calls (forward + backward)
        "outside_attention_ms": None,  # per step, the rest
        "new_masks_ms": None,  # per step, resampled layouts and their plans (resample only)
    }


def _time_attention_in_turns(steps: dict[str, BenchStep], rows: dict, device) -> None:
    """Time inside and outside attention: the median over a few instrumented steps per
    model, taken in turns like the timed steps (the timers cost microseconds a call)."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(ATTENTION_ROUNDS):
        for name, step in steps.items():
            clock = AttentionClock(device)
            with time_attention(step.model, clock):
                total, failed = _out_of_memory(lambda step=step: _time_ms(step.run, device))
            if not failed:
                samples[name].append((clock.total_ms(), total))
    for name, pairs in samples.items():
        if pairs:
            inside = statistics.median(a for a, _ in pairs)
            step_ms = statistics.median(t for _, t in pairs)
            rows[name]["attention_ms"] = round(inside, 1)
            rows[name]["outside_attention_ms"] = round(step_ms - inside, 1)


def _measure_peak(row: dict, steps: dict, name: str, device: torch.device, *, cap: float) -> None:
    peak, failed = _out_of_memory(lambda: peak_memory_mb(steps[name].run, device))
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
            elapsed, failed = _out_of_memory(lambda name=name: _time_ms(steps[name].run, device))
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
    if config.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {config.dtype!r}; choose from {', '.join(DTYPES)}")
    for name in config.models:
        check_model(name, config)  # refuse unknown models before any work
    meta = {
        "device": device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": asdict(config),
    }
    log(f"{shape_text(config)}; {config.dtype}")
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


def shape_text(config: ModelBenchConfig) -> str:
    """The resolved sizes, named by their preset: "shape bert-base: batch 8, hidden 768, ..."."""
    return (
        f"shape {config.shape}: batch {config.batch}, hidden {config.hidden_size}, "
        f"{config.num_layers} layers, {config.num_heads} heads, MLP {config.mlp_size}, "
        f"block {config.block_size}"
    )


def _format_row(row: dict) -> str:
    head = f"  b={row['batch']:>3} n={row['seq_len']:>6} {row['model']:>17}:"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    memory = "-" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:.1f} MiB"
    line = f"{head} {row['median_ms']:>10.1f} ms {memory:>14}"
    if row.get("tokens_per_s"):
        line += f" {row['tokens_per_s']:>10.0f} tokens/s"
    if row.get("attention_ms") is not None:
        line += f", attention {row['attention_ms']:.1f} ms"
    if row.get("sdpa_kernels"):
        line += f", SDPA {'+'.join(row['sdpa_kernels'])}"
    return line


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


def throughput_table(result: dict) -> str:
    """Markdown, one line per (length, model): training tokens/s, step time, peak memory,
    the step split into time inside the attention calls and outside them, and the speed-up
    ("x faster") and memory ratio against each baseline of the same run."""
    rows = result["rows"]
    by_key = {(r["seq_len"], r["model"]): r for r in rows}
    baselines = [b for b in BASELINES if any(r["model"] == b for r in rows)]
    header = ["n", "model", "tokens/s", "step ms", "peak MiB", "attention ms", "outside ms"]
    header.append("attention share")
    resampled = any(r.get("new_masks_ms") is not None for r in rows)
    if resampled:
        header.append("new masks ms")
    for baseline in baselines:
        header += [f"faster than {baseline}", f"memory vs {baseline}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["seq_len"]), row["model"]]
        if row["status"] != "ok":
            cells += [row["status"]] + ["-"] * (len(header) - 3)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        inside, outside = row.get("attention_ms"), row.get("outside_attention_ms")
        cells += [_number(row.get("tokens_per_s"), 0), _number(row["median_ms"], 1)]
        cells += [_number(row["peak_mem_mb"], 0), _number(inside, 1), _number(outside, 1)]
        cells.append(_share(inside, outside))
        if resampled:
            cells.append(_number(row.get("new_masks_ms"), 2))
        for baseline in baselines:
            base = by_key.get((row["seq_len"], baseline))
            cells.append(_times(base, row, "median_ms"))
            cells.append(_times(row, base, "peak_mem_mb"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _times(top: dict | None, bottom: dict | None, key: str) -> str:
    """top[key] / bottom[key] as "2.50x", "-" where either is missing."""
    if not (top and bottom and top.get(key) and bottom.get(key)):
        return "-"
    return f"{top[key] / bottom[key]:.2f}x"


def _number(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def _share(inside: float | None, outside: float | None) -> str:
    if inside is None or outside is None or inside + outside <= 0:
        return "-"
    return f"{inside / (inside + outside):.0%}"


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
    shape, dtype = meta["config"]["shape"], meta["config"]["dtype"]
    title = f"models at shape {shape}, {dtype}, {meta['device']}, {meta['threads']} threads"
    save_time_memory_figure(fig, axes, time_label="forward + backward (ms)", title=title, path=path)
    return path


SHAPE_FLAGS = ("batch", "hidden_size", "num_layers", "num_heads", "mlp_size")  # --shape sets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ModelBenchConfig()
    parser.add_argument("--quick", action="store_true", help=f"lengths {QUICK_SEQ_LENS}")
    parser.add_argument("--seq-lens", type=int_list, help="comma-separated input lengths")
    parser.add_argument(
        "--models",
        type=str_list,
        help=f"from {', '.join(MODELS)} (default {','.join(DEFAULT_MODELS)}; on CUDA "
        f"{','.join(CUDA_MODELS)}); NAME@BACKEND picks its attention backend "
        "(ernie-sparse@fused, ernie-sparse@blocked)",
    )
    add_shape_argument(parser)
    for name in SHAPE_FLAGS:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, help="default: the --shape preset's")
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument(
        "--dense-max-len",
        type=int,
        help=f"dense only up to this length (default {defaults.dense_max_len} on CPU, "
        "no limit on CUDA, where SDPA's memory is linear in n)",
    )
    parser.add_argument("--dtype", default=defaults.dtype, choices=DTYPES)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory runs")
    parser.add_argument(
        "--no-attention-time", action="store_true", help="skip timing the attention calls"
    )
    parser.add_argument(
        "--memory-cap", type=float, default=0.0, help="MiB; a model over it is 'capped' from there"
    )
    parser.add_argument(
        "--inference-grid", type=int_list, help="batch sizes: time no-grad forwards (B x N grid)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-plot", action="store_true", help="write no model.png")
    parser.add_argument(
        "--out", default="runs/bench-model", help="output directory (results.json, table.md)"
    )
    parser.set_defaults(run=run)


def shape_sizes(args: argparse.Namespace) -> dict[str, int]:
    """The --shape preset's sizes, each explicit flag in its place."""
    preset = shape_preset(args.shape)
    values = {
        "batch": preset.model_batch,
        "hidden_size": preset.hidden_size,
        "num_layers": preset.num_layers,
        "num_heads": preset.heads,
        "mlp_size": preset.mlp_size,
    }
    return resolve_sizes(args, values)


def default_models(device: str) -> tuple[str, ...]:
    if torch.device(device).type != "cuda":
        return DEFAULT_MODELS
    return tuple(m for m in CUDA_MODELS if m != "hf-bigbird" or hf_bigbird_available())


def config_from_args(args: argparse.Namespace) -> ModelBenchConfig:
    seq_lens = args.seq_lens or (QUICK_SEQ_LENS if args.quick else FULL_SEQ_LENS)
    dense_max_len = args.dense_max_len
    if dense_max_len is None:
        cuda = torch.device(args.device).type == "cuda"
        dense_max_len = max(seq_lens) if cuda else ModelBenchConfig.dense_max_len
    return ModelBenchConfig(
        seq_lens=seq_lens,
        models=tuple(args.models or default_models(args.device)),
        **shape_sizes(args),
        shape=args.shape,
        block_size=args.block_size,
        dense_max_len=dense_max_len,
        dtype=args.dtype,
        repeats=args.repeats,
        memory=not args.no_memory,
        attention_time=not args.no_attention_time,
        memory_cap_mb=args.memory_cap,
        inference_batches=tuple(args.inference_grid or ()),
        device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    result = run_bench(config)
    if config.inference_batches:
        tables, plot = [inference_table(result)], no_plot
    else:
        tables, plot = [summary_table(result), throughput_table(result)], plot_bench
    head = caption(result, shape=shape_text(config), dtype=config.dtype, key="model")
    table = "\n\n".join([head, *tables])
    plot = no_plot if args.no_plot else plot
    write_results(Path(args.out), result, table=table, plot=plot, name="model.png")
    return 0
