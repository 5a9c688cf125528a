"""Long-document classification data (TSV, JSONL, label folders) and its scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ernie_sparse.data.classification import read_classification
from ernie_sparse.data.errors import DataFormatError
from ernie_sparse.data.qa_metrics import classification_scores, confusion_matrix
from ernie_sparse.models.heads import TaskOutput
from ernie_sparse.training.distributed import World
from ernie_sparse.training.finetune_tasks import evaluate_classification
from ernie_sparse.training.tasks import plain_collate


def write_tsv(root: Path, split: str, lines: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}.tsv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_tsv_split_files_with_header_and_cut_counted(tmp_path) -> None:
    root = tmp_path / "tsv"
    write_tsv(root, "train", ["label\ttext", "sports\tball game", "news\tthe vote", "sports\trun"])
    write_tsv(root, "val", ["news\ta long long long document"])
    write_tsv(root, "test", ["sports\tgoal"])
    train = read_classification(root, split="train", max_length=8)
    assert train.label_names == ("news", "sports") and train.info.num_labels == 2
    assert [e["labels"] for e in train.examples] == [1, 0, 1]
    assert train.examples[2]["input_ids"].tolist() == [b + 1 for b in b"run"]  # bytes + 1
    val = read_classification(root, split="val", max_length=8)
    assert val.truncated == 1 and val.raw_lengths == [len("a long long long document")]
    assert len(val.examples[0]["input_ids"]) == 8


def test_jsonl_with_integer_labels_sorted_numerically(tmp_path) -> None:
    root = tmp_path / "jsonl"
    root.mkdir()
    rows = {"train": [(10, "ten"), (2, "two"), (2, "deux")], "val": [(10, "x")], "test": [(2, "y")]}
    for split, records in rows.items():
        lines = [json.dumps({"label": label, "text": text}) for label, text in records]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    train = read_classification(root, split="train")
    assert train.label_names == ("2", "10")
    assert [e["labels"] for e in train.examples] == [1, 0, 0]


def test_split_folders_and_label_folders(tmp_path) -> None:
    imdb = tmp_path / "imdb"
    for split in ("train", "val", "test"):
        for label in ("neg", "pos"):
            folder = imdb / split / label
            folder.mkdir(parents=True)
            (folder / "1.txt").write_text(f"{label} review")
    test = read_classification(imdb, split="test")
    assert test.label_names == ("neg", "pos") and [e["labels"] for e in test.examples] == [0, 1]
    flat = tmp_path / "flat"
    for label in ("a", "b"):
        (flat / label).mkdir(parents=True)
        for number in range(30):
            (flat / label / f"{number}.txt").write_text(f"document {number} of {label}")
    sizes = [len(read_classification(flat, split=s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 60 and min(sizes) > 0


def test_subword_documents_are_wrapped_in_specials(tmp_path) -> None:
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate([*specials, "ball", "game", "vote"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    root = tmp_path / "tsv"
    write_tsv(root, "train", ["a\tball game", "b\tvote now"])
    data = read_classification(root, split="train", tokenizer=str(tmp_path / "tokenizer.json"))
    assert [e["input_ids"].tolist() for e in data.examples] == [[1, 5, 6, 2], [1, 7, 3, 2]]
    assert data.info.vocab_size == 8


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["a\tfine", "no tab here"], r"train.tsv:2: expected label<TAB>text"),
        (["a\tfine", "\tno label"], r"train.tsv:2: empty label"),
        (["a\tfine", "b\t   "], r"train.tsv:2: empty text"),
    ],
)
def test_tsv_errors_name_file_and_line(tmp_path, lines, message) -> None:
    write_tsv(tmp_path, "train", lines)
    with pytest.raises(DataFormatError, match=message):
        read_classification(tmp_path, split="train")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"train.jsonl:2: invalid JSON"),
        ('{"text": "no label"}', r'train.jsonl:2: expected an object with "label" and "text"'),
        ('{"label": "a", "text": 5}', r'train.jsonl:2: "text" must be a string'),
        ('{"label": [1], "text": "x"}', r'train.jsonl:2: "label" must be a string or an integer'),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, message) -> None:
    good = json.dumps({"label": "a", "text": "fine"})
    (tmp_path / "train.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(DataFormatError, match=message):
        read_classification(tmp_path, split="train")


def test_unknown_label_and_bad_bytes_are_named(tmp_path) -> None:
    write_tsv(tmp_path, "train", ["a\tx", "b\ty"])
    write_tsv(tmp_path, "val", ["a\tx", "c\tz"])
    with pytest.raises(DataFormatError, match=r"val.tsv:2: label 'c' is not a train label"):
        read_classification(tmp_path, split="val")
    (tmp_path / "test.tsv").write_bytes(b"a\tok\nb\t\xff\xfe\n")
    with pytest.raises(DataFormatError, match=r"test.tsv:2: not UTF-8"):
        read_classification(tmp_path, split="test")


def test_a_single_file_is_one_split_with_the_train_labels(tmp_path, caplog) -> None:
    """``evaluate RUN --data FILE``: the file is the split; label ids are the train split's
    beside it (or, with none, the file's own, said in the log); never the training split."""
    root = tmp_path / "data"
    write_tsv(root, "train", ["label\ttext", "a\tx", "b\ty", "c\tz"])
    write_tsv(root, "heldout", ["label\ttext", "c\tone", "b\ttwo"])
    heldout = read_classification(root / "heldout.tsv", split="test")
    assert heldout.label_names == ("a", "b", "c") and [e["labels"] for e in heldout] == [2, 1]
    with pytest.raises(ValueError, match=r"heldout\.tsv: one file cannot be the training split"):
        read_classification(root / "heldout.tsv", split="train")
    alone = tmp_path / "alone"
    write_tsv(alone, "heldout", ["label\ttext", "c\tone", "b\ttwo"])
    with caplog.at_level("WARNING", logger="ernie_sparse.data"):
        own = read_classification(alone / "heldout.tsv", split="val")
    assert own.label_names == ("b", "c") and "no train split beside it" in caplog.text


def test_scores_by_hand() -> None:
    predictions = [0, 0, 1, 2, 2, 2]
    labels = [0, 1, 1, 2, 2, 0]
    confusion = confusion_matrix(predictions, labels, 3)
    assert confusion == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    scores = classification_scores(confusion)
    # per class F1 = 2 TP / (predicted + actual): 2/4, 2/3, 4/5
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["micro_f1"] == pytest.approx(4 / 6)
    assert scores["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)


def test_evaluate_classification_counts_a_fixed_model(tmp_path) -> None:
    write_tsv(tmp_path, "train", ["a\tx", "b\tyy", "c\tzzz"])
    write_tsv(tmp_path, "val", ["a\tq", "a\tqq", "b\tqq", "c\tqqq", "c\tq"])
    data = read_classification(tmp_path, split="val")

    class ByLength(nn.Module):
        """Predicts class (length - 1): right on 3 of the 5 documents."""

        def forward(self, input_ids, attention_mask, labels) -> TaskOutput:
            lengths = attention_mask.sum(1)
            logits = torch.nn.functional.one_hot(lengths - 1, 3).float()
            return TaskOutput(logits, torch.tensor(0.25))

    metrics = evaluate_classification(
        ByLength(), data, batch_size=2, world=World(), collate=plain_collate
    )
    scores = classification_scores(confusion_matrix([0, 1, 1, 2, 0], [0, 0, 1, 2, 2], 3))
    assert metrics["accuracy"] == pytest.approx(3 / 5) and metrics["examples"] == 5
    assert metrics["macro_f1"] == pytest.approx(scores["macro_f1"])
    assert metrics["loss"] == pytest.approx(0.25)
