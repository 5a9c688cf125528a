"""torch.compile: attention and the whole encoder trace as one graph, with equal results.

Graph breaks are counted with ``torch._dynamo.explain``; results are compared with
``backend="aot_eager"`` (dynamo + autograd tracing, without inductor's C++ build,
which would take minutes on 2 cores).
"""

from __future__ import annotations

import pytest
import torch
from test_attention import padding_mask, random_layout

from ernie_sparse.attention import (
    KeyedLayout,
    flex_available,
    fused_available,
    prepare_layout,
    sparse_attention,
)
from ernie_sparse.attention import layout_cache as layout_cache_module
from ernie_sparse.models.config import ModelConfig
from ernie_sparse.models.heads import SequenceClassifier, sequence_inputs
from ernie_sparse.objectives.roll import roll_batch

F32 = dict(rtol=1e-5, atol=1e-5)
BACKENDS = [
    "blocked",
    pytest.param(
        "fused", marks=pytest.mark.skipif(not fused_available(), reason="no fused kernel")
    ),
]


def explain(function, *args):
    explained = torch._dynamo.explain(function)(*args)
    reasons = [str(reason.reason).splitlines()[0] for reason in explained.break_reasons]
    return explained.graph_count, explained.graph_break_count, reasons


# --------------------------------------------------------------------------- attention


