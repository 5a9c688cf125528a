"""Pretraining and long-document tasks (ERNIE-Sparse 4.2): ``mlm``, ``classification``,
``triviaqa`` and ``wikihop``, registered with the task registry at import.

``train.data`` is, per task: ``mlm`` a corpus folder (data.corpus); ``classification``
a folder (data.classification); ``triviaqa`` a folder with ``train.json`` and
``val.json`` (or ``dev.json``) in SQuAD v1.1 format; ``wikihop`` a folder with
qangaroo's ``train.json`` and ``dev.json``. Subword tasks read ``train.tokenizer``,
or ``tokenizer.json`` in ``train.init_from``.

QA inputs start with a global prefix of exactly ``train.qa.global_prefix`` tokens,
which must equal ``model.attention.num_global`` (data.qa explains why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ..data.base import TaskInfo
from ..data.classification import read_classification
from ..data.collate import pad_sequences
from ..data.corpus import read_corpus
from ..data.masking import mask_tokens
from ..data.qa import (
    ChoiceDataset,
    SpanQADataset,
    qa_split_file,
    read_span_qa,
    read_wikihop,
)
from ..data.qa_metrics import best_over_golds, classification_scores
from ..data.tokenize import Subword
from ..files import load_mapping
from ..models import ModelConfig
from ..models.heads import (
    IGNORE_INDEX,
    CandidateChoice,
    MaskedLM,
    SequenceClassifier,
    SpanQA,
    nll_loss,
)
from ..objectives.roll import TokenRoll
from .config import TrainConfig
from .distributed import World, all_sum
from .evaluation import EVAL_SEED, Transform, eval_batches, eval_mode, evaluate_accuracy
from .run_dir import RunDir
from .tasks import Task, data_root, register_task


def tokenizer_path(train: TrainConfig) -> str:
    """train.tokenizer, else the warm-start directory's tokenizer.json (for a run
    directory without one: the tokenizer that run used)."""
    if train.tokenizer:
        return train.tokenizer
    if train.init_from:
        source = Path(train.init_from)
        run_config = RunDir(source).config
        if not (source / "tokenizer.json").is_file() and run_config.is_file():
            values = load_mapping(run_config, what="a run config with a train section")
            used = (values.get("train") or {}).get("tokenizer")
            if used:
                return str(used)
        return str(source / "tokenizer.json")
    raise ValueError(
        f"task {train.task} needs train.tokenizer (a tokenizer.json) or train.init_from"
    )


# --- masked language model ---


def _read_mlm(train: TrainConfig, split: str):
    return read_corpus(
        data_root(train),
        Subword(tokenizer_path(train)),
        split=split,
        max_length=train.max_length,
        val_fraction=train.mlm.val_fraction,
        seed=train.seed,
        mask_probability=train.mlm.mask_probability,
    )


def mlm_collate(examples: Sequence[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Pad, then mask 15% of the maskable tokens (80/10/10) with draws from ``generator``."""
    ids, attention = pad_sequences([e["input_ids"] for e in examples])
    maskable = pad_sequence([e["maskable"] for e in examples], batch_first=True)  # [B, n]
    masked, labels = mask_tokens(ids, maskable, examples[0]["masking"], generator)
    return {"input_ids": masked, "attention_mask": attention, "labels": labels}


@torch.no_grad()
def evaluate_mlm(
    model: nn.Module,
    dataset,
    *,
    batch_size: int,
    world: World,
    max_batches: int = 0,
    collate=mlm_collate,
    transform: Transform | None = None,
) -> dict[str, float]:
    """MLM loss (nats per masked token) and bits per character (ERNIE-Sparse Table 3):

        bpc = sum over masked tokens of -log2 p(token) / sum of the characters they cover

    where a token covers the text from its start to the next token's start (data.corpus).
    Masks come from the fixed evaluation generator, so every evaluation sees the same.
    A ``transform`` (the word-order-shift attack) is applied after the characters of
    the masked tokens are counted: it only moves tokens, with their labels.
    """
    totals = torch.zeros(4, dtype=torch.float64)  # summed NLL, masked tokens, chars, examples
    for indices, batch in eval_batches(
        model,
        dataset,
        batch_size=batch_size,
        world=world,
        max_batches=max_batches,
        collate=collate,
        generator=torch.Generator().manual_seed(EVAL_SEED),
    ):
        chosen = batch["labels"] != IGNORE_INDEX  # [B, n]
        chars = pad_sequence([dataset[i]["chars"] for i in indices], batch_first=True)
        totals[1] += int(chosen.sum())
        totals[2] += int(chars.to(chosen.device)[chosen].sum())
        totals[3] += len(indices)
        batch = transform(batch) if transform is not None else batch
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        totals[0] += float(nll_loss(logits, batch["labels"], reduction="sum"))
    nll, tokens, chars, examples = all_sum(totals, world).tolist()
    if tokens == 0 or chars == 0:
        raise ValueError("evaluation masked no tokens (empty split?)")
    return {
        "loss": nll / tokens,
        "bpc": nll / math.log(2) / chars,
        "masked_tokens": int(tokens),
        "examples": int(examples),
    }


