"""QA data and scoring: SQuAD EM/F1, TriviaQA windows and their merging, WikiHop choices."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ernie_sparse.data.errors import DataFormatError
from ernie_sparse.data.qa import (
    char_span_to_tokens,
    global_prefix,
    read_span_qa,
    read_wikihop,
    window_starts,
)
from ernie_sparse.data.qa_metrics import (
    best_over_golds,
    exact_match,
    normalize_answer,
    token_f1,
)
from ernie_sparse.data.tokenize import Subword
from ernie_sparse.models import ModelConfig
from ernie_sparse.models.heads import SpanQA, TaskOutput
from ernie_sparse.objectives import saor_forward
from ernie_sparse.training.distributed import World
from ernie_sparse.training.evaluation import evaluate_accuracy
from ernie_sparse.training.finetune_tasks import (
    CandidateChoice,
    best_span,
    choice_collate,
    evaluate_span_qa,
    merge_windows,
    span_collate,
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]


def word_tokenizer(path: Path, words: list[str]) -> Subword:
    """A one-token-per-word tokenizer.json (ids: the 5 specials, then ``words``)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate([*SPECIALS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    tokenizer.save(str(path))
    return Subword(path)


# --- SQuAD metrics (hand-computed) ---


def test_normalization_follows_squad() -> None:
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert normalize_answer("U.S.\tArmy") == "us army"


def test_exact_match_and_f1_by_hand() -> None:
    assert exact_match("the Eiffel Tower", "Eiffel Tower.") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    # pred "cat sat on mat" (4), gold "cat on mat" (3): P = 3/4, R = 1 -> F1 = 6/7
    assert token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # duplicates count once per gold occurrence: P = 1/2, R = 1 -> 2/3
    assert token_f1("paris paris", "Paris") == pytest.approx(2 / 3)
    assert token_f1("london", "paris") == 0.0
    assert token_f1("the", "a") == 0.0  # both normalize to nothing
    # max over golds: "Obama" gives 2/3, "President Barack Obama" gives P=1, R=2/3 -> 0.8
    em, f1 = best_over_golds("Barack Obama", ["Obama", "President Barack Obama"])
    assert (em, f1) == (0.0, pytest.approx(0.8))
    assert best_over_golds("obama", ["Barack Obama", "Obama."]) == (1.0, 1.0)


# --- windows ---


def test_window_starts_and_char_spans() -> None:
    assert window_starts(10, window=4, stride=2) == [0, 2, 4, 6]
    assert window_starts(3, window=4, stride=2) == [0]
    assert window_starts(9, window=4, stride=8) == [0, 4, 8]  # never a gap between windows
    offsets = [(0, 3), (4, 7), (8, 12)]
    assert char_span_to_tokens(offsets, 4, 12) == (1, 2)
    assert char_span_to_tokens(offsets, 5, 6) == (1, 1)
    assert char_span_to_tokens(offsets, 3, 4) is None
    ids, overflow = global_prefix([[7, 8]], cls=1, sep=2, filler=0, num_global=6)
    assert (ids, overflow) == ([1, 7, 8, 2, 0, 0], False)
    ids, overflow = global_prefix([[7, 8], [9]], cls=1, sep=2, filler=0, num_global=4)
    assert (ids, overflow) == ([1, 7, 8, 2, 9, 2], True)  # nothing cut; the rest is local


WORDS = [f"w{i}" for i in range(60)] + ["what", "who", "x", "y"]


def squad_file(path: Path, questions: list[tuple[str, str, str]]) -> Path:
    """SQuAD JSON: one paragraph per (context, question, answer)."""
    paragraphs = []
    for number, (context, question, answer) in enumerate(questions):
        qa = {"id": f"q{number}", "question": question, "answers": []}
        if answer:
            qa["answers"].append({"text": answer, "answer_start": context.index(answer)})
        paragraphs.append({"context": context, "qas": [qa]})
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture
def tokenizer(tmp_path) -> Subword:
    return word_tokenizer(tmp_path / "tokenizer.json", WORDS)


CONTEXT = " ".join(WORDS[:60])  # w0 ... w59, one token each
ANSWER = "w28 w29 w30 w31"


def test_windows_label_the_answer_only_where_it_fits(tmp_path, tokenizer) -> None:
    path = squad_file(tmp_path / "qa.json", [(CONTEXT, "what", ANSWER)])
    # prefix <s> what </s> <pad> = 4 global tokens; room 25 - 4 - 1 = 20; starts 10 apart
    data = read_span_qa(path, tokenizer, max_length=25, num_global=4, stride=10)
    assert [e["window_start"] for e in data.examples] == [0, 10, 20, 30, 40]
    labels = [e["labels"] for e in data.examples]
    assert labels == [(0, 0), (0, 0), (12, 15), (0, 0), (0, 0)]  # 10 and 30 straddle it
    window = data.examples[2]
    assert window["input_ids"][:4].tolist() == [1, tokenizer.tokenizer.token_to_id("what"), 2, 0]
    start, end = window["labels"]
    words = tokenizer.tokenizer.decode(window["input_ids"][start : end + 1].tolist())
    assert words == ANSWER
    assert all(len(e["input_ids"]) <= 25 for e in data.examples)
    assert data.prefix_overflow == 0 and data.questions[0].answers == [ANSWER]


class SpotModel(nn.Module):
    """Start logit 10 at one token id, end logit 10 at another (a stand-in SpanQA)."""

    def __init__(self, start_id: int, end_id: int) -> None:
        super().__init__()
        self.start_id, self.end_id = start_id, end_id

    def forward(self, input_ids, attention_mask=None, labels=None) -> TaskOutput:
        start = 10.0 * (input_ids == self.start_id)
        end = 10.0 * (input_ids == self.end_id)
        logits = torch.stack([start, end], dim=1)  # [B, 2, n]
        return TaskOutput(logits, torch.tensor(0.5))


def test_an_answer_straddling_windows_is_recovered_by_merging(tmp_path, tokenizer) -> None:
    path = squad_file(tmp_path / "qa.json", [(CONTEXT, "what", ANSWER)])
    data = read_span_qa(path, tokenizer, max_length=25, num_global=4, stride=10)
    token = tokenizer.tokenizer.token_to_id
    model = SpotModel(token("w28"), token("w31"))
    # window 10 holds w28 w29 only (no w31): alone it answers just "w28"
    alone = SpanQADatasetView(data, [1])
    logits = {1: model(data.examples[1]["input_ids"][None]).logits[0]}
    assert merge_windows(alone, 0, logits, max_tokens=30) == "w28"
    metrics = evaluate_span_qa(model, data, batch_size=2, world=World())
    assert metrics["f1"] == 1.0 and metrics["exact_match"] == 1.0
    assert metrics["examples"] == 1 and metrics["windows"] == 5
    assert metrics["loss"] == pytest.approx(0.5)


def SpanQADatasetView(data, windows: list[int]):
    """The dataset with question 0 restricted to some of its windows."""
    import copy

    view = copy.copy(data)
    view.questions = [copy.copy(data.questions[0])]
    view.questions[0].windows = windows
    return view


def test_f1_and_em_average_over_questions(tmp_path, tokenizer) -> None:
    questions = [
        (CONTEXT, "what", ANSWER),  # predicted exactly
        (" ".join(WORDS[20:40]), "who", "w28 w29 w30 w31 w32 w33"),  # predicted 4 of 6 words
    ]
    data = read_span_qa(
        squad_file(tmp_path / "qa.json", questions), tokenizer, max_length=64, num_global=0
    )
    token = tokenizer.tokenizer.token_to_id
    metrics = evaluate_span_qa(
        SpotModel(token("w28"), token("w31")), data, batch_size=1, world=World()
    )
    # question 2: P = 1, R = 4/6 -> F1 = 0.8; EM 0
    assert metrics["f1"] == pytest.approx((1.0 + 0.8) / 2)
    assert metrics["exact_match"] == pytest.approx(0.5)


def test_best_span_respects_order_and_length() -> None:
    start = torch.tensor([0.0, 1.5, 9.0, 0.0, 0.0])
    end = torch.tensor([0.0, 8.0, 0.0, 0.0, 5.0])
    # best end before the best start is not allowed: 9 + 5 at (2, 4)
    assert best_span(start, end, first=0, last=4, max_tokens=30) == (14.0, 2, 4)
    # with at most 2 tokens: (1, 1) = 1.5 + 8 beats (2, 2) and (2, 3) = 9 + 0
    assert best_span(start, end, first=0, last=4, max_tokens=2) == (9.5, 1, 1)
    # only tokens 3..4: (3, 4) and (4, 4) both score 5; the shorter span wins the tie
    assert best_span(start, end, first=3, last=4, max_tokens=30) == (5.0, 4, 4)


def test_saor_never_rolls_the_global_question_prefix(tmp_path, tokenizer) -> None:
    path = squad_file(tmp_path / "qa.json", [(CONTEXT, "what", ANSWER)])
    data = read_span_qa(path, tokenizer, max_length=40, num_global=8, stride=16)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_heads=2,
        num_layers=1,
        mlp_size=32,
        attention={
            "block_size": 8,
            "num_global": 8,
            "pattern": "bigbird",
            "pattern_params": {"window_width": 1, "num_random": 1},
        },
        hst={"enabled": True},
        saor={"alpha": 1.0, "roll_tokens": 3},
    )
    model = SpanQA(config)
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    batch = span_collate(data.examples[:3], torch.Generator())
    out = saor_forward(model, batch)
    assert torch.isfinite(out.loss) and out.kl > 0
    first, second = seen[0].chunk(2)
    assert torch.equal(first[:, :8], second[:, :8])  # question + filler untouched
    assert not torch.equal(first[:, 8:], second[:, 8:])  # the context is rolled


def test_squad_readers_name_the_bad_record(tmp_path, tokenizer) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"data": [\n  {"title": "t",\n   "paragraphs": [}\n]}')
    with pytest.raises(DataFormatError, match=r"bad.json:3: invalid JSON"):
        read_span_qa(bad_json, tokenizer, max_length=32, num_global=0)
    moved = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": "w1 w2 w3",
                        "qas": [
                            {
                                "id": "a",
                                "question": "what",
                                "answers": [{"text": "w2", "answer_start": 0}],
                            }
                        ],
                    }
                ]
            }
        ]
    }
    path = tmp_path / "moved.json"
    path.write_text(json.dumps(moved))
    with pytest.raises(DataFormatError, match=r"data\[0\].paragraphs\[0\].qas\[0\].answers\[0\]"):
        read_span_qa(path, tokenizer, max_length=32, num_global=0)
    del moved["data"][0]["paragraphs"][0]["qas"][0]["question"]
    path.write_text(json.dumps(moved))
    with pytest.raises(DataFormatError, match=r"qas\[0\]: needs 'question'"):
        read_span_qa(path, tokenizer, max_length=32, num_global=0)


