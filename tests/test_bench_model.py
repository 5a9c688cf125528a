"""The model benchmark: rows, tables (HST overhead, memory growth, throughput, attention
time), shape presets, HF BigBird, files, errors."""

from __future__ import annotations

import json
import time

import pytest
import torch

from ernie_sparse.bench.hf_bigbird import hf_bigbird_available
from ernie_sparse.bench.model import ModelBenchConfig, run_bench, summary_table
from ernie_sparse.cli import main

TINY = dict(
    batch=1,
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    mlp_size=64,
    block_size=16,
    repeats=3,
    warmup=0,
)


def test_rows_cover_every_model_and_length_and_memory_grows() -> None:
    config = ModelBenchConfig(seq_lens=(256, 512), dense_max_len=256, **TINY)
    result = run_bench(config, log=lambda _: None)
    status = {(r["model"], r["seq_len"]): r["status"] for r in result["rows"]}
    assert status == {
        ("dense", 256): "ok",
        ("bigbird", 256): "ok",
        ("ernie-sparse", 256): "ok",
        ("dense", 512): "skipped",  # past dense_max_len
        ("bigbird", 512): "ok",
        ("ernie-sparse", 512): "ok",
    }
    rows = {(r["model"], r["seq_len"]): r for r in result["rows"]}
    for model in ("bigbird", "ernie-sparse"):
        small, large = rows[(model, 256)]["peak_mem_mb"], rows[(model, 512)]["peak_mem_mb"]
        assert 1.5 < large / small < 2.6  # linear in n, not quadratic (4x)
    table = summary_table(result)
    assert "HST overhead" in table and "| 512 | skipped |" in table


