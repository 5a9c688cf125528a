"""``ernie-sparse bench attention``: speed and memory of attention backends vs sequence length.

Every backend computes the same BigBird ITC pattern (global, window and random
blocks) on the same inputs; dense SDPA (all pairs) and Hugging Face BigBird are
the baselines. ``combiner-<variant>`` backends run Combiner attention (its own
factorized pattern, default span ceil(sqrt N)) on the same inputs for comparison.
Timings are medians of several runs after warm-up; memory is a separate run (see
``memory.py``). Useful GFLOP/s count the multiply-adds of the attention each backend
computes (the pattern's pairs, all N^2 pairs for dense, the scores Combiner computes)
and are set against the dense matmul GFLOP/s measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..attention import fused_available, sparse_attention
from ..attention.combiner import COMBINER_VARIANTS, combiner_attention, combiner_pairs
from ..cli_args import int_list, str_list
from ..patterns import bigbird, num_blocks_for
from .common import (
    caption,
    device_name,
    is_out_of_memory,
    median_ms,
    no_plot,
    save_time_memory_figure,
    synchronize,
    time_memory_cell,
    time_memory_figure,
    write_results,
)
from .hf_bigbird import hf_bigbird_attention, hf_bigbird_available, hf_bigbird_shortest
from .memory import peak_memory_mb
from .sdpa import sdpa_kernels_used
from .shapes import DEFAULT_SHAPE, add_shape_argument, resolve_sizes, shape_preset

QUICK_SEQ_LENS = (1024, 2048, 4096)
FULL_SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
MODES = ("fwd", "fwd+bwd")


@dataclass
class BenchConfig:
    seq_lens: tuple[int, ...] = FULL_SEQ_LENS  # sequence lengths N
    batch: int = 2  # B
    heads: int = 4  # H
    head_dim: int = 64  # D
    block_size: int = 64  # tokens per layout block
    num_global: int = 2  # global blocks
    window_width: int = 1  # window blocks on each side (1 = 3-block window)
    num_random: int = 3  # random blocks per row
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "cpu"  # cpu | cuda
    backends: tuple[str, ...] = ()  # empty: every backend that can run here
    modes: tuple[str, ...] = MODES  # fwd (no grad) and/or fwd+bwd
    repeats: int = 5  # timed runs per point (fewer once a point takes max_seconds)
    warmup: int = 2  # untimed runs first
    max_seconds: float = 30.0  # stop repeating a point after this much time (min 3 runs)
    memory: bool = True  # also measure peak memory (one more run per point)
    seed: int = 0  # inputs and random blocks
    shape: str = DEFAULT_SHAPE  # the --shape preset batch, heads and head_dim came from
    extra: dict = field(default_factory=dict)


def default_backends(device: torch.device) -> tuple[str, ...]:
    names = ["blocked", "dense"]
    if device.type == "cpu" and fused_available():
        names.insert(0, "fused")
    if device.type == "cuda":
        names.insert(1, "flex")  # CPU flex compiles per length (minutes): ask for it by name
    if hf_bigbird_available():
        names.append("hf-bigbird")
    return tuple(names)


AttendBuilder = Callable[[BenchConfig, torch.Tensor, int], Callable]  # -> f(q, k, v)
PairsCount = Callable[[BenchConfig, torch.Tensor, int], int]  # summed over heads


@dataclass(frozen=True)
class BenchBackend:
    """One benchmark column: what it runs, the pattern it computes, the pairs it scores."""

    attend: AttendBuilder  # (config, layout, seq_len) -> f(q, k, v)
    pattern: str  # the rows' "pattern": the layout's (bigbird), dense, or combiner-<variant>
    pairs: PairsCount  # query-key pairs summed over heads, for the useful GFLOP/s
    skip: Callable[[BenchConfig, int], str | None] = lambda config, seq_len: None  # why not
    cpu_backward: bool = True  # False: no CPU backward (PyTorch's FlexAttention)
    missing: Callable[[], str | None] = lambda: None  # what must be installed, if absent


def _layout_pairs(config: BenchConfig, layout: torch.Tensor, seq_len: int) -> int:
    return int(layout.sum()) * config.block_size**2 * config.heads // layout.shape[0]


def _sparse_backend(backend: str, *, cpu_backward: bool = True) -> BenchBackend:
    def attend(config: BenchConfig, layout: torch.Tensor, seq_len: int) -> Callable:
        return lambda q, k, v: sparse_attention(
            q, k, v, layout, block_size=config.block_size, backend=backend
        )

    return BenchBackend(attend, "bigbird", _layout_pairs, cpu_backward=cpu_backward)


def _combiner_backend(variant: str) -> BenchBackend:
    """Combiner's own factorized pattern (default span), not the layout."""
    return BenchBackend(
        attend=lambda config, layout, seq_len: (
            lambda q, k, v: combiner_attention(q, k, v, variant=variant)
        ),
        pattern=f"combiner-{variant}",
        pairs=lambda config, layout, seq_len: combiner_pairs(variant, seq_len) * config.heads,
    )


