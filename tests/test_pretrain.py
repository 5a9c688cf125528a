"""``ernie-sparse pretrain``: a tiny masked-LM run on a generated corpus learns, resumes
exactly after an interruption, and warm-starts from a (stand-in) pretrained encoder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from ernie_sparse.cli import main
from ernie_sparse.data.corpus import find_text_files, train_tokenizer
from ernie_sparse.models import ModelConfig
from ernie_sparse.models.encoder import Encoder
from ernie_sparse.training import loop
from ernie_sparse.training.pretrain import pretrain_config


def write_corpus(root: Path, documents: int, seed: int = 0) -> Path:
    """Short English-like documents, as .txt/.md/.rst in nested folders."""
    import random

    rng = random.Random(seed)
    words = (["the cat", "a dog", "my sister"], ["sat on", "found"], ["the mat", "a tree"])
    for number in range(documents):
        folder = root / ("nested" if number % 4 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        lines = [" ".join(map(rng.choice, words)) + "." for _ in range(rng.randint(4, 20))]
        suffix = (".txt", ".md", ".rst")[number % 3]
        (folder / f"doc{number}{suffix}").write_text("\n".join(lines) + "\n")
    return root


TINY = [
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.mlp_size=64",
    "model.num_layers=1",
    "model.attention.block_size=8",
    "model.max_positions=64",
    "train.max_length=64",
    "train.batch_size=4",
    "train.max_steps=20",
    "train.eval_every=5",
    "train.eval_max_batches=4",
    "train.log_every=1",
    "train.lr=0.003",
    "train.warmup_steps=4",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), documents=16)


def pretrain(corpus: Path, out: Path, *extra: str) -> int:
    args = ["pretrain", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "300"]
    return main([*args, "--quiet", *extra, *TINY])


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in lines]


class Interrupted(Exception):
    pass


def test_pretrain_learns_and_resumes_exactly(tmp_path, corpus, monkeypatch) -> None:
    whole = tmp_path / "whole"
    assert pretrain(corpus, whole) == 0
    history = records(whole)
    train_losses = [r["loss"] for r in history if "loss" in r]
    bpc = [r["val_bpc"] for r in history if "val_bpc" in r]
    assert len(bpc) == 4 and bpc[-1] < bpc[0] - 0.3  # bits per character fall
    assert sum(train_losses[-5:]) < sum(train_losses[:5]) - 2.5  # ~0.5 nats per step lower
    config = yaml.safe_load((whole / "config.yaml").read_text())
    assert config["train"]["task"] == "mlm"
    assert config["train"]["tokenizer"] == str(whole / "tokenizer.json")
    assert (
        config["model"]["vocab_size"]
        == json.loads((whole / "tokenizer.json").read_text())["model"]["vocab"].__len__()
    )

    # interrupt mid-way between the step-10 checkpoint and step 15, then resume
    step = loop.Run._optimizer_step

    def crash_at_13(self):
        if self.state.step == 12:
            raise Interrupted
        return step(self)

    killed = tmp_path / "killed"
    monkeypatch.setattr(loop.Run, "_optimizer_step", crash_at_13)
    with pytest.raises(Interrupted):
        pretrain(corpus, killed)
    monkeypatch.setattr(loop.Run, "_optimizer_step", step)
    assert not (killed / "model.safetensors").exists()
    assert pretrain(corpus, killed, "--resume") == 0
    assert records(killed) == history
    assert (killed / "tokenizer.json").read_text() == (whole / "tokenizer.json").read_text()

    # the run directory is itself a warm start: its best weights, MLM head included
    from safetensors.torch import load_file

    from ernie_sparse.training.warm_start import read_source_checkpoint, read_source_config

    best = load_file(str(whole / "best.safetensors"))
    assert read_source_config(whole).to_dict() == config["model"]
    checkpoint = read_source_checkpoint(whole)
    encoder = checkpoint.encoder
    assert set(encoder) == {k.removeprefix("encoder.") for k in best if k.startswith("encoder.")}
    assert all(torch.equal(v, best[f"encoder.{k}"]) for k, v in encoder.items())
    head = checkpoint.mlm_head
    assert torch.equal(head["transform.weight"], best["transform.weight"])


def test_pretrain_refuses_an_existing_run_and_an_empty_corpus(tmp_path, corpus, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert pretrain(tmp_path / "empty", tmp_path / "run") == 2
    assert "no .txt, .rst, .md files found" in capsys.readouterr().err


FIXED = ("vocab_size", "hidden_size", "num_heads", "num_layers", "mlp_size")


def fake_checkpoint(monkeypatch, base: ModelConfig, weights: dict, calls: list) -> None:
    """The checkpoint is ``base`` and ``weights`` (plus an MLM head): stand-ins for the
    two readers training.warm_start uses, its config file and the whole checkpoint."""
    from ernie_sparse.models.pretrained import Checkpoint, override_config
    from ernie_sparse.training import warm_start

    def read_checkpoint_config(directory, **overrides):
        calls.append(("config", overrides))
        return override_config(base, overrides)  # refuses fixed fields, as the real one

    def read_checkpoint(directory, **overrides):
        calls.append(("weights", overrides))
        assert not set(overrides) & set(FIXED), "fixed fields must not be overridden"
        head = {"bias": torch.full((base.vocab_size,), 0.5)}
        return Checkpoint(override_config(base, overrides), weights, head, "ernie_sparse")

    monkeypatch.setattr(warm_start, "read_checkpoint_config", read_checkpoint_config)
    monkeypatch.setattr(warm_start, "read_checkpoint", read_checkpoint)


def test_warm_start_takes_the_checkpoint_config_and_weights(tmp_path, corpus, monkeypatch) -> None:
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    train_tokenizer(find_text_files(corpus), checkpoint / "tokenizer.json", vocab_size=300)
    vocab = json.loads((checkpoint / "tokenizer.json").read_text())["model"]["vocab"]
    base = ModelConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_heads=4,
        num_layers=2,
        mlp_size=48,
        max_positions=64,
        attention={"block_size": 8},
    )
    torch.manual_seed(5)
    weights = Encoder(base).state_dict()
    calls: list[tuple[str, dict]] = []
    fake_checkpoint(monkeypatch, base, weights, calls)

    def args(*overrides: str) -> argparse.Namespace:
        return argparse.Namespace(
            corpus=corpus,
            out=tmp_path / "run",
            init_from=str(checkpoint),
            tokenizer=None,
            config="pretrain/mlm-tiny",
            vocab_size=300,
            max_steps=None,
            resume=False,
            overrides=["model.max_positions=64", "train.max_length=64", *overrides],
        )

    # mlm-tiny's sizes (hidden_size 64, ...) differ from the checkpoint's: refused by name
    with pytest.raises(ValueError, match=r"model.hidden_size=64 \(checkpoint: 32\)"):
        pretrain_config(args())
    sizes = ["model.hidden_size=32", "model.num_heads=4", "model.mlp_size=48", "model.num_layers=2"]
    config = pretrain_config(args(*sizes, "model.dropout=0.0", "model.attention.block_size=8"))
    assert config.train.init_from == str(checkpoint)
    assert config.train.tokenizer == str(checkpoint / "tokenizer.json")
    assert config.model.vocab_size == len(vocab)  # the checkpoint's, not the preset's 8000
    assert config.model.dropout == 0.0  # the run's value on top
    assert (
        config.model.hst.enabled and config.model.attention.pattern == "bigbird"
    )  # mlm-tiny's preset
    run = loop.Run(config, tmp_path / "run", resume=False, quiet=True)
    loaded = run.module.state_dict()
    assert all(torch.equal(loaded[f"encoder.{key}"], value) for key, value in weights.items())
    assert torch.equal(loaded["bias"], torch.full((len(vocab),), 0.5))  # the MLM head too
    kind, overrides = calls[-1]
    assert kind == "weights" and overrides["dropout"] == 0.0 and "hidden_size" not in overrides
    assert [kind for kind, _ in calls].count("weights") == 1  # the weights read once
