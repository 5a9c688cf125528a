"""Masked LM data: masking statistics and reproducibility, corpus packing, bits per character."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ernie_sparse.data.corpus import (
    char_counts,
    find_text_files,
    pack,
    read_corpus,
    split_files,
    train_tokenizer,
)
from ernie_sparse.data.masking import MaskingSpec, mask_tokens
from ernie_sparse.data.tokenize import Subword
from ernie_sparse.models.heads import TaskOutput
from ernie_sparse.training.distributed import World
from ernie_sparse.training.finetune_tasks import evaluate_mlm, mlm_collate

SPEC = MaskingSpec(mask_id=4, vocab_size=1000)


def sample_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [64, 512] in [5, 1000) with <s> (1) first, </s> (2) in the middle, padding at the end."""
    ids = torch.randint(5, 1000, (64, 512), generator=generator)
    ids[:, 0], ids[:, 200] = 1, 2
    lengths = torch.randint(300, 513, (64,), generator=generator)
    real = torch.arange(512)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~real, 0)
    maskable = real & (ids > 4)
    return ids, maskable


def test_masking_rates_80_10_10(generator) -> None:
    ids, maskable = sample_batch(generator)
    masked, labels = mask_tokens(ids, maskable, SPEC, torch.Generator().manual_seed(7))
    chosen = labels != -100
    assert chosen.sum() / maskable.sum() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = chosen & (masked == SPEC.mask_id)
    as_random = chosen & (masked != SPEC.mask_id) & (masked != ids)
    kept = chosen & (masked == ids)
    total = float(chosen.sum())
    assert float(as_mask.sum()) / total == pytest.approx(0.8, abs=0.02)
    assert float(as_random.sum()) / total == pytest.approx(0.1, abs=0.015)
    assert float(kept.sum()) / total == pytest.approx(0.1, abs=0.015)
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes


def test_special_tokens_and_padding_are_never_masked(generator) -> None:
    ids, maskable = sample_batch(generator)
    for seed in range(5):
        masked, labels = mask_tokens(ids, maskable, SPEC, torch.Generator().manual_seed(seed))
        assert (labels[~maskable] == -100).all()
        assert torch.equal(masked[~maskable], ids[~maskable])


def test_the_same_generator_seed_gives_the_same_masks(generator) -> None:
    ids, maskable = sample_batch(generator)
    first = mask_tokens(ids, maskable, SPEC, torch.Generator().manual_seed(3))
    again = mask_tokens(ids, maskable, SPEC, torch.Generator().manual_seed(3))
    other = mask_tokens(ids, maskable, SPEC, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])


def test_every_sequence_gets_a_masked_token() -> None:
    ids = torch.arange(5, 45).view(4, 10)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[3] = False  # nothing maskable: nothing chosen
    spec = MaskingSpec(mask_id=4, vocab_size=100, probability=1e-6)
    _, labels = mask_tokens(ids, maskable, spec, torch.Generator().manual_seed(0))
    assert (labels != -100).sum(dim=1).tolist() == [1, 1, 1, 0]


def test_masking_spec_refuses_bad_rates() -> None:
    with pytest.raises(ValueError, match="probability"):
        MaskingSpec(mask_id=4, vocab_size=10, probability=0.0)
    with pytest.raises(ValueError, match="sum to at most 1"):
        MaskingSpec(mask_id=4, vocab_size=10, mask_fraction=0.95, random_fraction=0.1)


# --- corpus ---


def test_pack_keeps_every_token_once() -> None:
    for length in (1, 9, 10, 11, 29, 30):
        stream = list(range(100, 100 + length))
        pieces = pack(stream, max_length=11)  # 10 stream tokens per piece
        scored = [t for start, new in pieces for t in stream[new : start + 10]]
        assert scored == stream, length
        assert all(len(stream[start : start + 10]) == 10 for start, _ in pieces) or length < 10