def _hf_bigbird(config: BenchConfig, layout: torch.Tensor, seq_len: int) -> Callable:
    return hf_bigbird_attention(
        seq_len=seq_len,
        batch=config.batch,
        heads=config.heads,
        head_dim=config.head_dim,
        block_size=config.block_size,
        num_random=config.num_random,
    )


def hf_bigbird_skip_reason(config: BenchConfig, seq_len: int) -> str | None:
    """Why HF BigBird cannot be timed at ``seq_len``: at or below (5 + 2r) blocks its model
    switches to full attention, and its kernel fails on such lengths."""
    shortest = hf_bigbird_shortest(config.block_size, config.num_random)
    if seq_len <= shortest:
        return f"skipped (HF BigBird needs N > {shortest})"
    return None


def _transformers_missing() -> str | None:
    if hf_bigbird_available():
        return None
    return "transformers: pip install 'ernie-sparse[hf]'"


BENCH_BACKENDS: dict[str, BenchBackend] = {
    "blocked": _sparse_backend("blocked"),
    "fused": _sparse_backend("fused"),
    "flex": _sparse_backend("flex", cpu_backward=False),
    "reference": _sparse_backend("reference"),
    "dense": BenchBackend(
        attend=lambda config, layout, seq_len: F.scaled_dot_product_attention,
        pattern="dense",
        pairs=lambda config, layout, seq_len: seq_len * seq_len * config.heads,
    ),
    "hf-bigbird": BenchBackend(
        _hf_bigbird,
        "bigbird",
        _layout_pairs,
        skip=hf_bigbird_skip_reason,
        missing=_transformers_missing,
    ),
    **{f"combiner-{variant}": _combiner_backend(variant) for variant in COMBINER_VARIANTS},
}
# (sparse backend, baseline) speed-up columns of the summary, in order, where both ran.
COMPARISONS = (
    ("fused", "dense"),
    ("fused", "hf-bigbird"),
    ("blocked", "dense"),
    ("blocked", "hf-bigbird"),
    ("fused", "blocked"),
)


def _backend(name: str) -> BenchBackend:
    if name not in BENCH_BACKENDS:
        raise ValueError(f"unknown benchmark backend {name!r}")
    return BENCH_BACKENDS[name]


def _attention_fn(name: str, config: BenchConfig, layout: torch.Tensor, seq_len: int) -> Callable:
    return _backend(name).attend(config, layout, seq_len)


def _runner(fn: Callable, inputs: list[torch.Tensor], mode: str) -> Callable[[], None]:
    if mode == "fwd":

        def forward() -> None:
            with torch.no_grad():
                fn(*inputs)

        return forward
    if mode != "fwd+bwd":
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")

    def forward_backward() -> None:
        for tensor in inputs:
            tensor.grad = None
        fn(*inputs).float().sum().backward()

    return forward_backward


