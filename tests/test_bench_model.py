"""The model benchmark: rows, table (HST overhead, memory growth), files, errors."""

from __future__ import annotations

import json

import pytest

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
    assert config.pattern == ("dense" if name == "dense" else "bigbird")


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
    assert config.pattern == "blockbert" and config.pattern_params["head_split"] == "2:1:1"
    assert config.block_multiple == 3
    with pytest.raises(ValueError, match="at least 3 heads"):
        model_config("blockbert-3", ModelBenchConfig(num_heads=2, hidden_size=32))


def test_a_model_name_can_pick_its_attention_backend() -> None:
    from ernie_sparse.bench.model import model_config

    assert model_config("ernie-sparse", ModelBenchConfig()).attention_backend == "auto"
    chosen = model_config("ernie-sparse@blocked", ModelBenchConfig())
    assert chosen.attention_backend == "blocked" and chosen.hst.enabled
    with pytest.raises(ValueError, match="attention_backend"):
        model_config("ernie-sparse@fastest", ModelBenchConfig())
