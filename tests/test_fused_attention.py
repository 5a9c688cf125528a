"""The fused C++ CPU kernel against the dense reference: outputs, gradients, padding, dtypes.

The kernel compiles on first use (cached afterwards); every kernel test skips when it
cannot be built here, and the unavailable path is tested by simulating a failed build.
"""

from __future__ import annotations

import itertools
import math

import pytest
import test_attention as attention_tests
import torch
import torch.nn.functional as F
from test_attention import (
    padding_mask,
    random_bf16_case,
    random_inputs,
    random_layout,
    rows_without_keys,
)

from ernie_sparse.attention import choose_backend, expand_layout, sparse_attention
from ernie_sparse.attention import fused as fused_module
from ernie_sparse.attention.fused import BuildStatus, fused_available, layout_csr
from ernie_sparse.attention.layout_cache import allowed_blocks_first
from ernie_sparse.patterns import bigbird, global_blocks, local

F64 = {"atol": 1e-10, "rtol": 1e-10}
F32 = {"atol": 1e-5, "rtol": 1e-5}

needs_kernel = pytest.mark.skipif(
    not fused_available(),
    reason=f"fused kernel unavailable: {fused_module.build_status().reason}",
)


# --------------------------------------------------------------------------- helpers


def forward_backward(backend, q, k, v, layout, **kwargs):
    """[out, dq, dk, dv] of one backend (test_attention's, flattened)."""
    out, grads = attention_tests.forward_backward(backend, q, k, v, layout, **kwargs)
    return [out, *grads]


def assert_matches_reference(q, k, v, layout, **kwargs):
    """The fused kernel equals the reference, output and gradients: [out, dq, dk, dv]."""
    out, grads = attention_tests.assert_matches_reference("fused", q, k, v, layout, **kwargs)
    return [out, *grads]


def with_empty_and_full_rows(layout: torch.Tensor) -> torch.Tensor:
    """A layout with a row full in every head, an empty row, and one empty in one head."""
    layout = layout.clone()
    nb = layout.shape[-1]
    layout[:, 0] = True
    if nb > 2:
        layout[:, nb - 1] = False
        layout[0, nb // 2] = False
    return layout


# --------------------------------------------------------------------------- vs reference

# name -> (B, H, N, D, block_size, layout heads (1 = shared), density, padded lengths or None)
CASES = {
    "bs16_d16_padded": (2, 2, 100, 16, 16, 2, 0.4, [100, 37]),
    "bs32_d64_shared_ragged": (1, 2, 300, 64, 32, 1, 0.3, None),
    "bs64_d256_padded": (2, 1, 77, 256, 64, 1, 0.5, [77, 20]),
    "bs128_d16_per_head": (1, 2, 250, 16, 128, 2, 0.6, [201]),
    "bs16_d64_dense": (2, 2, 64, 64, 16, 2, 1.0, [64, 9]),
    "bs16_d16_all_empty": (1, 2, 40, 16, 16, 2, 0.0, None),
    "bs8_d5_odd": (2, 2, 45, 5, 8, 2, 0.4, [45, 13]),
    "bs24_d40_odd": (2, 2, 97, 40, 24, 1, 0.5, [50, 97]),
}


@needs_kernel
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_matches_reference_float64(case: str) -> None:
    batch, heads, seq_len, dim, block_size, layout_heads, density, lengths = CASES[case]
    gen = torch.Generator().manual_seed(sorted(CASES).index(case))
    nb = math.ceil(seq_len / block_size)
    layout = random_layout(layout_heads, nb, density, gen)
    if 0.0 < density < 1.0:
        layout = with_empty_and_full_rows(layout)
    q, k, v = random_inputs((batch, heads, seq_len, dim), generator=gen)
    mask = None if lengths is None else padding_mask(lengths, seq_len)
    assert_matches_reference(q, k, v, layout, block_size=block_size, mask=mask)


@needs_kernel
@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
def test_fused_float32_matches_reference(block_size: int) -> None:
    gen = torch.Generator().manual_seed(block_size)
    seq_len = 2 * block_size + 13  # ragged: the last block is partial
    nb = math.ceil(seq_len / block_size)
    layout = bigbird(nb, num_heads=2, num_global=1, window_width=0, num_random=1, generator=gen)
    layout[1, 1] = False
    q, k, v = random_inputs((2, 2, seq_len, 64), generator=gen, dtype=torch.float32)
    mask = padding_mask([seq_len, block_size + 3], seq_len)
    assert_matches_reference(q, k, v, layout, block_size=block_size, mask=mask, tol=F32)


@needs_kernel
def test_rows_without_real_keys_give_zeros_and_padded_keys_get_no_gradient() -> None:
    gen = torch.Generator().manual_seed(7)
    batch, heads, seq_len, dim, block_size = 2, 2, 80, 16, 16
    mask = padding_mask([80, 40], seq_len)  # sequence 1: blocks 3 and 4 are padding only
    layout = local(5) | (random_layout(heads, 5, 0.2, gen) & ~global_blocks(5, 3))
    layout[0, 1] = False  # an empty row in head 0
    q, k, v = random_inputs((batch, heads, seq_len, dim), generator=gen)
    out, dq, dk, dv = assert_matches_reference(q, k, v, layout, block_size=block_size, mask=mask)
    no_keys = rows_without_keys(layout, block_size, out.shape, mask)
    assert no_keys[1, :, 48:].all() and no_keys[:, 0, 16:32].all()
    assert torch.all(out[no_keys] == 0)
    assert torch.all(dq[no_keys] == 0)
    assert torch.all(dk[1, :, 40:] == 0)
    assert torch.all(dv[1, :, 40:] == 0)
    assert out[0, 1].abs().sum() > 0


@needs_kernel
def test_padded_keys_do_not_influence_outputs() -> None:
    gen = torch.Generator().manual_seed(3)
    mask = padding_mask([70, 41], 70)
    layout = bigbird(5, num_heads=2, num_global=1, num_random=1, generator=gen)
    q, k, v = random_inputs((2, 2, 70, 16), generator=gen)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 41:] = 1e3
    v2[1, :, 41:] = -1e3
    kwargs = {"block_size": 16, "key_padding_mask": mask, "backend": "fused"}
    one = sparse_attention(q, k, v, layout, **kwargs)
    two = sparse_attention(q, k2, v2, layout, **kwargs)
    assert torch.equal(one, two)


