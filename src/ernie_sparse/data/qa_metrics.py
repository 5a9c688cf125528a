"""Scores: SQuAD exact match and F1 (the official v1.1 definitions), and
accuracy / micro-F1 / macro-F1 for single-label classification.

SQuAD normalization: lower case, remove punctuation (``string.punctuation``),
remove the articles a / an / the as whole words, collapse whitespace. EM and F1
of a prediction are the maximum over the gold answers; F1 is over the bag of
normalized tokens (precision and recall of the common tokens, counted with
multiplicity).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """lower -> drop punctuation -> drop articles -> single spaces (SQuAD v1.1 order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(predicted) & Counter(expected)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction: each the maximum over the gold answers."""
    if not golds:
        raise ValueError("a question needs at least one gold answer to be scored")
    return (
        max(exact_match(prediction, gold) for gold in golds),
        max(token_f1(prediction, gold) for gold in golds),
    )


def confusion_matrix(predictions: Sequence[int], labels: Sequence[int], num_labels: int):
    """[true label][predicted label] counts as nested lists."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    matrix = [[0] * num_labels for _ in range(num_labels)]
    for predicted, label in zip(predictions, labels, strict=True):
        matrix[label][predicted] += 1
    return matrix


def classification_scores(confusion: Sequence[Sequence[float]]) -> dict[str, float]:
    """accuracy, micro-F1 and macro-F1 from a [true][predicted] confusion matrix.

    Macro-F1 is the unweighted mean of per-class F1 = 2 TP / (predicted + actual);
    a class with neither predictions nor examples is left out. With one label per
    example micro-F1 equals accuracy (each error is one false positive and one
    false negative), so it is reported for the papers' tables, not as news.
    """
    classes = range(len(confusion))
    total = sum(sum(row) for row in confusion)
    if total == 0:
        raise ValueError("no examples to score")
    true_pos = [confusion[c][c] for c in classes]
    actual = [sum(confusion[c]) for c in classes]
    predicted = [sum(row[c] for row in confusion) for c in classes]
    tp = sum(true_pos)
    errors = total - tp  # false positives = false negatives
    per_class = [
        2 * true_pos[c] / (predicted[c] + actual[c]) for c in classes if predicted[c] + actual[c]
    ]
    return {
        "accuracy": tp / total,
        "micro_f1": 2 * tp / (2 * tp + 2 * errors),
        "macro_f1": sum(per_class) / len(per_class),
    }
