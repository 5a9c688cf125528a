"""Attention backends against the dense reference: outputs, gradients, padding, dtypes, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ernie_sparse.attention import (
    choose_backend,
    expand_layout,
    flex_available,
    fused_available,
    sparse_attention,
)
from ernie_sparse.patterns import bigbird, blockbert, dense, fixed, global_blocks, local, window

F64 = {"atol": 1e-10, "rtol": 1e-10}
F32 = {"atol": 1e-5, "rtol": 1e-5}

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_fused = pytest.mark.skipif(not fused_available(), reason="the fused kernel is not built")


# --------------------------------------------------------------------------- helpers


def random_inputs(shape, *, generator, dtype=torch.float64, count=3):
    return [torch.randn(shape, generator=generator, dtype=dtype) for _ in range(count)]


def random_layout(heads: int, nb: int, density: float, generator) -> torch.Tensor:
    return torch.rand(heads, nb, nb, generator=generator) < density


def padding_mask(lengths: list[int], seq_len: int) -> torch.Tensor:
    """[B, N] bool, True for the first ``lengths[b]`` tokens of sequence b."""
    return torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]


def forward_backward(backend, q, k, v, layout, *, block_size, grad_out, mask=None, dropout_p=0.0):
    """Output and (dq, dk, dv) of one backend for an upstream gradient ``grad_out``."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = sparse_attention(
        *leaves,
        layout,
        block_size=block_size,
        key_padding_mask=mask,
        backend=backend,
        dropout_p=dropout_p,
    )
    out.backward(grad_out)
    return out.detach(), [t.grad for t in leaves]


def assert_matches_reference(backend, q, k, v, layout, *, block_size, mask=None, tol=F64, seed=0):
    """``backend`` equals the reference in output and in the gradients of q, k and v."""
    gen = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(q.shape, generator=gen, dtype=q.dtype).to(q.device)
    kwargs = {"block_size": block_size, "grad_out": grad_out, "mask": mask}
    out, grads = forward_backward(backend, q, k, v, layout, **kwargs)
    ref_out, ref_grads = forward_backward("reference", q, k, v, layout, **kwargs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, **tol)
    for name, grad, ref_grad in zip("qkv", grads, ref_grads, strict=True):
        assert torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad, ref_grad, **tol, msg=lambda m, n=name: f"d{n}: {m}")
    return out, grads


def rows_without_keys(layout, block_size, out_shape, mask):
    """[B, H, N] True for query tokens of an output [B, H, N, D] that may attend no real key."""
    batch, heads, seq_len, _ = out_shape
    token_mask = expand_layout(layout, block_size, seq_len)[None]  # [1, H or 1, N, N]
    if mask is not None:
        token_mask = token_mask & mask[:, None, None, :]
    return (~token_mask.any(dim=-1)).expand(batch, heads, seq_len)


# --------------------------------------------------------------------------- blocked vs reference

# name -> (B, H, N, D, block_size, layout builder(H, nb, generator), padded lengths or None)
CASES = {
    "random_per_head": (2, 3, 50, 8, 8, lambda h, nb, g: random_layout(h, nb, 0.4, g), None),
    "random_per_head_padded": (
        2,
        3,
        61,
        4,
        8,
        lambda h, nb, g: random_layout(h, nb, 0.5, g),
        [61, 30],
    ),
    "shared": (2, 4, 40, 8, 5, lambda h, nb, g: random_layout(1, nb, 0.4, g), None),
    "shared_padded": (3, 2, 33, 8, 4, lambda h, nb, g: random_layout(1, nb, 0.3, g), [33, 5, 17]),
    "bigbird": (
        2,
        2,
        100,
        8,
        8,
        lambda h, nb, g: bigbird(nb, num_heads=h, num_random=2, generator=g),
        [100, 71],
    ),
    "blockbert": (1, 3, 64, 8, 8, lambda h, nb, g: blockbert(nb, "2:1"), None),
    "blockbert_padded": (2, 3, 60, 8, 10, lambda h, nb, g: blockbert(nb, "1:1:1"), [60, 23]),
    "window_global": (2, 2, 45, 8, 4, lambda h, nb, g: window(nb, 1) | global_blocks(nb, 2), None),
    "fixed": (1, 2, 47, 8, 4, lambda h, nb, g: fixed(nb, stride=3, summary=1), [40]),
    "dense_per_head": (
        2,
        2,
        29,
        8,
        8,
        lambda h, nb, g: torch.ones(h, nb, nb, dtype=torch.bool),
        None,
    ),
    "dense_shared_padded": (2, 2, 29, 8, 8, lambda h, nb, g: dense(nb), [29, 9]),
    "local": (2, 2, 30, 8, 8, lambda h, nb, g: local(nb), [30, 12]),
    "all_empty": (1, 2, 20, 8, 8, lambda h, nb, g: torch.zeros(h, nb, nb, dtype=torch.bool), None),
    "block_size_1": (1, 2, 13, 4, 1, lambda h, nb, g: random_layout(h, nb, 0.3, g), [13]),
    "one_block": (2, 1, 7, 4, 16, lambda h, nb, g: dense(nb), [7, 3]),
}