@needs_kernel
def test_non_contiguous_inputs() -> None:
    """[B, N, H, D] projections viewed as [B, H, N, D], as a model produces them."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (t.transpose(1, 2) for t in random_inputs((2, 64, 3, 16), generator=gen))
    assert not q.is_contiguous()
    layout = with_empty_and_full_rows(random_layout(3, 4, 0.5, gen))
    assert_matches_reference(q, k, v, layout, block_size=16, mask=padding_mask([64, 30], 64))


@needs_kernel
def test_backward_splits_are_summed(monkeypatch) -> None:
    """Few (batch, head) pairs: the backward splits each head's rows and sums dK / dV."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = random_inputs((1, 1, 160, 16), generator=gen, dtype=torch.float32)
    layout = with_empty_and_full_rows(random_layout(1, 10, 0.4, gen))
    mask = padding_mask([150], 160)
    for splits in (1, 3, 10):
        monkeypatch.setattr(fused_module, "BACKWARD_SPLITS", splits)
        assert_matches_reference(q, k, v, layout, block_size=16, mask=mask, tol=F32)


@needs_kernel
def test_forward_is_deterministic_across_thread_counts(one_thread) -> None:
    gen = torch.Generator().manual_seed(2)
    q, k, v = random_inputs((2, 2, 96, 32), generator=gen, dtype=torch.float32)
    layout = bigbird(6, num_heads=2, num_global=1, num_random=2, generator=gen)
    kwargs = {"block_size": 16, "backend": "fused"}
    single = sparse_attention(q, k, v, layout, **kwargs)
    torch.set_num_threads(2)
    assert torch.equal(single, sparse_attention(q, k, v, layout, **kwargs))


# The property test over random shapes is test_attention's, parametrized by backend.


# --------------------------------------------------------------------------- gradcheck, op


@needs_kernel
def test_fused_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = random_inputs((1, 2, 10, 3), generator=gen)
    layout = torch.tensor(
        [[[1, 0, 1], [0, 0, 0], [1, 1, 1]], [[0, 1, 0], [1, 1, 0], [1, 1, 1]]], dtype=torch.bool
    )
    mask = padding_mask([8], 10)

    def attention(q, k, v):
        return sparse_attention(
            q, k, v, layout, block_size=4, key_padding_mask=mask, backend="fused"
        )

    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(attention, inputs, eps=1e-6, atol=1e-7)


