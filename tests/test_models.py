"""Models: the encoder against a plain reference, HST structure and math, heads, presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ernie_sparse.models import (
    PRESETS,
    AttentionConfig,
    MaskedLM,
    ModelConfig,
    MultipleChoice,
    SequenceClassifier,
    SpanQA,
    TwoTowerMatcher,
    preset,
)
from ernie_sparse.models.encoder import Encoder
from ernie_sparse.models.hierarchical import hierarchical_attention, pool
from ernie_sparse.models.presets import merge_overrides
from ernie_sparse.models.structure import plan_sequence

VOCAB = 50


def small_config(**overrides) -> ModelConfig:
    return ModelConfig.from_dict(merge_overrides(_small(), overrides))


def random_batch(generator, *, batch=3, length=29, lengths=(29, 17, 9)):
    ids = torch.randint(0, VOCAB, (batch, length), generator=generator)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return ids, mask


# --- the encoder with the dense pattern and no HST is a plain Transformer encoder ---


def reference_encoder(encoder: Encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A straightforward Transformer encoder reading the model's weights: explicit
    softmax(QK^T / sqrt(d) + mask) V per head, residuals and LayerNorms."""
    config = encoder.config
    heads, width = config.num_heads, config.hidden_size
    head_dim = width // heads
    emb = encoder.embeddings
    x = emb.word.weight[ids] + emb.position.weight[: ids.shape[1]][None]
    pre = config.layer_norm == "pre"

    def norm(module, value):
        return F.layer_norm(value, (width,), module.weight, module.bias, config.layer_norm_eps)

    if not pre:
        x = norm(emb.norm, x)
    for layer in encoder.layers:
        attn = layer.attention
        h = norm(attn.norm, x) if pre else x
        q, k, v = (h @ attn.query_key_value.weight.T + attn.query_key_value.bias).split(width, -1)
        out = torch.zeros_like(x)
        for head in range(heads):
            cols = slice(head * head_dim, (head + 1) * head_dim)
            scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(head_dim)
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
            out[..., cols] = scores.softmax(-1) @ v[..., cols]
        update = out @ attn.output.weight.T + attn.output.bias
        x = x + update if pre else norm(attn.norm, x + update)
        ff = layer.feed_forward
        h = norm(ff.norm, x) if pre else x
        inner = F.gelu(h @ ff.intermediate.weight.T + ff.intermediate.bias)
        update = inner @ ff.output.weight.T + ff.output.bias
        x = x + update if pre else norm(ff.norm, x + update)
    if pre:
        x = norm(encoder.final_norm, x)
    return x


@pytest.mark.parametrize("layer_norm", ["post", "pre"])
@pytest.mark.parametrize("backend", ["blocked", "reference"])
def test_dense_encoder_equals_reference_transformer(generator, layer_norm, backend) -> None:
    config = small_config(attention={"pattern": "dense", "backend": backend}, layer_norm=layer_norm)
    encoder = Encoder(config).eval()
    ids, mask = random_batch(generator)
    got = encoder(ids, mask).hidden_states
    want = reference_encoder(encoder, ids, mask)
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)


# --- structure: where representatives and tokens go ---


def test_representative_positions_for_odd_lengths() -> None:
    # g = 3 global tokens in one block of 5 (2 unused positions); 4 tokens per local block.
    plan = plan_sequence(23, block_size=5, num_global=3, hst=True)
    assert (plan.global_blocks, plan.local_blocks, plan.length) == (1, 5, 30)
    assert plan.representative_positions.tolist() == [5, 10, 15, 20, 25]
    expected = [0, 1, 2]
    for block in range(5):
        start = 5 + 5 * block + 1
        expected += list(range(start, start + 4))
    assert plan.token_positions.tolist() == expected[:23]  # last block holds 4 of 4
    plan = plan_sequence(22, block_size=5, num_global=3, hst=True)
    assert plan.representative_positions.tolist() == [5, 10, 15, 20, 25]  # last block: 3 tokens
    plan = plan_sequence(23, block_size=5, num_global=3, hst=False)
    assert plan.representative_positions.numel() == 0
    assert plan.token_positions.tolist() == [0, 1, 2, *range(5, 25)]


