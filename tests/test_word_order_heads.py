"""The word-order-shift attack and SAOR's roll on every head, each as it declares its
inputs (``SEQUENCE_INPUTS``): span QA (labels and answers follow their tokens),
multiple choice ([B, C, n], rolled along n for each choice), masked LM (labels, and
the characters bits per character counts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_finetune_tasks import TINY_MODEL, triviaqa_folder, wikihop_folder
from test_finetune_tasks import word_tokenizer as tokenizer_file
from test_mlm import write_corpus
from torch import nn

from ernie_sparse.analysis import WordOrderShift
from ernie_sparse.cli import main
from ernie_sparse.data.corpus import find_text_files, read_corpus, train_tokenizer
from ernie_sparse.data.qa import read_span_qa, read_wikihop
from ernie_sparse.data.tokenize import Subword
from ernie_sparse.models import MaskedLM, SpanQA, preset
from ernie_sparse.models.heads import CandidateChoice, TaskOutput, nll_loss
from ernie_sparse.models.presets import merge_overrides
from ernie_sparse.objectives import roll_local_tokens, saor_forward, saor_loss
from ernie_sparse.training.config import merge_values, preset_values, resolve
from ernie_sparse.training.distributed import World
from ernie_sparse.training.finetune_tasks import choice_collate, span_collate
from ernie_sparse.training.loop import Run
from ernie_sparse.training.tasks import get_task

GLOBALS = 8
FILLER = [f"f{i}" for i in range(40)]
ANSWER = ["alpha", "beta", "gamma"]


@pytest.fixture
def tokenizer(tmp_path) -> Subword:
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    words = [*FILLER, *ANSWER, "what", "is", "it", "x", "y", "z"]
    vocab = {token: i for i, token in enumerate([*specials, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return Subword(tmp_path / "tokenizer.json")


def tiny_config(vocab_size: int, **overrides):
    values = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        num_heads=2,
        num_layers=2,
        mlp_size=32,
        attention={"block_size": 4, "num_global": GLOBALS, "dropout": 0.0},
        max_positions=64,
        dropout=0.0,
        initializer_range=0.5,  # outputs that a roll visibly changes
        saor={"alpha": 1.0, "roll_tokens": 3},
    )
    return preset("ernie-sparse", **merge_overrides(values, overrides))


# --- TriviaQA: span QA over windows ---


def span_dataset(tmp_path: Path, tokenizer: Subword):
    """Four questions whose answer "alpha beta gamma" sits at different places of a
    30-word context; 24-token inputs, so every context spans several windows."""
    paragraphs = []
    for number, place in enumerate((2, 9, 17, 26)):
        words = [FILLER[(number * 7 + i) % 40] for i in range(30)]
        words[place : place + 3] = ANSWER
        context = " ".join(words)
        answer = " ".join(ANSWER)
        qa = {
            "id": f"q{number}",
            "question": "what is it",
            "answers": [{"text": answer, "answer_start": context.index(answer)}],
        }
        paragraphs.append({"context": context, "qas": [qa]})
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"data": [{"paragraphs": paragraphs}]}))
    return read_span_qa(path, tokenizer, max_length=24, num_global=GLOBALS, stride=6)


class SpanOracle(nn.Module):
    """Finds every answer: a start logit on "alpha", an end logit on "gamma", wherever
    they are (what a model that reads the content would do)."""

    SEQUENCE_INPUTS = SpanQA.SEQUENCE_INPUTS

    def __init__(self, tokenizer: Subword) -> None:
        super().__init__()
        self.start, self.end = (tokenizer.encode(word)[0] for word in ("alpha", "gamma"))

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        start = (input_ids == self.start).float() * 10
        end = (input_ids == self.end).float() * 10
        logits = torch.stack([start, end], dim=1)  # [B, 2, n]
        logits = logits.masked_fill(~attention_mask[:, None, :], torch.finfo(logits.dtype).min)
        return TaskOutput(logits, nll_loss(logits, labels))


@pytest.mark.parametrize("shift", [1, 5, 11, -3])
def test_an_oracle_span_model_scores_the_same_clean_and_attacked(
    tmp_path, tokenizer, shift
) -> None:
    data = span_dataset(tmp_path, tokenizer)
    assert len(data.examples) > 2 * len(data.questions)  # several windows per question
    task, oracle = get_task("triviaqa"), SpanOracle(tokenizer)
    options = dict(batch_size=3, world=World(), collate=task.collate)
    clean = task.evaluate(oracle, data, **options)
    attack = WordOrderShift(shift=shift, num_global=GLOBALS)  # as evaluate --attack builds it
    attacked = task.evaluate(oracle, data, **options, transform=attack)
    assert clean["f1"] == clean["exact_match"] == 1.0
    assert attacked["f1"] == attacked["exact_match"] == 1.0
    # the labels moved with their tokens: the oracle's loss is the same
    assert attacked["loss"] == pytest.approx(clean["loss"], rel=1e-6)


def test_span_labels_move_with_their_tokens(tmp_path, tokenizer) -> None:
    data = span_dataset(tmp_path, tokenizer)
    batch = span_collate(data.examples, torch.Generator())
    attack = WordOrderShift(shift=5, num_global=GLOBALS).for_model(SpanQA(tiny_config(60)))
    rolled = attack(batch)
    answered = batch["labels"][:, 0] > 0
    assert answered.any() and (~answered).any()
    rows = torch.arange(len(batch["labels"]))[:, None]
    assert torch.equal(
        rolled["input_ids"][rows, rolled["labels"]], batch["input_ids"][rows, batch["labels"]]
    )
    assert torch.equal(rolled["labels"][~answered], batch["labels"][~answered])  # <s>: global
    assert not torch.equal(rolled["labels"][answered], batch["labels"][answered])
    assert torch.equal(rolled["attention_mask"], batch["attention_mask"])
    # the rolled pass's logits come back in the context's token order
    logits = torch.randn(*batch["input_ids"].shape[:1], 2, batch["input_ids"].shape[1])
    moved = roll_local_tokens(
        logits.transpose(1, 2), shift=5, num_global=GLOBALS, attention_mask=batch["attention_mask"]
    ).transpose(1, 2)
    assert torch.equal(attack.restore_logits(moved, rolled), logits)


def test_saor_on_span_qa_equals_a_manual_roll(tmp_path, tokenizer) -> None:
    data = span_dataset(tmp_path, tokenizer)
    batch = span_collate(data.examples[:5], torch.Generator())
    torch.manual_seed(0)
    model = SpanQA(tiny_config(tokenizer.vocab_size)).eval()
    out = saor_forward(model, batch)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    first = model(ids, mask).logits
    rolled = roll_local_tokens(ids, shift=3, num_global=GLOBALS, attention_mask=mask)
    second = model(rolled, mask).logits  # [B, 2, n], in rolled positions
    back = roll_local_tokens(
        second.transpose(1, 2), shift=-3, num_global=GLOBALS, attention_mask=mask
    ).transpose(1, 2)
    want = saor_loss(first, back, labels, alpha=1.0)
    torch.testing.assert_close(out.second_logits, back, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)
    assert out.kl > 1e-3


# --- WikiHop: multiple choice, [B, C, n] ---


def choice_dataset(tmp_path: Path, tokenizer: Subword):
    records = [
        {
            "id": f"r{n}",
            "query": "what is",
            "answer": "x",
            "candidates": ["x", "y", "z"][: 2 + n % 2],
            "supports": [" ".join(FILLER[n : n + 9 + n]), "x f3 f4 f5 y"],
        }
        for n in range(5)
    ]
    path = tmp_path / "wikihop.json"
    path.write_text(json.dumps(records))
    return read_wikihop(path, tokenizer, max_length=40, num_global=GLOBALS)


def test_choice_batches_roll_along_the_tokens_of_each_choice(tmp_path, tokenizer) -> None:
    data = choice_dataset(tmp_path, tokenizer)
    batch = choice_collate(data.examples, torch.Generator())
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[:2] == (5, 3) and not mask.all()  # [B, C, n] with padding
    model = CandidateChoice(tiny_config(tokenizer.vocab_size))
    rolled = WordOrderShift(shift=4, num_global=GLOBALS).for_model(model)(batch)
    for b in range(ids.shape[0]):
        for c in range(ids.shape[1]):
            want = roll_local_tokens(
                ids[b, c][None], shift=4, num_global=GLOBALS, attention_mask=mask[b, c][None]
            )[0]
            assert torch.equal(rolled["input_ids"][b, c], want)
    for key in ("attention_mask", "choice_mask", "labels"):
        assert torch.equal(rolled[key], batch[key])
    assert not torch.equal(rolled["input_ids"], ids)


class BagOfTokens(nn.Module):
    """Scores a choice by a sum over its tokens: blind to their order, so a roll cannot
    change its predictions (integer weights: the sums are exact in any order)."""

    SEQUENCE_INPUTS = CandidateChoice.SEQUENCE_INPUTS

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        weight = torch.randint(-3, 4, (vocab_size,), generator=torch.Generator().manual_seed(0))
        self.weight = weight.float()

    def forward(self, input_ids, attention_mask, choice_mask=None, labels=None):
        scores = (self.weight[input_ids] * attention_mask).sum(-1)  # [B, C]
        logits = CandidateChoice.mask_choices(scores, choice_mask)
        return TaskOutput(logits, nll_loss(logits, labels))


def test_wikihop_evaluates_under_the_attack(tmp_path, tokenizer) -> None:
    data = choice_dataset(tmp_path, tokenizer)
    task, model = get_task("wikihop"), BagOfTokens(tokenizer.vocab_size)
    options = dict(batch_size=2, world=World(), collate=task.collate)
    clean = task.evaluate(model, data, **options)
    attacked = task.evaluate(
        model, data, **options, transform=WordOrderShift(shift=3, num_global=GLOBALS)
    )
    assert attacked == clean


def test_saor_on_multiple_choice_equals_a_manual_roll(tmp_path, tokenizer) -> None:
    data = choice_dataset(tmp_path, tokenizer)
    batch = choice_collate(data.examples, torch.Generator())
    torch.manual_seed(0)
    model = CandidateChoice(tiny_config(tokenizer.vocab_size)).eval()
    out = saor_forward(model, batch)
    ids, mask, choices = batch["input_ids"], batch["attention_mask"], batch["choice_mask"]
    rolled = torch.stack(
        [
            roll_local_tokens(ids[:, c], shift=3, num_global=GLOBALS, attention_mask=mask[:, c])
            for c in range(ids.shape[1])
        ],
        dim=1,
    )  # [B, C, n], each choice rolled along its tokens
    first = model(ids, mask, choice_mask=choices).logits
    second = model(rolled, mask, choice_mask=choices).logits
    want = saor_loss(first, second, batch["labels"], alpha=1.0)
    torch.testing.assert_close(out.second_logits, second, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)
    assert out.kl > 1e-3


# --- masked LM: token labels, and the characters they cover ---


class TokenTable(nn.Module):
    """Logits from each position's own token: a roll moves them with the tokens."""

    SEQUENCE_INPUTS = MaskedLM.SEQUENCE_INPUTS

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.table = torch.randn(vocab_size, vocab_size, generator=generator)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        logits = self.table[input_ids]  # [B, n, V]
        return TaskOutput(logits, nll_loss(logits, labels))


