"""Helpers shared by the benchmarks: timing, device names, figures and result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    run: Callable[[], None],
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
    max_seconds: float,
) -> float:
    """Median wall time in ms of ``run`` after ``warmup`` untimed runs; at least 3 timed
    runs, fewer than ``repeats`` once ``max_seconds`` have passed."""
    for _ in range(warmup):
        run()
    synchronize(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats:
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
        if len(times) >= 3 and time.perf_counter() - started > max_seconds:
            break
    return statistics.median(times)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_memory_figure():
    """(figure, (time axis, memory axis)) for a benchmark plot, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt.subplots(1, 2, figsize=(12, 4.5))


def save_time_memory_figure(fig, axes, *, time_label: str, title: str, path) -> None:
    """Log-log axes against sequence length, legends, title; writes ``path``."""
    import matplotlib.pyplot as plt

    for axis, ylabel in zip(axes, (time_label, "peak memory (MiB)"), strict=True):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_lines():
            axis.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def no_plot(result: dict, path: Path) -> None:
    """The ``plot`` of ``write_results`` when none is wanted (``--no-plot``)."""
    return None


def write_results(
    out: Path, result: dict, *, table: str, plot: Callable[[dict, Path], Path | None], name: str
) -> None:
    """results.json, table.md and ``name`` (the plot) in ``out``; prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(table + "\n")
    picture = plot(result, out / name)
    print()
    print(table)
    written = [out / "results.json", out / "table.md", *([picture] if picture else [])]
    print("\nwrote " + ", ".join(map(str, written)))


def time_memory_cell(row: dict | None, *, decimals: int) -> str:
    """A table cell "ms (peak MiB)", the row's status when it did not run, "-" when absent."""
    if row is None:
        return "-"
    if row["status"] != "ok":
        return row["status"]
    memory = "" if row["peak_mem_mb"] is None else f" ({row['peak_mem_mb']:.0f})"
    return f"{row['median_ms']:.{decimals}f}{memory}"


def caption(result: dict, *, shape: str, dtype: str, key: str) -> str:
    """One line over a bench's tables: shape, dtype, device, and the SDPA kernels that the
    rows whose ``key`` ("backend" or "model") is "dense" ran."""
    meta = result["meta"]
    dense_rows = (r for r in result["rows"] if r[key] == "dense")
    kernels = sorted({k for r in dense_rows for k in r.get("sdpa_kernels") or ()})
    dense = f"; dense = SDPA, kernel {', '.join(kernels)}" if kernels else ""
    return f"{shape}; {dtype}; {meta['device']} ({meta['device_type']}){dense}"
