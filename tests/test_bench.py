"""The attention benchmark: its rows, files, table and memory measurement."""

from __future__ import annotations

import json

import pytest
import torch

from ernie_sparse.bench.attention import (
    BenchConfig,
    _interleaved_times,
    run_bench,
    summary_table,
    useful_gflop,
)
from ernie_sparse.bench.hf_bigbird import hf_bigbird_available
from ernie_sparse.bench.memory import peak_memory_mb
from ernie_sparse.cli import main

ROW_KEYS = {"backend", "pattern", "seq_len", "mode", "median_ms", "peak_mem_mb", "gflops"}


def test_peak_memory_counts_live_storages() -> None:
    def allocate() -> None:
        a = torch.ones(1024, 1024)  # 4 MiB
        b = torch.ones(2048, 1024)  # 8 MiB, while a is alive
        del a, b
        torch.ones(1024, 1024)  # 4 MiB after both are freed

    assert peak_memory_mb(allocate, torch.device("cpu")) == pytest.approx(12.0, abs=0.01)


def test_peak_memory_sees_tensors_saved_for_backward() -> None:
    x = torch.randn(1024, 1024, requires_grad=True)

    def forward_backward() -> None:
        # exp saves its 4 MiB output for the backward; the grad of x adds 4 MiB more.
        x.exp().sum().backward()

    assert peak_memory_mb(forward_backward, torch.device("cpu")) >= 8.0


def test_useful_gflop_counts_both_matmuls_and_backward() -> None:
    config = BenchConfig(batch=2, head_dim=64)
    pairs = 1000
    assert useful_gflop(pairs, config, "fwd") == pytest.approx(4 * 2 * 64 * pairs / 1e9)
    assert useful_gflop(pairs, config, "fwd+bwd") == pytest.approx(3 * 4 * 2 * 64 * pairs / 1e9)


def small_config(**overrides) -> BenchConfig:
    settings = dict(
        seq_lens=(256,),
        batch=1,
        heads=2,
        head_dim=16,
        block_size=16,
        num_global=2,
        num_random=1,
        backends=("blocked", "dense"),
        repeats=1,
        warmup=0,
    )
    settings.update(overrides)
    return BenchConfig(**settings)


def test_run_bench_rows_cover_every_backend_and_mode() -> None:
    result = run_bench(small_config(), log=lambda line: None)
    rows = result["rows"]
    assert {(r["backend"], r["mode"]) for r in rows} == {
        ("blocked", "fwd"),
        ("blocked", "fwd+bwd"),
        ("dense", "fwd"),
        ("dense", "fwd+bwd"),
    }
    for row in rows:
        assert set(row) >= ROW_KEYS
        assert row["status"] == "ok"
        assert row["median_ms"] > 0 and row["peak_mem_mb"] > 0 and row["gflops"] > 0
    dense = next(r for r in rows if r["backend"] == "dense" and r["mode"] == "fwd")
    blocked = next(r for r in rows if r["backend"] == "blocked" and r["mode"] == "fwd")
    # GFLOP/s x time is the useful work: all N^2 pairs for dense, the pattern's for blocked.
    layout_pairs = dense["gflops"] * dense["median_ms"] / (blocked["gflops"] * blocked["median_ms"])
    assert layout_pairs > 1.5  # 16 blocks, 2 global + 3 window + 1 random: well under 2/3 dense
    assert result["meta"]["matmul_gflops"] > 0 and result["meta"]["threads"] >= 1


@pytest.mark.skipif(not hf_bigbird_available(), reason="transformers is not installed")
def test_hf_bigbird_baseline_runs() -> None:
    config = small_config(backends=("hf-bigbird",), modes=("fwd+bwd",), memory=False)
    (row,) = run_bench(config, log=lambda line: None)["rows"]
    assert row["status"] == "ok" and row["median_ms"] > 0


