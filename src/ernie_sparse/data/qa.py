"""Question answering data: TriviaQA (SQuAD-style JSON) as span examples over
sliding windows, and WikiHop (qangaroo JSON) as multiple-choice examples.

Global tokens. The encoder makes its first ``num_global`` input tokens global
(``model.attention.num_global``; ``train.qa.global_prefix`` here),
and SAOR rolls only the tokens after them. So every input starts with a *global
prefix* ``<s> question </s>`` (WikiHop: ``<s> query </s> candidate </s>``) that is
filled with ``<pad>`` tokens (real tokens, attended to) up to exactly
``num_global`` tokens: the question is global, the context is local, whatever the
question's length. A prefix longer than ``num_global`` is not cut: its remaining
tokens come after the globals as ordinary (local) tokens, and each such input is
counted in ``prefix_overflow``. With ``num_global = 0`` nothing is filled.

Sliding windows (BlockBERT 4.2, after BERT/SpanBERT): a context longer than the
room left in ``max_length`` is split into windows whose starts are ``stride``
tokens apart, so consecutive windows overlap; a window's labels are the answer's
token span when the whole answer lies inside it, else (0, 0), the ``<s>`` token
(BERT's "no answer here"). Evaluation scores each window's best span and keeps,
per question, the best over its windows (see training.finetune_tasks).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .base import TaskInfo
from .errors import DataFormatError
from .tokenize import Subword

log = logging.getLogger("ernie_sparse.data")
NO_ANSWER = (0, 0)  # labels of a window that does not hold the answer: the <s> token


@dataclass
class QAInfo(TaskInfo):
    global_prefix: int = 0  # tokens of the global question prefix (= model.attention.num_global)


def global_prefix(
    parts: Sequence[Sequence[int]], *, cls: int, sep: int, filler: int, num_global: int
) -> tuple[list[int], bool]:
    """``<s> part1 </s> part2 </s> ...`` filled to ``num_global`` tokens; (ids, overflowed)."""
    ids = [cls]
    for part in parts:
        ids.extend(part)
        ids.append(sep)
    overflow = num_global > 0 and len(ids) > num_global
    ids.extend([filler] * max(num_global - len(ids), 0))
    return ids, overflow


def window_starts(length: int, *, window: int, stride: int) -> list[int]:
    """Starts of windows of ``window`` tokens, ``stride`` apart, covering ``length`` tokens."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    starts = [0]
    while starts[-1] + window < length:
        starts.append(starts[-1] + min(stride, window))
    return starts


def char_span_to_tokens(
    offsets: Sequence[tuple[int, int]], start: int, end: int
) -> tuple[int, int] | None:
    """First and last token overlapping characters [start, end), or None."""
    inside = [i for i, (s, e) in enumerate(offsets) if e > start and s < end]
    return (inside[0], inside[-1]) if inside else None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(path, error.lineno, f"invalid JSON: {error.msg}") from error
    except UnicodeDecodeError as error:
        raise DataFormatError(path, None, f"not UTF-8 ({error.reason})") from error


@dataclass
class Question:
    """What scoring a question needs: its context, the context's token offsets, golds."""

    id: str
    context: str
    offsets: list[tuple[int, int]]
    answers: list[str]
    windows: list[int] = field(default_factory=list)  # indices of its window examples


@dataclass
class SpanQADataset(Dataset):
    """Window examples {input_ids, labels [start, end], question, context_start, window_start}."""

    info: QAInfo
    examples: list[dict] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    max_answer_tokens: int = 30  # evaluation: the longest answer span, in tokens
    unanswerable: int = 0  # questions without any answer (skipped, counted)
    prefix_overflow: int = 0  # questions longer than the global prefix (see module)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


def _field(record: Any, key: str, kind: type, path: Path, where: str) -> Any:
    if not isinstance(record, dict) or not isinstance(record.get(key), kind):
        raise DataFormatError(path, where, f"needs {key!r} as a {kind.__name__}")
    return record[key]