def test_all_padding_blocks_have_masked_representatives(generator) -> None:
    config = small_config(
        attention={"pattern": "bigbird", "num_global": 3, "block_size": 5}, hst={"enabled": True}
    )
    encoder = Encoder(config).eval()
    ids, mask = random_batch(generator, length=23, lengths=(23, 12, 4))
    out = encoder(ids, mask)
    # local tokens 20, 9, 1 -> ceil(/4) = 5, 3, 1 real blocks of 5
    assert out.representative_mask.tolist() == [
        [True] * 5,
        [True] * 3 + [False] * 2,
        [True] + [False] * 4,
    ]
    assert out.representatives.shape == (3, 5, 16)


def test_padding_does_not_change_a_sequences_outputs(generator) -> None:
    config = small_config(
        attention={"pattern": "window", "num_global": 4, "block_size": 5},
        hst={"enabled": True, "pooling": "max"},
    )
    encoder = Encoder(config).eval()
    ids, mask = random_batch(generator, batch=2, length=40, lengths=(40, 21))
    batched = encoder(ids, mask)
    alone = encoder(ids[1:, :21])
    torch.testing.assert_close(batched.hidden_states[1, :21], alone.hidden_states[0])
    torch.testing.assert_close(batched.pooled[1], alone.pooled[0])


def test_documents_no_longer_than_the_globals_keep_one_representative(generator) -> None:
    config = small_config(
        attention={"pattern": "window", "num_global": 4, "block_size": 5},
        hst={"enabled": True, "pooling": "mean"},
    )
    encoder = Encoder(config).eval()
    ids, mask = random_batch(generator, batch=3, length=40, lengths=(40, 4, 3))
    batched = encoder(ids, mask)
    assert batched.representative_mask[1:].sum(dim=1).tolist() == [1, 1]  # the first block's
    assert torch.isfinite(batched.pooled).all()
    for row, length in ((1, 4), (2, 3)):
        alone = encoder(ids[row : row + 1, :length])
        torch.testing.assert_close(batched.hidden_states[row, :length], alone.hidden_states[0])
        torch.testing.assert_close(batched.pooled[row], alone.pooled[0])
    with pytest.raises(ValueError, match="sequence 1 has no real token"):
        encoder(ids[:2], torch.stack([mask[0], torch.zeros_like(mask[0])]))


# --- hierarchical attention ---


def test_hierarchical_attention_equals_direct_computation(generator) -> None:
    config = small_config(hst={"enabled": True}, num_layers=1)
    sublayer = Encoder(config).layers[0].hierarchical
    hidden = torch.randn(2, 20, 16, generator=generator)
    plan = plan_sequence(15, block_size=4, num_global=0, hst=True)  # 5 blocks of 1 + 3
    positions = torch.tensor([0, 4, 8, 12, 16])
    assert torch.equal(plan.representative_positions, positions)
    rep_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    got = hierarchical_attention(
        hidden, sublayer, plan=plan, representative_mask=rep_mask, dropout_p=0.0
    )
    want = hidden.clone()
    weight, bias = sublayer.query_key_value.weight, sublayer.query_key_value.bias
    for b in range(2):
        reps = hidden[b, positions]  # [m, d]
        q, k, v = (reps @ weight.T + bias).split(16, -1)
        context = torch.zeros_like(reps)
        for head in range(2):
            cols = slice(8 * head, 8 * head + 8)
            for i in range(5):
                scores = [
                    float((q[i, cols] @ k[j, cols]).detach()) / math.sqrt(8)
                    if rep_mask[b, j]
                    else -math.inf
                    for j in range(5)
                ]
                probs = torch.tensor(scores).softmax(0)
                context[i, cols] = (probs[:, None] * v[:, cols]).sum(0)
        out = context @ sublayer.output.weight.T + sublayer.output.bias
        new = F.layer_norm(reps + out, (16,), sublayer.norm.weight, sublayer.norm.bias, 1e-5)
        want[b, positions] = new
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_hst_changes_only_through_representatives(generator) -> None:
    """With local attention and no globals, blocks can only meet through HST."""
    # A wide initialization so that one token's change is large after two layers.
    config = small_config(
        attention={"pattern": "local", "block_size": 4},
        hst={"enabled": True},
        initializer_range=0.5,
    )
    torch.manual_seed(0)  # the parameters: some draws pass the change on only weakly
    encoder = Encoder(config).eval()
    ids, _ = random_batch(generator, batch=1, length=12, lengths=(12,))
    changed = ids.clone()
    changed[0, 11] = (changed[0, 11] + 1) % VOCAB  # a token of the last block
    before, after = encoder(ids).hidden_states, encoder(changed).hidden_states
    # the first block sees it via HST (far above float32 rounding; without HST exactly 0)
    assert (before[0, :3] - after[0, :3]).abs().max() > 1e-5
    no_hst = Encoder(small_config(attention={"pattern": "local", "block_size": 4})).eval()
    torch.testing.assert_close(
        no_hst(ids).hidden_states[0, :4], no_hst(changed).hidden_states[0, :4]
    )


