"""Causal LM: no leakage from the future, the LM head's loss, pixel and byte data, the
image-lm / bytes-lm tasks and a tiny training run through ``ernie-sparse train``."""

from __future__ import annotations

import gzip
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from ernie_sparse.attention.combiner import VARIANTS
from ernie_sparse.cli import main
from ernie_sparse.data.images import FASHION_MNIST_DIR
from ernie_sparse.data.pixels import (
    START_TOKEN,
    read_cifar10_pixels,
    read_fashion_mnist_pixels,
    read_text_bytes,
)
from ernie_sparse.models import CausalLM, Encoder, ModelConfig, nats_to_bits, shift_labels
from ernie_sparse.models.presets import merge_overrides
from ernie_sparse.training.config import TrainConfig
from ernie_sparse.training.distributed import World
from ernie_sparse.training.tasks import get_task

VOCAB = 11
CAUSAL_VARIANTS = tuple(name for name, variant in VARIANTS.items() if variant.causal)


def small(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_heads=2,
        num_layers=2,
        mlp_size=24,
        max_positions=64,
        dropout=0.0,
        attention={"dropout": 0.0},
        causal=True,
        layer_norm="pre",
    )
    return ModelConfig(**merge_overrides(values, overrides))


def combiner(variant: str, **overrides) -> ModelConfig:
    span = 2 if VARIANTS[variant].span_power_of_two else 4
    return small(
        attention={"kind": "combiner", "combiner_variant": variant, "combiner_span": span},
        **overrides,
    )


# --- no leakage from the future ---


def input_gradients(model, ids: torch.Tensor, outputs) -> torch.Tensor:
    """[N, N] g[i, j] = |d outputs(model, ids)[0, i] / d embedding_j|, summed over features."""
    word = model.embeddings.word if isinstance(model, Encoder) else model.encoder.embeddings.word
    embeds = word(ids).detach().requires_grad_(True)
    handle = word.register_forward_hook(lambda module, inputs, output: embeds)
    try:
        out = outputs(model, ids)  # [1, N, F]
        rows = []
        for i in range(ids.shape[1]):
            (grad,) = torch.autograd.grad(out[0, i].sum(), embeds, retain_graph=True)
            rows.append(grad[0].abs().sum(-1))
    finally:
        handle.remove()
    return torch.stack(rows)


@pytest.mark.parametrize("config", [small()] + [combiner(v) for v in CAUSAL_VARIANTS],
                         ids=["dense", *CAUSAL_VARIANTS])  # fmt: skip
def test_logits_have_zero_gradient_from_later_tokens(config, generator) -> None:
    torch.manual_seed(0)
    model = CausalLM(config).double().eval()
    ids = torch.randint(0, VOCAB, (1, 13), generator=generator)
    grads = input_gradients(model, ids, lambda m, x: m(x).logits)
    future = torch.ones_like(grads, dtype=torch.bool).triu(1)
    assert torch.equal(grads[future], torch.zeros_like(grads[future]))  # exactly zero
    assert (grads[~future] > 0).all()  # and every earlier token does reach position i


def test_the_leak_check_catches_a_bidirectional_model(generator) -> None:
    torch.manual_seed(0)
    encoder = Encoder(combiner("fixed", causal=False, layer_norm="post")).double().eval()
    ids = torch.randint(0, VOCAB, (1, 9), generator=generator)
    grads = input_gradients(encoder, ids, lambda m, x: m(x).hidden_states)
    assert (grads.triu(1) > 0).any()
    with pytest.raises(ValueError, match="CausalLM needs a causal config"):
        CausalLM(combiner("fixed", causal=False, layer_norm="post"))


# --- the head and its loss ---


def test_causal_lm_loss_is_next_token_cross_entropy_over_real_tokens(generator) -> None:
    torch.manual_seed(0)
    model = CausalLM(small()).eval()
    ids = torch.randint(0, VOCAB, (2, 9), generator=generator)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    labels = shift_labels(ids, mask)
    assert labels[0, :-1].tolist() == ids[0, 1:].tolist() and labels[0, -1] == -100
    assert labels[1, 5:].tolist() == [-100] * 4 and labels[1, :5].tolist() == ids[1, 1:6].tolist()
    out = model(ids, mask, labels=labels)
    assert out.logits.shape == (2, 9, VOCAB)
    scored = labels != -100
    expected = F.cross_entropy(out.logits[scored], labels[scored])
    torch.testing.assert_close(out.loss, expected)
    # Labels under padding are ignored even when the caller left them in.
    raw = ids.roll(-1, dims=1)
    padded_in = model(ids, mask, labels=raw).loss
    torch.testing.assert_close(padded_in, F.cross_entropy(out.logits[mask], raw[mask]))


def test_tied_and_untied_output_projection() -> None:
    tied = CausalLM(small())
    assert tied.output_weight is tied.encoder.embeddings.word.weight
    names = {name for name, _ in tied.named_parameters()}
    assert "output.weight" not in names
    untied = CausalLM(small(), tie_embeddings=False)
    assert untied.output_weight is untied.output.weight
    assert untied.output_weight is not untied.encoder.embeddings.word.weight


def test_nats_to_bits() -> None:
    assert nats_to_bits(math.log(256)) == pytest.approx(8.0)
    assert float(nats_to_bits(torch.tensor(math.log(2)))) == pytest.approx(1.0)


# --- data ---


def write_idx_images(path: Path, images: np.ndarray) -> None:
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + images.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> Path:
    """A Fashion-MNIST-format folder of 6x6 images: a learnable pattern (stripes) + noise."""
    root = tmp_path_factory.mktemp("pixels")
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 200), ("t10k", 20)):
        stripes = np.where(np.arange(6)[None, :, None] % 2 == 0, 200, 10)  # [1, 6, 1]
        noise = rng.integers(0, 8, size=(count, 6, 6))
        write_idx_images(root / f"{prefix}-images-idx3-ubyte.gz", stripes + noise)
    return root