def _squad_questions(data: Any, path: Path):
    """Yield (where, id, question, context, answers[(text, start)]) from SQuAD JSON."""
    articles = _field(data, "data", list, path, "top level")
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(_field(article, "paragraphs", list, path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, path, where)
            for q, qa in enumerate(_field(paragraph, "qas", list, path, where)):
                place = f"{where}.qas[{q}]"
                question = _field(qa, "question", str, path, place)
                answers = []
                for k, answer in enumerate(_field(qa, "answers", list, path, place)):
                    text = _field(answer, "text", str, path, f"{place}.answers[{k}]")
                    start = _field(answer, "answer_start", int, path, f"{place}.answers[{k}]")
                    if context[start : start + len(text)] != text:
                        raise DataFormatError(
                            path,
                            f"{place}.answers[{k}]",
                            f"answer {text!r} is not at answer_start={start} of the context",
                        )
                    answers.append((text, start))
                yield place, str(qa.get("id", place)), question, context, answers


def read_span_qa(
    path: str | Path,
    tokenizer: Subword,
    *,
    max_length: int,
    num_global: int,
    stride: int = 128,
    max_answer_tokens: int = 30,
) -> SpanQADataset:
    """TriviaQA (or SQuAD) in SQuAD v1.1 JSON -> window examples; see the module docstring."""
    path = Path(path)
    cls, sep, pad = (tokenizer.require(r) for r in ("cls", "sep", "pad"))
    info = QAInfo("triviaqa", tokenizer.vocab_size, 2, max_length, global_prefix=num_global)
    dataset = SpanQADataset(info, max_answer_tokens=max_answer_tokens)
    for place, qid, question, context, answers in _squad_questions(read_json(path), path):
        if not answers:
            dataset.unanswerable += 1
            continue
        prefix, overflow = global_prefix(
            [tokenizer.encode(question)], cls=cls, sep=sep, filler=pad, num_global=num_global
        )
        dataset.prefix_overflow += overflow
        room = max_length - len(prefix) - 1  # the closing </s>
        if room < 1:
            raise DataFormatError(
                path,
                place,
                f"the question takes {len(prefix)} tokens; max_length={max_length} "
                "leaves no room for context",
            )
        ids, offsets = tokenizer.encode_with_offsets(context)
        text, start = answers[0]  # training labels follow the first answer, as SQuAD's
        span = char_span_to_tokens(offsets, start, start + len(text))
        entry = Question(qid, context, offsets, list(dict.fromkeys(t for t, _ in answers)))
        for window_start in window_starts(len(ids), window=room, stride=stride):
            window = ids[window_start : window_start + room]
            labels = NO_ANSWER
            if span and window_start <= span[0] and span[1] < window_start + len(window):
                labels = (
                    span[0] - window_start + len(prefix),
                    span[1] - window_start + len(prefix),
                )
            entry.windows.append(len(dataset.examples))
            dataset.examples.append(
                {
                    "input_ids": torch.tensor([*prefix, *window, sep], dtype=torch.long),
                    "labels": labels,
                    "question": len(dataset.questions),
                    "context_start": len(prefix),
                    "window_start": window_start,
                }
            )
        dataset.questions.append(entry)
    _log_counts(path, dataset.unanswerable, dataset.prefix_overflow, len(dataset.questions))
    if not dataset.questions:
        raise ValueError(f"{path}: no answerable questions")
    return dataset


@dataclass
class ChoiceDataset(Dataset):
    """WikiHop examples {choices: list of 1-D ids (one per candidate), labels}."""

    info: QAInfo
    examples: list[dict] = field(default_factory=list)
    truncated: int = 0  # choice inputs whose supports were cut to max_length (counted)
    prefix_overflow: int = 0  # choice inputs whose query + candidate overflowed the globals

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


def read_wikihop(
    path: str | Path, tokenizer: Subword, *, max_length: int, num_global: int
) -> ChoiceDataset:
    """qangaroo WikiHop JSON (a list of {id, query, answer, candidates, supports}) ->
    one input per candidate: ``<s> query </s> candidate </s>`` (the global prefix; the
    query's relation ``located_in_the_administrative_territorial_entity`` is read with
    spaces for underscores) followed by the supports, each closed by ``</s>``, cut to
    ``max_length`` (counted in ``truncated``, logged)."""
    path = Path(path)
    records = read_json(path)
    if not isinstance(records, list):
        raise DataFormatError(path, "top level", "WikiHop JSON must be a list of records")
    cls, sep, pad = (tokenizer.require(r) for r in ("cls", "sep", "pad"))
    dataset = ChoiceDataset(
        QAInfo("wikihop", tokenizer.vocab_size, 0, max_length, global_prefix=num_global)
    )
    for number, record in enumerate(records):
        where = f"record {number}"
        if isinstance(record, dict) and "id" in record:
            where += f" (id {record['id']!r})"
        query = _field(record, "query", str, path, where)
        candidates = _field(record, "candidates", list, path, where)
        supports = _field(record, "supports", list, path, where)
        answer = _field(record, "answer", str, path, where)
        if not candidates or not all(isinstance(c, str) for c in candidates):
            raise DataFormatError(path, where, "candidates must be a non-empty list of strings")
        if answer not in candidates:
            raise DataFormatError(path, where, f"answer {answer!r} is not among the candidates")
        context = [t for s in supports for t in (*tokenizer.encode(str(s)), sep)]
        query_ids = tokenizer.encode(query.replace("_", " "))
        choices = []
        for candidate in candidates:
            prefix, overflow = global_prefix(
                [query_ids, tokenizer.encode(candidate)],
                cls=cls,
                sep=sep,
                filler=pad,
                num_global=num_global,
            )
            dataset.prefix_overflow += overflow
            ids = [*prefix, *context]
            if len(ids) > max_length:
                dataset.truncated += 1
                ids = ids[:max_length]
            choices.append(torch.tensor(ids, dtype=torch.long))
        dataset.examples.append({"choices": choices, "labels": candidates.index(answer)})
        dataset.info.num_labels = max(dataset.info.num_labels, len(candidates))
    if not dataset.examples:
        raise ValueError(f"{path}: no WikiHop records")
    if dataset.truncated:
        log.info("%s: %d choice inputs cut to %d tokens", path, dataset.truncated, max_length)
    _log_counts(path, 0, dataset.prefix_overflow, len(dataset.examples))
    return dataset


def _log_counts(path: Path, unanswerable: int, overflow: int, total: int) -> None:
    if unanswerable:
        log.warning("%s: %d questions without an answer skipped", path, unanswerable)
    if overflow:
        log.info(
            "%s: %d of %d inputs have a question prefix longer than num_global "
            "(the rest of it is local)",
            path,
            overflow,
            total,
        )


def qa_split_file(root: Path, split: str) -> Path:
    """``<split>.json``; validation may also be called ``dev.json`` (TriviaQA, WikiHop). A
    file given as ``root`` is itself the split (val or test: ``evaluate --data FILE``)."""
    if root.is_file():
        if split == "train":
            raise ValueError(
                f"{root}: one file cannot be the training split (validation would read the "
                "same questions); give the folder holding train.json and dev.json"
            )
        return root
    names = [f"{split}.json"] + (["dev.json"] if split in ("val", "test") else [])
    for name in names:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}: no {' or '.join(names)}")