@pytest.mark.parametrize("how", ["mean", "max", "cls"])
def test_pooling(how) -> None:
    states = torch.tensor([[[1.0, 5.0], [3.0, -1.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    want = {"mean": [2.0, 2.0], "max": [3.0, 5.0], "cls": [1.0, 5.0]}[how]
    assert pool(states, mask, how).tolist() == [want]


def test_shared_weights_really_share() -> None:
    shared = Encoder(small_config(hst={"enabled": True, "shared_weights": True}))
    own = Encoder(small_config(hst={"enabled": True}))
    plain = Encoder(small_config())
    for layer in shared.layers:
        assert layer.hierarchical is None
        assert layer.hierarchical_sublayer() is layer.attention
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(shared) == count(plain) + 16  # only the representative embedding
    per_sublayer = sum(p.numel() for p in own.layers[0].hierarchical.parameters())
    assert count(own) == count(shared) + 2 * per_sublayer


def test_backends_agree_on_the_ernie_sparse_encoder(generator) -> None:
    ids, mask = random_batch(generator, length=37, lengths=(37, 30, 20))
    outputs = []
    for backend in ("reference", "blocked"):
        config = preset(
            "ernie-sparse",
            **_small(backend=backend, pattern_seed=3, num_global=5),
        )
        torch.manual_seed(0)
        model = SequenceClassifier(config, num_labels=3).eval()
        out = model(ids, mask, labels=torch.tensor([0, 1, 2]))
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        outputs.append((out.logits, grads))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], atol=1e-5, rtol=1e-5)
    for ref, got in zip(outputs[0][1], outputs[1][1], strict=True):
        torch.testing.assert_close(ref, got, atol=1e-5, rtol=1e-4)


def _small(**attention) -> dict:
    """Small sizes; ``attention`` settings on top of a 4-token block without dropout."""
    return dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_heads=2,
        num_layers=2,
        mlp_size=32,
        max_positions=128,
        attention={"block_size": 4, "dropout": 0.0, **attention},
        dropout=0.0,
    )


# --- heads: shapes, losses, every parameter trained ---


def head_inputs(name, generator):
    ids, mask = random_batch(generator, length=30, lengths=(30, 22, 12))
    if name == "classification":
        return (
            SequenceClassifier,
            {"num_labels": 3},
            dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2, 1])),
        )
    if name == "matching":
        ids2, mask2 = random_batch(generator, length=25, lengths=(25, 10, 19))
        batch = dict(input_ids=ids, attention_mask=mask, input_ids_2=ids2, attention_mask_2=mask2)
        return TwoTowerMatcher, {}, {**batch, "labels": torch.tensor([1, 0, 1])}
    if name == "mlm":
        labels = torch.where(torch.rand(ids.shape, generator=generator) < 0.3, ids, -100)
        labels[~mask] = -100
        labels[:, 10] = ids[:, 10]
        return MaskedLM, {}, dict(input_ids=ids, attention_mask=mask, labels=labels)
    if name == "span_qa":
        return (
            SpanQA,
            {},
            dict(
                input_ids=ids,
                attention_mask=mask,
                labels=torch.tensor([[5, 9], [12, 12], [-100, -100]]),
            ),
        )
    choice_ids = ids.view(3, 1, 30).expand(3, 2, 30).contiguous()
    choice_mask = mask.view(3, 1, 30).expand(3, 2, 30).contiguous()
    choice_ids[:, 1, 0] = (choice_ids[:, 1, 0] + 1) % VOCAB
    return (
        MultipleChoice,
        {},
        dict(input_ids=choice_ids, attention_mask=choice_mask, labels=torch.tensor([1, 0, 1])),
    )


