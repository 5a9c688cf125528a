"""Combiner as an attention choice of the encoder, and the causal (decoder) configuration:
config validation, plumbing against a hand-written transformer on combiner_reference,
padding invariance."""

from __future__ import annotations

import math
import re

import pytest
import torch

from ernie_sparse.attention.combiner import COMBINER_VARIANTS, VARIANTS, combiner_reference
from ernie_sparse.models import PRESETS, Encoder, ModelConfig, preset
from ernie_sparse.models.presets import merge_overrides

VOCAB = 13
CAUSAL_VARIANTS = tuple(name for name, variant in VARIANTS.items() if variant.causal)
CASES = [(v, False) for v in COMBINER_VARIANTS] + [(v, True) for v in CAUSAL_VARIANTS]


def small(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_heads=2,
        num_layers=2,
        mlp_size=24,
        max_positions=64,
        attention={"block_size": 8, "dropout": 0.0},
        dropout=0.0,
    )
    return ModelConfig(**merge_overrides(values, overrides))


def combiner_config(variant: str, causal: bool, **overrides) -> ModelConfig:
    span = 2 if VARIANTS[variant].span_power_of_two else 4
    layer_norm = "pre" if causal else "post"  # cover both residual orders
    return small(
        attention={"kind": "combiner", "combiner_variant": variant, "combiner_span": span},
        causal=causal,
        layer_norm=layer_norm,
        **overrides,
    )


def batch(generator: torch.Generator, lengths: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(0, VOCAB, (len(lengths), max(lengths)), generator=generator)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return ids, mask


# --- configuration ---


def test_defaults_keep_every_existing_model() -> None:
    config = ModelConfig(vocab_size=VOCAB)
    assert (config.attention.kind, config.causal) == ("sparse", False)
    assert (config.attention.combiner_span, config.attention.combiner_clusters) == (0, 0)
    # Sparse bidirectional encoders still pad to whole blocks (the layouts need them).
    assert Encoder(small()).plan(13).length == 16
    assert Encoder(small(attention={"kind": "combiner"})).plan(13).length == 13


COMBINER = {"kind": "combiner"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"attention": {"kind": "linear"}}, "attention.kind must be one of"),
        ({"attention": {"combiner_span": -1}}, "combiner_span must be an integer >= 0"),
        (
            {"attention": {**COMBINER, "combiner_variant": "nope"}},
            "combiner_variant must be one of",
        ),
        ({"attention": {**COMBINER, "pattern": "bigbird"}}, "replaces the block pattern"),
        ({"attention": {**COMBINER, "num_global": 4}}, "Combiner has no global tokens"),
        (
            {"attention": {**COMBINER, "combiner_variant": "logsparse", "combiner_span": 3}},
            "power of two",
        ),
        ({"attention": {**COMBINER, "combiner_clusters": 3}}, "applies only to"),
        (
            {"attention": {**COMBINER, "combiner_variant": "learnable"}, "causal": True},
            "'learnable' cannot be causal",
        ),
        (
            {"attention": {**COMBINER, "combiner_variant": "mixture"}, "num_heads": 1},
            "num_heads >= 2",
        ),
        ({"causal": True, "attention": {"pattern": "bigbird"}}, "needs attention.pattern='dense'"),
        ({"causal": True, "hst": {"enabled": True}}, "cannot use HST"),
        ({"causal": True, "attention": {"num_global": 2}}, "cannot use global tokens"),
        ({"causal": True, "saor": {"alpha": 1.0}}, "SAOR's roll"),
    ],
)
def test_config_refuses_bad_combinations(values, message) -> None:
    with pytest.raises(ValueError, match=message):
        small(**values)