@pytest.mark.parametrize("backend", ["blocked", "auto"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_backend_matches_reference_float64(case: str, backend: str) -> None:
    batch, heads, seq_len, dim, block_size, build, lengths = CASES[case]
    gen = torch.Generator().manual_seed(sorted(CASES).index(case))
    nb = math.ceil(seq_len / block_size)
    layout = build(heads, nb, gen)
    q, k, v = random_inputs((batch, heads, seq_len, dim), generator=gen)
    mask = None if lengths is None else padding_mask(lengths, seq_len)
    assert_matches_reference(backend, q, k, v, layout, block_size=block_size, mask=mask)


def test_auto_is_the_fused_kernel_on_cpu_where_it_builds(generator) -> None:
    q, k, v = random_inputs((2, 2, 24, 8), generator=generator)
    layout = random_layout(2, 3, 0.5, generator)
    expected = "fused" if fused_available() else "blocked"
    assert choose_backend(q) == expected
    assert choose_backend(q, dropout_p=0.1) == expected  # fused has attention dropout
    auto = sparse_attention(q, k, v, layout, block_size=8)
    chosen = sparse_attention(q, k, v, layout, block_size=8, backend=expected)
    assert torch.equal(auto, chosen)


def test_empty_and_full_rows(generator) -> None:
    """Full rows in every head take the dense path; empty rows give zeros and zero gradients."""
    batch, heads, seq_len, dim, block_size = 2, 3, 44, 8, 8  # nb = 6, last block partial
    layout = random_layout(heads, 6, 0.4, generator)
    layout[:, 0] = True  # full in all heads: a global row
    layout[:, 3] = True  # a second, non-adjacent global row
    layout[0, 2] = False  # empty row in head 0
    layout[1:, 2, 2] = True  # but not in the other heads
    layout[:, 4] = False  # empty row in all heads
    layout[1, 5] = True  # full in one head only: still a sparse row
    q, k, v = random_inputs((batch, heads, seq_len, dim), generator=generator)
    out, (dq, _, _) = assert_matches_reference("blocked", q, k, v, layout, block_size=block_size)
    assert torch.all(out[:, 0, 16:24] == 0)
    assert torch.all(out[:, :, 32:40] == 0)
    assert torch.all(dq[:, 0, 16:24] == 0)
    assert torch.all(dq[:, :, 32:40] == 0)
    assert out[:, 1, 16:24].abs().sum() > 0


def test_float32_matches_reference(generator) -> None:
    shape = (2, 3, 77, 16)
    q, k, v = random_inputs(shape, generator=generator, dtype=torch.float32)
    layout = bigbird(10, num_heads=3, num_global=1, num_random=2, generator=generator)
    layout[2, 5] = False
    mask = padding_mask([77, 50], 77)
    assert_matches_reference("blocked", q, k, v, layout, block_size=8, mask=mask, tol=F32)


def test_non_contiguous_inputs(generator) -> None:
    # [B, N, H, D] projections viewed as [B, H, N, D], as a model produces them.
    q, k, v = (t.transpose(1, 2) for t in random_inputs((2, 30, 3, 8), generator=generator))
    assert not q.is_contiguous()
    layout = random_layout(3, 4, 0.5, generator)
    layout[:, 1] = True
    assert_matches_reference(
        "blocked", q, k, v, layout, block_size=8, mask=padding_mask([30, 19], 30)
    )


def test_resampled_layouts_of_one_shape(generator) -> None:
    """The plan cache is keyed by layout content: a new layout of the same shape is honoured."""
    q, k, v = random_inputs((1, 2, 32, 8), generator=generator)
    outputs = []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        layout = bigbird(8, num_heads=2, num_global=1, window_width=0, num_random=2, generator=gen)
        out, _ = assert_matches_reference("blocked", q, k, v, layout, block_size=4)
        outputs.append(out)
    assert not torch.allclose(outputs[0], outputs[1])


# --------------------------------------------------------------------------- padding


def test_padding_rows_without_real_keys_are_zero(generator) -> None:
    """Local attention + padding: whole query blocks with only padded keys give exact zeros."""
    batch, heads, seq_len, dim, block_size = 2, 2, 40, 8, 8
    mask = padding_mask([40, 20], seq_len)  # sequence 1: blocks 3 and 4 are all padding
    layout = local(5) | (random_layout(heads, 5, 0.2, generator) & ~global_blocks(5, 3))
    q, k, v = random_inputs((batch, heads, seq_len, dim), generator=generator)
    for backend in ("blocked", "reference"):
        out, (dq, dk, dv) = assert_matches_reference(
            backend, q, k, v, layout, block_size=block_size, mask=mask
        )
        no_keys = rows_without_keys(layout, block_size, out.shape, mask)
        assert no_keys[1, :, 24:].all() and not no_keys[0].any()
        assert torch.all(out[no_keys] == 0)
        assert torch.all(dq[no_keys] == 0)
        # Padded keys are never attended: no gradient flows into them.
        assert torch.all(dk[1, :, 20:] == 0)
        assert torch.all(dv[1, :, 20:] == 0)
        assert out[0].abs().sum() > 0


def test_padded_keys_do_not_influence_outputs(generator) -> None:
    batch, heads, seq_len, dim, block_size = 2, 2, 37, 8, 8
    mask = padding_mask([37, 22], seq_len)
    layout = bigbird(5, num_heads=heads, num_global=1, num_random=1, generator=generator)
    q, k, v = random_inputs((batch, heads, seq_len, dim), generator=generator)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 22:] = 1e3
    v2[1, :, 22:] = -1e3
    for backend in ("blocked", "reference"):
        one = sparse_attention(
            q, k, v, layout, block_size=block_size, key_padding_mask=mask, backend=backend
        )
        two = sparse_attention(
            q, k2, v2, layout, block_size=block_size, key_padding_mask=mask, backend=backend
        )
        torch.testing.assert_close(one, two, atol=1e-12, rtol=0)


def longformer_layout(nb: int) -> torch.Tensor:
    return window(nb, 1) | global_blocks(nb, 1)


def fixed_layout(nb: int) -> torch.Tensor:
    return fixed(nb, stride=2, summary=1)


@pytest.mark.parametrize("pattern", [longformer_layout, fixed_layout], ids=["longformer", "fixed"])
@pytest.mark.parametrize("backend", ["blocked", "reference"])
def test_padding_invariance(pattern, backend: str, generator) -> None:
    """A sequence's outputs and gradients are the same alone and batched with a longer one."""
    heads, dim, block_size, short, long = 2, 8, 8, 21, 45
    q, k, v = random_inputs((2, heads, long, dim), generator=generator)
    grad_out = torch.randn(2, heads, long, dim, generator=generator, dtype=torch.float64)
    grad_out[1, :, short:] = 0  # no upstream gradient at the short sequence's padding

    layout_long = pattern(math.ceil(long / block_size))
    layout_short = pattern(math.ceil(short / block_size))
    assert torch.equal(layout_long[:, :3, :3], layout_short)  # the short layout is a prefix

    batched, batched_grads = forward_backward(
        backend,
        q,
        k,
        v,
        layout_long,
        block_size=block_size,
        grad_out=grad_out,
        mask=padding_mask([long, short], long),
    )
    alone, alone_grads = forward_backward(
        backend,
        *(t[1:, :, :short] for t in (q, k, v)),
        layout_short,
        block_size=block_size,
        grad_out=grad_out[1:, :, :short],
    )
    torch.testing.assert_close(batched[1:, :, :short], alone, atol=1e-12, rtol=1e-12)
    for grad, grad_alone in zip(batched_grads, alone_grads, strict=True):
        torch.testing.assert_close(grad[1:, :, :short], grad_alone, atol=1e-12, rtol=1e-12)
    for grad in batched_grads:
        assert torch.all(grad[1, :, short:] == 0)


# --------------------------------------------------------------------------- property test


@pytest.mark.parametrize("backend", ["blocked", pytest.param("fused", marks=needs_fused)])
@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    dim=st.sampled_from([1, 3, 8, 16, 33, 64]),
    block_size=st.sampled_from([1, 3, 5, 8, 16, 64]),
    seq_len=st.integers(1, 150),
    density=st.floats(0.0, 1.0),
    shared=st.booleans(),
    padded=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_backend_equals_reference_property(
    backend, batch, heads, dim, block_size, seq_len, density, shared, padded, seed
) -> None:
    gen = torch.Generator().manual_seed(seed)
    nb = math.ceil(seq_len / block_size)
    layout = random_layout(1 if shared else heads, nb, density, gen)
    q, k, v = random_inputs((batch, heads, seq_len, dim), generator=gen)
    mask = None
    if padded:
        lengths = torch.randint(1, seq_len + 1, (batch,), generator=gen).tolist()
        mask = padding_mask(lengths, seq_len)
    out, _ = assert_matches_reference(
        backend, q, k, v, layout, block_size=block_size, mask=mask, seed=seed
    )
    no_keys = rows_without_keys(layout, block_size, out.shape, mask)
    assert torch.all(out[no_keys] == 0)


# --------------------------------------------------------------------------- gradcheck


def test_blocked_gradcheck(generator) -> None:
    """Blocked gradients against finite differences, independently of the reference."""
    q, k, v = random_inputs((1, 2, 10, 3), generator=generator)
    layout = torch.tensor(
        [[[1, 0, 1], [0, 0, 0], [1, 1, 1]], [[0, 1, 0], [1, 1, 0], [1, 1, 1]]], dtype=torch.bool
    )
    mask = padding_mask([8], 10)

    def attention(q, k, v):
        return sparse_attention(
            q, k, v, layout, block_size=4, key_padding_mask=mask, backend="blocked"
        )

    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(attention, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


# --------------------------------------------------------------------------- dropout


def dropout_layout(generator) -> torch.Tensor:
    layout = random_layout(2, 4, 0.5, generator)
    layout[:, 0] = True  # a dense row: the SDPA path
    layout[0, 2] = False  # an empty row
    layout[1, 2] = True
    layout[:, 1, 1] = True
    layout[:, 3, 3] = True
    return layout


def test_dropout_changes_outputs_but_keeps_empty_rows_zero(generator) -> None:
    q, k, v = random_inputs((2, 2, 16, 4), generator=generator)
    layout = dropout_layout(generator)
    kwargs = {"block_size": 4, "backend": "blocked", "dropout_p": 0.5}
    one = sparse_attention(q, k, v, layout, **kwargs)
    two = sparse_attention(q, k, v, layout, **kwargs)
    assert not torch.equal(one, two)
    # Both the dense row (block 0) and the sparse rows are dropped out.
    assert not torch.equal(one[:, :, :4], two[:, :, :4])
    assert not torch.equal(one[:, :, 4:], two[:, :, 4:])
    assert not torch.isnan(one).any()
    assert torch.all(one[:, 0, 8:12] == 0)


def test_dropout_is_reproducible_with_a_seed(generator) -> None:
    q, k, v = random_inputs((2, 2, 16, 4), generator=generator)
    layout = dropout_layout(generator)
    grad_out = torch.randn(q.shape, generator=generator, dtype=q.dtype)
    kwargs = {"block_size": 4, "grad_out": grad_out, "dropout_p": 0.3}
    torch.manual_seed(0)
    out1, grads1 = forward_backward("blocked", q, k, v, layout, **kwargs)
    torch.manual_seed(0)
    out2, grads2 = forward_backward("blocked", q, k, v, layout, **kwargs)
    assert torch.equal(out1, out2)
    for g1, g2 in zip(grads1, grads2, strict=True):
        assert torch.equal(g1, g2)


def test_dropout_expectation_is_the_plain_output(generator) -> None:
    """Averaged over many independent draws, dropout (with 1/(1-p) scaling) is unbiased."""
    draws = 4000
    q, k = random_inputs((1, 2, 16, 4), generator=generator, count=2)
    v = torch.randn(1, 2, 16, 4, generator=generator, dtype=torch.float64) + 2.0
    layout = dropout_layout(generator)
    plain = sparse_attention(q, k, v, layout, block_size=4, backend="blocked")
    torch.manual_seed(0)
    many = sparse_attention(
        *(t.expand(draws, -1, -1, -1) for t in (q, k, v)),
        layout,
        block_size=4,
        backend="blocked",
        dropout_p=0.5,
    )
    mean, std = many.mean(dim=0, keepdim=True), many.std(dim=0, keepdim=True)
    assert std.max() > 0.1  # the draws do differ
    standard_error = std / math.sqrt(draws)
    assert torch.all((mean - plain).abs() <= 5.5 * standard_error + 1e-9)
    # A missing 1/(1-p) rescaling would be off by half the output, far beyond the bound.
    assert (plain.abs() * 0.5 > 10 * standard_error + 1e-9).float().mean() > 0.5


def test_dropout_gradients_match_finite_differences(generator) -> None:
    """With the seed fixed, the dropout mask is the same in forward, backward and gradcheck."""
    q, k, v = random_inputs((1, 2, 12, 4), generator=generator)
    layout = dropout_layout(generator)[:, :3, :3]
    layout[:, 0] = True

    def attention(q, k, v):
        torch.manual_seed(123)
        return sparse_attention(q, k, v, layout, block_size=4, backend="blocked", dropout_p=0.4)

    inputs = [t.requires_grad_() for t in (q, k, v)]
    out = attention(*inputs)
    assert out.abs().sum() > 0
    assert torch.autograd.gradcheck(attention, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


def test_dropout_gradients_use_the_forward_mask(generator) -> None:
    """Output is linear in v for a fixed mask, so <dO, O> = <dV, V> exactly."""
    q, k, v = random_inputs((2, 2, 16, 4), generator=generator)
    layout = dropout_layout(generator)
    grad_out = torch.randn(q.shape, generator=generator, dtype=q.dtype)
    out, (dq, dk, dv) = forward_backward(
        "blocked", q, k, v, layout, block_size=4, grad_out=grad_out, dropout_p=0.5
    )
    for grad in (dq, dk, dv):
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
    torch.testing.assert_close((grad_out * out).sum(), (dv * v).sum(), atol=1e-10, rtol=1e-10)


# --------------------------------------------------------------------------- bf16


def bf16_errors(backend, q, k, v, layout, *, block_size, mask, grad_out):
    """Mean and max absolute errors of the output and gradients in bf16 vs the fp32 reference."""
    kwargs = {"block_size": block_size, "grad_out": grad_out, "mask": mask}
    reference = forward_backward("reference", q, k, v, layout, **kwargs)
    ref = [reference[0], *reference[1]]
    half = [t.to(torch.bfloat16) for t in (q, k, v)]
    half_grad = grad_out.to(torch.bfloat16)
    if backend == "sdpa":
        token_mask = expand_layout(layout.to(q.device), block_size, q.shape[2])[None]
        token_mask = token_mask & mask[:, None, None, :]
        leaves = [t.detach().requires_grad_() for t in half]
        out = F.scaled_dot_product_attention(*leaves, attn_mask=token_mask)
        out.backward(half_grad)
        got = [out.detach(), *(t.grad for t in leaves)]
    else:
        got_out, got_grads = forward_backward(
            backend, *half, layout, block_size=block_size, grad_out=half_grad, mask=mask
        )
        got = [got_out, *got_grads]
    errors = [(g.float() - r).abs() for g, r in zip(got, ref, strict=True)]
    return [e.mean().item() for e in errors], [e.max().item() for e in errors]


def check_bf16_rule(backend: str, device: str) -> None:
    """bf16 error is at most twice that of PyTorch's own bf16 SDPA with the same mask.

    The mean absolute error carries the rule; the max, a noisy single element, gets a
    looser bound so that an outlier-producing bug still fails.
    """
    gen = torch.Generator().manual_seed(0)
    batch, heads, seq_len, dim, block_size = 2, 2, 250, 32, 16
    nb = math.ceil(seq_len / block_size)
    # Global block 0 is real in every sequence: every query has a key, so SDPA has no NaN rows.
    layout = bigbird(nb, num_heads=heads, num_global=1, num_random=2, generator=gen)
    q, k, v, grad_out = (
        t.to(device)
        for t in random_inputs(
            (batch, heads, seq_len, dim), generator=gen, dtype=torch.float32, count=4
        )
    )
    mask = padding_mask([seq_len, 180], seq_len).to(device)
    kwargs = {"block_size": block_size, "mask": mask, "grad_out": grad_out}
    mean_err, max_err = bf16_errors(backend, q, k, v, layout.to(device), **kwargs)
    sdpa_mean, sdpa_max = bf16_errors("sdpa", q, k, v, layout.to(device), **kwargs)
    for name, err, base in zip(["out", "dq", "dk", "dv"], mean_err, sdpa_mean, strict=True):
        assert err <= 2 * base + 1e-5, (name, err, base)
    for name, err, base in zip(["out", "dq", "dk", "dv"], max_err, sdpa_max, strict=True):
        assert err <= 4 * base + 1e-4, (name, err, base)


def random_bf16_case(seed: int, *, block_sizes=(4, 8, 16, 32), max_len: int = 130):
    """float64 inputs, a random per-head layout (empty and full rows likely), padding of the
    second sequence, and one of a few block sizes and head dims."""
    gen = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    heads, block_size, dim = pick([1, 2, 3]), pick(list(block_sizes)), pick([16, 32, 64])
    seq_len = int(torch.randint(block_size + 1, max_len, (1,), generator=gen))
    nb = math.ceil(seq_len / block_size)
    density = 0.2 + 0.8 * float(torch.rand(1, generator=gen))
    layout = random_layout(heads, nb, density, gen)
    mask = padding_mask([seq_len, int(torch.randint(1, seq_len + 1, (1,), generator=gen))], seq_len)
    q, k, v, grad_out = random_inputs((2, heads, seq_len, dim), generator=gen, count=4)
    return (q, k, v, layout), {"block_size": block_size, "mask": mask, "grad_out": grad_out}


def bf16_max_errors(backend, q, k, v, layout, *, block_size, mask, grad_out, truth):
    """Max abs errors of out, dq, dk, dv computed in bf16 against the float64 ``truth``.

    ``backend="sdpa"`` is PyTorch's own bf16 SDPA with the equivalent dense token mask (rows
    that may attend no key, NaN in SDPA, are zeroed as every backend zeroes them)."""
    half = [t.to(torch.bfloat16) for t in (q, k, v)]
    half_grad = grad_out.to(torch.bfloat16)
    if backend == "sdpa":
        token_mask = expand_layout(layout, block_size, q.shape[2])[None] & mask[:, None, None, :]
        has_key = token_mask.any(dim=-1, keepdim=True)
        leaves = [t.detach().requires_grad_() for t in half]
        out = F.scaled_dot_product_attention(*leaves, attn_mask=token_mask | ~has_key) * has_key
        out.backward(half_grad)
        got = [out.detach(), *(t.grad for t in leaves)]
    else:
        kwargs = {"block_size": block_size, "grad_out": half_grad, "mask": mask}
        got_out, got_grads = forward_backward(backend, *half, layout, **kwargs)
        got = [got_out, *got_grads]
    return [(g.double() - t).abs().max().item() for g, t in zip(got, truth, strict=True)]


def test_bf16_max_error_within_twice_sdpa_cpu() -> None:
    """The design's bf16 rule on 40 random cases, on the max error of every tensor: blocked's
    error against the float64 truth is at most twice that of PyTorch's bf16 SDPA."""
    failures, worst = [], 0.0
    for seed in range(40):
        inputs, kwargs = random_bf16_case(seed)
        truth_out, truth_grads = forward_backward("reference", *inputs, **kwargs)
        truth = [truth_out, *truth_grads]
        got = bf16_max_errors("blocked", *inputs, **kwargs, truth=truth)
        sdpa = bf16_max_errors("sdpa", *inputs, **kwargs, truth=truth)
        for name, err, base in zip(["out", "dq", "dk", "dv"], got, sdpa, strict=True):
            worst = max(worst, err / max(base, 1e-30))
            if err > 2 * base + 1e-6:  # the floor: a tensor that is exactly 0 in both
                failures.append((seed, name, err, base))
    assert not failures, f"over 2x SDPA's max error (seed, tensor, err, sdpa): {failures}"
    assert worst > 0.5  # the comparison is live: errors are of SDPA's size, not all zero


# --------------------------------------------------------------------------- input validation


def valid_inputs(generator):
    q, k, v = random_inputs((2, 2, 20, 8), generator=generator, dtype=torch.float32)
    return q, k, v, random_layout(2, 3, 0.5, generator)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: {"q": a["q"][0]}, ValueError, r"q must be a 4-d tensor"),
        (lambda a: {"v": a["v"][:, :, :10]}, ValueError, r"same shape"),
        (lambda a: {"k": a["k"][:, :1]}, ValueError, r"same shape"),
        (lambda a: {"k": a["k"].double()}, TypeError, r"share a dtype"),
        (lambda a: {"q": a["q"].long()}, TypeError, r"q must be a floating point"),
        (lambda a: {"layout": a["layout"][:, :2, :2]}, ValueError, r"ceil\(20/8\) = 3"),
        (
            lambda a: {"layout": torch.ones(2, 4, 4, dtype=torch.bool)},
            ValueError,
            r"blocks per side",
        ),
        (
            lambda a: {"layout": a["layout"].float()},
            TypeError,
            r"layout must have dtype torch.bool",
        ),
        (lambda a: {"layout": a["layout"][0]}, ValueError, r"layout must have shape"),
        (lambda a: {"layout": a["layout"][:, :, :2]}, ValueError, r"layout must have shape"),
        (lambda a: {"layout": a["layout"].repeat(2, 1, 1)}, ValueError, r"layout has 4 heads"),
        (lambda a: {"layout": "dense"}, TypeError, r"layout must be a torch.Tensor"),
        (
            lambda a: {"key_padding_mask": torch.ones(2, 19, dtype=torch.bool)},
            ValueError,
            r"key_padding_mask must have shape \[B, N\]",
        ),
        (
            lambda a: {"key_padding_mask": torch.ones(20, dtype=torch.bool)},
            ValueError,
            r"key_padding_mask must have shape",
        ),
        (
            lambda a: {"key_padding_mask": torch.ones(2, 20)},
            TypeError,
            r"key_padding_mask must be bool",
        ),
        (lambda a: {"backend": "triton"}, ValueError, r"unknown backend 'triton'"),
        (lambda a: {"block_size": 0}, ValueError, r"block_size"),
        (lambda a: {"dropout_p": 1.0}, ValueError, r"dropout_p"),
        (lambda a: {"dropout_p": -0.1}, ValueError, r"dropout_p"),
    ],
)
def test_bad_input_is_refused_with_a_named_error(change, error, match, generator) -> None:
    q, k, v, layout = valid_inputs(generator)
    args = {"q": q, "k": k, "v": v, "layout": layout, "block_size": 8, "backend": "blocked"}
    args.update(change(args))
    q, k, v, layout = (args.pop(name) for name in ("q", "k", "v", "layout"))
    with pytest.raises(error, match=match):
        sparse_attention(q, k, v, layout, **args)