def projected_attention(backend: str, layout: KeyedLayout, mask: torch.Tensor, dropout_p: float):
    """x [B, N, H*D] -> q, k, v projections -> block-sparse attention (H=2, D=8)."""

    def attend(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        q, k, v = (x @ weight).view(batch, seq_len, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return sparse_attention(
            q, k, v, layout, block_size=8, key_padding_mask=mask, backend=backend,
            dropout_p=dropout_p,
        )  # fmt: skip

    return attend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_attention_compiles_in_one_graph(backend: str, dropout_p: float) -> None:
    gen = torch.Generator().manual_seed(0)
    layout = KeyedLayout(random_layout(2, 5, 0.5, gen))
    x = torch.randn(2, 37, 16, generator=gen, requires_grad=True)
    weight = torch.randn(16, 48, generator=gen, requires_grad=True)
    attend = projected_attention(backend, layout, padding_mask([37, 20], 37), dropout_p)
    attend(x, weight)  # builds the layout's plan
    assert explain(attend, x, weight) == (1, 0, [])
    if dropout_p == 0:  # equal to eager, forward and gradients
        compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
        expected = attend(x, weight)
        got = compiled(x, weight)
        torch.testing.assert_close(got, expected, **F32)
        grads = torch.autograd.grad(got.square().sum(), (x, weight))
        wanted = torch.autograd.grad(expected.square().sum(), (x, weight))
        for a, b in zip(grads, wanted, strict=True):
            torch.testing.assert_close(a, b, **F32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("compiled", [False, True])
def test_dropout_backward_uses_the_forward_mask(backend: str, compiled: bool) -> None:
    """With v = identity the output is the dropped, rescaled probability matrix P', and
    dL/dv = P'^T dL/dout: equal only if the backward drops what the forward dropped
    (compiled, blocked keeps the mask instead of regenerating it from a seed)."""
    gen = torch.Generator().manual_seed(1)
    heads, seq_len = 2, 32
    layout = KeyedLayout(random_layout(heads, 4, 0.6, gen))
    q, k = (torch.randn(1, heads, seq_len, seq_len, generator=gen) for _ in range(2))
    identity = torch.eye(seq_len).expand(1, heads, seq_len, seq_len).clone().requires_grad_()
    grad_out = torch.randn(1, heads, seq_len, seq_len, generator=gen)

    def attend(q, k, v):
        return sparse_attention(q, k, v, layout, block_size=8, backend=backend, dropout_p=0.3)

    attend(q, k, identity)  # builds the layout's plan (fullgraph cannot build it)
    run = torch.compile(attend, backend="aot_eager", fullgraph=True) if compiled else attend
    dropped = run(q, k, identity)  # [1, H, N, N] = P'
    (grad_v,) = torch.autograd.grad(dropped, identity, grad_out)
    assert (dropped == 0).float().mean() > 0.2  # the layout's zeros and the dropped entries
    torch.testing.assert_close(grad_v, dropped.detach().transpose(-1, -2) @ grad_out, **F32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_prepared_layout_compiles_fullgraph_on_the_first_call(backend: str) -> None:
    gen = torch.Generator().manual_seed(4)
    layout = KeyedLayout(random_layout(2, 5, 0.5, gen))
    x = torch.randn(2, 37, 16, generator=gen)
    weight = torch.randn(16, 48, generator=gen)
    q = torch.empty(2, 2, 37, 8)
    assert prepare_layout(layout, q, block_size=8, backend=backend) == backend
    built = dict(layout._derived)
    attend = projected_attention(backend, layout, padding_mask([37, 20], 37), 0.0)
    got = torch.compile(attend, backend="aot_eager", fullgraph=True)(x, weight)
    torch.testing.assert_close(got, attend(x, weight), **F32)
    assert layout._derived == built  # the calls found everything built


def test_prepare_layout_refuses_an_unknown_backend() -> None:
    layout = KeyedLayout(torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown backend 'sparse'"):
        prepare_layout(layout, torch.empty(1, 1, 16, 8), block_size=8, backend="sparse")


# --------------------------------------------------------------------------- the encoder


def tiny_classifier(backend: str, **attention) -> SequenceClassifier:
    config = ModelConfig.from_dict(
        {
            "vocab_size": 50,
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "mlp_size": 64,
            "max_positions": 256,
            "attention": {
                "pattern": "bigbird",
                "pattern_params": {"num_random": 1},
                "block_size": 16,
                "num_global": 16,
                "backend": backend,
                **attention,
            },
            "hst": {"enabled": True},
            "saor": {"alpha": 1.0},
        }
    )
    return SequenceClassifier(config, 3)


def saor_batch(model: SequenceClassifier) -> dict[str, torch.Tensor]:
    """SAOR's one batch of 2B: the input and its rolled copy (one padded sequence)."""
    gen = torch.Generator().manual_seed(2)
    inputs = {
        "input_ids": torch.randint(0, 50, (2, 200), generator=gen),
        "attention_mask": padding_mask([200, 150], 200),
    }
    second = roll_batch(inputs, sequence_inputs(model), shift=8, num_global=16)
    return {key: torch.cat([value, second[key]]) for key, value in inputs.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [False, True])
def test_encoder_with_hst_on_saor_batch_compiles_without_graph_breaks(
    backend: str, training: bool
) -> None:
    model = tiny_classifier(backend).train(training)
    batch = saor_batch(model)

    def logits(input_ids, attention_mask):
        return model(input_ids, attention_mask).logits

    logits(**batch)  # builds the layouts and their plans, as a first eager step would
    assert explain(logits, *batch.values()) == (1, 0, [])
    if not training:
        compiled = torch.compile(logits, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(**batch), logits(**batch), **F32)


@pytest.mark.slow
@pytest.mark.skipif(not flex_available(), reason="FlexAttention is not in this torch")
def test_encoder_with_flex_compiles_without_graph_breaks_cpu_inference() -> None:
    """flex traces into the caller's graph (CPU: inference only; on CUDA also training)."""
    model = tiny_classifier("flex").eval()
    batch = saor_batch(model)

    def logits(input_ids, attention_mask):
        return model(input_ids, attention_mask).logits

    with torch.no_grad():
        logits(**batch)  # compiles flex for this shape (about 20 s on 2 cores)
        assert explain(logits, *batch.values()) == (1, 0, [])


def test_layouts_are_hashed_once_per_build_not_per_layer_or_step(monkeypatch) -> None:
    model = tiny_classifier("blocked").train()
    batch = saor_batch(model)
    model(**batch).logits.sum().backward()  # layouts built and keyed
    calls = []
    original = layout_cache_module.layout_key
    monkeypatch.setattr(
        layout_cache_module, "layout_key", lambda layout: calls.append(1) or original(layout)
    )
    for _ in range(3):
        model(**batch).logits.sum().backward()
    assert calls == []
    keyed = model.encoder.layouts.for_layers(model.encoder.plan(200), training=True)
    assert all(len(layout._derived) == 1 for layout in keyed)  # one plan per layout


def test_bad_ids_still_fail_when_compiled() -> None:
    model = tiny_classifier("blocked").eval()
    batch = saor_batch(model)

    def logits(input_ids, attention_mask):
        return model(input_ids, attention_mask).logits

    logits(**batch)  # fullgraph needs the layouts built before it traces
    compiled = torch.compile(logits, backend="aot_eager", fullgraph=True)
    compiled(**batch)
    batch["input_ids"][0, 3] = 50
    with pytest.raises(RuntimeError, match=r"input_ids must be in \[0, 50\)"):
        compiled(**batch)


def test_keyed_layout_refuses_a_device_layout() -> None:
    with pytest.raises(ValueError, match="needs a CPU layout"):
        KeyedLayout(torch.ones(1, 2, 2, dtype=torch.bool, device="meta"))


def test_a_first_compiled_call_builds_the_layouts_and_the_next_has_one_graph() -> None:
    model = tiny_classifier("blocked").eval()
    batch = saor_batch(model)

    def logits(input_ids, attention_mask):
        return model(input_ids, attention_mask).logits

    first = torch.compile(logits, backend="aot_eager")(**batch)  # builds eagerly inside
    torch.testing.assert_close(first, logits(**batch), **F32)
    assert explain(logits, *batch.values()) == (1, 0, [])