def test_allowed_combinations_and_presets() -> None:
    small(causal=True, saor={"alpha": 1.0, "mode": "dropout"})  # R-Drop has no roll
    small(attention={"kind": "combiner"}, hst={"enabled": True})  # bidirectional Combiner + HST
    assert small(attention={"kind": "combiner"}, max_positions=784).combiner_partition == 28
    assert (
        small(attention={"kind": "combiner", "combiner_variant": "logsparse"}).combiner_partition
        is None
    )
    learnable = small(
        attention={"kind": "combiner", "combiner_variant": "learnable"}, max_positions=50
    )
    assert (learnable.combiner_cluster_count, small().combiner_cluster_count) == (8, None)
    for variant in COMBINER_VARIANTS:
        config = preset(f"combiner-{variant}", vocab_size=VOCAB)
        assert (config.attention.kind, config.attention.combiner_variant, config.causal) == (
            "combiner",
            variant,
            False,
        )
    assert preset("causal-combiner-axial-vertical", vocab_size=VOCAB).causal
    assert preset("causal-dense", vocab_size=VOCAB).layer_norm == "pre"
    assert "causal-combiner-learnable" not in PRESETS


@pytest.mark.parametrize("name", COMBINER_VARIANTS)
def test_config_and_presets_follow_each_variant_record(name) -> None:
    """ModelConfig and the presets read the record: a new variant needs no edit there."""
    variant = VARIANTS[name]
    combiner = {"kind": "combiner", "combiner_variant": name}
    assert preset(f"combiner-{name}", vocab_size=VOCAB).attention.combiner_variant == name
    assert (f"causal-combiner-{name}" in PRESETS) == variant.causal
    if variant.causal:
        assert small(attention=combiner, causal=True).causal
    else:
        with pytest.raises(ValueError, match=re.escape(variant.causal_refusal)):
            small(attention=combiner, causal=True)
    if variant.min_heads > 1:
        heads = variant.min_heads - 1
        with pytest.raises(ValueError, match=f"num_heads >= {variant.min_heads}"):
            small(attention=combiner, num_heads=heads, hidden_size=8 * heads)
    if variant.span_power_of_two:
        with pytest.raises(ValueError, match="combiner_span to be a power of two"):
            small(attention={**combiner, "combiner_span": 3})
    else:
        assert small(attention={**combiner, "combiner_span": 3}).combiner_partition == 3
    if variant.takes_clusters:
        assert small(attention={**combiner, "combiner_clusters": 3}).combiner_cluster_count == 3
    else:
        assert small(attention=combiner).combiner_cluster_count is None
        with pytest.raises(ValueError, match="combiner_clusters applies only to"):
            small(attention={**combiner, "combiner_clusters": 3})
    # The model's span is fixed by max_positions unless the default does not depend on N.
    expected = None if variant.default_span is not None else 8  # ceil(sqrt(64))
    assert small(attention=combiner).combiner_partition == expected


# --- plumbing: the encoder equals a hand-written transformer on the reference ---


def reference_encoder(encoder: Encoder, ids: torch.Tensor, mask: torch.Tensor, attend):
    """Embeddings -> layers -> final norm written out from the encoder's weights (eval mode);
    ``attend(q, k, v, mask)`` [B, H, N, Dh] -> [B, H, N, Dh]."""
    config = encoder.config
    pre = config.layer_norm == "pre"
    emb = encoder.embeddings
    hidden = emb.norm(emb.word(ids) + emb.position(torch.arange(ids.shape[1])))

    def residual(hidden, norm, update):
        return hidden + update(norm(hidden)) if pre else norm(hidden + update(hidden))

    def attention(sublayer):
        def update(x):
            batch, length, width = x.shape
            q, k, v = sublayer.query_key_value(x).chunk(3, dim=-1)  # each [B, N, d]
            heads = [t.view(batch, length, config.num_heads, -1).transpose(1, 2) for t in (q, k, v)]
            context = attend(*heads, mask).transpose(1, 2).reshape(batch, length, width)
            return sublayer.output(context)

        return update

    for layer in encoder.layers:
        hidden = residual(hidden, layer.attention.norm, attention(layer.attention))
        ff = layer.feed_forward
        hidden = residual(
            hidden, ff.norm, lambda x, ff=ff: ff.output(ff.activation(ff.intermediate(x)))
        )
    return encoder.final_norm(hidden)


