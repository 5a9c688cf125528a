"""Readers of the LRA release formats (Text, Retrieval, Image), Fashion-MNIST, document
folders, collate and ``data info``, on small fixtures written here in the exact formats."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest
import torch

from ernie_sparse.cli import main
from ernie_sparse.data.collate import pad_collate
from ernie_sparse.data.documents import PYTHON_DOCS_DIR, read_documents
from ernie_sparse.data.errors import DataFormatError
from ernie_sparse.data.images import (
    FASHION_MNIST_DIR,
    is_cifar10,
    read_cifar_split,
    read_fashion_mnist,
    split_part,
)
from ernie_sparse.data.lra import (
    grayscale_tokens,
    read_cifar10,
    read_image,
    read_retrieval,
    read_text,
    retrieval_split_path,
)
from ernie_sparse.data.pixels import read_cifar10_pixels

# --- Text ---


def write_imdb(root):
    reviews = {"train": {"pos": ["great film", "loved it"], "neg": ["dull", "bad ☹"]}}
    reviews["test"] = {"pos": ["fine"], "neg": ["awful"]}
    for split, by_label in reviews.items():
        for label, texts in by_label.items():
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for index, text in enumerate(texts):
                (folder / f"{index}_7.txt").write_text(text, encoding="utf-8")
    return root / "aclImdb"


def test_text_from_aclimdb_folder_is_bytes_plus_one(tmp_path) -> None:
    train = read_text(write_imdb(tmp_path), split="train")
    assert len(train) == 4 and train.info.vocab_size == 257
    texts = {
        bytes((train[i]["input_ids"] - 1).tolist()).decode(): train[i]["labels"] for i in range(4)
    }
    assert texts == {"dull": 0, "bad ☹": 0, "great film": 1, "loved it": 1}
    assert len(read_text(tmp_path / "aclImdb", split="test")) == 2


def test_text_tsv_and_jsonl_and_their_errors(tmp_path) -> None:
    tsv = tmp_path / "reviews.tsv"
    tsv.write_text("label\ttext\npos\tnice\n0\tmeh\n", encoding="utf-8")
    assert [int(e["labels"]) for e in read_text(tsv)] == [1, 0]
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text('{"text": "abc", "label": 1}\n{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"reviews\.jsonl:2: expected a JSON object"):
        read_text(jsonl)
    assert len(read_text(jsonl, skip_bad=True)) == 1
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\ttext\nmaybe\tx\n1\t  \n1\ta\tb\n1\tok\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.tsv:2: label 'maybe'"):
        read_text(bad)
    dataset = read_text(bad, skip_bad=True)
    assert len(dataset) == 1 and dataset.bad.count == 3
    assert "bad.tsv:3: empty text" in str(dataset.bad.skipped[1])
    assert "bad.tsv:4: expected 2 tab-separated columns" in str(dataset.bad.skipped[2])


def write_reviews(path, count: int, *, start: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{('neg', 'pos')[i % 2]}\treview number {i}" for i in range(start, start + count)]
    path.write_text("label\ttext\n" + "".join(row + "\n" for row in rows), encoding="utf-8")


def review_texts(dataset) -> set[str]:
    return {bytes((e["input_ids"] - 1).tolist()).decode() for e in dataset.examples}


def test_text_from_a_folder_of_split_files(tmp_path, caplog) -> None:
    write_reviews(tmp_path / "imdb" / "train.tsv", 6)
    write_reviews(tmp_path / "imdb" / "test.tsv", 2, start=100)
    folder = tmp_path / "imdb"
    assert (len(read_text(folder, split="train")), len(read_text(folder, split="test"))) == (6, 2)
    with caplog.at_level("INFO", logger="ernie_sparse.data"):
        validation = read_text(folder, split="val")
    assert review_texts(validation) == review_texts(read_text(folder, split="test"))
    assert "no validation split: validation reads the test split (LRA's" in caplog.text
    with pytest.raises(ValueError, match="a folder holds several splits; give split="):
        read_text(folder)
    (folder / "train.tsv").write_text("label\ttext\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"imdb \[train\]: no examples"):
        read_text(folder, split="train")


def test_one_text_file_is_never_the_training_split(tmp_path) -> None:
    """Before: a single file was train, validation and test at once (best weights chosen
    on training rows). Now it is one split, read whole: evaluate it; train on a folder."""
    path = tmp_path / "reviews.tsv"
    write_reviews(path, 5)
    with pytest.raises(ValueError, match=r"reviews\.tsv: one file cannot be the training split"):
        read_text(path, split="train")
    assert len(read_text(path, split="test")) == len(read_text(path, split="val")) == 5
    assert len(read_text(path)) == 5  # data info and library use: the file as it is
    path.write_bytes(b"label\ttext\npos\tok\nneg\t\xff\xfe\n")
    with pytest.raises(DataFormatError, match=r"reviews\.tsv: not UTF-8 text"):
        read_text(path, split="test")


def test_text_validation_held_out_of_train_by_a_seeded_hash(tmp_path) -> None:
    folder = tmp_path / "imdb"
    write_reviews(folder / "train.tsv", 60)
    write_reviews(folder / "test.tsv", 4, start=100)

    def split(name: str, seed: int = 3):
        return review_texts(read_text(folder, split=name, val_fraction=0.25, seed=seed))

    train, val = split("train"), split("val")
    assert not train & val and len(train | val) == 60 and 5 <= len(val) <= 25
    assert val == split("val") and val != split("val", seed=4)
    assert split("test") == review_texts(read_text(folder, split="test"))
    write_reviews(folder / "val.tsv", 3, start=200)  # a val split of its own wins
    assert len(split("val")) == 3 and len(split("train")) == 60
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \[0, 1\)"):
        read_text(folder, split="val", val_fraction=1.0)


def test_text_cut_to_max_length_is_counted(tmp_path) -> None:
    tsv = tmp_path / "long.tsv"
    tsv.write_text("label\ttext\n1\t" + "a" * 30 + "\n0\tshort\n", encoding="utf-8")
    dataset = read_text(tsv, max_length=10)
    assert dataset.truncated == 1 and dataset.raw_lengths == [30, 5]
    assert len(dataset[0]["input_ids"]) == 10


# --- Retrieval ---


def test_retrieval_pairs_and_byte_cut(tmp_path) -> None:
    path = tmp_path / "new_aan_pairs.train.tsv"
    long_text = "b" * 12_000
    path.write_text(f"1\tid1\tid2\tfirst paper\t{long_text}\n0.0\tid3\tid4\tx\ty\n")
    dataset = read_retrieval(path, max_length=20_000)
    assert [e["labels"] for e in dataset] == [1, 0]
    assert bytes((dataset[0]["input_ids"] - 1).tolist()) == b"first paper"
    assert len(dataset[0]["input_ids_2"]) == 10_000  # LRA's byte cut, before max_length
    assert dataset.truncated == 0
    assert read_retrieval(path, max_length=4000).truncated == 1
    path.write_text("1\tid1\tid2\tonly four\n2\ta\tb\tc\td\n")
    with pytest.raises(DataFormatError, match=r"train\.tsv:1: expected 5 tab-separated columns"):
        read_retrieval(path)
    assert read_retrieval(path, skip_bad=True).bad.count == 2


# --- Image: CIFAR-10 and Fashion-MNIST ---


def write_cifar(root, per_batch=10):
    rng = np.random.default_rng(0)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
        }
        with (root / name).open("wb") as handle:
            pickle.dump(batch, handle)
    return root


def test_retrieval_split_files_and_a_single_file(tmp_path) -> None:
    assert retrieval_split_path(tmp_path, "val") == tmp_path / "new_aan_pairs.eval.tsv"
    path = tmp_path / "heldout.tsv"
    path.write_text("1\ta\tb\tone\ttwo\n", encoding="utf-8")
    assert retrieval_split_path(path, "test") == path
    with pytest.raises(ValueError, match=r"heldout\.tsv: one file cannot be the training split"):
        retrieval_split_path(path, "train")
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"heldout\.tsv: no examples"):
        read_retrieval(path)


def test_cifar_splits_and_grayscale(tmp_path) -> None:
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    train, val, test = (read_cifar10(root, split=s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (45, 5, 10)  # 90% / 10% of 50, test 10
    with (root / "data_batch_1").open("rb") as handle:
        first = pickle.load(handle)
    rgb = first[b"data"][0].reshape(3, 32, 32).astype(float)
    gray = np.rint(0.2989 * rgb[0] + 0.5870 * rgb[1] + 0.1140 * rgb[2]).reshape(-1)
    assert torch.equal(train[0]["input_ids"], torch.as_tensor(gray, dtype=torch.long))
    assert train[0]["labels"] == first[b"labels"][0]
    assert grayscale_tokens(np.full((1, 3, 32, 32), 255, np.uint8)).max() == 255
    (root / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3: not a CIFAR-10 python batch"):
        read_cifar10(root)


def test_every_cifar_reader_shares_one_batch_reader_and_split(tmp_path) -> None:
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    assert is_cifar10(root) and not is_cifar10(tmp_path)
    batches = []
    for i in range(1, 6):
        with (root / f"data_batch_{i}").open("rb") as handle:
            batches.append(pickle.load(handle)[b"data"])
    training_set = np.concatenate(batches).reshape(-1, 3, 32, 32)  # 50 images: val = 45..49
    for split, first in (("train", 0), ("val", 45)):
        rgb = read_cifar_split(root, split)[0][0]  # [3, 32, 32]
        assert np.array_equal(rgb, training_set[first])
        pixels = read_cifar10_pixels(root, split=split)[0]["labels"]  # [3072], interleaved
        assert pixels.tolist() == rgb.transpose(1, 2, 0).reshape(-1).tolist()
        tokens = read_image(root, split=split)[0]["input_ids"]  # LRA Image: grayscale
        assert tokens.tolist() == grayscale_tokens(rgb[None])[0].tolist()
    assert [split_part(s, 50) for s in ("train", "val", "test")] == [
        slice(None, 45), slice(45, None), slice(None)
    ]  # fmt: skip


def write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_padded_to_32(tmp_path) -> None:
    images = np.arange(20 * 28 * 28).reshape(20, 28, 28) % 251
    labels = np.arange(20) % 10
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
    train = read_fashion_mnist(tmp_path, split="train")
    assert len(train) == 18 and len(read_fashion_mnist(tmp_path, split="val")) == 2
    grid = train[3]["input_ids"].view(32, 32)
    assert torch.equal(grid[2:30, 2:30], torch.as_tensor(images[3], dtype=torch.long))
    assert grid[:2].sum() == 0 and grid[:, 30:].sum() == 0 and train[3]["labels"] == 3
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 2051)
    with pytest.raises(ValueError, match="IDX magic number 2051, expected 2049"):
        read_fashion_mnist(tmp_path, split="test")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist absent")
def test_real_fashion_mnist_from_the_debian_package() -> None:
    test = read_fashion_mnist(split="test")
    assert len(test) == 10_000 and test[0]["input_ids"].shape == (1024,)
    assert sorted({int(e["labels"]) for e in test.examples}) == list(range(10))


# --- documents ---


def write_documents(root):
    for label, texts in {"howto": ["how " * 50, "guide"], "library": ["mod", "api " * 9]}.items():
        (root / label / "sub").mkdir(parents=True)
        for index, text in enumerate(texts):
            (root / label / "sub" / f"{index}.rst.txt").write_text(text)
    (root / "index.rst.txt").write_text("top level, no label")
    return root


def test_documents_from_label_folders(tmp_path) -> None:
    root = write_documents(tmp_path / "docs")
    dataset = read_documents(root, max_length=100)
    assert dataset.label_names == ("howto", "library") and len(dataset) == 4
    assert dataset.truncated == 1  # "how " * 50 is 200 bytes
    splits = [read_documents(root, split=s) for s in ("train", "val", "test")]
    assert sum(len(s) for s in splits) == 4
    (root / "library" / "bad.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataFormatError, match=r"bad\.txt: not UTF-8 text"):
        read_documents(root)
    assert read_documents(root, skip_bad=True).bad.count == 1


def test_documents_with_a_subword_tokenizer(tmp_path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    model = tokenizers.models.WordLevel({"[UNK]": 0, "how": 1, "api": 2}, unk_token="[UNK]")
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    root = write_documents(tmp_path / "docs")
    dataset = read_documents(root, tokenizer=str(tmp_path / "tokenizer.json"))
    assert dataset.info.vocab_size == 3
    by_length = sorted(len(e["input_ids"]) for e in dataset)
    assert by_length == [1, 1, 9, 50]


@pytest.mark.skipif(not PYTHON_DOCS_DIR.is_dir(), reason="Debian python3.11-doc absent")
def test_real_python_docs_from_the_debian_package() -> None:
    dataset = read_documents(PYTHON_DOCS_DIR, max_length=4096)
    assert len(dataset) > 400 and {"library", "c-api", "howto"} <= set(dataset.label_names)
    assert np.percentile(dataset.raw_lengths, 50) > 4096  # long documents


# --- collate and data info ---


def test_pad_collate_pads_and_masks() -> None:
    examples = [
        {"input_ids": torch.tensor([5, 6, 7]), "input_ids_2": torch.tensor([1]), "labels": 1},
        {"input_ids": torch.tensor([8]), "input_ids_2": torch.tensor([2, 3]), "labels": 0},
    ]
    batch = pad_collate(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[True] * 3, [True, False, False]]
    assert batch["attention_mask_2"].tolist() == [[True, False], [True, True]]
    assert batch["labels"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="sequence 1 of the batch is empty"):
        pad_collate([examples[0], {"input_ids": torch.tensor([]), "labels": 0}])


def test_data_info_prints_counts_lengths_and_labels(tmp_path, capsys) -> None:
    assert main(["data", "info", str(write_imdb(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "text" in out and "train: 4 examples" in out and "neg 2 (50.0%)" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "label": 7}) + "\n")
    assert main(["data", "info", str(bad)]) == 2
    assert "bad.jsonl:1: label '7'" in capsys.readouterr().err
    assert main(["data", "info", str(bad), "--skip-bad"]) == 0
    assert "1 bad skipped" in capsys.readouterr().out


def test_data_info_on_a_folder_of_split_files(tmp_path, capsys) -> None:
    write_reviews(tmp_path / "imdb" / "train.tsv", 6)
    write_reviews(tmp_path / "imdb" / "test.tsv", 2, start=100)
    assert main(["data", "info", str(tmp_path / "imdb")]) == 0
    out = capsys.readouterr().out
    assert "split files" in out and "train: 6 examples" in out and "test: 2 examples" in out


def test_data_info_on_generated_listops(tmp_path, capsys) -> None:
    args = ["data", "listops", "--out", str(tmp_path), "--num-train", "30", "--num-val", "5"]
    args += ["--num-test", "5", "--min-len", "10", "--max-len", "40"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "listops" in out and "train: 30 examples" in out and "test: 5 examples" in out
    assert main(["data", "info", str(tmp_path / "basic_test.tsv")]) == 0  # one file
    out = capsys.readouterr().out
    assert "listops" in out and "basic_test.tsv: 5 examples" in out


def test_a_tokenizer_files_own_truncation_never_cuts_documents(tmp_path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from ernie_sparse.data.tokenize import Subword, load_tokenizer

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(20)}}
    model = tokenizers.models.WordLevel(vocab, unk_token="[UNK]")
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.enable_truncation(max_length=4)  # as checkpoints ship it (MiniLM: 128)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    text = " ".join(f"w{i}" for i in range(20))
    encode, _ = load_tokenizer(str(path))
    assert encode(text) == list(range(2, 22))
    assert Subword(path).encode(text) == list(range(2, 22))