# --- WikiHop ---


def wikihop_file(path: Path) -> Path:
    records = [
        {
            "id": "a",
            "query": "located_in w1",
            "answer": "x",
            "candidates": ["x", "y"],
            "supports": ["w1 w2 x", "w3 x"],
        },
        {
            "id": "b",
            "query": "born_in w4",
            "answer": "w5",
            "candidates": ["w5", "w6", "w7"],
            "supports": ["w4 w6 w6 w5"],
        },
        {
            "id": "c",
            "query": "what_is w8",
            "answer": "w9",
            "candidates": ["w9", "w10", "w11", "w12"],
            "supports": ["w9 w10 w10 w11 w9 w12 w12"],
        },
    ]
    path.write_text(json.dumps(records))
    return path


def test_wikihop_puts_query_and_candidate_in_the_globals(tmp_path, tokenizer) -> None:
    data = read_wikihop(wikihop_file(tmp_path / "dev.json"), tokenizer, max_length=13, num_global=6)
    token = tokenizer.tokenizer.token_to_id
    first = data.examples[0]
    assert first["labels"] == 0 and len(first["choices"]) == 2
    # <s> located in w1 </s> candidate </s> -> "located_in" is unknown: <unk>
    assert first["choices"][1][:6].tolist() == [1, 3, 3, token("w1"), 2, token("y")]
    assert data.prefix_overflow == 9  # 7 prefix tokens > 6 globals, in each of the 9 choices
    assert data.examples[2]["labels"] == 0 and data.info.num_labels == 4
    # a: 7 + 7 support tokens > 13 (2 choices), b: 7 + 5 fits, c: 7 + 8 > 13 (4 choices)
    assert data.truncated == 6
    assert all(len(c) <= 13 for e in data.examples for c in e["choices"])


