"""Combiner attention: every fast variant against the slow full-distribution reference, and
every variant's record against what the entry points do. Cases come from the registry, so a
new record is covered without editing this file."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F

from ernie_sparse.attention.combiner import (
    COMBINER_VARIANTS,
    VARIANTS,
    cluster_order,
    combiner_attention,
    combiner_pairs,
    combiner_reference,
)

CAUSAL_VARIANTS = [name for name, variant in VARIANTS.items() if variant.causal]
CASES = [(v, False) for v in COMBINER_VARIANTS] + [(v, True) for v in CAUSAL_VARIANTS]
CASE_IDS = [f"{v}-{'causal' if c else 'bidir'}" for v, c in CASES]


def make_inputs(batch: int, heads: int, seq_len: int, *, seed: int = 0, dim: int = 5):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, heads, seq_len, dim, generator=generator, dtype=torch.float64)
        for _ in range(3)
    ]


def ragged_mask(seq_len: int) -> torch.Tensor:
    """Row 0: one hole in the middle; row 1: the last third padded."""
    mask = torch.ones(2, seq_len, dtype=torch.bool)
    mask[0, seq_len // 2] = False
    mask[1, seq_len - seq_len // 3 :] = False
    return mask


def allowed_keys(mask: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """[B, 1, N, N]: real keys, and j <= i when causal."""
    seq_len = mask.shape[1]
    allowed = mask[:, None, None, :].expand(-1, 1, seq_len, -1)
    if causal:
        allowed = allowed & torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    return allowed


@pytest.mark.parametrize(("variant", "causal"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("seq_len", [7, 23])
def test_fast_matches_reference_outputs_and_gradients(variant, causal, seq_len) -> None:
    inputs = [t.requires_grad_() for t in make_inputs(2, 2, seq_len, seed=seq_len)]
    mask = ragged_mask(seq_len)
    weight = torch.randn(2, 2, seq_len, 5, dtype=torch.float64)
    options = {"variant": variant, "causal": causal, "key_padding_mask": mask}
    fast = combiner_attention(*inputs, **options)
    fast_grads = torch.autograd.grad((fast * weight).sum(), inputs)
    reference, _ = combiner_reference(*inputs, **options)
    reference_grads = torch.autograd.grad((reference * weight).sum(), inputs)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-10)
    for name, got, want in zip("qkv", fast_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10, msg=f"grad {name}")


@pytest.mark.parametrize(
    ("variant", "span"), [("fixed", 3), ("axial-vertical", 6), ("logsparse", 4), ("learnable", 5)]
)
def test_fast_matches_reference_with_explicit_span_float32(variant, span) -> None:
    q, k, v = (t.float() for t in make_inputs(1, 3, 29, seed=1))
    options = {"variant": variant, "span": span}
    reference, _ = combiner_reference(q.double(), k.double(), v.double(), **options)
    fast = combiner_attention(q, k, v, **options)
    torch.testing.assert_close(fast.double(), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("variant", "causal"), CASES, ids=CASE_IDS)
def test_reference_rows_are_distributions_over_every_allowed_key(variant, causal) -> None:
    seq_len = 21
    mask = ragged_mask(seq_len)
    _, probs = combiner_reference(
        *make_inputs(2, 2, seq_len), variant=variant, causal=causal, key_padding_mask=mask
    )
    allowed = allowed_keys(mask, causal=causal).expand_as(probs)
    # Full attention capacity: positive exactly on the allowed keys, nothing elsewhere.
    assert bool((probs[allowed] > 0).all())
    assert bool((probs[~allowed] == 0).all())
    has_key = allowed.any(-1)
    torch.testing.assert_close(probs.sum(-1)[has_key], torch.ones_like(probs.sum(-1)[has_key]))


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS)
def test_causal_output_has_no_gradient_from_the_future(variant) -> None:
    seq_len = 13
    inputs = [t.requires_grad_() for t in make_inputs(1, 2, seq_len, seed=3)]
    out = combiner_attention(*inputs, variant=variant, causal=True)
    for i in range(seq_len - 1):
        grads = torch.autograd.grad(out[:, :, i].sum(), inputs, retain_graph=True)
        for name, grad in zip("qkv", grads, strict=True):
            assert bool((grad[:, :, i + 1 :] == 0).all()), (
                f"{variant}: output {i} sees {name}[>{i}]"
            )
        assert bool((grads[2][:, :, : i + 1] != 0).any())  # the past does reach it


@pytest.mark.parametrize(("variant", "causal"), CASES, ids=CASE_IDS)
def test_padding_invariance(variant, causal) -> None:
    """A sequence's outputs do not change when batched with a longer one (garbage padding)."""
    short, long = 11, 19
    span = 2 if VARIANTS[variant].span_power_of_two else 4
    clusters = 3 if VARIANTS[variant].takes_clusters else None
    options = {"variant": variant, "causal": causal, "span": span, "num_clusters": clusters}
    alone = make_inputs(1, 2, short, seed=5)
    batched = [
        torch.cat([F.pad(a, (0, 0, 0, long - short)), b])
        for a, b in zip(alone, make_inputs(1, 2, long, seed=6), strict=True)
    ]
    for tensor in batched:
        tensor[0, :, short:] = torch.randn(2, long - short, 5, dtype=torch.float64) * 10
    mask = torch.ones(2, long, dtype=torch.bool)
    mask[0, short:] = False
    expected = combiner_attention(*alone, **options)
    got = combiner_attention(*batched, key_padding_mask=mask, **options)
    torch.testing.assert_close(got[:1, :, :short], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("variant", "causal"), CASES, ids=CASE_IDS)