@pytest.mark.skipif(not hf_bigbird_available(), reason="transformers is not installed")
def test_hf_bigbird_is_skipped_where_it_would_switch_to_full_attention() -> None:
    # (5 + 2 * 1 random) blocks of 16 = 112: HF runs full attention at N <= 112.
    config = small_config(seq_lens=(112,), backends=("hf-bigbird", "blocked"), memory=False)
    hf, blocked = run_bench(config, log=lambda line: None)["rows"][:2]
    assert hf["status"] == "skipped (HF BigBird needs N > 112)" and hf["median_ms"] is None
    assert blocked["status"] == "ok"
    assert "skipped (HF BigBird needs N > 112)" in summary_table({"rows": [hf, blocked]})


def test_backends_are_timed_in_interleaved_rounds() -> None:
    calls: list[str] = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    rows = {name: {"status": "ok"} for name in runs}
    config = BenchConfig(repeats=3, warmup=1)
    times = _interleaved_times(runs, rows, config, torch.device("cpu"))
    assert calls == ["a", "b"] * 4
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3}


def test_combiner_backends_run_next_to_dense() -> None:
    backends = ("dense", "combiner-axial-rowmajor", "combiner-axial-vertical")
    config = small_config(backends=backends, modes=("fwd+bwd",))
    rows = run_bench(config, log=lambda line: None)["rows"]
    assert [r["backend"] for r in rows] == list(backends)
    assert [r["pattern"] for r in rows] == list(backends)
    assert all(r["status"] == "ok" and r["peak_mem_mb"] > 0 and r["gflops"] > 0 for r in rows)
    assert "combiner-axial-vertical ms (MiB)" in summary_table({"rows": rows})


def test_summary_table_ratios() -> None:
    def row(backend: str, ms: float) -> dict:
        return {"backend": backend, "seq_len": 4096, "mode": "fwd+bwd", "median_ms": ms,
                "peak_mem_mb": 1.0, "status": "ok"}  # fmt: skip

    result = {"rows": [row("blocked", 100.0), row("dense", 350.0), row("hf-bigbird", 520.0)]}
    table = summary_table(result)
    assert "3.50x" in table and "5.20x" in table
    assert table.splitlines()[0].startswith("| N | mode | blocked ms (MiB)")


def test_summary_table_compares_fused_with_blocked_and_the_baselines() -> None:
    def row(backend: str, ms: float) -> dict:
        return {"backend": backend, "seq_len": 4096, "mode": "fwd+bwd", "median_ms": ms,
                "peak_mem_mb": 1.0, "status": "ok"}  # fmt: skip

    rows = [row("fused", 50.0), row("blocked", 100.0), row("dense", 400.0)]
    header, _, line = summary_table({"rows": rows}).splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(columns, [c.strip() for c in line.strip("|").split("|")], strict=True))
    assert cells["fused vs dense"] == "8.00x" and cells["blocked vs dense"] == "4.00x"
    assert cells["fused vs blocked"] == "2.00x"


def test_cli_writes_json_table_and_plot(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    code = main(
        ["bench", "attention", "--seq-lens", "128", "--backends", "blocked,dense",
         "--batch", "1", "--heads", "2", "--head-dim", "16", "--block-size", "16",
         "--num-random", "1", "--repeats", "1", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert len(result["rows"]) == 4
    assert (out / "table.md").read_text().startswith("| N | mode |")
    pytest.importorskip("matplotlib")
    assert (out / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 128 | fwd+bwd |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seq-lens", "100"], "not a multiple of block size"),
        (["--modes", "backward"], "unknown mode 'backward'"),
        (["--backends", "fast"], "unknown benchmark backend 'fast'"),
        (["--backends", "combiner-dense"], "unknown benchmark backend 'combiner-dense'"),
    ],
)
def test_cli_refuses_bad_requests(args, message, tmp_path, capsys) -> None:
    base = ["bench", "attention", "--seq-lens", "128", "--block-size", "16", "--repeats", "1"]
    code = main([*base, *args, "--out", str(tmp_path), "--no-memory"])
    assert code == 2
    assert message in capsys.readouterr().err