HEADS = ["classification", "matching", "mlm", "span_qa", "multiple_choice"]
VARIANTS = {  # preset, HST settings
    "dense": ("dense", {}),
    "ernie-mean": ("ernie-sparse", {"pooling": "mean"}),
    "ernie-cls": ("ernie-sparse", {"pooling": "cls"}),
    "ernie-shared-max": ("ernie-sparse", {"shared_weights": True, "pooling": "max"}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("head", HEADS)
def test_every_parameter_gets_a_gradient(generator, head, variant) -> None:
    name, hst = VARIANTS[variant]
    config = preset(name, **_small(num_global=4), hst=hst)
    model_class, kwargs, batch = head_inputs(head, generator)
    model = model_class(config, **kwargs).train()
    out = model(**batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_head_output_shapes(generator) -> None:
    config = preset("ernie-sparse", **_small(num_global=4))
    shapes = {}
    for head in HEADS:
        model_class, kwargs, batch = head_inputs(head, generator)
        shapes[head] = tuple(model_class(config, **kwargs).eval()(**batch).logits.shape)
    assert shapes == {
        "classification": (3, 3),
        "matching": (3, 2),
        "mlm": (3, 30, VOCAB),
        "span_qa": (3, 2, 30),
        "multiple_choice": (3, 2),
    }


def test_mlm_head_is_tied_and_span_qa_masks_padding(generator) -> None:
    config = preset("dense", **_small())
    mlm = MaskedLM(config).eval()
    ids, mask = random_batch(generator)
    out = mlm(ids, mask)
    hidden = mlm.norm(F.gelu(mlm.transform(out.encoder.hidden_states)))
    word = mlm.encoder.embeddings.word.weight
    torch.testing.assert_close(out.logits, hidden @ word.T + mlm.bias)
    untied = sum(p.numel() for p in mlm.parameters()) - sum(
        p.numel() for p in mlm.encoder.parameters()
    )
    assert untied == 16 * 16 + 16 + 2 * 16 + VOCAB  # transform, norm, bias: no output matrix
    logits = SpanQA(config).eval()(ids, mask).logits
    assert (logits[2, :, 9:] == torch.finfo(logits.dtype).min).all()
    assert (logits[2, :, :9] > -1e30).all()


def test_labels_are_checked(generator) -> None:
    model = SequenceClassifier(preset("dense", **_small()), num_labels=3)
    ids, mask = random_batch(generator)
    with pytest.raises(ValueError, match="label 3 is outside"):
        model(ids, mask, labels=torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="do not fit"):
        model(ids, mask, labels=torch.tensor([0, 1]))


# --- configuration and input errors ---


def test_presets_build_every_model(generator) -> None:
    ids, mask = random_batch(generator, length=30, lengths=(30, 22, 12))
    for name in PRESETS:
        config = preset(name, **_small())
        logits = SequenceClassifier(config, num_labels=2).eval()(ids, mask).logits
        assert logits.shape == (3, 2) and torch.isfinite(logits).all(), name


def test_table5_and_table6_variants_are_configuration_only() -> None:
    assert preset("ernie-sparse", vocab_size=9).hst.enabled
    assert not preset("ernie-sparse-no-hst", vocab_size=9).hst.enabled
    assert preset("ernie-sparse-no-saor", vocab_size=9).saor.alpha == 0
    ws = preset("ernie-sparse-ws-hst", vocab_size=9)
    assert ws.hst.shared_weights and ws.saor.alpha == 0
    assert preset("ernie-sparse-rdrop", vocab_size=9).saor.mode == "dropout"
    pooled = preset("ernie-sparse", vocab_size=9).with_overrides({"hst.pooling": "max"})
    assert pooled.hst.pooling == "max"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"hidden_size": 10, "num_heads": 3}, "not divisible"),
        ({"attention": {"pattern": "nope"}}, "attention.pattern must be one of"),
        ({"attention": {"pattern": "window", "pattern_params": {"widht": 1}}}, "widht"),
        (
            {
                "attention": {"pattern": "blockbert", "pattern_params": {"head_split": "1:1"}},
                "num_heads": 4,
            },
            "covers 2 heads",
        ),
        ({"hst": {"pooling": "min"}}, "hst.pooling"),
        ({"saor": {"alpha": -1.0}}, "alpha"),
        ({"hidden_sise": 3}, "unknown config key"),
        ({"num_layers": "2"}, "num_layers must be int"),
        ({"attention": {"backend": "fast"}}, "attention.backend"),
        ({"attention": {"block_sise": 8}}, r"unknown config key\(s\) attention\.block_sise"),
        ({"attention": {"dropout": 1.0}}, r"attention.dropout must be in \[0, 1\)"),
        ({"attention": "sparse", "attention.kind": "sparse"}, "unknown config key"),
    ],
)
def test_bad_configs_are_refused_by_name(values, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        ModelConfig.from_dict({"vocab_size": 10, **values})


def test_config_round_trips_and_overrides() -> None:
    config = preset("ernie-sparse", vocab_size=9)
    assert ModelConfig.from_dict(config.to_dict()) == config
    changed = config.with_overrides(
        {"num_layers": 2, "saor.alpha": 1, "attention.pattern_params.num_random": 1}
    )
    assert (changed.num_layers, changed.saor.alpha) == (2, 1.0)
    assert changed.attention.pattern_params == {"window_width": 1, "num_random": 1}
    with pytest.raises(ValueError, match=r"unknown config key 'hst\.pooll'"):
        config.with_overrides({"hst.pooll": "max"})
    with pytest.raises(ValueError, match=r"block_size is now attention\.block_size"):
        config.with_overrides({"block_size": 32})
    with pytest.raises(ValueError, match=r"attention is now attention\.kind"):
        config.with_overrides({"attention": "combiner"})


# --- configs saved before the attention settings were grouped still load ---

LEGACY_ATTENTION = {  # the flat keys of older config.yaml / config.json files
    "pattern": "bigbird",
    "pattern_params": {"window_width": 1, "num_random": 1},
    "block_size": 8,
    "num_global": 16,
    "pattern_seed": 3,
    "resample_pattern": True,
    "attention_backend": "reference",
    "attention_dropout": 0.25,
    "attention": "sparse",
    "combiner_variant": "fixed",
    "combiner_span": 4,
    "combiner_clusters": 2,
}


def test_legacy_flat_attention_keys_move_into_the_attention_section() -> None:
    config = ModelConfig.from_dict({"vocab_size": 10, **LEGACY_ATTENTION})
    assert config.attention == AttentionConfig(
        kind="sparse",
        pattern="bigbird",
        pattern_params={"window_width": 1, "num_random": 1},
        block_size=8,
        num_global=16,
        pattern_seed=3,
        resample_pattern=True,
        backend="reference",
        dropout=0.25,
        combiner_variant="fixed",
        combiner_span=4,
        combiner_clusters=2,
    )
    assert ModelConfig.from_dict(config.to_dict()) == config  # saved again in the new keys
    combiner = ModelConfig.from_dict({"vocab_size": 10, "attention": "combiner"})
    assert combiner.attention.kind == "combiner"


def test_legacy_keys_mixed_with_their_new_spelling_are_refused() -> None:
    both = {"vocab_size": 10, "block_size": 8, "attention": {"block_size": 16}}
    with pytest.raises(
        ValueError, match=r"model\.block_size \(the old spelling\) and model\.attention\.block_size"
    ):
        ModelConfig.from_dict(both)
    dropout = {"vocab_size": 10, "attention_dropout": 0.1, "attention": {"dropout": 0.2}}
    with pytest.raises(
        ValueError, match=r"attention_dropout .* and model\.attention\.dropout .* same setting"
    ):
        ModelConfig.from_dict(dropout)
    # other settings of the two spellings combine: nothing is dropped
    mixed = ModelConfig.from_dict(
        {"vocab_size": 10, "block_size": 8, "attention": {"pattern": "local"}}
    )
    assert (mixed.attention.block_size, mixed.attention.pattern) == (8, "local")


def test_written_config_takes_only_the_new_keys() -> None:
    with pytest.raises(ValueError, match=r"num_global is now attention\.num_global"):
        preset("bigbird", vocab_size=9, num_global=4)
    with pytest.raises(ValueError, match=r"attention is now attention\.kind"):
        preset("dense", vocab_size=9, attention="combiner")
    with pytest.raises(TypeError, match="attention must be a AttentionConfig or a mapping"):
        ModelConfig(vocab_size=9, attention="combiner")


def test_bad_inputs_are_refused_by_name(generator) -> None:
    encoder = Encoder(
        small_config(hst={"enabled": True}, attention={"num_global": 4, "pattern": "bigbird"})
    )
    ids, mask = random_batch(generator)
    with pytest.raises(ValueError, match="exceeds max_positions=128"):
        encoder(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 50\)"):
        encoder(ids + 100)
    with pytest.raises(ValueError, match="sequence 1 has no real token"):
        encoder(ids, mask & (torch.arange(29) < torch.tensor([[29], [0], [9]])))
    with pytest.raises(ValueError, match="attention_mask must be bool or integers"):
        encoder(ids, mask.float() * 0.5)
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        encoder(ids, mask, torch.zeros_like(ids))
    assert encoder(ids, mask.long()).hidden_states.shape == (3, 29, 16)


def test_blockbert_pads_to_whole_parts(generator) -> None:
    config = preset("blockbert", **_small())  # head split 1:1 -> 2 parts
    encoder = Encoder(config).eval()
    ids, mask = random_batch(generator, length=13, lengths=(13, 9, 5))  # 4 blocks of 4 -> 4
    assert encoder.plan(13).num_blocks % 2 == 0
    assert encoder.plan(9).num_blocks == 4  # 3 blocks rounded up to 4
    assert torch.isfinite(encoder(ids, mask).hidden_states).all()


def test_resampled_patterns_differ_per_step_and_freeze_in_eval(generator) -> None:
    config = preset("bigbird", **_small(resample_pattern=True, num_global=4))
    encoder = Encoder(config)
    plan = encoder.plan(60)
    first = encoder.layouts.for_layers(plan, training=True)
    second = encoder.layouts.for_layers(plan, training=True)
    assert any(a.key != b.key for a, b in zip(first, second, strict=True))
    frozen = encoder.layouts.for_layers(plan, training=False)
    assert frozen is encoder.layouts.for_layers(plan, training=False)
    again = Encoder(config).layouts.for_layers(plan, training=False)
    assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(frozen, again, strict=True))
    assert not torch.equal(frozen[0].tensor, frozen[1].tensor)  # each layer draws its own


def test_gradient_checkpointing_gives_the_same_gradients(generator) -> None:
    ids, mask = random_batch(generator)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = SequenceClassifier(preset("ernie-sparse", **_small(num_global=4)), num_labels=2)
        model.encoder.gradient_checkpointing = checkpointing
        model(ids, mask, labels=torch.tensor([0, 1, 1])).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, recomputed)