def test_char_counts_cover_the_text() -> None:
    text = "  hello world\n\nbye"
    offsets = [(2, 7), (7, 13), (13, 14), (14, 15), (15, 18)]
    counts = char_counts(offsets, len(text))
    assert counts == [7, 6, 1, 1, 3] and sum(counts) == len(text)


def write_corpus(root: Path, documents: int = 12, seed: int = 0) -> Path:
    """Small English-like documents in nested folders, as .txt/.md/.rst (and one .json to skip)."""
    import random

    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the old man", "my sister", "the bird"]
    verbs = ["sat on", "looked at", "jumped over", "walked to", "found"]
    objects = ["the mat", "a tree", "the river", "the house", "a small box"]
    for number in range(documents):
        folder = root / ("nested/deeper" if number % 4 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
            for _ in range(rng.randint(4, 20))
        ]
        suffix = (".txt", ".md", ".rst")[number % 3]
        (folder / f"doc{number}{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "ignored.json").write_text("{}")
    return root


def test_corpus_packs_every_token_with_its_characters(tmp_path) -> None:
    root = write_corpus(tmp_path / "corpus")
    files = find_text_files(root)
    assert len(files) == 12 and all(p.suffix != ".json" for p in files)
    tokenizer = Subword(train_tokenizer(files, tmp_path / "tokenizer.json", vocab_size=300))
    assert tokenizer.vocab_size <= 300 and (tokenizer.pad, tokenizer.mask) == (0, 4)
    total_tokens, total_chars = 0, 0
    for split in ("train", "val"):
        data = read_corpus(root, tokenizer, split=split, max_length=64, val_fraction=0.2)
        chosen = split_files(files, root, split=split, val_fraction=0.2)
        texts = [p.read_text() for p in chosen]
        expected = sum(len(tokenizer.encode(t)) for t in texts)
        assert data.tokens == expected + len(texts)  # plus one </s> per document
        maskable = sum(int(e["maskable"].sum()) for e in data.examples)
        assert maskable == expected  # each document token maskable in exactly one example
        chars = sum(int(e["chars"][e["maskable"]].sum()) for e in data.examples)
        assert chars == data.characters == sum(len(t) for t in texts)
        assert all(len(e["input_ids"]) == 64 for e in data.examples)  # the last is filled
        assert all(int(e["input_ids"][0]) == tokenizer.cls for e in data.examples)
        total_tokens += expected
        total_chars += chars
    assert len(split_files(files, root, split="val", val_fraction=0.2)) == 3  # ceil(0.2 * 12)
    assert total_chars == sum(len(p.read_text()) for p in files)


def test_bits_per_character_by_hand(tmp_path) -> None:
    root = write_corpus(tmp_path / "corpus")
    tokenizer = Subword(
        train_tokenizer(find_text_files(root), tmp_path / "tokenizer.json", vocab_size=300)
    )
    data = read_corpus(root, tokenizer, split="val", max_length=64, val_fraction=0.2)

    class Uniform(nn.Module):
        def forward(self, input_ids, attention_mask=None, labels=None) -> TaskOutput:
            return TaskOutput(torch.zeros(*input_ids.shape, tokenizer.vocab_size))

    metrics = evaluate_mlm(Uniform(), data, batch_size=3, world=World())
    # every masked token costs log2(V) bits; count the masked tokens' characters directly
    generator = torch.Generator().manual_seed(1234)  # evaluation's fixed seed
    chars = 0
    for start in range(0, len(data), 3):
        examples = [data[i] for i in range(start, min(start + 3, len(data)))]
        labels = mlm_collate(examples, generator)["labels"]
        for row, example in enumerate(examples):
            chosen = labels[row, : len(example["chars"])] != -100
            chars += int(example["chars"][chosen].sum())
    tokens = metrics["masked_tokens"]
    assert metrics["loss"] == pytest.approx(math.log(tokenizer.vocab_size))
    assert metrics["bpc"] == pytest.approx(tokens * math.log2(tokenizer.vocab_size) / chars)
    assert 0.1 < tokens / sum(int(e["maskable"].sum()) for e in data.examples) < 0.25