def test_valid_inputs_are_accepted(generator) -> None:
    """The base case of the validation tests is itself valid, on every CPU backend."""
    q, k, v, layout = valid_inputs(generator)
    mask = torch.ones(2, 20, dtype=torch.bool)
    for backend in ("blocked", "reference", "auto"):
        out = sparse_attention(
            q, k, v, layout, block_size=8, key_padding_mask=mask, backend=backend
        )
        assert out.shape == q.shape


def test_flex_refuses_dropout(generator) -> None:
    q, k, v, layout = valid_inputs(generator)
    with torch.no_grad(), pytest.raises(ValueError, match="dropout"):
        sparse_attention(q, k, v, layout, block_size=8, backend="flex", dropout_p=0.5)


def test_flex_refuses_cpu_gradients(generator) -> None:
    q, k, v, layout = valid_inputs(generator)
    q.requires_grad_()
    with pytest.raises(RuntimeError, match="no_grad"):
        sparse_attention(q, k, v, layout, block_size=8, backend="flex")


# --------------------------------------------------------------------------- flex on CPU


@pytest.mark.slow
@pytest.mark.skipif(not flex_available(), reason="FlexAttention is not in this torch")
def test_flex_cpu_inference_matches_reference() -> None:
    """All CPU flex calls share one shape, so the kernel compiles once (~20-40 s)."""
    gen = torch.Generator().manual_seed(0)
    batch, heads, seq_len, dim, block_size = 2, 2, 64, 16, 16
    q, k, v = random_inputs((batch, heads, seq_len, dim), generator=gen, dtype=torch.float32)
    layout = bigbird(4, num_heads=heads, num_global=1, window_width=0, num_random=1, generator=gen)
    layout[1, 2] = False  # an empty row in head 1
    masks = [padding_mask([64, 40], seq_len), padding_mask([20, 64], seq_len), None]
    for mask in masks:
        with torch.no_grad():  # inputs that require grad are fine for inference
            out = sparse_attention(
                *(t.requires_grad_() for t in (q, k, v)),
                layout,
                block_size=block_size,
                key_padding_mask=mask,
                backend="flex",
            )
        ref = sparse_attention(
            q, k, v, layout, block_size=block_size, key_padding_mask=mask, backend="reference"
        )
        assert not torch.isnan(out).any()
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        if mask is None:
            continue
        no_keys = rows_without_keys(layout, block_size, out.shape, mask)
        assert no_keys[:, 1, 32:48].all()
        assert torch.all(out[no_keys] == 0)


