"""SAOR: the roll that shifts the sparse pattern, and the loss, against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ernie_sparse.objectives import roll_local_tokens, saor_loss, saor_terms, symmetric_kl


def loop_roll(row: list[int], *, shift: int, num_global: int, length: int) -> list[int]:
    """The paper's roll, position by position: x' = (globals, t_{L-k+1..L}, t_1.., padding)."""
    local = row[num_global:length]
    out = list(row)
    for position, token in enumerate(local):
        out[num_global + (position + shift) % len(local)] = token
    return out


@pytest.mark.parametrize("shift", [0, 1, 2, 5, -3, 17])
@pytest.mark.parametrize("num_global", [0, 1, 3])
def test_roll_matches_loop_definition(shift: int, num_global: int) -> None:
    lengths = [12, 9, 4]
    tokens = torch.arange(1, 3 * 12 + 1).view(3, 12)
    mask = torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]
    rolled = roll_local_tokens(tokens, shift=shift, num_global=num_global, attention_mask=mask)
    for row, length in enumerate(lengths):
        expected = loop_roll(
            tokens[row].tolist(), shift=shift, num_global=num_global, length=length
        )
        assert rolled[row].tolist() == expected


def test_roll_is_the_papers_example() -> None:
    x = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    assert roll_local_tokens(x, shift=2).tolist() == [[7, 8, 1, 2, 3, 4, 5, 6]]


def test_roll_keeps_globals_and_padding_and_inverts() -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 10, 4, generator=gen)  # embeddings roll like ids
    mask = torch.tensor([[True] * 10, [True] * 6 + [False] * 4])
    rolled = roll_local_tokens(tokens, shift=3, num_global=2, attention_mask=mask)
    assert torch.equal(rolled[:, :2], tokens[:, :2])
    assert torch.equal(rolled[1, 6:], tokens[1, 6:])
    assert not torch.equal(rolled[:, 2:6], tokens[:, 2:6])
    back = roll_local_tokens(rolled, shift=-3, num_global=2, attention_mask=mask)
    assert torch.equal(back, tokens)
    ids = torch.arange(20).view(2, 10)
    rolled_ids = roll_local_tokens(ids, shift=3, num_global=2, attention_mask=mask)
    assert torch.equal(rolled, tokens[torch.arange(2)[:, None], rolled_ids - ids[:, :1]])


def test_roll_refuses_bad_input() -> None:
    tokens = torch.zeros(2, 5, dtype=torch.long)
    holes = torch.tensor([[True, False, True, True, True], [True] * 5])
    with pytest.raises(ValueError, match="prefix of real tokens"):
        roll_local_tokens(tokens, shift=1, attention_mask=holes)
    with pytest.raises(ValueError, match="bool"):
        roll_local_tokens(tokens, shift=1, attention_mask=holes.long())
    with pytest.raises(ValueError, match="num_global=6"):
        roll_local_tokens(tokens, shift=1, num_global=6)


def direct_saor(logits1, logits2, labels, alpha) -> float:
    """The formula written out with Python floats, one example at a time."""
    total_nll, total_kl = 0.0, 0.0
    for row1, row2, label in zip(logits1.tolist(), logits2.tolist(), labels.tolist(), strict=True):
        p1 = [math.exp(x) / sum(math.exp(y) for y in row1) for x in row1]
        p2 = [math.exp(x) / sum(math.exp(y) for y in row2) for x in row2]
        total_nll += -math.log(p1[label]) - math.log(p2[label])
        kl12 = sum(a * math.log(a / b) for a, b in zip(p1, p2, strict=True))
        kl21 = sum(b * math.log(b / a) for a, b in zip(p1, p2, strict=True))
        total_kl += (kl12 + kl21) / 2
    count = len(labels)
    return total_nll / count + alpha * total_kl / count


def test_saor_loss_equals_the_formula() -> None:
    logits1 = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-2.0, 3.0, 1.0]])
    logits2 = torch.tensor([[1.0, 0.0, 0.5], [0.3, -0.2, 0.9], [-1.0, 2.0, 2.5]])
    labels = torch.tensor([0, 2, 1])
    for alpha in (0.0, 0.5, 4.0):
        got = saor_loss(logits1, logits2, labels, alpha=alpha).item()
        assert got == pytest.approx(direct_saor(logits1, logits2, labels, alpha), rel=1e-6)


def test_float64_is_kept_and_matches_the_formula_to_1e_12() -> None:
    gen = torch.Generator().manual_seed(4)
    logits1 = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    logits2 = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (6,), generator=gen)
    for alpha in (0.0, 0.5, 4.0):
        got = saor_loss(logits1, logits2, labels, alpha=alpha)
        assert got.dtype == torch.float64
        want = direct_saor(logits1, logits2, labels, alpha)
        assert abs(got.item() - want) <= 1e-12 * max(1.0, abs(want))
    assert symmetric_kl(logits1, logits2).dtype == torch.float64
    assert saor_loss(logits1, None, labels, alpha=0.0).dtype == torch.float64


def test_float64_gradients_of_the_objective_pass_gradcheck() -> None:
    gen = torch.Generator().manual_seed(5)
    logits1 = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    logits2 = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4), generator=gen)
    labels[1, :2] = -100  # ignored rows, as for masked LM

    def objective(a, b):
        return saor_loss(a, b, labels, alpha=0.7)

    assert torch.autograd.gradcheck(objective, (logits1, logits2), eps=1e-6, atol=1e-10)
    assert torch.autograd.gradcheck(symmetric_kl, (logits1[0], logits2[0]), atol=1e-10)


def test_half_precision_is_computed_in_float32() -> None:
    gen = torch.Generator().manual_seed(6)
    logits1, logits2 = torch.randn(2, 4, 3, generator=gen).unbind()
    labels = torch.tensor([0, 1, 2, 1])
    for half in (torch.bfloat16, torch.float16):
        got = saor_loss(logits1.to(half), logits2.to(half), labels, alpha=1.0)
        assert got.dtype == torch.float32
        want = saor_loss(logits1.to(half).float(), logits2.to(half).float(), labels, alpha=1.0)
        assert torch.equal(got, want)


def test_alpha_zero_is_plain_nll_of_one_pass() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 0])
    assert torch.equal(saor_loss(logits, None, labels, alpha=0.0), F.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="needs the second pass"):
        saor_loss(logits, None, labels, alpha=1.0)


def test_identical_passes_have_zero_kl_and_ignored_rows_drop_out() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 5, generator=gen)  # token-level, as masked LM
    labels = torch.randint(0, 5, (2, 6), generator=gen)
    labels[0, :3] = -100
    nll_first, nll_second, kl = saor_terms(logits, logits.clone(), labels)
    assert kl.item() == pytest.approx(0.0, abs=1e-7)
    kept = labels != -100
    assert nll_first.item() == pytest.approx(F.cross_entropy(logits[kept], labels[kept]).item())
    assert torch.equal(nll_first, nll_second)
    assert saor_terms(logits, None, labels)[1:] == (None, 0)


def test_gradients_reach_both_passes() -> None:
    gen = torch.Generator().manual_seed(3)
    logits1 = torch.randn(4, 3, generator=gen, requires_grad=True)
    logits2 = torch.randn(4, 3, generator=gen, requires_grad=True)
    saor_loss(logits1, logits2, torch.tensor([0, 1, 2, 1]), alpha=1.0).backward()
    assert logits1.grad.abs().sum() > 0 and logits2.grad.abs().sum() > 0


def test_mismatched_logits_are_refused() -> None:
    with pytest.raises(ValueError, match="must match logits1"):
        saor_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]), alpha=1.0)
    with pytest.raises(ValueError, match="labels"):
        saor_loss(torch.zeros(2, 3), None, torch.tensor([0, 1, 2]), alpha=0.0)


# --- saor_forward: SAOR around any task model ---

from ernie_sparse.models import (  # noqa: E402
    MaskedLM,
    MultipleChoice,
    SAORConfig,
    SequenceClassifier,
    preset,
)
from ernie_sparse.models.heads import PER_TOKEN  # noqa: E402
from ernie_sparse.objectives import saor_forward  # noqa: E402


def _model(model_class, *, alpha, mode="roll", roll=3, **kwargs):
    config = preset(
        "ernie-sparse",
        vocab_size=40,
        hidden_size=16,
        num_heads=2,
        num_layers=2,
        mlp_size=32,
        attention={"block_size": 4, "num_global": 2},
        max_positions=64,
        saor={"alpha": alpha, "mode": mode, "roll_tokens": roll},
    )
    torch.manual_seed(0)
    return model_class(config, **kwargs)


def _classification_batch(generator):
    ids = torch.randint(0, 40, (3, 21), generator=generator)
    mask = torch.arange(21)[None, :] < torch.tensor([[21], [15], [8]])
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


def _count_forwards(model):
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_saor_forward_alpha_zero_is_one_plain_pass(generator) -> None:
    model = _model(SequenceClassifier, alpha=0.0, num_labels=2).eval()
    batch = _classification_batch(generator)
    calls = _count_forwards(model)
    out = saor_forward(model, batch)
    assert len(calls) == 1 and out.second_logits is None and out.kl == 0
    torch.testing.assert_close(out.loss, model(**batch).loss)


@pytest.mark.parametrize("as_one_batch", [True, False])
def test_saor_forward_equals_two_explicit_passes(generator, as_one_batch) -> None:
    model = _model(SequenceClassifier, alpha=2.0, num_labels=2).eval()
    batch = _classification_batch(generator)
    out = saor_forward(model, batch, as_one_batch=as_one_batch)
    first = model(batch["input_ids"], batch["attention_mask"]).logits
    rolled_ids = roll_local_tokens(
        batch["input_ids"], shift=3, num_global=2, attention_mask=batch["attention_mask"]
    )
    second = model(rolled_ids, batch["attention_mask"]).logits
    want = saor_loss(first, second, batch["labels"], alpha=2.0)
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)
    assert out.kl > 0  # the rolled pattern changes the prediction
    # per pass: NLL(p1), NLL(p2), and their mean (comparable with an evaluation's loss)
    torch.testing.assert_close(out.nll_first, model(**batch).loss, atol=1e-5, rtol=1e-5)
    labels = batch["labels"]
    torch.testing.assert_close(
        out.nll_second, F.cross_entropy(second, labels), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(out.nll, (out.nll_first + out.nll_second) / 2)
    torch.testing.assert_close(out.loss, 2 * out.nll + 2.0 * out.kl)


def test_saor_roll_zero_and_rdrop_in_eval_have_zero_kl(generator) -> None:
    batch = _classification_batch(generator)
    for mode, roll in (("roll", 0), ("dropout", 3)):
        model = _model(SequenceClassifier, alpha=1.0, mode=mode, roll=roll, num_labels=2).eval()
        assert saor_forward(model, batch).kl.abs() < 1e-6
    model.train()  # R-Drop: dropout alone makes the passes differ
    assert saor_forward(model, batch).kl > 0


class TokenEcho(torch.nn.Module):
    """Per-token logits that depend only on each token: a roll must not change them
    once the second pass is rolled back."""

    SEQUENCE_INPUTS = PER_TOKEN

    def __init__(self) -> None:
        super().__init__()
        self.config = preset("dense", vocab_size=40, attention={"num_global": 2})
        self.table = torch.nn.Embedding(40, 5)

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table(input_ids)})


def test_token_logits_of_the_rolled_pass_are_rolled_back(generator) -> None:
    batch = _classification_batch(generator)
    batch["labels"] = torch.randint(0, 5, (3, 21), generator=generator)
    out = saor_forward(TokenEcho(), batch, config=SAORConfig(alpha=1.0, roll_tokens=5))
    torch.testing.assert_close(out.second_logits, out.logits)
    assert out.kl.abs() < 1e-6


def test_saor_forward_runs_mlm_and_multiple_choice_with_gradients(generator) -> None:
    batch = _classification_batch(generator)
    labels = torch.full((3, 21), -100)
    labels[:, 4:7] = batch["input_ids"][:, 4:7]
    mlm = _model(MaskedLM, alpha=1.0).train()
    out = saor_forward(mlm, {**batch, "labels": labels})
    out.loss.backward()
    assert all(p.grad is not None for p in mlm.parameters())
    choice = {
        "input_ids": torch.stack([batch["input_ids"], (batch["input_ids"] * 7) % 40], dim=1),
        "attention_mask": batch["attention_mask"][:, None].expand(3, 2, 21).contiguous(),
        "labels": torch.tensor([0, 1, 0]),
    }
    out = saor_forward(_model(MultipleChoice, alpha=1.0).eval(), choice)
    assert out.logits.shape == out.second_logits.shape == (3, 2) and out.kl > 0
