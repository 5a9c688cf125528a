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
