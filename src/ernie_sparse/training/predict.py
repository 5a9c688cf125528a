"""``ernie-sparse predict RUN_DIR --data PATH --out FILE``: a trained run's predictions.

The data is read by the run's task reader with the run's config (tokenizer,
max_length, QA windows), the model is the one ``evaluate`` and ``export`` load
(``--weights best|final``), batched by the task's own collate.

Classification runs (tasks classification, documents, image, listops, pathfinder,
probe, text): ``--data`` is what the task reads as ``train.data`` (a data folder,
``--split`` picks the split), and ``--out`` gets one JSON line per example in the
data's order::

    {"index": 0, "label": "pos", "score": 0.93, "scores": {"neg": 0.07, "pos": 0.93},
     "gold": "neg"}

``label`` is the most probable class (names from the data; the reader's label ids
are the ones the run trained on), ``gold`` the data's own label. A ``classification``
run also takes documents without labels: ``--data`` a JSON-lines file of ``{"text":
..., "id": ...}`` objects (``id`` optional, copied to the output), tokenized as the
reader does (``<s> text </s>``, cut to train.max_length); the label names then come
from the run's own data (else ``LABEL_i``).

Span-QA runs (triviaqa): ``--data`` is a SQuAD v1.1 JSON file (or a folder with
``<split>.json``), and ``--out`` gets SQuAD-style predictions ``{question id:
answer}``: per question the best span over all its windows, as ``evaluate`` scores
it. Questions without gold answers are predicted too (the task reader keeps only
answered questions, so predict hands it a copy in which each has a placeholder
answer, never read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cli_args import positive_int
from ..data.base import TaskInfo, TokenDataset
from ..data.classification import _encoder as classification_encoder
from ..data.errors import DataFormatError
from ..data.qa import SpanQADataset, qa_split_file, read_json
from ..models import SequenceClassifier, SpanQA
from ..models.heads import IGNORE_INDEX
from .config import RunConfig, TrainConfig
from .config import load_run as load_run_config_of
from .distributed import World
from .evaluation import Collate, eval_batches, eval_mode
from .export import load_run_model, run_label_names
from .finetune_tasks import merge_windows, tokenizer_path
from .run_dir import WEIGHTS
from .tasks import check_split, get_task

# Tasks predict serves, by the kind of model their runs train.
CLASSIFICATION_TASKS = (
    "classification",
    "documents",
    "image",
    "listops",
    "pathfinder",
    "probe",
    "text",
)
SPAN_QA_TASKS = ("triviaqa",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (ernie-sparse train)")
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="classification: the task's data folder (as train.data) or a JSON-lines file "
        'of {"text", "id"} documents; triviaqa: a SQuAD JSON file or a folder with '
        "<split>.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="predictions: JSON lines (classification) or SQuAD predictions JSON (QA)",
    )
    parser.add_argument("--split", default="test", help="the split of a data folder")
    parser.add_argument(
        "--weights",
        choices=list(WEIGHTS),
        default="best",
        help="best: best.safetensors (best validation); final: model.safetensors",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="examples (windows) per batch"
    )
    parser.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    print(
        predict_run(
            args.run_dir,
            data=args.data,
            out=args.out,
            split=args.split,
            weights=args.weights,
            batch_size=args.batch_size,
        )
    )
    return 0


def predict_run(
    run_dir: str | Path,
    *,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    weights: str = "best",
    batch_size: int = 32,
) -> str:
    """Write the run's predictions on ``data`` to ``out``; returns a line saying what."""
    run_dir, data, out = Path(run_dir), Path(data), Path(out)
    run = load_run(run_dir)
    check_split(split)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such data file or folder")
    model, weights_path = load_run_model(run_dir, run, weights=weights)
    model.to(default_device())
    task = run.train.task
    options = {"split": split, "batch_size": batch_size}
    if task in SPAN_QA_TASKS:
        check_model(model, SpanQA, task)
        count, what = write_answers(model, run, data, out, **options)
    else:
        check_model(model, SequenceClassifier, task)
        count, what = write_labels(model, run, data, out, **options)
    return f"wrote {count} {what} to {out} (run {run_dir}, task {task}, {weights_path.name})"