def test_wikihop_accuracy_over_uneven_candidates(tmp_path, tokenizer) -> None:
    data = read_wikihop(wikihop_file(tmp_path / "dev.json"), tokenizer, max_length=64, num_global=0)
    batch = choice_collate(data.examples, torch.Generator())
    assert batch["input_ids"].shape[:2] == (3, 4)
    assert batch["choice_mask"].tolist() == [
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]

    class Counter(nn.Module):
        """Scores a candidate by how often its token occurs in the supports (filler
        choices would score highest without the choice mask)."""

        def forward(self, input_ids, attention_mask, choice_mask, labels):
            candidate = input_ids[:, :, 1 + 3 + 1 : 1 + 3 + 2]  # after <s> q q </s>
            logits = (input_ids[:, :, 7:] == candidate).sum(-1).float()  # [B, C]
            logits = torch.where(choice_mask, logits, torch.full_like(logits, 100.0))
            logits = CandidateChoice.mask_choices(logits, choice_mask)
            return TaskOutput(logits, torch.tensor(1.0))

    # a: x twice vs y 0 -> x (right); b: w6 twice beats w5 -> wrong; c: w9 2, w10 2, w12 2
    # -> argmax takes the first, w9 (right)
    metrics = evaluate_accuracy(
        Counter(), data, batch_size=2, world=World(), collate=choice_collate
    )
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["examples"] == 3


def test_candidate_choice_model_masks_filler_choices(tmp_path, tokenizer) -> None:
    data = read_wikihop(wikihop_file(tmp_path / "dev.json"), tokenizer, max_length=32, num_global=8)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_heads=2,
        num_layers=1,
        mlp_size=32,
        attention={"block_size": 8, "num_global": 8},
        saor={"alpha": 1.0, "roll_tokens": 2},
    )
    model = CandidateChoice(config).eval()
    batch = choice_collate(data.examples[:2], torch.Generator())
    out = model(**batch)
    assert out.logits.shape == (2, 3)
    assert out.logits[0, 2] == torch.finfo(out.logits.dtype).min
    assert torch.isfinite(out.loss)
    assert math.isfinite(float(saor_forward(model.train(), batch).loss.detach()))


def test_wikihop_reader_refuses_an_answer_outside_the_candidates(tmp_path, tokenizer) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            [{"id": "z", "query": "q", "answer": "nope", "candidates": ["x"], "supports": []}]
        )
    )
    with pytest.raises(DataFormatError, match=r"bad.json:record 0 \(id 'z'\): answer 'nope'"):
        read_wikihop(path, tokenizer, max_length=32, num_global=0)
