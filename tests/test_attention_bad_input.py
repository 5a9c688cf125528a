"""Inputs a careful caller may still send: non-finite padding, huge blocks, meta tensors, bools.

Every backend that can serve the request is checked against the dense reference (or the
clean run) and every one that cannot must say why.
"""

from __future__ import annotations

import math

import pytest
import test_attention as attention_tests
import torch
from test_attention import padding_mask, random_inputs
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ernie_sparse.attention import flex as flex_module
from ernie_sparse.attention import flex_available, fused_available, sparse_attention
from ernie_sparse.attention.combiner import (
    COMBINER_VARIANTS,
    combiner_attention,
    combiner_reference,
)
from ernie_sparse.attention.padding import effective_block_size
from ernie_sparse.patterns import bigbird

needs_kernel = pytest.mark.skipif(not fused_available(), reason="fused kernel unavailable")
needs_flex = pytest.mark.skipif(not flex_available(), reason="FlexAttention is not in this torch")

# Backends with a CPU backward; flex (CPU forward only) has its own tests below.
TRAINING_BACKENDS = [
    "reference",
    "blocked",
    pytest.param("fused", marks=needs_kernel),
]


def forward_backward(backend, q, k, v, layout, **kwargs):
    """[out, dq, dk, dv] of one backend (test_attention's, flattened)."""
    out, grads = attention_tests.forward_backward(backend, q, k, v, layout, **kwargs)
    return [out, *grads]


# --------------------------------------------------------------------------- non-finite padding


def padded_case(seed: int = 0):
    """Per-head bigbird (dense global rows and sparse rows), a suffix of padding that ends a
    partial key block and fills whole ones, and a hole of padded keys mid-sequence."""
    gen = torch.Generator().manual_seed(seed)
    batch, heads, seq_len, dim, block_size = 2, 2, 37, 8, 8
    nb = math.ceil(seq_len / block_size)
    layout = bigbird(nb, num_heads=heads, num_global=1, num_random=1, generator=gen)
    mask = padding_mask([37, 22], seq_len)
    mask[0, 9:13] = False  # a hole inside sequence 0
    q, k, v, grad_out = random_inputs((batch, heads, seq_len, dim), generator=gen, count=4)
    return q, k, v, grad_out, layout, mask, block_size