def test_pixel_sequences_start_token_and_splits(tiny_images) -> None:
    train = read_fashion_mnist_pixels(tiny_images, split="train")
    val = read_fashion_mnist_pixels(tiny_images, split="val")
    test = read_fashion_mnist_pixels(tiny_images, split="test")
    assert (len(train), len(val), len(test)) == (180, 20, 20)
    assert train.info.vocab_size == 257 and train.info.max_length == 36
    example = train[3]
    pixels = train.pixels[3].astype(np.int64)
    assert example["labels"].tolist() == pixels.tolist()
    assert example["input_ids"].tolist() == [START_TOKEN, *pixels[:-1].tolist()]


def test_cifar_pixels_interleave_channels_in_raster_order(tmp_path) -> None:
    planes = np.arange(2 * 3072).reshape(2, 3072) % 251  # R plane, G plane, B plane
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with (tmp_path / name).open("wb") as handle:
            pickle.dump({b"data": planes.astype(np.uint8), b"labels": [0, 1]}, handle)
    test = read_cifar10_pixels(tmp_path, split="test")
    tokens = test[0]["labels"]
    assert test.info.max_length == 3072
    rgb = planes[0].reshape(3, 32, 32)
    assert tokens[:6].tolist() == [rgb[0, 0, 0], rgb[1, 0, 0], rgb[2, 0, 0], rgb[0, 0, 1],
                                   rgb[1, 0, 1], rgb[2, 0, 1]]  # fmt: skip
    assert tokens[3 * 32 : 3 * 32 + 3].tolist() == rgb[:, 1, 0].tolist()  # row 1, column 0
    assert len(read_cifar10_pixels(tmp_path, split="train")) == 9  # 90% of 5 x 2


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_pixels_from_the_debian_package() -> None:
    val = read_fashion_mnist_pixels(split="val")
    assert len(val) == 6000 and val[0]["input_ids"].shape == (784,)


def test_byte_chunks_predict_every_byte_once(tmp_path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello world, " * 30)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(bytes(range(256)) * 2)
    (tmp_path / ".hidden").write_bytes(b"\xff" * 1000)  # skipped
    stream = (tmp_path / "a.txt").read_bytes() + (tmp_path / "sub" / "b.txt").read_bytes()
    splits = {s: read_text_bytes(tmp_path, split=s, chunk_length=16) for s in ("train", "val")}
    train = splits["train"]
    assert train.info.vocab_size == 256 and train.info.max_length == 16
    part = stream[: int(len(stream) * 0.9)]
    labels = [int(x) for i in range(len(train)) for x in train[i]["labels"]]
    assert labels == list(part[1:])
    assert all(len(train[i]["input_ids"]) <= 16 for i in range(len(train)))
    first = train[0]
    assert first["input_ids"][1:].tolist() == first["labels"][:-1].tolist()
    assert len(splits["val"]) >= 1
    task = get_task("bytes-lm")
    assert (task.metric, task.higher_is_better) == ("bits_per_byte", False)
    via_task = task.read(TrainConfig(task="bytes-lm", data=str(tmp_path), max_length=16), "train")
    assert len(via_task) == len(train)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "x.txt").write_bytes(b"abc")
    with pytest.raises(ValueError, match="needs at least 2"):
        read_text_bytes(tmp_path / "tiny", split="val", chunk_length=8)


# --- tasks and training ---


def test_image_lm_task_collates_and_evaluates_bits_per_dim(tiny_images) -> None:
    task = get_task("image-lm")
    assert (task.metric, task.higher_is_better) == ("bits_per_dim", False)
    train_config = TrainConfig(task="image-lm", data=str(tiny_images), max_length=36)
    dataset = task.read(train_config, "val")
    batch = task.collate([dataset[0], dataset[1]], torch.Generator())
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 36)
    torch.manual_seed(0)
    model = task.build(small(vocab_size=257), dataset.info)
    metrics = task.evaluate(model, dataset, batch_size=8, world=World())
    assert metrics["examples"] == 20 and metrics["tokens"] == 20 * 36
    assert metrics["bits_per_dim"] == pytest.approx(metrics["loss"] / math.log(2))
    assert 7.5 < metrics["bits_per_dim"] < 8.5  # an untrained model is about uniform
    short = TrainConfig(task="image-lm", data=str(tiny_images), max_length=30)
    with pytest.raises(ValueError, match=r"train\.max_length=30"):
        task.read(short, "val")


def test_tiny_image_lm_run_through_the_cli_lowers_bits_per_dim(tmp_path, tiny_images) -> None:
    values = {
        "model": {
            "preset": "causal-combiner-axial-vertical",
            "vocab_size": 257,
            "hidden_size": 32,
            "num_heads": 2,
            "num_layers": 1,
            "mlp_size": 64,
            "max_positions": 36,
            "attention": {"combiner_span": 6, "dropout": 0.0},
            "dropout": 0.0,
        },
        "train": {
            "task": "image-lm",
            "data": str(tiny_images),
            "max_length": 36,
            "batch_size": 16,
            "lr": 0.01,
            "weight_decay": 0.0,
            "warmup_steps": 5,
            "decay": "cosine",
            "max_steps": 24,
            "eval_every": 12,
            "log_every": 4,
        },
    }
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [x["val_bits_per_dim"] for x in lines if "val_bits_per_dim" in x]
    losses = [x["loss"] for x in lines if "loss" in x and "val_loss" not in x]
    assert len(evals) == 2 and losses[-1] < losses[0]
    assert evals[-1] < 6.0  # uniform is 8; the stripes make most pixels predictable