@needs_kernel
def test_custom_op_passes_opcheck() -> None:
    """Schema, fake tensor and autograd registration, as torch.compile relies on them."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (t.requires_grad_() for t in random_inputs((1, 2, 32, 8), generator=gen))
    layout = with_empty_and_full_rows(random_layout(2, 4, 0.5, gen))
    row_offsets, cols = layout_csr(layout)
    key_valid = padding_mask([27], 32)
    seed = torch.tensor([7])
    for valid, dropout_p in ((key_valid, 0.0), (None, 0.0), (key_valid, 0.2)):
        torch.library.opcheck(
            fused_module.fused_block_sparse_attention,
            (q, k, v, row_offsets, cols, valid, 8, 8**-0.5, dropout_p, seed),
        )


@needs_kernel
def test_the_op_compiles_in_one_graph_forward_and_backward() -> None:
    """torch.compile sees one opaque op (fake implementation + autograd formula): the
    whole function, q/k/v projections included, is one graph with equal results."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 16, generator=gen)
    weight = torch.randn(48, 16, generator=gen, requires_grad=True)
    layout = random_layout(2, 3, 0.6, gen)
    row_offsets, cols = layout_csr(layout)
    key_valid = F.pad(padding_mask([40, 29], 40), (0, 8), value=False)  # padded to 3 blocks

    def attend(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        q, k, v = (x @ weight.T).view(2, 40, 3, 2, 8).permute(2, 0, 3, 1, 4)  # 3 x [B, H, N, D]
        q, k, v = (F.pad(t, (0, 0, 0, 8)) for t in (q, k, v))  # N = 48: whole blocks
        out, _ = fused_module.fused_block_sparse_attention(
            q, k, v, row_offsets, cols, key_valid, 16, 8**-0.5
        )
        return out[:, :, :40].square().sum()

    explained = torch._dynamo.explain(attend)(x, weight)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    expected = torch.autograd.grad(attend(x, weight), weight)[0]
    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, weight), weight)[0]
    torch.testing.assert_close(got, expected, **F32)


def test_layout_csr_lists_each_rows_blocks_in_order() -> None:
    gen = torch.Generator().manual_seed(0)
    layout = random_layout(2, 6, 0.4, gen)
    row_offsets, cols = layout_csr(layout)
    counts, order = allowed_blocks_first(layout)
    assert row_offsets.tolist() == [0, *counts.flatten().cumsum(0).tolist()]
    for row, (first, last) in enumerate(itertools.pairwise(row_offsets.tolist())):
        expected = layout.reshape(12, 6)[row].nonzero().flatten()
        assert cols[first:last].tolist() == expected.tolist()
        assert cols[first:last].tolist() == order.reshape(12, 6)[row, : last - first].tolist()


# --------------------------------------------------------------------------- bf16 / fp16


def random_low_precision_case(seed: int):
    return random_bf16_case(seed, block_sizes=(8, 16, 32, 64), max_len=160)


def low_precision_max_errors(backend, dtype, q, k, v, layout, *, block_size, mask, grad_out, truth):
    """Max abs errors of out, dq, dk, dv in ``dtype`` against the float64 ``truth``.

    ``backend="sdpa"`` is PyTorch's SDPA in ``dtype`` with the equivalent dense token mask
    (rows that may attend no key, NaN in SDPA, are zeroed as the backends zero them)."""
    low = [t.to(dtype) for t in (q, k, v)]
    if backend == "sdpa":
        token_mask = expand_layout(layout, block_size, q.shape[2])[None] & mask[:, None, None, :]
        has_key = token_mask.any(dim=-1, keepdim=True)
        leaves = [t.detach().requires_grad_() for t in low]
        out = F.scaled_dot_product_attention(*leaves, attn_mask=token_mask | ~has_key) * has_key
        out.backward(grad_out.to(dtype))
        got = [out.detach(), *(t.grad for t in leaves)]
    else:
        got = forward_backward(
            backend, *low, layout, block_size=block_size, grad_out=grad_out.to(dtype), mask=mask
        )
    return [(g.double() - t).abs().max().item() for g, t in zip(got, truth, strict=True)]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_max_error_within_twice_sdpa(dtype: torch.dtype) -> None:
    """On 40 random cases, the max error of each of out, dq, dk, dv against the float64
    truth is at most twice that of PyTorch's SDPA in the same dtype."""
    failures, worst = [], 0.0
    for seed in range(40):
        inputs, kwargs = random_low_precision_case(seed)
        truth = forward_backward("reference", *inputs, **kwargs)
        got = low_precision_max_errors("fused", dtype, *inputs, **kwargs, truth=truth)
        sdpa = low_precision_max_errors("sdpa", dtype, *inputs, **kwargs, truth=truth)
        for name, err, base in zip(["out", "dq", "dk", "dv"], got, sdpa, strict=True):
            worst = max(worst, err / max(base, 1e-30))
            if err > 2 * base + 1e-6:  # the floor: a tensor that is exactly 0 in both
                failures.append((seed, name, err, base))
    assert not failures, f"over 2x SDPA's max error (seed, tensor, err, sdpa): {failures}"
    assert worst > 0.5  # the comparison is live: errors are of SDPA's size, not all zero


