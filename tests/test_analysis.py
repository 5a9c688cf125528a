"""Word-order-shift attack: a batch transform that rolls local tokens, labels following
(as each head declares its inputs; tests/test_word_order_heads.py runs it on the heads)."""

from __future__ import annotations

import pytest
import torch

from ernie_sparse.analysis import WordOrderShift, shift_positions
from ernie_sparse.models import SpanQA, TwoTowerMatcher
from ernie_sparse.models.heads import PER_EXAMPLE, PER_TOKEN


def _batch():
    ids = torch.arange(1, 25).view(2, 12)
    mask = torch.arange(12)[None, :] < torch.tensor([[12], [8]])
    return ids.masked_fill(~mask, 0), mask


def test_attack_rolls_local_tokens_and_keeps_globals_and_padding() -> None:
    ids, mask = _batch()
    attack = WordOrderShift(shift=2, num_global=2, inputs=PER_EXAMPLE)
    out = attack({"input_ids": ids, "attention_mask": mask})
    assert out["input_ids"].tolist() == [
        [1, 2, 11, 12, 3, 4, 5, 6, 7, 8, 9, 10],
        [13, 14, 19, 20, 15, 16, 17, 18, 0, 0, 0, 0],
    ]
    assert torch.equal(out["attention_mask"], mask)


def test_token_labels_move_with_their_tokens() -> None:
    ids, mask = _batch()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids * 10}
    out = WordOrderShift(shift=3, num_global=1, inputs=PER_TOKEN)(batch)
    assert torch.equal(out["labels"], out["input_ids"] * 10)
    with pytest.raises(ValueError, match="token labels"):
        WordOrderShift(shift=3, inputs=PER_TOKEN)({**batch, "labels": ids[:, :4]})


def test_span_labels_point_at_the_same_tokens() -> None:
    ids, mask = _batch()
    spans = torch.tensor([[0, 11], [7, -100]])
    out = WordOrderShift(shift=5, num_global=2, inputs=SpanQA.SEQUENCE_INPUTS)(
        {"input_ids": ids, "attention_mask": mask, "labels": spans}
    )
    for b in range(2):
        for which in range(2):
            old = int(spans[b, which])
            if old < 0:
                assert int(out["labels"][b, which]) == old
                continue
            assert out["input_ids"][b, out["labels"][b, which]] == ids[b, old]


def test_single_examples_and_second_documents() -> None:
    ids, mask = _batch()
    attack = WordOrderShift(shift=1, inputs=PER_EXAMPLE)
    single = attack({"input_ids": ids[1], "attention_mask": mask[1], "labels": torch.tensor(3)})
    assert single["input_ids"].tolist() == [20, 13, 14, 15, 16, 17, 18, 19, 0, 0, 0, 0]
    assert int(single["labels"]) == 3
    attack = WordOrderShift(shift=1, inputs=TwoTowerMatcher.SEQUENCE_INPUTS)
    pair = attack({"input_ids": ids, "input_ids_2": ids.flip(0), "attention_mask_2": mask.flip(0)})
    assert pair["input_ids_2"][0].tolist() == [20, 13, 14, 15, 16, 17, 18, 19, 0, 0, 0, 0]


def test_shift_positions_is_inverted_by_the_opposite_shift() -> None:
    positions = torch.tensor([[0, 1, 5, 9], [2, 3, 7, 11]])
    lengths = torch.tensor([10, 8])
    there = shift_positions(positions, lengths, shift=4, num_global=1)
    assert torch.equal(shift_positions(there, lengths, shift=-4, num_global=1), positions)
    assert there[1, 3] == 11  # padding position stays


def test_an_unbound_attack_asks_for_the_heads_declaration() -> None:
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"for_model\(model\)"):
        WordOrderShift(shift=1)({"input_ids": ids, "attention_mask": mask})