def time_ms(run: Callable[[], None], config: BenchConfig, device: torch.device) -> float:
    """Median wall time in ms of ``run`` after warm-up."""
    return median_ms(
        run,
        device,
        repeats=config.repeats,
        warmup=config.warmup,
        max_seconds=config.max_seconds,
    )


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048) -> float:
    """The machine's dense matmul speed, the yardstick for the useful GFLOP/s."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    config = BenchConfig(repeats=5, warmup=2)
    return 2 * size**3 / time_ms(lambda: a @ b, config, device) / 1e6


def useful_gflop(pairs: int, config: BenchConfig, mode: str) -> float:
    """QK^T and PV: 2 matmuls x 2 flops per multiply-add; backward does twice the forward."""
    forward = 4 * config.batch * config.head_dim * pairs
    return forward * (3 if mode == "fwd+bwd" else 1) / 1e9


def _empty_row(name: str, config: BenchConfig, seq_len: int, mode: str) -> dict:
    return {
        "backend": name,
        "pattern": _backend(name).pattern,
        "seq_len": seq_len,
        "mode": mode,
        "median_ms": None,
        "peak_mem_mb": None,
        "gflops": None,
        "sdpa_kernels": None,
        "status": "ok",
    }


def _pairs(name: str, config: BenchConfig, layout: torch.Tensor, seq_len: int) -> int:
    """Query-key pairs summed over heads that a backend computes: the pattern's, all of
    them for dense, the scores Combiner computes."""
    return _backend(name).pairs(config, layout, seq_len)


def bench_length(
    names: tuple[str, ...],
    config: BenchConfig,
    layout: torch.Tensor,
    seq_len: int,
    mode: str,
    device: torch.device,
) -> list[dict]:
    """One row per backend at one length and mode, timed interleaved: each round runs every
    backend once, so drift of the machine (other load, frequency) hits all of them alike."""
    dtype = getattr(torch, config.dtype)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    shape = (config.batch, config.heads, seq_len, config.head_dim)
    inputs = [
        torch.randn(shape, generator=generator, device=device, dtype=dtype).requires_grad_()
        for _ in range(3)
    ]
    rows = {name: _empty_row(name, config, seq_len, mode) for name in names}
    runs: dict[str, Callable[[], None]] = {}
    for name in names:
        skip = _backend(name).skip(config, seq_len)
        if skip:
            rows[name]["status"] = skip
            continue
        runs[name] = _runner(_attention_fn(name, config, layout, seq_len), inputs, mode)
    times = _interleaved_times(runs, rows, config, device)
    for name, timed in times.items():
        row = rows[name]
        row["median_ms"] = round(statistics.median(timed), 3)
        if config.memory:
            row["peak_mem_mb"] = _guarded(row, peak_memory_mb, runs[name], device)
            if row["status"] != "ok":
                continue
            row["peak_mem_mb"] = round(row["peak_mem_mb"], 2)
        row["sdpa_kernels"] = _guarded(row, sdpa_kernels_used, runs[name])
        if row["status"] != "ok":
            continue
        gflop = useful_gflop(_pairs(name, config, layout, seq_len), config, mode)
        row["gflops"] = round(gflop / (row["median_ms"] / 1e3), 2)
    return list(rows.values())


def _guarded(row: dict, measure: Callable[..., float], *args) -> float | None:
    """``measure(*args)``, or None with the row marked "oom" when it runs out of memory."""
    try:
        return measure(*args)
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_out_of_memory(error):
            raise
        row["status"] = "oom"
        return None


def _timed_ms(run: Callable[[], None], device: torch.device) -> float:
    start = time.perf_counter()
    run()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def _interleaved_times(
    runs: dict[str, Callable[[], None]], rows: dict[str, dict], config: BenchConfig, device
) -> dict[str, list[float]]:
    """Timed runs in ms per backend: ``warmup`` untimed rounds, then rounds until each
    backend has ``repeats`` runs or (with at least 3) has used ``max_seconds``."""
    active = dict(runs)
    for _ in range(config.warmup):
        for name, run in list(active.items()):
            if _guarded(rows[name], _timed_ms, run, device) is None:
                del active[name]  # out of memory
    times: dict[str, list[float]] = {name: [] for name in active}
    while active:
        for name, run in list(active.items()):
            times[name].append(_timed_ms(run, device))
            enough = len(times[name]) >= 3 and sum(times[name]) > config.max_seconds * 1e3
            if len(times[name]) >= config.repeats or enough:
                del active[name]
    return times


def run_bench(config: BenchConfig, *, log: Callable[[str], None] = print) -> dict:
    """Every (length, backend, mode) point; returns {"meta": ..., "rows": [...]}."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available here")
    backends = config.backends or default_backends(device)
    for name in backends:
        missing = BENCH_BACKENDS[name].missing() if name in BENCH_BACKENDS else None
        if missing:
            raise ValueError(f"backend {name} needs {missing}")
    dtype = getattr(torch, config.dtype)
    meta = {
        "device": device_name(device),
        "device_type": device.type,
        "dtype": config.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_gflops": round(matmul_gflops(device, dtype), 1),
        "config": asdict(config),
    }
    log(f"{shape_text(config)}; {config.dtype}")
    log(
        f"device {meta['device']} ({device.type}), "
        f"{meta['threads']} threads, dense matmul {meta['matmul_gflops']} GFLOP/s"
    )
    rows = []
    for seq_len in config.seq_lens:
        generator = torch.Generator().manual_seed(config.seed)
        layout = bigbird(
            num_blocks_for(seq_len, config.block_size),
            num_heads=config.heads,
            num_global=config.num_global,
            window_width=config.window_width,
            num_random=config.num_random,
            generator=generator,
        )
        for mode in config.modes:
            names = tuple(name for name in backends if _runs(name, device, mode))
            for row in bench_length(names, config, layout, seq_len, mode, device):
                row["matmul_fraction"] = (
                    round(row["gflops"] / meta["matmul_gflops"], 3) if row["gflops"] else None
                )
                rows.append(row)
                log(_format_row(row))
    return {"meta": meta, "rows": rows}