def test_queries_without_keys_get_zeros(variant, causal) -> None:
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0] = False  # nothing to attend to at all
    mask[1, 0] = False  # causal: query 0 has no key
    out = combiner_attention(
        *make_inputs(2, 2, 9), variant=variant, causal=causal, key_padding_mask=mask
    )
    assert bool(torch.isfinite(out).all())
    assert bool((out[0] == 0).all())
    if causal:
        assert bool((out[1, :, 0] == 0).all())


@pytest.mark.parametrize("variant", COMBINER_VARIANTS)
def test_equal_keys_give_the_dense_average(variant) -> None:
    """With one key everywhere, log |region| makes every token weigh 1/N as in dense attention."""
    q, _, v = make_inputs(1, 2, 17)
    k = torch.randn(1, 2, 1, 5, dtype=torch.float64).expand(1, 2, 17, 5)
    out = combiner_attention(q, k, v, variant=variant)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_cluster_order_groups_similar_keys_deterministically() -> None:
    generator = torch.Generator().manual_seed(0)
    side = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0, 1])  # which of two far-apart clusters
    k = torch.randn(1, 1, 10, 4, generator=generator) * 0.1 + side[:, None] * 10.0
    real = torch.ones(1, 1, 10, dtype=torch.bool)
    real[0, 0, 3] = False
    order = cluster_order(k[None, 0], real, 2)[0, 0]
    groups = side[order[:9]].tolist()  # the padded token (3) goes last
    assert order[-1] == 3
    assert groups in (sorted(groups), sorted(groups, reverse=True))
    assert len(set(groups[:4])) == 1 and len(set(groups[5:])) == 1
    assert torch.equal(order, cluster_order(k[None, 0], real, 2)[0, 0])


def test_dropout_only_in_training_draws() -> None:
    q, k, v = make_inputs(1, 2, 16)
    plain = combiner_attention(q, k, v, variant="axial-vertical")
    torch.manual_seed(0)
    dropped = combiner_attention(q, k, v, variant="axial-vertical", dropout_p=0.5)
    torch.manual_seed(0)
    again = combiner_attention(q, k, v, variant="axial-vertical", dropout_p=0.5)
    assert not torch.allclose(plain, dropped) and torch.equal(dropped, again)


def test_pairs_grow_as_n_sqrt_n_for_axial() -> None:
    small, large = (combiner_pairs("axial-vertical", n) for n in (1024, 4096))
    assert large / small == pytest.approx(8.0)
    assert combiner_pairs("fixed", 16) == 16 * (4 + 4 + 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variant": "sparse"}, "unknown Combiner variant 'sparse'"),
        ({"k": torch.zeros(1, 2, 7, 4)}, "q, k, v must have the same shape"),
        ({"q": torch.zeros(2, 7, 4)}, "q must be a 4-d tensor"),
        ({"key_padding_mask": torch.ones(1, 6, dtype=torch.bool)}, "key_padding_mask must have"),
        ({"key_padding_mask": torch.ones(1, 7)}, "key_padding_mask must be bool"),
        ({"span": 0}, "span must be a positive integer"),
        ({"variant": "logsparse", "span": 3}, "power of two"),
        ({"num_clusters": 2}, "num_clusters applies only to variant 'learnable'"),
        ({"variant": "learnable", "causal": True}, "'learnable' cannot be causal"),
        ({"variant": "mixture", "q": torch.zeros(1, 1, 7, 5)}, "needs H >= 2"),
        ({"dropout_p": 1.0}, "dropout_p must be in [0, 1)"),
    ],
)
def test_bad_inputs_are_refused_by_name(change, message) -> None:
    arguments = {
        "q": torch.zeros(1, 2, 7, 5),
        "k": torch.zeros(1, 2, 7, 5),
        "v": torch.zeros(1, 2, 7, 5),
    }
    arguments.update(variant="fixed")
    arguments.update(change)
    if arguments["variant"] == "mixture":
        arguments["k"] = arguments["v"] = arguments["q"]
    error = TypeError if "must be bool" in message else ValueError  # as sparse_attention
    with pytest.raises(error, match=re.escape(message)):
        combiner_attention(**arguments)
    if "dropout_p" not in change:
        with pytest.raises(error):
            combiner_reference(**arguments)