# --------------------------------------------------------------------------- refusals


# --------------------------------------------------------------------------- dropout


def dropout_layout(generator) -> torch.Tensor:
    layout = random_layout(2, 4, 0.5, generator)
    layout[:, 0] = True  # a full row
    layout[0, 2] = False  # an empty row
    layout[1, 2] = True
    layout[:, 1, 1] = True
    layout[:, 3, 3] = True
    return layout


def fused_dropout(q, k, v, layout, dropout_p, **kwargs):
    return sparse_attention(
        q, k, v, layout, block_size=4, backend="fused", dropout_p=dropout_p, **kwargs
    )


@needs_kernel
def test_dropout_changes_outputs_but_keeps_empty_rows_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = random_inputs((2, 2, 16, 4), generator=gen)
    layout = dropout_layout(gen)
    mask = padding_mask([16, 10], 16)
    one = fused_dropout(q, k, v, layout, 0.5, key_padding_mask=mask)
    two = fused_dropout(q, k, v, layout, 0.5, key_padding_mask=mask)
    assert not torch.equal(one, two)
    assert not torch.isnan(one).any()
    assert torch.all(one[:, 0, 8:12] == 0)
    plain = sparse_attention(q, k, v, layout, block_size=4, backend="fused", key_padding_mask=mask)
    torch.testing.assert_close(
        fused_dropout(q, k, v, layout, 0.0, key_padding_mask=mask), plain, atol=0, rtol=0
    )


@needs_kernel
def test_dropout_drops_a_fraction_p_and_rescales() -> None:
    """With V = I every output entry is one probability: dropped (0) or scaled by 1/(1-p)."""
    heads, seq_len, dropout_p = 4, 64, 0.3
    q, k = random_inputs((2, heads, seq_len, seq_len), generator=torch.Generator(), count=2)
    v = torch.eye(seq_len, dtype=torch.float64).expand(2, heads, -1, -1)
    layout = torch.ones(1, 4, 4, dtype=torch.bool)
    plain = sparse_attention(q, k, v, layout, block_size=16, backend="fused")
    torch.manual_seed(0)
    dropped = sparse_attention(q, k, v, layout, block_size=16, backend="fused", dropout_p=dropout_p)
    kept = dropped != 0
    assert abs(1 - kept.double().mean().item() - dropout_p) < 0.01  # 32768 draws
    torch.testing.assert_close(dropped[kept], plain[kept] / (1 - dropout_p), atol=1e-12, rtol=0)


@needs_kernel
def test_dropout_is_reproducible_with_a_seed() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = random_inputs((2, 2, 16, 4), generator=gen)
    layout = dropout_layout(gen)
    grad_out = torch.randn(q.shape, generator=gen, dtype=q.dtype)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fused_dropout(*leaves, layout, 0.3)
        out.backward(grad_out)
        results.append([out.detach(), *(t.grad for t in leaves)])
    for first, second in zip(*results, strict=True):
        assert torch.equal(first, second)