def plant(tensor: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    """``tensor`` [B, H, N, D] with ``value`` at every padded key position."""
    return tensor.masked_fill(~mask[:, None, :, None], value)


@pytest.mark.parametrize(
    ("key_value", "value_value"),
    [(math.nan, math.nan), (math.inf, -math.inf), (-math.inf, math.inf)],
    ids=["nan", "inf_-inf", "-inf_inf"],
)
@pytest.mark.parametrize("backend", TRAINING_BACKENDS)
def test_non_finite_padded_keys_reach_no_output_or_gradient(backend, key_value, value_value):
    q, k, v, grad_out, layout, mask, block_size = padded_case()
    kwargs = {"block_size": block_size, "grad_out": grad_out, "mask": mask}
    clean = forward_backward(backend, q, k, v, layout, **kwargs)
    dirty = forward_backward(
        backend, q, plant(k, mask, key_value), plant(v, mask, value_value), layout, **kwargs
    )
    for name, got, expected in zip(["out", "dq", "dk", "dv"], dirty, clean, strict=True):
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, expected, atol=0, rtol=0, msg=f"{name} differs")
    # Padded keys are never attended: no gradient flows into them.
    for grad in dirty[2:]:
        assert torch.all(grad[~mask[:, None, :].expand(-1, q.shape[1], -1)] == 0)
    reference = forward_backward("reference", q, k, v, layout, **kwargs)
    for got, expected in zip(dirty, reference, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("variant", COMBINER_VARIANTS)
def test_combiner_ignores_non_finite_padded_keys(variant) -> None:
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, 40, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = padding_mask([40, 29], 40)
    mask[0, 3:6] = False
    dirty_k, dirty_v = plant(k, mask, math.nan), plant(v, mask, math.inf)
    for attend in (combiner_attention, combiner_reference):
        inputs = [t.clone().requires_grad_() for t in (q, dirty_k, dirty_v)]
        clean_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        results = []
        for args in (inputs, clean_inputs):
            out = attend(*args, variant=variant, key_padding_mask=mask)
            out = out[0] if isinstance(out, tuple) else out
            out.sum().backward()
            results.append([out.detach(), *(t.grad for t in args)])
        for name, got, expected in zip(["out", "dq", "dk", "dv"], *results, strict=True):
            assert torch.isfinite(got).all(), f"{attend.__name__} {name}"
            torch.testing.assert_close(got, expected, msg=f"{attend.__name__} {name} differs")


@pytest.mark.slow
@needs_flex
def test_flex_cpu_forward_ignores_non_finite_padded_keys() -> None:
    gen = torch.Generator().manual_seed(1)
    batch, heads, seq_len, dim, block_size = 2, 2, 64, 16, 16
    layout = bigbird(4, num_heads=heads, num_global=1, window_width=0, num_random=1, generator=gen)
    q, k, v = random_inputs((batch, heads, seq_len, dim), generator=gen, dtype=torch.float32)
    mask = padding_mask([64, 37], seq_len)
    mask[0, 5:9] = False
    kwargs = {"block_size": block_size, "key_padding_mask": mask}
    with torch.no_grad():
        dirty = sparse_attention(
            q, plant(k, mask, math.nan), plant(v, mask, math.inf), layout, backend="flex", **kwargs
        )
    clean = sparse_attention(q, k, v, layout, backend="reference", **kwargs)
    assert torch.isfinite(dirty).all()
    torch.testing.assert_close(dirty, clean, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- block_size >> N


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns, backward included."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


def test_effective_block_size_depends_on_the_length_not_the_block() -> None:
    assert effective_block_size(16, 40) == 16  # several blocks: unchanged
    assert effective_block_size(40, 40) == 40
    assert effective_block_size(16384, 32) == 32  # one block over the whole sequence
    assert effective_block_size(16384, 32, multiple=128) == 128
    assert effective_block_size(64, 32, multiple=128) == 64  # never above the block asked for


@pytest.mark.parametrize("backend", TRAINING_BACKENDS)
def test_block_far_above_the_length_costs_the_length(backend: str) -> None:
    """N = 32 at block_size 16384 (one block): no op makes a tensor near 16384 tokens long,
    and the result equals the reference at block_size = N (the same one-block layout)."""
    gen = torch.Generator().manual_seed(2)
    batch, heads, seq_len, dim = 2, 2, 32, 16
    q, k, v, grad_out = random_inputs((batch, heads, seq_len, dim), generator=gen, count=4)
    layout = torch.tensor([[[True]], [[False]]])  # head 1 attends nothing
    mask = padding_mask([32, 19], seq_len)
    recorder = LargestTensor()
    with recorder:
        got = forward_backward(
            backend, q, k, v, layout, block_size=16384, grad_out=grad_out, mask=mask
        )
    # Scores and masks of one head are N x N; padding to the block would be 16384 x D at least.
    assert recorder.largest <= 4 * batch * heads * seq_len * max(seq_len, dim), recorder.largest
    expected = forward_backward(
        "reference", q, k, v, layout, block_size=seq_len, grad_out=grad_out, mask=mask
    )
    for name, g, e in zip(["out", "dq", "dk", "dv"], got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
    assert torch.all(got[0][:, 1] == 0)


@pytest.mark.slow
@needs_flex
def test_flex_block_far_above_the_length_pads_to_128(monkeypatch) -> None:
    padded_lengths = []
    pad = flex_module.pad_to_multiple

    def recording_pad(q, *args):
        padded = pad(q, *args)
        padded_lengths.append(padded[0].shape[2])
        return padded

    monkeypatch.setattr(flex_module, "pad_to_multiple", recording_pad)
    gen = torch.Generator().manual_seed(3)
    q, k, v = random_inputs((2, 2, 32, 16), generator=gen, dtype=torch.float32)
    layout = torch.ones(1, 1, 1, dtype=torch.bool)
    kwargs = {"block_size": 16384, "key_padding_mask": padding_mask([32, 19], 32)}
    with torch.no_grad():
        out = sparse_attention(q, k, v, layout, backend="flex", **kwargs)
    assert padded_lengths == [128]
    expected = sparse_attention(q, k, v, layout, backend="reference", **kwargs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- meta tensors


def meta_inputs(requires_grad: bool = True):
    shape = (2, 3, 40, 8)  # block 8: 5 blocks
    return [torch.empty(shape, device="meta", requires_grad=requires_grad) for _ in range(3)]


def meta_case_layout() -> torch.Tensor:
    layout = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    layout[:, 0] = True  # a dense row (blocked's SDPA path) and sparse rows
    return layout


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("backend", ["auto", *TRAINING_BACKENDS])
def test_meta_inputs_infer_shapes_forward_and_backward(backend: str, with_mask: bool) -> None:
    q, k, v = meta_inputs()
    mask = padding_mask([40, 23], 40) if with_mask else None
    out = sparse_attention(
        q, k, v, meta_case_layout(), block_size=8, key_padding_mask=mask, backend=backend
    )
    assert out.device.type == "meta" and out.shape == q.shape and out.dtype == q.dtype
    out.sum().backward()
    for leaf in (q, k, v):
        assert leaf.grad.device.type == "meta" and leaf.grad.shape == q.shape


def test_meta_layout_with_meta_inputs_works_for_the_reference() -> None:
    q, k, v = meta_inputs(requires_grad=False)
    layout = meta_case_layout().to("meta")
    out = sparse_attention(q, k, v, layout, block_size=8, backend="reference")
    assert out.device.type == "meta" and out.shape == q.shape


@pytest.mark.parametrize("backend", ["auto", "blocked", "fused", "flex"])
def test_meta_layout_is_refused_where_its_values_are_needed(backend: str) -> None:
    q, k, v = meta_inputs(requires_grad=False)
    layout = meta_case_layout().to("meta")
    with pytest.raises(ValueError, match=r"backend '\w+' needs the layout's values.*CPU tensor"):
        sparse_attention(q, k, v, layout, block_size=8, backend=backend)


def test_meta_layout_with_real_inputs_is_refused() -> None:
    q, k, v = random_inputs((2, 3, 40, 8), generator=torch.Generator().manual_seed(0))
    layout = meta_case_layout().to("meta")
    with pytest.raises(ValueError, match=r"layout on the meta device has none"):
        sparse_attention(q, k, v, layout, block_size=8, backend="reference")


def test_flex_refuses_meta_inputs_by_name() -> None:
    q, k, v = meta_inputs(requires_grad=False)
    with pytest.raises(ValueError, match=r"backend 'flex' cannot infer shapes on meta"):
        sparse_attention(q, k, v, meta_case_layout(), block_size=8, backend="flex")


# --------------------------------------------------------------------------- block_size type


@pytest.mark.parametrize(
    ("block_size", "error", "match"),
    [
        (True, TypeError, r"block_size must be a positive int, got bool True"),
        (False, TypeError, r"block_size must be a positive int, got bool False"),
        (8.0, TypeError, r"block_size must be a positive int, got float 8.0"),
        ("8", TypeError, r"block_size must be a positive int, got str '8'"),
        (torch.tensor(8), TypeError, r"block_size must be a positive int, got Tensor"),
        (0, ValueError, r"block_size must be a positive int, got 0"),
        (-8, ValueError, r"block_size must be a positive int, got -8"),
    ],
)
def test_block_size_must_be_a_positive_int(block_size, error, match) -> None:
    q, k, v = random_inputs((1, 1, 8, 4), generator=torch.Generator().manual_seed(0))
    layout = torch.ones(1, 8, 8, dtype=torch.bool)  # what block_size=1 (True) would accept
    with pytest.raises(error, match=match):
        sparse_attention(q, k, v, layout, block_size=block_size, backend="blocked")