def shape_text(config: BenchConfig) -> str:
    """The resolved shape, named by its preset: "shape bert-base: B=8, H=12, D=64, ..."."""
    return (
        f"shape {config.shape}: B={config.batch}, H={config.heads}, D={config.head_dim}, "
        f"block {config.block_size}, {config.num_global} global + {2 * config.window_width + 1}"
        f" window + {config.num_random} random blocks"
    )


def _runs(name: str, device: torch.device, mode: str) -> bool:
    """Whether the backend can run this mode here (an unknown name fails in bench_length)."""
    backend = BENCH_BACKENDS.get(name)
    return backend is None or backend.cpu_backward or device.type != "cpu" or mode == "fwd"


def _format_row(row: dict) -> str:
    if row["status"] != "ok":
        return f"  N={row['seq_len']:>6} {row['mode']:>8} {row['backend']:>11}: {row['status']}"
    memory = "-" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:.1f} MiB"
    return (
        f"  N={row['seq_len']:>6} {row['mode']:>8} {row['backend']:>11}: "
        f"{row['median_ms']:>10.1f} ms {memory:>14} {row['gflops']:>8.1f} GFLOP/s"
    )


def summary_table(result: dict) -> str:
    """Markdown table: one line per (length, mode), time and memory per backend, speedups."""
    rows = result["rows"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    by_key = {(r["seq_len"], r["mode"], r["backend"]): r for r in rows}
    header = ["N", "mode"] + [f"{b} ms (MiB)" for b in backends]
    comparisons = _comparisons(backends)
    header += [f"{sparse} vs {baseline}" for sparse, baseline in comparisons]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for seq_len in dict.fromkeys(r["seq_len"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            cells = [str(seq_len), mode]
            for backend in backends:
                row = by_key.get((seq_len, mode, backend))
                cells.append(time_memory_cell(row, decimals=1))
            for sparse, baseline in comparisons:
                fast, slow = (by_key.get((seq_len, mode, b)) for b in (sparse, baseline))
                ok = fast and slow and fast["median_ms"] and slow["median_ms"]
                cells.append(f"{slow['median_ms'] / fast['median_ms']:.2f}x" if ok else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _comparisons(backends: list[str]) -> list[tuple[str, str]]:
    """(sparse backend, baseline) speed-up columns: each of fused and blocked against dense
    and HF BigBird, and fused against blocked (``COMPARISONS`` where both ran)."""
    return [pair for pair in COMPARISONS if set(pair) <= set(backends)]


def plot_bench(result: dict, path: Path) -> Path | None:
    """Time and memory vs length, log-log, one line per backend and mode."""
    figure = time_memory_figure()
    if figure is None:
        return None
    fig, (time_axis, memory_axis) = figure
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    # One colour per backend; solid for fwd+bwd, dashed for fwd.
    for index, backend in enumerate(dict.fromkeys(r["backend"] for r in rows)):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            points = [r for r in rows if r["backend"] == backend and r["mode"] == mode]
            if not points:
                continue
            style = {"color": f"C{index}", "linestyle": "-" if mode == "fwd+bwd" else "--"}
            style["marker"] = "o" if mode == "fwd+bwd" else "x"
            lengths = [r["seq_len"] for r in points]
            label = f"{backend} {mode}"
            time_axis.plot(lengths, [r["median_ms"] for r in points], label=label, **style)
            if points[0]["peak_mem_mb"] is not None:
                memory = [r["peak_mem_mb"] for r in points]
                memory_axis.plot(lengths, memory, label=label, **style)
    meta = result["meta"]
    title = (
        f"attention, {meta['device']} ({meta['device_type']}), {meta['dtype']}, "
        f"{meta['threads']} threads"
    )
    save_time_memory_figure(
        fig, (time_axis, memory_axis), time_label="median time (ms)", title=title, path=path
    )
    return path


SHAPE_FLAGS = ("batch", "heads", "head_dim")  # sizes a --shape preset sets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BenchConfig()
    parser.add_argument("--quick", action="store_true", help=f"lengths {QUICK_SEQ_LENS}, 3 runs")
    parser.add_argument("--seq-lens", type=int_list, help="comma-separated lengths")
    parser.add_argument(
        "--backends",
        type=str_list,
        help="blocked,fused,flex,dense,hf-bigbird,reference, combiner-<variant> ("
        + ", ".join(COMBINER_VARIANTS)
        + ")",
    )
    parser.add_argument("--modes", type=str_list, default=defaults.modes, help="fwd,fwd+bwd")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default=defaults.dtype, choices=["float32", "bfloat16", "float16"]
    )
    add_shape_argument(parser)
    for name in SHAPE_FLAGS:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, help="default: the --shape preset's")
    for name in ("block_size", "num_global", "num_random"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=getattr(defaults, name))
    parser.add_argument("--window-width", type=int, default=defaults.window_width)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory runs")
    parser.add_argument("--no-plot", action="store_true", help="write no attention.png")
    parser.add_argument(
        "--out", default="runs/bench-attention", help="output directory (results.json, table.md)"
    )
    parser.set_defaults(run=run)


def shape_sizes(args: argparse.Namespace) -> dict[str, int]:
    """batch, heads, head_dim: the --shape preset's, each explicit flag in its place."""
    preset = shape_preset(args.shape)
    values = {"batch": preset.attention_batch, "heads": preset.heads, "head_dim": preset.head_dim}
    return resolve_sizes(args, values)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    seq_lens = args.seq_lens or (QUICK_SEQ_LENS if args.quick else FULL_SEQ_LENS)
    return BenchConfig(
        seq_lens=seq_lens,
        **shape_sizes(args),
        shape=args.shape,
        block_size=args.block_size,
        num_global=args.num_global,
        window_width=args.window_width,
        num_random=args.num_random,
        dtype=args.dtype,
        device=args.device,
        backends=tuple(args.backends or ()),
        modes=tuple(args.modes),
        repeats=3 if args.quick else args.repeats,
        memory=not args.no_memory,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    for mode in config.modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for length in config.seq_lens:
        if length % config.block_size:
            raise ValueError(
                f"benchmark length {length} is not a multiple of block size {config.block_size} "
                "(HF BigBird needs whole blocks)"
            )
    result = run_bench(config)
    table = (
        caption(result, shape=shape_text(config), dtype=config.dtype, key="backend")
        + "\n\n"
        + summary_table(result)
    )
    plot = no_plot if args.no_plot else plot_bench
    write_results(Path(args.out), result, table=table, plot=plot, name="attention.png")
    return 0