def test_cli_writes_results_and_refuses_unknown_models(tmp_path, capsys) -> None:
    args = ["bench", "model", "--seq-lens", "128", "--hidden-size", "32", "--num-layers", "1"]
    args += ["--num-heads", "2", "--mlp-size", "64", "--block-size", "16", "--no-memory"]
    args += ["--models", "bigbird,ernie-sparse+saor", "--repeats", "3", "--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in result["rows"]] == ["bigbird", "ernie-sparse+saor"]
    assert (tmp_path / "table.md").exists()
    assert main(["bench", "model", "--models", "bigbird,nope", "--out", str(tmp_path)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["dense", "bigbird", "ernie-sparse", "ernie-sparse+saor"])
def test_benchmarked_models_are_the_papers(name) -> None:
    from ernie_sparse.bench.model import model_config

    config = model_config(name, ModelBenchConfig())
    assert (config.hidden_size, config.num_layers, config.num_heads) == (256, 4, 4)
    assert config.hst.enabled == name.startswith("ernie")
    assert (config.saor.alpha > 0) == name.endswith("+saor")
    assert config.attention.pattern == ("dense" if name == "dense" else "bigbird")
    # dense = one SDPA call (blocked sends all-full rows there); the others pick their best
    assert config.attention.backend == ("blocked" if name == "dense" else "auto")


# --- Figure 4 until out of memory, BlockBERT Table 5's inference grid ---


def test_peak_prediction_follows_the_growth_of_the_last_two_lengths() -> None:
    from ernie_sparse.bench.model import predict_peak_mb

    assert predict_peak_mb([(100, 1.0)], 200) is None
    assert predict_peak_mb([(100, 1.0), (200, 4.0)], 400) == pytest.approx(16.0)  # quadratic
    assert predict_peak_mb([(50, 9.0), (100, 1.0), (200, 2.0)], 400) == pytest.approx(4.0)
    assert predict_peak_mb([(100, 1.0), (200, 1.21)], 400) == pytest.approx(1.4641)


def test_memory_cap_stops_a_model_at_the_first_length_over_it() -> None:
    lengths = (256, 512, 1024, 2048)  # where BigBird's pattern is sparse: linear growth
    one_step = {**TINY, "repeats": 1}  # memory matters here, not time
    free = run_bench(ModelBenchConfig(seq_lens=lengths, models=("bigbird",), **one_step),
                     log=lambda _: None)  # fmt: skip
    peak = {r["seq_len"]: r["peak_mem_mb"] for r in free["rows"]}
    # Over the cap at 2048 by prediction from 512 and 1024: never run there.
    config = ModelBenchConfig(
        seq_lens=lengths, models=("bigbird",), memory_cap_mb=peak[1024] * 1.25, **one_step
    )
    rows = run_bench(config, log=lambda _: None)["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "capped"]
    assert rows[-1]["predicted_peak_mb"] > config.memory_cap_mb
    assert rows[-1]["median_ms"] is None and rows[-1]["peak_mem_mb"] is None
    # Over the cap at 512, where one earlier point predicts nothing: measured, not timed.
    config.memory_cap_mb = (peak[256] + peak[512]) / 2
    rows = run_bench(config, log=lambda _: None)["rows"]
    assert [r["status"] for r in rows] == ["ok", "capped", "capped", "capped"]
    assert rows[1]["peak_mem_mb"] > config.memory_cap_mb and rows[1]["median_ms"] is None
    assert rows[2]["peak_mem_mb"] is None  # stopped: not run at longer lengths


def test_out_of_memory_is_recorded_and_the_model_skipped_afterwards(monkeypatch) -> None:
    from ernie_sparse.bench import model as bench_model

    calls = []
    prepare = bench_model._prepare

    def failing(name, seq_len, config, batch):
        calls.append((name, seq_len, batch))
        if name == "dense" and batch * seq_len >= 256:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return prepare(name, seq_len, config, batch)

    monkeypatch.setattr(bench_model, "_prepare", failing)
    config = ModelBenchConfig(
        seq_lens=(128, 256),
        models=("dense", "blockbert-2", "blockbert-3"),
        inference_batches=(1, 2, 3),
        memory=False,
        **{**TINY, "num_heads": 4, "hidden_size": 32},
    )
    result = run_bench(config, log=lambda _: None)
    status = {(r["model"], r["batch"], r["seq_len"]): r["status"] for r in result["rows"]}
    assert [status[("dense", b, 128)] for b in (1, 2, 3)] == ["ok", "oom", "oom"]
    assert all(status[("dense", b, 256)] == "oom" for b in (1, 2, 3))
    assert ("dense", 128, 3) not in calls and ("dense", 256, 1) in calls  # smaller: tried
    assert all(v == "ok" for (m, _, _), v in status.items() if m != "dense")
    table = bench_model.inference_table(result)
    assert "| 1 x 128 | 2 x 128 | 3 x 128 | 1 x 256 |" in table and "| OOM |" in table


def test_blockbert_models_split_their_heads_into_n_permutations() -> None:
    from ernie_sparse.bench.model import model_config

    config = model_config("blockbert-3", ModelBenchConfig())
    attention = config.attention
    assert attention.pattern == "blockbert" and attention.pattern_params["head_split"] == "2:1:1"
    assert attention.block_multiple == 3
    with pytest.raises(ValueError, match="at least 3 heads"):
        model_config("blockbert-3", ModelBenchConfig(num_heads=2, hidden_size=32))


def test_a_model_name_can_pick_its_attention_backend() -> None:
    from ernie_sparse.bench.model import model_config

    assert model_config("ernie-sparse", ModelBenchConfig()).attention.backend == "auto"
    chosen = model_config("ernie-sparse@blocked", ModelBenchConfig())
    assert chosen.attention.backend == "blocked" and chosen.hst.enabled
    with pytest.raises(ValueError, match="backend"):
        model_config("ernie-sparse@fastest", ModelBenchConfig())


# --- real shapes, SDPA kernel, throughput, time inside attention, HF BigBird ---


def model_bench_config(*flags: str) -> ModelBenchConfig:
    import argparse

    from ernie_sparse.bench.model import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(flags)))


def test_shape_presets_and_explicit_flags() -> None:
    small = model_bench_config()
    assert (small.batch, small.hidden_size, small.num_layers, small.num_heads) == (1, 256, 4, 4)
    assert (small.mlp_size, small.dense_max_len, small.shape) == (1024, 8192, "small")
    bert = model_bench_config("--shape", "bert-base")
    assert (bert.batch, bert.hidden_size, bert.num_layers, bert.num_heads) == (8, 768, 12, 12)
    assert bert.mlp_size == 3072
    roberta = model_bench_config("--shape", "roberta-large", "--num-layers", "2")
    assert (roberta.batch, roberta.hidden_size, roberta.num_heads) == (4, 1024, 16)
    assert (roberta.num_layers, roberta.mlp_size) == (2, 4096)
    cuda = model_bench_config("--device", "cuda", "--seq-lens", "1024,16384")
    assert cuda.dense_max_len == 16384  # SDPA's memory is linear in n there
    assert cuda.models[:1] == ("dense",) and "ernie-sparse+saor" in cuda.models


def test_rows_give_tokens_per_s_sdpa_kernel_and_time_inside_attention(one_thread) -> None:
    from ernie_sparse.bench.model import throughput_table

    config = ModelBenchConfig(seq_lens=(256,), **TINY)
    result = run_bench(config, log=lambda _: None)
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["dense"]["sdpa_kernels"] == ["flash (cpu)"]
    for row in rows.values():
        assert row["status"] == "ok"
        assert row["tokens_per_s"] == pytest.approx(256 / (row["median_ms"] / 1e3), rel=1e-3)
        assert row["attention_ms"] > 0 and row["outside_attention_ms"] > 0
    table = throughput_table(result)
    header, _, dense_line = table.splitlines()[:3]
    assert "| attention ms | outside ms | attention share | faster than dense |" in header
    assert dense_line.startswith("| 256 | dense |") and "| 1.00x | 1.00x |" in dense_line


class _Sleep(torch.autograd.Function):
    """Identity that sleeps ``forward_s`` in forward and ``backward_s`` in backward."""

    @staticmethod
    def forward(ctx, x, forward_s: float, backward_s: float):
        ctx.backward_s = backward_s
        time.sleep(forward_s)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(ctx.backward_s)
        return grad, None, None


def test_attention_clock_counts_the_attention_forward_and_backward_only() -> None:
    from ernie_sparse.bench.attention_time import AttentionClock, time_attention
    from ernie_sparse.models import ModelConfig
    from ernie_sparse.models.layers import AttentionSublayer

    sublayer = AttentionSublayer(ModelConfig(vocab_size=8, hidden_size=8, num_heads=2))

    def slow_attend(q, k, v):  # 30 ms forward, 60 ms backward inside attention
        return _Sleep.apply(torch.nn.functional.scaled_dot_product_attention(q, k, v), 0.03, 0.06)

    def step() -> None:
        hidden = _Sleep.apply(torch.randn(2, 16, 8, requires_grad=True), 0.05, 0.05)  # outside
        sublayer(hidden, slow_attend).sum().backward()

    clock = AttentionClock(torch.device("cpu"))
    with time_attention(sublayer, clock):
        step()
    assert len(clock.calls) == 1
    assert 0.089e3 <= clock.total_ms() < 0.135e3  # 90 ms inside; the 100 ms outside not counted
    step()  # the hook is gone: nothing more is timed
    assert len(clock.calls) == 1


@pytest.mark.skipif(not hf_bigbird_available(), reason="transformers is not installed")
def test_hf_bigbird_trains_under_bf16_autocast_next_to_dense(one_thread) -> None:
    from ernie_sparse.bench.attention_time import AttentionClock, time_attention
    from ernie_sparse.bench.hf_bigbird import HF_METHOD, block_sparse_modules
    from ernie_sparse.bench.model import _prepare

    # (5 + 2 x 3 random) blocks of 16 = 176: HF runs full attention up to there.
    config = ModelBenchConfig(seq_lens=(128, 256), models=("dense", "hf-bigbird"),
                              dtype="bfloat16", memory=False, **TINY)  # fmt: skip
    rows = run_bench(config, log=lambda _: None)["rows"]
    status = {(r["model"], r["seq_len"]): r["status"] for r in rows}
    assert status[("hf-bigbird", 128)] == "skipped (HF BigBird needs n > 176)"
    assert status[("hf-bigbird", 256)] == "ok" and status[("dense", 256)] == "ok"
    hf = next(r for r in rows if r["model"] == "hf-bigbird" and r["seq_len"] == 256)
    assert hf["attention_ms"] > 0 and hf["tokens_per_s"] > 0
    step = _prepare("hf-bigbird", 256, config, 1)
    (module,) = block_sparse_modules(step.model)
    untimed = module.__dict__[HF_METHOD]  # the autocast workaround, per instance
    clock = AttentionClock(torch.device("cpu"))
    with time_attention(step.model, clock):
        step.run()
    assert len(clock.calls) == 1 and clock.total_ms() > 0
    assert module.__dict__[HF_METHOD] is untimed


def test_unknown_dtype_and_shape_are_refused(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="unknown dtype 'float16'; choose from float32, bfloat16"):
        run_bench(ModelBenchConfig(dtype="float16", **TINY), log=lambda _: None)
    assert main(["bench", "model", "--shape", "gpt-3", "--out", str(tmp_path)]) == 2
    assert "unknown shape preset 'gpt-3'; choose from small" in capsys.readouterr().err


def test_cli_header_names_the_shape_dtype_and_dense_kernel(tmp_path, capsys, one_thread) -> None:
    args = ["bench", "model", "--shape", "bert-base", "--batch", "1", "--hidden-size", "32"]
    args += ["--num-layers", "1", "--num-heads", "2", "--mlp-size", "64", "--block-size", "16"]
    args += ["--models", "dense", "--seq-lens", "128", "--repeats", "3", "--dtype", "bfloat16"]
    assert main([*args, "--no-plot", "--out", str(tmp_path)]) == 0
    caption = (tmp_path / "table.md").read_text().splitlines()[0]
    assert caption.startswith("shape bert-base: batch 1, hidden 32, 1 layers, 2 heads, MLP 64")
    assert "; bfloat16; " in caption and caption.endswith("dense = SDPA, kernel flash (cpu)")
    assert capsys.readouterr().out.startswith("shape bert-base: batch 1")
    assert not (tmp_path / "model.png").exists()


def test_resampled_patterns_report_the_cost_of_their_new_masks(one_thread) -> None:
    from ernie_sparse.bench.model import throughput_table

    models = ("bigbird", "bigbird+resample")
    config = ModelBenchConfig(seq_lens=(256,), models=models, attention_time=False, **TINY)
    result = run_bench(config, log=lambda _: None)
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["bigbird"]["new_masks_ms"] is None
    assert rows["bigbird+resample"]["new_masks_ms"] > 0
    lines = throughput_table(result).splitlines()
    assert "| new masks ms |" in lines[0]
    assert lines[2].startswith("| 256 | bigbird | ") and "| - |" in lines[2]