def write_answers(
    model: SpanQA, run: RunConfig, data: Path, out: Path, *, split: str, batch_size: int
) -> tuple[int, str]:
    """SQuAD predictions JSON of the questions in ``data``; (count, what was written)."""
    dataset = read_questions(run.train, data, split)
    collate = get_task(run.train.task).collate
    predictions = predict_answers(model, dataset, batch_size=batch_size, collate=collate)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(predictions, indent=1, ensure_ascii=False) + "\n")
    return len(predictions), "answers (SQuAD predictions JSON)"


def write_labels(
    model: SequenceClassifier, run: RunConfig, data: Path, out: Path, *, split: str, batch_size: int
) -> tuple[int, str]:
    """One JSON line per example of ``data``; (count, what was written)."""
    classes = model.classifier.output.out_features
    if run.train.task == "classification" and data.is_file():  # documents without labels
        if data.suffix != ".jsonl":
            raise ValueError(
                f"{data}: documents to classify come as JSON lines (.jsonl, one "
                '{"text": ..., "id": ...} per line); labelled data: give its folder'
            )
        dataset, ids = read_documents(run.train, data)
        names = trained_label_names(run, classes)
    else:
        dataset, ids = read_examples(run.train, data, split), None
        check_classes(dataset, classes, data)
        names = label_names(dataset, classes)
    check_vocabulary(model, dataset, data)
    collate = get_task(run.train.task).collate
    records = predict_labels(
        model, dataset, names=names, ids=ids, batch_size=batch_size, collate=collate
    )
    return write_lines(out, records), "predictions (JSON lines)"


def load_run(run_dir: Path) -> RunConfig:
    """The run's config, for a task predict serves."""
    run = load_run_config_of(run_dir)
    task = run.train.task
    if task not in CLASSIFICATION_TASKS + SPAN_QA_TASKS:
        raise ValueError(
            f"predict does not support task {task!r} ({run_dir}); it supports classification "
            f"({', '.join(CLASSIFICATION_TASKS)}) and span QA ({', '.join(SPAN_QA_TASKS)})"
        )
    return run


def check_model(model: nn.Module, expected: type[nn.Module], task: str) -> None:
    if not isinstance(model, expected):  # a task registered under a known name, changed
        raise ValueError(
            f"task {task!r} built a {type(model).__name__}; predict expects a {expected.__name__}"
        )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- classification ---


def read_examples(train: TrainConfig, data: Path, split: str):
    """The task reader's ``split`` of ``data``, read as the run reads its own data."""
    return get_task(train.task).read(dataclasses.replace(train, data=str(data)), split)


def read_documents(train: TrainConfig, path: Path) -> tuple[TokenDataset, list[Any]]:
    """The documents of a JSON-lines file ({"text", "id" optional}) as the classification
    reader tokenizes them, without labels; and their ids (None where not given)."""
    # The tokenizer the classification task reads with (finetune_tasks._read_classification).
    tokenizer = train.tokenizer or (tokenizer_path(train) if train.init_from else "bytes")
    encode, vocab_size = classification_encoder(tokenizer)
    dataset = TokenDataset(TaskInfo("classification", vocab_size, 0, train.max_length))
    ids = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(path, number, f"invalid JSON: {error.msg}") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(path, number, 'expected an object with a non-empty "text"')
        dataset.add(IGNORE_INDEX, encode(text))
        ids.append(record.get("id"))
    if not dataset.examples:
        raise ValueError(f'{path}: no documents (one JSON object with a "text" per line)')
    return dataset.finish(str(path)), ids


def check_classes(dataset, classes: int, data: Path) -> None:
    """The data has the model's classes (else its label ids are not the run's)."""
    if dataset.info.num_labels != classes:
        raise ValueError(
            f"{data} does not fit the run: its data has {dataset.info.num_labels} labels, "
            f"the run's model {classes} classes"
        )


def check_vocabulary(model: SequenceClassifier, dataset, data: Path) -> None:
    """Every token id is in the model's vocabulary (else the data was read otherwise)."""
    vocab_size = model.config.vocab_size
    largest = max(int(example["input_ids"].max()) for example in dataset.examples)
    if largest >= vocab_size:
        raise ValueError(
            f"{data} does not fit the run: token id {largest} >= the model's vocab_size "
            f"{vocab_size} (read with another tokenizer?)"
        )


