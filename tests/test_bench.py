"""The attention benchmark: its rows, files, table and memory measurement."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ernie_sparse.bench.attention import (
    BenchConfig,
    _interleaved_times,
    add_arguments,
    config_from_args,
    run_bench,
    summary_table,
    useful_gflop,
)
from ernie_sparse.bench.hf_bigbird import hf_bigbird_available
from ernie_sparse.bench.memory import peak_memory_mb
from ernie_sparse.bench.sdpa import sdpa_kernels_used
from ernie_sparse.cli import main

ROW_KEYS = {"backend", "pattern", "seq_len", "mode", "median_ms", "peak_mem_mb", "gflops"}
ROW_KEYS |= {"sdpa_kernels"}


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
    assert dense["sdpa_kernels"] == ["flash (cpu)"]
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
    caption, blank, header = (out / "table.md").read_text().splitlines()[:3]
    assert caption.startswith("shape small: B=1, H=2, D=16, block 16") and "float32" in caption
    assert caption.endswith("dense = SDPA, kernel flash (cpu)")
    assert blank == "" and header.startswith("| N | mode |")
    pytest.importorskip("matplotlib")
    assert (out / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert printed.startswith("shape small: B=1, H=2, D=16") and "| 128 | fwd+bwd |" in printed


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


# --- shape presets ---


def attention_config(*flags: str) -> BenchConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(flags)))


def test_shape_presets_set_batch_heads_and_head_dim() -> None:
    small = attention_config()
    assert (small.shape, small.batch, small.heads, small.head_dim) == ("small", 2, 4, 64)
    bert = attention_config("--shape", "bert-base")
    assert (bert.batch, bert.heads, bert.head_dim) == (8, 12, 64)
    roberta = attention_config("--shape", "roberta-large")
    assert (roberta.batch, roberta.heads, roberta.head_dim) == (4, 16, 64)
    for preset in (bert, roberta):
        assert preset.batch * preset.heads >= 64  # enough (batch, head) pairs for a GPU


def test_explicit_size_flags_override_the_shape_preset() -> None:
    config = attention_config("--shape", "bert-base", "--heads", "2", "--batch", "1")
    assert (config.shape, config.batch, config.heads, config.head_dim) == ("bert-base", 1, 2, 64)


def test_an_unknown_shape_is_refused_with_the_choices(tmp_path, capsys) -> None:
    code = main(["bench", "attention", "--shape", "huge", "--out", str(tmp_path)])
    assert code == 2
    error = capsys.readouterr().err
    assert "unknown shape preset 'huge'; choose from small, bert-base, roberta-large" in error
    assert not (tmp_path / "results.json").exists()


# --- which SDPA kernel ran ---


def test_sdpa_kernels_are_read_off_the_profiler() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 2, 64, 16, requires_grad=True)

    def attend() -> None:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()

    def attend_math() -> None:
        with sdpa_kernel(SDPBackend.MATH):
            attend()

    assert sdpa_kernels_used(attend) == ["flash (cpu)"]
    assert sdpa_kernels_used(attend_math) == ["math"]
    assert sdpa_kernels_used(lambda: q.exp()) == []


# --- acceptance targets ---


def attention_row(backend: str, seq_len: int, ms: float, status: str = "ok") -> dict:
    return {"backend": backend, "seq_len": seq_len, "mode": "fwd+bwd", "median_ms": ms,
            "status": status}  # fmt: skip


def model_row(model: str, ms: float, mib: float, status: str = "ok") -> dict:
    return {"model": model, "seq_len": 4096, "median_ms": ms, "peak_mem_mb": mib,
            "status": status}  # fmt: skip


def test_targets_pass_fail_and_name_what_is_missing() -> None:
    from ernie_sparse.bench.targets import check, gpu_targets

    timings = (("flex", 4096, 4.0), ("dense", 4096, 10.0), ("flex", 16384, 5.0),
               ("dense", 16384, 10.0))  # fmt: skip
    attention = [attention_row(*timing) for timing in timings]
    model = [model_row("dense", 300.0, 900.0), model_row("ernie-sparse", 100.0, 500.0),
             model_row("hf-bigbird", 0.0, 0.0, status="oom")]  # fmt: skip
    results = {"attention": {"rows": attention}, "model": {"rows": model}}
    lines = [check(target, results) for target in gpu_targets()]
    assert [passed for passed, _ in lines] == [True, False, True, False, False]
    assert lines[0][1] == (
        "PASS attention N=4096: flex fwd+bwd time / dense SDPA's = 0.400 (target <= 0.5)"
    )
    assert lines[1][1].startswith("FAIL attention N=16384") and "= 0.500" in lines[1][1]
    assert lines[2][1].endswith("= 3.000 (target >= 2)")
    assert "not measured, model hf-bigbird, seq_len 4096: oom" in lines[3][1]
    passed, line = check(gpu_targets()[0], {"attention": None})
    assert not passed and line.startswith("FAIL") and "no attention results" in line


def test_targets_command_reads_result_folders(tmp_path, capsys) -> None:
    from ernie_sparse.bench.targets import main as targets_main

    folder = tmp_path / "attention"
    folder.mkdir()
    rows = [attention_row(b, n, ms) for n in (256, 512) for b, ms in (("blocked", 1), ("dense", 9))]
    (folder / "results.json").write_text(json.dumps({"rows": rows}))
    args = ["--attention", str(folder), "--model", str(tmp_path / "absent")]
    args += [
        "--sparse-backend",
        "blocked",
        "--attention-lengths",
        "256,512",
        "--model-length",
        "256",
    ]
    assert targets_main(args) == 1  # the model targets have no results
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["PASS", "PASS", "FAIL", "FAIL", "FAIL"]
    assert targets_main([*args, "--attention-lengths", "256"]) == 2


# --- scripts/gpu-check.sh, dry run ---


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_and_checks_every_target(tmp_path) -> None:
    """The script's plumbing on CPU at tiny sizes (about 30-60 s on 2 cores): each step
    runs and says ok, each target gets a PASS or FAIL line, the tables are written."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    done = subprocess.run(
        [str(script), "--dry-run", str(tmp_path / "check")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: a target failed (tiny sizes)
    summary = (tmp_path / "check" / "summary.md").read_text()
    for step in ("tests", "bench-attention", "bench-model"):
        assert re.search(rf"^- {step}: ok \(\d+ s\)$", summary, re.MULTILINE), summary
    verdicts = re.findall(r"^- (PASS|FAIL) (attention|model) ", summary, re.MULTILINE)
    assert [kind for _, kind in verdicts] == ["attention"] * 2 + ["model"] * 3, summary
    assert "not measured" not in summary  # every target found its rows
    assert "- torch " in summary and "- git commit: " in summary
    assert "shape bert-base: B=1, H=2, D=16" in summary  # the preset, sizes overridden
    for bench in ("attention", "model"):
        result = json.loads((tmp_path / "check" / bench / "results.json").read_text())
        assert result["rows"] and all(r["status"] == "ok" for r in result["rows"])
    assert done.returncode == (1 if "FAIL" in {v for v, _ in verdicts} else 0)