def dense_blocks(counts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """[B, H, nq, nk] bool of a BlockMask's (counts [B, H, nq], indices [B, H, nq, nk])."""
    used = torch.arange(indices.shape[-1]) < counts[..., None]
    dense = torch.zeros(indices.shape, dtype=torch.bool)
    return dense.scatter_(-1, indices.long(), used)


@pytest.mark.skipif(not flex_available(), reason="FlexAttention is not in this torch")
def test_flex_full_blocks_skip_only_pairs_that_are_allowed(generator) -> None:
    """CUDA's split at a coarser mask block (2 x 2 layout blocks in bf16): mask_mod runs
    only on partial blocks. Full blocks, taken whole, plus partial blocks checked token by
    token give exactly the reference mask, padding included; padding-free inputs keep the
    full blocks; every allowed pair is in one of them."""
    from ernie_sparse.attention.flex import FlexMasks, _block_mask, _with_padding, split_blocks

    block_size, factor, heads = 8, 2, 2
    layout = random_layout(heads, 7, 0.6, generator)
    layout[:, :2] = True  # some complete coarse blocks
    padded, full, partial = split_blocks(layout, factor)
    masks = FlexMasks(full, partial, padded, _block_mask(full, partial, block_size * factor))
    assert full.any() and partial.any()
    seq_len = padded.shape[-1] * block_size
    key_valid = padding_mask([seq_len - 3, 37], seq_len)
    block_mask = _with_padding(masks, key_valid, block_size * factor)
    full_b = dense_blocks(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
    partial_b = dense_blocks(block_mask.kv_num_blocks, block_mask.kv_indices)
    coarse = block_size * factor

    def tokens(blocks: torch.Tensor) -> torch.Tensor:  # [B, H, nc, nc] -> [B, H, N, N]
        return blocks.repeat_interleave(coarse, dim=2).repeat_interleave(coarse, dim=3)

    reference = expand_layout(padded, block_size, seq_len)[None] & key_valid[:, None, None, :]
    implied = tokens(full_b) | (tokens(partial_b) & reference)
    assert torch.equal(implied, reference)
    assert not (full_b & partial_b).any()
    assert (full_b.sum() < full.sum() * 2) and full_b.any()  # padding demoted some
    unpadded_full = dense_blocks(masks.unpadded.full_kv_num_blocks, masks.unpadded.full_kv_indices)
    assert torch.equal(unpadded_full[0], full)


@pytest.mark.parametrize("backend", ["blocked", "fused"])
def test_training_under_bf16_autocast(backend: str, generator) -> None:
    """Inside torch.autocast the backward meets the dtypes its forward saved (blocked's
    used to fail: its forward matmuls were cast to bf16, its backward expected float32)."""
    if backend == "fused" and not fused_available():
        pytest.skip("no fused kernel")
    q, k, v = random_inputs((2, 2, 70, 16), generator=generator, dtype=torch.float32)
    layout = bigbird(5, num_heads=2, num_global=1, num_random=1, generator=generator)
    grad_out = torch.randn(q.shape, generator=generator)
    inputs = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sparse_attention(*inputs, layout, block_size=16, backend=backend)
    (out.float() * grad_out).sum().backward()
    ref_out, ref_grads = forward_backward(
        "reference", q, k, v, layout, block_size=16, grad_out=grad_out
    )
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref_out, atol=0.05, rtol=0.05)
    for got, ref in zip(inputs, ref_grads, strict=True):
        assert got.grad.dtype == torch.bfloat16
        torch.testing.assert_close(got.grad.float(), ref, atol=0.1, rtol=0.1)


def test_flex_fa4_says_what_it_needs(generator) -> None:
    q, k, v = random_inputs((1, 2, 16, 8), generator=generator, dtype=torch.float32)
    layout = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="backend 'flex-fa4' runs on CUDA only, got cpu"):
        sparse_attention(q, k, v, layout, block_size=8, backend="flex-fa4")