@needs_kernel
def test_dropout_expectation_is_the_plain_output() -> None:
    """Averaged over many independent draws, dropout (with 1/(1-p) scaling) is unbiased."""
    draws = 4000
    gen = torch.Generator().manual_seed(2)
    q, k = random_inputs((1, 2, 16, 4), generator=gen, count=2)
    v = torch.randn(1, 2, 16, 4, generator=gen, dtype=torch.float64) + 2.0
    layout = dropout_layout(gen)
    plain = sparse_attention(q, k, v, layout, block_size=4, backend="fused")
    torch.manual_seed(0)
    many = fused_dropout(*(t.expand(draws, -1, -1, -1) for t in (q, k, v)), layout, 0.5)
    mean, std = many.mean(dim=0, keepdim=True), many.std(dim=0, keepdim=True)
    assert std.max() > 0.1
    standard_error = std / math.sqrt(draws)
    assert torch.all((mean - plain).abs() <= 5.5 * standard_error + 1e-9)
    assert (plain.abs() * 0.5 > 10 * standard_error + 1e-9).float().mean() > 0.5


@needs_kernel
def test_dropout_gradients_match_finite_differences() -> None:
    gen = torch.Generator().manual_seed(3)
    q, k, v = random_inputs((1, 2, 12, 4), generator=gen)
    layout = dropout_layout(gen)[:, :3, :3]
    layout[:, 0] = True
    mask = padding_mask([10], 12)

    def attention(q, k, v):
        torch.manual_seed(123)
        return fused_dropout(q, k, v, layout, 0.4, key_padding_mask=mask)

    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert attention(*inputs).abs().sum() > 0
    assert torch.autograd.gradcheck(attention, inputs, eps=1e-6, atol=1e-7)


@needs_kernel
def test_dropout_gradients_use_the_forward_mask() -> None:
    """Output is linear in v for a fixed mask, so <dO, O> = <dV, V> exactly."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = random_inputs((2, 2, 16, 4), generator=gen, dtype=torch.float32)
    layout = dropout_layout(gen)
    grad_out = torch.randn(q.shape, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fused_dropout(*leaves, layout, 0.5)
    out.backward(grad_out)
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    torch.testing.assert_close((grad_out * out).sum(), (leaves[2].grad * v).sum())


# --------------------------------------------------------------------------- unavailable


def test_unavailable_kernel_is_refused_by_name_and_auto_falls_back_to_blocked(monkeypatch) -> None:
    status = BuildStatus(False, "no C++ compiler ('c++' is not on PATH)")
    monkeypatch.setattr(fused_module, "build_status", lambda: status)
    assert not fused_module.fused_available()
    gen = torch.Generator().manual_seed(0)
    q, k, v = random_inputs((1, 2, 32, 8), generator=gen)
    layout = random_layout(2, 2, 0.5, gen)
    with pytest.raises(RuntimeError, match=r"backend 'fused' is unavailable: no C\+\+ compiler"):
        sparse_attention(q, k, v, layout, block_size=16, backend="fused")
    assert choose_backend(q) == "blocked"
    auto = sparse_attention(q, k, v, layout, block_size=16)
    assert torch.equal(auto, sparse_attention(q, k, v, layout, block_size=16, backend="blocked"))


@needs_kernel
def test_auto_picks_the_fused_kernel_on_cpu() -> None:
    q = torch.zeros(1, 2, 32, 8)
    assert choose_backend(q) == "fused"
    assert choose_backend(q.to(torch.bfloat16), dropout_p=0.1) == "fused"
    assert choose_backend(q.to(torch.int32)) == "blocked"  # a dtype the kernel does not take


def test_build_errors_are_summarized() -> None:
    error = RuntimeError(
        "Error building extension 'ernie_sparse_fused_x': [1/2] c++ -O3 -c block_sparse.cpp\n"
        "In file included from block_sparse.cpp:1:\n"
        "block_sparse.cpp:3:10: fatal error: ATen/Dispatch.h: No such file or directory\n"
        "ninja: build stopped: subcommand failed."
    )
    reason = fused_module._short_reason(error)
    assert reason == (
        "RuntimeError: Error building extension 'ernie_sparse_fused_x'; "
        "block_sparse.cpp:3:10: fatal error: ATen/Dispatch.h: No such file or directory"
    )


def test_disabled_build_reports_the_reason(monkeypatch) -> None:
    monkeypatch.setenv(fused_module.DISABLE_ENV, "0")
    status = fused_module._compile()
    assert not status.ok and fused_module.DISABLE_ENV in status.reason
