"""BlockBERT's activation-memory regression: the saved-tensor accounting against hand counts,
the least-squares split, and BlockBERT n = 2, 3 dividing the O(N^2) term by n."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ernie_sparse.analysis.memory_profile import (
    ProfileConfig,
    ProfiledModel,
    build_model,
    fit_line,
    head_split,
    profiled_models,
    run_profile,
    saved_activation_bytes,
    table1,
)
from ernie_sparse.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(nn.Module):
    """loss = sum(softmax(x W)) + sum(exp(x W)): x and softmax's output are saved, and the
    shared product x W once (softmax saves its output, exp its output, matmul x)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 16))

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        product = x @ self.weight  # [4, 16]
        return SimpleNamespace(loss=product.softmax(-1).sum() + product.exp().sum())


class KeepOnContext(torch.autograd.Function):
    """Keeps its input's square as a context attribute, as the blocked backend's chunks do."""

    @staticmethod
    def forward(ctx, x):
        ctx.kept = [x * x]
        return x.sum()

    @staticmethod
    def backward(ctx, grad):
        return grad * torch.ones_like(ctx.kept[0])


class UsesContext(nn.Module):
    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=KeepOnContext.apply(x * 2))


def test_saved_tensor_accounting_counts_each_storage_once_without_parameters() -> None:
    x = torch.randn(4, 8)  # an input, no gradient: matmul saves it for the weight's gradient
    sizes = saved_activation_bytes(Toy(), {"x": x})
    floats = 4 * 8 + 4 * 16 + 4 * 16  # x, softmax output, exp output (weight excluded)
    assert sizes == {"hooks": 4 * floats, "context": 0, "total": 4 * floats}


def test_tensors_kept_on_a_custom_function_context_are_counted_too() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    sizes = saved_activation_bytes(UsesContext(), {"x": x})
    assert sizes["context"] == 5 * 3 * 4  # x * x, invisible to saved_tensors_hooks
    assert sizes["hooks"] == 0  # x * 2 saves no tensor (a constant factor)


def test_least_squares_line_and_head_splits() -> None:
    lengths = [128, 256, 512, 1024]
    slope, intercept = fit_line(lengths, [3.0 * n + 7.0 for n in lengths])
    assert slope == pytest.approx(3.0) and intercept == pytest.approx(7.0)
    with pytest.raises(ValueError, match="at least two"):
        fit_line([128], [1.0])
    assert head_split(2, 12) == "10:2" and head_split(3, 12) == "8:2:2"  # the paper's
    assert head_split(3, 4) == "2:1:1"


def test_models_are_built_from_their_structured_n_not_their_label() -> None:
    config = ProfileConfig(hidden_size=24, num_layers=1, num_heads=6, mlp_size=24, vocab_size=20)
    assert [(m.label, m.blocks) for m in profiled_models(config)] == [
        ("BERT", 0),
        ("BlockBERT n=2", 2),
        ("BlockBERT n=3", 3),
    ]
    blockbert = build_model(ProfiledModel("any label", blocks=3), 48, config).config
    attention = blockbert.attention
    assert (attention.pattern, attention.block_size, attention.block_multiple) == (
        "blockbert",
        16,
        3,
    )
    bert = build_model(ProfiledModel("BlockBERT n=3"), 48, config).config
    assert bert.attention.pattern == "dense"


def test_blockbert_divides_the_quadratic_activation_memory_by_n() -> None:
    config = ProfileConfig(
        tokens=384,
        lengths=(48, 96, 192, 384),
        hidden_size=48,
        num_layers=2,
        num_heads=6,
        mlp_size=96,
        vocab_size=50,
    )
    result = run_profile(config, log=lambda _: None)
    fits = result["fits"]
    assert fits["BERT"]["slope_bytes_per_token"] > 0
    assert fits["BlockBERT n=2"]["quadratic_vs_bert"] == pytest.approx(1 / 2, rel=0.15)
    assert fits["BlockBERT n=3"]["quadratic_vs_bert"] == pytest.approx(1 / 3, rel=0.15)
    # The O(N) part barely changes (BlockBERT Table 1: 4.83 / 4.84 / 4.87 GB).
    linear = [fit["intercept_bytes"] for fit in fits.values()]
    assert max(linear) / min(linear) < 1.3
    # BlockBERT's probabilities live on its attention's context, not in the hooks.
    rows = {(r["model"], r["seq_len"]): r for r in result["rows"]}
    assert rows[("BERT", 384)]["context"] == 0 and rows[("BlockBERT n=2", 384)]["context"] > 0
    table = table1(result, [96, 384])
    assert "| 384 | 1 | BlockBERT n=3 |" in table and "| 96 | 4 | BERT |" in table


def test_cli_writes_report_results_and_plot(tmp_path, capsys) -> None:
    args = ["experiment", "memory-profile", "--tokens", "128", "--lengths", "32,64,128"]
    args += ["--hidden-size", "24", "--num-layers", "1", "--num-heads", "6", "--mlp-size", "48"]
    args += ["--vocab-size", "20", "--blocks", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["fits"]) == {"BERT", "BlockBERT n=2"}
    assert len(result["rows"]) == 6 and result["method"] == "autograd saved tensors"
    assert (tmp_path / "memory-profile.png").stat().st_size > 0
    assert "O(N^2)" in (tmp_path / "report.md").read_text()
    assert "BlockBERT n=2" in capsys.readouterr().out