def on_reference(config: ModelConfig, *, span: int | None = None):
    def attend(q, k, v, mask):
        out, _ = combiner_reference(
            q,
            k,
            v,
            variant=config.attention.combiner_variant,
            causal=config.causal,
            key_padding_mask=mask,
            span=span or config.combiner_partition,
            num_clusters=config.combiner_cluster_count,
        )
        return out

    return attend


@pytest.mark.parametrize(("variant", "causal"), CASES)
def test_combiner_encoder_equals_hand_written_transformer_on_reference(
    variant, causal, generator
) -> None:
    config = combiner_config(variant, causal)
    torch.manual_seed(0)
    encoder = Encoder(config).double().eval()
    ids, mask = batch(generator, (11, 7))
    got = encoder(ids, mask).hidden_states
    expected = reference_encoder(encoder, ids, mask, on_reference(config))
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-9, atol=1e-9)
    if not VARIANTS[variant].span_power_of_two:  # the span reaches the kernel: 3 changes outputs
        other = reference_encoder(encoder, ids, mask, on_reference(config, span=3))
        assert not torch.allclose(got[mask], other[mask], atol=1e-6)


def test_causal_dense_encoder_equals_explicit_masked_softmax(generator) -> None:
    config = small(causal=True, layer_norm="pre")
    torch.manual_seed(0)
    encoder = Encoder(config).double().eval()
    ids, mask = batch(generator, (11, 7))

    def explicit(q, k, v, key_mask):
        length = q.shape[2]
        allowed = torch.ones(length, length, dtype=torch.bool).tril() & key_mask[:, None, None]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        probs = scores.masked_fill(~allowed, -math.inf).softmax(-1).nan_to_num(0.0)
        return probs @ v

    got = encoder(ids, mask).hidden_states
    expected = reference_encoder(encoder, ids, mask, explicit)
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-9, atol=1e-9)
    bidirectional = Encoder(small(layer_norm="pre")).double().eval()
    bidirectional.load_state_dict(encoder.state_dict())
    assert not torch.allclose(bidirectional(ids, mask).hidden_states[mask], got[mask], atol=1e-6)


# --- padding invariance ---


@pytest.mark.parametrize(("variant", "causal"), CASES)
def test_combiner_encoder_padding_invariance(variant, causal, generator) -> None:
    torch.manual_seed(0)
    encoder = Encoder(combiner_config(variant, causal)).eval()
    ids, mask = batch(generator, (10, 23))
    alone = encoder(ids[:1, :10]).hidden_states
    batched = encoder(ids, mask).hidden_states[:1, :10]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_bidirectional_combiner_with_hst_is_padding_invariant(generator) -> None:
    torch.manual_seed(0)
    config = combiner_config("fixed", False, hst={"enabled": True, "pooling": "mean"})
    encoder = Encoder(config).eval()
    ids, mask = batch(generator, (10, 23))
    alone = encoder(ids[:1, :10])
    batched = encoder(ids, mask)
    torch.testing.assert_close(batched.hidden_states[:1, :10], alone.hidden_states)
    torch.testing.assert_close(batched.pooled[:1], alone.pooled)


def test_causal_dense_padding_invariance_and_dropout_runs(generator) -> None:
    torch.manual_seed(0)
    encoder = Encoder(small(causal=True)).eval()
    ids, mask = batch(generator, (10, 23))
    alone = encoder(ids[:1, :10]).hidden_states
    torch.testing.assert_close(encoder(ids, mask).hidden_states[:1, :10], alone)
    # Causal: the prefix of a longer sequence is unaffected by what follows it.
    torch.testing.assert_close(
        encoder(ids[1:, :10]).hidden_states, encoder(ids[1:]).hidden_states[:, :10]
    )
    drop = Encoder(small(causal=True, attention={"dropout": 0.5}, dropout=0.1)).train()
    assert torch.isfinite(drop(ids, mask).hidden_states).all()