# --- classification ---


def _read_classification(train: TrainConfig, split: str):
    tokenizer = train.tokenizer or (tokenizer_path(train) if train.init_from else "bytes")
    return read_classification(
        data_root(train), split=split, tokenizer=tokenizer, max_length=train.max_length
    )


@torch.no_grad()
def evaluate_classification(model: nn.Module, dataset, *, world: World, **options) -> dict:
    """accuracy, micro-F1, macro-F1 and loss (data.qa_metrics.classification_scores)."""
    classes = dataset.info.num_labels
    confusion = torch.zeros(classes, classes, dtype=torch.float64)  # [true, predicted]
    loss = torch.zeros(1, dtype=torch.float64)
    for _, batch in eval_batches(model, dataset, world=world, **options):
        out = model(**batch)
        pairs = batch["labels"] * classes + out.logits.argmax(-1)
        confusion += torch.bincount(pairs.cpu(), minlength=classes * classes).view(classes, -1)
        loss += float(out.loss) * len(pairs)
    confusion, loss = all_sum(confusion, world), all_sum(loss, world)
    scores = classification_scores(confusion.tolist())
    count = float(confusion.sum())
    return {**scores, "loss": float(loss) / count, "examples": int(count)}


# --- TriviaQA: span QA over sliding windows ---


def _read_triviaqa(train: TrainConfig, split: str) -> SpanQADataset:
    return read_span_qa(
        qa_split_file(data_root(train), split),
        Subword(tokenizer_path(train)),
        max_length=train.max_length,
        num_global=train.qa.global_prefix,
        stride=train.qa.doc_stride,
        max_answer_tokens=train.qa.max_answer_tokens,
    )


def _check_prefix(config: ModelConfig, info: TaskInfo) -> None:
    prefix = getattr(info, "global_prefix", 0)
    if prefix != config.attention.num_global:
        raise ValueError(
            f"train.qa.global_prefix={prefix} but model.attention.num_global="
            f"{config.attention.num_global}: set them equal so the question (and candidate) "
            "tokens are exactly the global tokens"
        )


def _span_model(config: ModelConfig, info: TaskInfo) -> nn.Module:
    _check_prefix(config, info)
    return SpanQA(config)