# --------------------------------------------------------------------------- CUDA


def cuda_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    batch, heads, seq_len, dim, block_size = 2, 4, 200, 32, 16
    nb = math.ceil(seq_len / block_size)
    layout = bigbird(nb, num_heads=heads, num_global=1, num_random=2, generator=gen)
    layout[1, 6] = False  # an empty row
    q, k, v = random_inputs((batch, heads, seq_len, dim), generator=gen, dtype=torch.float32)
    mask = padding_mask([seq_len, 131], seq_len)
    return [t.cuda() for t in (q, k, v, layout, mask)], block_size


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("backend", "tolerance"), [("blocked", 1e-5), ("flex", 2e-5)])
def test_cuda_backend_matches_reference(backend: str, tolerance: float) -> None:
    (q, k, v, layout, mask), block_size = cuda_case()
    grad_out = torch.randn_like(q)
    kwargs = {"block_size": block_size, "grad_out": grad_out, "mask": mask}
    out, grads = forward_backward(backend, q, k, v, layout, **kwargs)
    ref_out, ref_grads = forward_backward("reference", q, k, v, layout, **kwargs)
    assert out.device.type == "cuda"
    assert relative_error(out, ref_out) <= tolerance
    for name, grad, ref_grad in zip("qkv", grads, ref_grads, strict=True):
        assert relative_error(grad, ref_grad) <= tolerance, name
    no_keys = rows_without_keys(layout, block_size, out.shape, mask)
    assert no_keys.any()
    assert torch.all(out[no_keys] == 0)
    assert torch.all(grads[0][no_keys] == 0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["blocked", "flex"])
def test_bf16_error_within_twice_sdpa_cuda(backend: str) -> None:
    check_bf16_rule(backend, "cuda")


@pytest.mark.gpu
@needs_cuda
def test_auto_picks_flex_on_cuda() -> None:
    (q, k, v, layout, mask), block_size = cuda_case()
    assert choose_backend(q) == "flex"
    assert choose_backend(q, dropout_p=0.1) == "blocked"
    kwargs = {"block_size": block_size, "key_padding_mask": mask}
    with torch.no_grad():
        auto = sparse_attention(q, k, v, layout, **kwargs)
        flex = sparse_attention(q, k, v, layout, backend="flex", **kwargs)
    assert torch.equal(auto, flex)