def test_mlm_bits_per_character_are_the_same_under_a_roll(tmp_path) -> None:
    root = write_corpus(tmp_path / "corpus")
    tokenizer = Subword(
        train_tokenizer(find_text_files(root), tmp_path / "tokenizer.json", vocab_size=300)
    )
    data = read_corpus(root, tokenizer, split="val", max_length=64, val_fraction=0.3)
    task, model = get_task("mlm"), TokenTable(tokenizer.vocab_size)
    options = dict(batch_size=3, world=World(), collate=task.collate)
    clean = task.evaluate(model, data, **options)
    attacked = task.evaluate(model, data, **options, transform=WordOrderShift(shift=7))
    assert attacked["masked_tokens"] == clean["masked_tokens"]
    assert attacked["loss"] == pytest.approx(clean["loss"], rel=1e-6)
    assert attacked["bpc"] == pytest.approx(clean["bpc"], rel=1e-6)


# --- the command line: evaluate --attack on the question tasks ---


@pytest.mark.parametrize(
    ("task", "make_data"), [("triviaqa", triviaqa_folder), ("wikihop", wikihop_folder)]
)
def test_evaluate_attack_runs_on_the_question_tasks(tmp_path, task, make_data) -> None:
    values = preset_values(f"finetune/{task}-tiny")
    values["model"] = merge_values(values["model"], TINY_MODEL)
    values["train"] = merge_values(values["train"], {"qa": {"global_prefix": 8}})
    values["train"].update(
        data=str(make_data(tmp_path / "data")),
        tokenizer=str(tokenizer_file(tmp_path / "tokenizer.json")),
        max_length=64,
        max_steps=2,
        eval_every=2,
        batch_size=2,
        warmup_steps=1,
    )
    run_dir = tmp_path / "run"
    Run(resolve(values), run_dir, resume=False, quiet=True).train()
    args = ["evaluate", str(run_dir), "--split", "val", "--batch-size", "2"]
    assert main([*args, "--attack=roll=3"]) == 0
    result = json.loads((run_dir / "eval-val-roll3.json").read_text())
    assert result["attack"] == "roll=3" and result["examples"] == 3