def span_collate(examples: Sequence[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
    del generator
    ids, attention = pad_sequences([e["input_ids"] for e in examples])
    labels = torch.tensor([list(e["labels"]) for e in examples])  # [B, 2]
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def best_span(
    start: torch.Tensor, end: torch.Tensor, *, first: int, last: int, max_tokens: int
) -> tuple[float, int, int]:
    """(score, i, j) maximizing start[i] + end[j] over first <= i <= j <= last with
    j - i < max_tokens; ties go to the shorter span, then the earlier start."""
    starts, ends = start[first : last + 1].float(), end[first : last + 1].float()
    best = (-math.inf, first, first)
    for width in range(min(max_tokens, len(starts))):
        scores = starts[: len(starts) - width] + ends[width:]  # spans of width + 1 tokens
        index = int(scores.argmax())
        if float(scores[index]) > best[0]:
            best = (float(scores[index]), first + index, first + index + width)
    return best


def merge_windows(
    dataset: SpanQADataset, question: int, logits: dict[int, torch.Tensor], max_tokens: int
) -> str:
    """The answer text of ``question``: the best span over all of its windows.

    ``logits`` maps each window's example index to its [2, n] start/end logits.
    """
    entry = dataset.questions[question]
    best = (-math.inf, 0, 0)
    for index in entry.windows:
        example = dataset.examples[index]
        first = example["context_start"]
        last = len(example["input_ids"]) - 2  # before the closing </s>
        score, i, j = best_span(*logits[index], first=first, last=last, max_tokens=max_tokens)
        shift = example["window_start"] - first  # input position -> context token
        if score > best[0]:
            best = (score, i + shift, j + shift)
    _, i, j = best
    return entry.context[entry.offsets[i][0] : entry.offsets[j][1]].strip()


@torch.no_grad()
def evaluate_span_qa(
    model: nn.Module,
    dataset: SpanQADataset,
    *,
    batch_size: int,
    world: World,
    max_batches: int = 0,
    collate=span_collate,
    transform: Transform | None = None,
) -> dict[str, float]:
    """TriviaQA F1 and EM (SQuAD definitions, fractions in [0, 1], mean over questions)
    with answers merged across each question's windows; loss is the mean over windows.
    Each process scores its share of the questions.

    Under a token roll (the word-order-shift attack) the span labels move with their
    tokens, and the rolled pass's start/end logits are rolled back to the original
    token order before answers are cut from the context, so the answer text is the
    one the model pointed at."""
    questions = range(len(dataset.questions))
    if max_batches:
        questions = questions[: max_batches * batch_size]
    mine = list(questions)[world.rank :: world.size]
    totals = torch.zeros(5, dtype=torch.float64)  # EM, F1, questions, summed loss, windows
    max_tokens = dataset.max_answer_tokens
    with eval_mode(model):
        for start in range(0, len(mine), batch_size):
            group = mine[start : start + batch_size]
            windows = [w for q in group for w in dataset.questions[q].windows]
            logits: dict[int, torch.Tensor] = {}
            for chunk in range(0, len(windows), batch_size):
                indices = windows[chunk : chunk + batch_size]
                batch = collate([dataset[i] for i in indices], torch.Generator())
                batch = transform(batch) if transform is not None else batch
                out = model(**{k: v.to(world.device) for k, v in batch.items()})
                spans = out.logits.cpu()  # [B, 2, n]
                if isinstance(transform, TokenRoll):  # back to the context's token order
                    spans = transform.restore_logits(spans, batch)
                logits.update(zip(indices, spans, strict=True))
                totals[3] += float(out.loss) * len(indices)
                totals[4] += len(indices)
            for q in group:
                answer = merge_windows(dataset, q, logits, max_tokens)
                em, f1 = best_over_golds(answer, dataset.questions[q].answers)
                totals[:3] += torch.tensor([em, f1, 1.0], dtype=torch.float64)
    em, f1, count, loss, windows = all_sum(totals, world).tolist()
    if count == 0:
        raise ValueError("evaluation saw no questions (empty split)")
    return {
        "f1": f1 / count,
        "exact_match": em / count,
        "loss": loss / windows,
        "examples": int(count),
        "windows": int(windows),
    }


# --- WikiHop: multiple choice ---


def _read_wikihop(train: TrainConfig, split: str) -> ChoiceDataset:
    return read_wikihop(
        qa_split_file(data_root(train), split),
        Subword(tokenizer_path(train)),
        max_length=train.max_length,
        num_global=train.qa.global_prefix,
    )


def _choice_model(config: ModelConfig, info: TaskInfo) -> nn.Module:
    _check_prefix(config, info)
    return CandidateChoice(config)


def choice_collate(examples: Sequence[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """[B, C, n] ids and masks; examples with fewer candidates repeat their first one
    as filler (masked out by ``choice_mask``), so every row is a valid input."""
    del generator
    count = max(len(e["choices"]) for e in examples)
    rows = [
        [e["choices"][c] if c < len(e["choices"]) else e["choices"][0] for c in range(count)]
        for e in examples
    ]
    ids, attention = pad_sequences([seq for row in rows for seq in row])  # [B * C, n]
    choice_mask = torch.tensor([[c < len(e["choices"]) for c in range(count)] for e in examples])
    return {
        "input_ids": ids.view(len(examples), count, -1),  # [B, C, n]
        "attention_mask": attention.view(len(examples), count, -1),
        "choice_mask": choice_mask,  # [B, C]
        "labels": torch.tensor([e["labels"] for e in examples]),
    }


register_task(
    Task(
        "mlm",
        read=_read_mlm,
        build=lambda config, info: MaskedLM(config),
        collate=mlm_collate,
        evaluate=evaluate_mlm,
        metric="bpc",
        higher_is_better=False,
    )
)
register_task(
    Task(
        "classification",
        read=_read_classification,
        build=lambda config, info: SequenceClassifier(config, info.num_labels),
        evaluate=evaluate_classification,
        metric="micro_f1",
    )
)
register_task(
    Task(
        "triviaqa",
        read=_read_triviaqa,
        build=_span_model,
        collate=span_collate,
        evaluate=evaluate_span_qa,
        metric="f1",
    )
)
register_task(
    Task(
        "wikihop",
        read=_read_wikihop,
        build=_choice_model,
        collate=choice_collate,
        evaluate=evaluate_accuracy,
        metric="accuracy",
    )
)