# --- the records: what each declares is what the entry points do ---


@pytest.mark.parametrize("name", COMBINER_VARIANTS)
def test_record_refusals_are_what_the_entry_points_refuse(name) -> None:
    variant = VARIANTS[name]
    heads = variant.min_heads
    q, k, v = make_inputs(1, heads, 9)
    plain = {"variant": name}
    if variant.causal:
        combiner_attention(q, k, v, causal=True, **plain)
    else:
        with pytest.raises(ValueError, match=re.escape(variant.causal_refusal)):
            combiner_attention(q, k, v, causal=True, **plain)
    if heads > 1:
        with pytest.raises(ValueError, match=f"needs H >= {heads}"):
            combiner_attention(q[:, :1], k[:, :1], v[:, :1], **plain)
    if variant.span_power_of_two:
        with pytest.raises(ValueError, match="power of two"):
            combiner_attention(q, k, v, span=3, **plain)
    else:
        combiner_attention(q, k, v, span=3, **plain)
    if variant.takes_clusters:
        combiner_attention(q, k, v, num_clusters=2, **plain)
    else:
        with pytest.raises(ValueError, match="num_clusters applies only to"):
            combiner_attention(q, k, v, num_clusters=2, **plain)


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if not v.heads])
def test_record_default_span_and_padding_are_the_kernels(name) -> None:
    """No span = the record's default span; the padded length is whole spans (or what the
    record says) and the pairs count is the record's on it."""
    variant = VARIANTS[name]
    seq_len = 23
    q, k, v = make_inputs(1, 2, seq_len)
    span = variant.span_for(seq_len, None)
    assert span == (variant.default_span or 5)  # ceil(sqrt(23)) = 5
    torch.testing.assert_close(
        combiner_attention(q, k, v, variant=name),
        combiner_attention(q, k, v, variant=name, span=span),
        rtol=0,
        atol=0,
    )
    length = variant.padded_length(seq_len, span)
    assert length >= seq_len and length % span == 0
    assert combiner_pairs(name, seq_len) == variant.pairs(length, span) > 0


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if v.heads])
def test_mixture_records_run_their_groups_on_their_heads(name) -> None:
    variant = VARIANTS[name]
    heads = variant.min_heads + 1
    q, k, v = make_inputs(2, heads, 13)
    mask = ragged_mask(13)
    got = combiner_attention(q, k, v, variant=name, span=3, key_padding_mask=mask)
    groups = variant.head_groups(heads)
    assert sum(h.stop - h.start for _, h in groups) == heads
    for group, h in groups:
        span = 3 if group.takes_span else None
        want = combiner_attention(
            q[:, h], k[:, h], v[:, h], variant=group.variant, span=span, key_padding_mask=mask
        )
        torch.testing.assert_close(got[:, h], want, rtol=0, atol=0)


def test_a_new_record_is_served_by_the_entry_points_without_other_edits(monkeypatch) -> None:
    """Registering a record is all a variant needs: attention, reference and pairs read it."""
    copy = dataclasses.replace(VARIANTS["axial-vertical"], name="axial-vertical-copy")
    monkeypatch.setitem(VARIANTS, copy.name, copy)
    q, k, v = make_inputs(2, 2, 11)
    for causal in (False, True):
        options = {"causal": causal, "key_padding_mask": ragged_mask(11)}
        new = combiner_attention(q, k, v, variant=copy.name, **options)
        torch.testing.assert_close(
            new, combiner_attention(q, k, v, variant="axial-vertical", **options), rtol=0, atol=0
        )
        reference, _ = combiner_reference(q, k, v, variant=copy.name, **options)
        torch.testing.assert_close(new, reference, rtol=1e-10, atol=1e-10)
    assert combiner_pairs(copy.name, 100) == combiner_pairs("axial-vertical", 100)


def test_records_refuse_an_incomplete_definition() -> None:
    fixed = VARIANTS["fixed"]
    with pytest.raises(ValueError, match="needs a kernel, partition and pairs"):
        dataclasses.replace(fixed, name="broken", pairs=None)
    with pytest.raises(ValueError, match="a mixture has no kernel of its own"):
        dataclasses.replace(fixed, name="broken", heads=VARIANTS["mixture"].heads)
