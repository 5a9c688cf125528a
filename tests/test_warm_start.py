"""Warm starts (training.warm_start): one loading path for every head, one HST policy
(the one ``convert`` applies), and a checkpoint's weights read once per run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("transformers")  # the stand-in BERT checkpoints and convert need it

from test_finetune_tasks import WORDS
from test_finetune_tasks import word_tokenizer as tokenizer_file
from test_pretrained import tiny_checkpoint

from ernie_sparse.cli import main
from ernie_sparse.models import (
    MaskedLM,
    SequenceClassifier,
    SpanQA,
    pretrained,
)
from ernie_sparse.models.convert import convert
from ernie_sparse.models.pretrained import load_pretrained_head, read_checkpoint
from ernie_sparse.training.warm_start import warm_start, warm_start_config

HST = {
    "attention": {"pattern": "local", "block_size": 8},
    "hst": {"enabled": True, "pooling": "mean"},
}
NO_HST = {"attention": {"pattern": "dense"}, "hst": {"enabled": False, "pooling": "cls"}}


def hierarchical(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hierarchical attention's tensors, keyed as in an Encoder's state dict."""
    state = {key.removeprefix("encoder."): value for key, value in state.items()}
    return {key: value for key, value in state.items() if ".hierarchical." in key}


def warm_started(directory: Path, head, **head_kwargs):
    config = warm_start_config(directory, HST)
    module = head(config, **head_kwargs)
    warm_start(module, directory, config)
    return module


def test_hst_warm_start_starts_hierarchical_attention_as_convert_does(tmp_path) -> None:
    bert, _ = tiny_checkpoint(tmp_path, "bert", mlm=False)
    converted, dense = tmp_path / "converted", tmp_path / "dense"
    convert(bert, converted, overrides=HST)
    convert(bert, dense, overrides=NO_HST)
    expected = hierarchical(read_checkpoint(converted).encoder)
    assert expected and not hierarchical(read_checkpoint(dense).encoder)
    # from the converted checkpoint (which has them), and from two that lack them
    for source in (converted, bert, dense):
        torch.manual_seed(1)  # initializes every hierarchical attention at random first
        module = warm_started(source, SequenceClassifier, num_labels=3)
        got = hierarchical(module.state_dict())
        assert got.keys() == expected.keys(), source
        assert all(torch.equal(got[key], expected[key]) for key in expected), source


def test_every_head_loads_through_the_same_path(tmp_path) -> None:
    """warm_start (training) and load_pretrained_head (library) give the same head; a
    head without a last hierarchical layer skips the checkpoint's instead of failing."""
    base, masked_lm = tmp_path / "base", tmp_path / "mlm"
    convert(tiny_checkpoint(tmp_path, "bert", mlm=False)[0], base, overrides=HST)
    convert(tiny_checkpoint(tmp_path, "roberta", mlm=True)[0], masked_lm, overrides=HST)
    cases = [
        (base, SequenceClassifier, {"num_labels": 2}),
        (base, SpanQA, {}),  # reads every token: no last hierarchical attention
        (masked_lm, MaskedLM, {}),
        (masked_lm, SequenceClassifier, {"num_labels": 2}),  # copies the last one
    ]
    for source, head, kwargs in cases:
        torch.manual_seed(3)
        trained = warm_started(source, head, **kwargs).state_dict()
        torch.manual_seed(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded, _ = load_pretrained_head(source, head, model_overrides=HST, **kwargs)
        skipped = [w for w in caught if "has no place for" in str(w.message)]
        assert bool(skipped) == (head is SpanQA)
        library = loaded.state_dict()
        assert trained.keys() == library.keys()
        assert all(torch.equal(trained[key], library[key]) for key in trained), head.__name__
        if head is MaskedLM:
            mlm_head = read_checkpoint(source).mlm_head
            assert torch.equal(trained["transform.weight"], mlm_head["transform.weight"])


def write_corpus(root: Path) -> Path:
    root.mkdir()
    for number in range(8):
        lines = [" ".join(WORDS[(number + i + j) % 40] for j in range(9)) for i in range(6)]
        (root / f"doc{number}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_a_warm_started_mlm_run_reads_the_checkpoint_once(tmp_path, monkeypatch) -> None:
    bert, _ = tiny_checkpoint(tmp_path, "bert", mlm=True)
    tokenizer_file(bert / "tokenizer.json")  # 48 tokens, inside the checkpoint's 99
    opened: list[Path] = []
    load = pretrained.load_safetensors

    def counting(path, *args, **kwargs):
        opened.append(Path(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(pretrained, "load_safetensors", counting)
    out = tmp_path / "run"
    args = ["pretrain", "--corpus", str(write_corpus(tmp_path / "corpus")), "--out", str(out)]
    args += ["--from", str(bert), "--quiet", "--max-steps", "2"]
    overrides = [
        "model.max_positions=40",
        "model.attention.block_size=8",
        "model.hst.shared_weights=false",
    ]
    overrides += ["train.max_length=40", "train.batch_size=2", "train.eval_every=2"]
    overrides += ["train.mlm.val_fraction=0.3"]
    assert main([*args, *overrides]) == 0
    assert opened == [bert / "model.safetensors"]


def test_a_preset_on_a_warm_start_sets_only_its_own_attention_settings(tmp_path) -> None:
    """The preset brings its pattern and global tokens; the checkpoint keeps its block
    size, attention dropout, backend and seed (a run folder saved with the flat keys)."""
    sizes = {"vocab_size": 50, "hidden_size": 16, "num_heads": 2, "num_layers": 1}
    flat = {"pattern": "local", "block_size": 16, "attention_dropout": 0.0}
    flat.update(attention_backend="reference", pattern_seed=7)
    model = {**sizes, "mlp_size": 32, "max_positions": 256, **flat}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": model, "train": {}}))
    config = warm_start_config(tmp_path, {}, preset_name="bigbird")
    attention = config.attention
    assert (attention.pattern, attention.num_global) == ("bigbird", 128)  # 2 blocks of 64
    assert (attention.block_size, attention.dropout) == (16, 0.0)
    assert (attention.backend, attention.pattern_seed) == ("reference", 7)
    chosen = warm_start_config(tmp_path, {"attention": {"block_size": 32}}, preset_name="bigbird")
    assert (chosen.attention.block_size, chosen.attention.num_global) == (32, 64)
