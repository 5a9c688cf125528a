"""Length buckets: few padded shapes, and padding that changes no result."""

from __future__ import annotations

import pytest
import torch

from ernie_sparse.models import preset
from ernie_sparse.models.heads import (
    FIRST_SEQUENCE,
    PER_EXAMPLE,
    PER_TOKEN,
    SECOND_SEQUENCE,
    MaskedLM,
    SequenceClassifier,
    SequenceInputs,
)
from ernie_sparse.training.length_buckets import bucket_lengths, bucketed, pad_to_bucket


def test_bucket_lengths_double_up_to_the_longest_in_whole_blocks() -> None:
    assert bucket_lengths(4096, 3, multiple=64) == (1024, 2048, 4096)
    assert bucket_lengths(2000, 3, multiple=64) == (512, 1024, 2000)  # the longest stays
    assert bucket_lengths(100, 8, multiple=64) == (64, 100)  # duplicates merge
    with pytest.raises(ValueError, match="count, longest and multiple >= 1"):
        bucket_lengths(100, 0)


def test_batches_are_padded_to_their_bucket_with_masked_padding() -> None:
    batch = {
        "input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]),
        "attention_mask": torch.tensor([[True, True, True], [True, True, False]]),
        "labels": torch.tensor([[1, -100, 2], [-100, 3, -100]]),
    }
    padded = pad_to_bucket(batch, PER_TOKEN, (2, 5, 9))
    assert padded["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]]
    assert padded["attention_mask"].sum().item() == 5 and padded["attention_mask"].shape[1] == 5
    assert padded["labels"][:, 3:].eq(-100).all()
    example_labels = {**batch, "labels": torch.tensor([0, 1])}
    assert torch.equal(
        pad_to_bucket(example_labels, PER_EXAMPLE, (8,))["labels"], torch.tensor([0, 1])
    )
    with pytest.raises(ValueError, match="holds 3 tokens, more than the longest length bucket"):
        pad_to_bucket(batch, PER_TOKEN, (2,))


def test_multiple_choice_and_two_towers_pad_each_sequence() -> None:
    declared = SequenceInputs(batch_dims=2)
    ids = torch.ones(2, 3, 5, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": ids.bool()}
    assert pad_to_bucket(batch, declared, (8,))["input_ids"].shape == (2, 3, 8)
    towers = SequenceInputs(sequences=(FIRST_SEQUENCE, SECOND_SEQUENCE))
    pair = {
        "input_ids": torch.ones(1, 3, dtype=torch.long),
        "attention_mask": torch.ones(1, 3, dtype=torch.bool),
        "input_ids_2": torch.ones(1, 6, dtype=torch.long),
        "attention_mask_2": torch.ones(1, 6, dtype=torch.bool),
    }
    padded = pad_to_bucket(pair, towers, (4, 8))
    assert padded["input_ids"].shape[1] == 4 and padded["input_ids_2"].shape[1] == 8


@pytest.mark.parametrize("head", ["classifier", "mlm"])
def test_padding_to_a_bucket_changes_no_output(head: str) -> None:
    config = preset(
        "ernie-sparse", vocab_size=40, hidden_size=32, num_heads=2, num_layers=2, mlp_size=64,
        max_positions=128, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = (SequenceClassifier(config, 3) if head == "classifier" else MaskedLM(config)).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (2, 45), generator=gen)
    mask = torch.ones(2, 45, dtype=torch.bool)
    mask[1, 30:] = False
    batch = {"input_ids": ids, "attention_mask": mask}
    padded = pad_to_bucket(batch, model.SEQUENCE_INPUTS, bucket_lengths(128, 2, multiple=16))
    assert padded["input_ids"].shape[1] == 64
    with torch.no_grad():
        plain, bucketed_out = model(**batch).logits, model(**padded).logits
    if head == "mlm":
        bucketed_out = bucketed_out[:, :45]
    torch.testing.assert_close(bucketed_out, plain, atol=1e-5, rtol=1e-5)


def test_bucketed_collate_pads_what_the_collate_made() -> None:
    def collate(examples, generator):
        del generator
        return {
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "attention_mask": torch.ones(len(examples), 3, dtype=torch.bool),
        }

    wrapped = bucketed(collate, PER_EXAMPLE, (4, 8))
    batch = wrapped([{"input_ids": torch.arange(3)}], torch.Generator())
    assert batch["input_ids"].shape == (1, 4)