@torch.no_grad()
def predict_labels(
    model: SequenceClassifier,
    dataset,
    *,
    names: list[str],
    ids: list[Any] | None,
    batch_size: int,
    collate: Collate,
) -> Iterator[dict[str, Any]]:
    """One record per example, in order: its index (and id), the most probable label, its
    probability, all probabilities by label name, and the data's own label if it has one."""
    world = World(device=next(model.parameters()).device)
    for indices, batch in eval_batches(
        model, dataset, batch_size=batch_size, world=world, collate=collate
    ):
        gold = batch.pop("labels", None)
        probabilities = model(**batch).logits.float().softmax(-1).cpu()  # [B, C]
        for row, index in enumerate(indices):
            best = int(probabilities[row].argmax())
            record = {
                "index": index,
                **({"id": ids[index]} if ids is not None and ids[index] is not None else {}),
                "label": names[best],
                "score": float(probabilities[row, best]),
                "scores": dict(zip(names, probabilities[row].tolist(), strict=True)),
            }
            if gold is not None and int(gold[row]) >= 0:
                record["gold"] = names[int(gold[row])]
            yield record


def trained_label_names(run: RunConfig, classes: int) -> list[str]:
    """The label names of the run's own data (as export names them), else LABEL_i."""
    names = run_label_names(run)[0]
    return names if names and len(names) == classes else [f"LABEL_{i}" for i in range(classes)]


def label_names(dataset, classes: int) -> list[str]:
    names = [str(name) for name in getattr(dataset, "label_names", ())]
    return names if len(names) == classes else [str(index) for index in range(classes)]


def write_lines(out: Path, records: Iterator[dict[str, Any]]) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


# --- span QA ---


def read_questions(train: TrainConfig, data: Path, split: str) -> SpanQADataset:
    """The questions of a SQuAD JSON file (or a folder's ``split``) as the run's windows,
    read by the task's reader, questions without gold answers included."""
    source = qa_split_file(data, split) if data.is_dir() else data
    with tempfile.TemporaryDirectory(prefix="ernie-sparse-predict-") as folder:
        copy = Path(folder) / "test.json"
        copy.write_text(json.dumps(with_placeholder_answers(read_json(source))))
        try:
            return get_task(train.task).read(dataclasses.replace(train, data=folder), "test")
        except DataFormatError as error:  # name the user's file, not the copy
            raise DataFormatError(source, error.where, error.problem) from None
        except ValueError as error:
            raise ValueError(str(error).replace(str(copy), str(source))) from None


def with_placeholder_answers(squad: Any) -> Any:
    """SQuAD JSON where each question without answers has one (the context's first
    character), so the reader keeps it; predict never reads labels. Anything malformed
    is left as it is, for the reader to report."""
    for article in _items(squad, "data"):
        for paragraph in _items(article, "paragraphs"):
            context = paragraph.get("context")
            for question in _items(paragraph, "qas"):
                if isinstance(context, str) and not question.get("answers"):
                    question["answers"] = [{"text": context[:1], "answer_start": 0}]
    return squad


def _items(record: Any, key: str) -> list[dict]:
    values = record.get(key) if isinstance(record, dict) else None
    if not isinstance(values, list):
        return []
    return [value for value in values if isinstance(value, dict)]


@torch.no_grad()
def predict_answers(
    model: SpanQA, dataset: SpanQADataset, *, batch_size: int, collate: Collate
) -> dict[str, str]:
    """{question id: answer text}, the best span over each question's windows."""
    device = next(model.parameters()).device
    answers: dict[str, str] = {}
    with eval_mode(model):
        for start in range(0, len(dataset.questions), batch_size):
            group = range(start, min(start + batch_size, len(dataset.questions)))
            windows = [w for q in group for w in dataset.questions[q].windows]
            logits = {}
            for chunk in range(0, len(windows), batch_size):
                indices = windows[chunk : chunk + batch_size]
                batch = collate([dataset[i] for i in indices], torch.Generator())
                batch.pop("labels", None)
                out = model(**{key: value.to(device) for key, value in batch.items()})
                logits.update(zip(indices, out.logits.cpu(), strict=True))  # each [2, n]
            for q in group:
                question_id = dataset.questions[q].id
                if question_id in answers:
                    raise ValueError(f"question id {question_id!r} appears twice in the data")
                answers[question_id] = merge_windows(dataset, q, logits, dataset.max_answer_tokens)
    return answers
