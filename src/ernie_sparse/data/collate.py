"""Batching: right-pad token ids with 0 and return padding masks (True = real token)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.heads import FIRST_SEQUENCE, SECOND_SEQUENCE, SequenceInputs

# The sequences of single-document and two-document (retrieval) examples: a batch
# gets those its examples have.
SEQUENCES = SequenceInputs(sequences=(FIRST_SEQUENCE, SECOND_SEQUENCE))


def pad_sequences(sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D id tensors -> ids [B, n_max] (0-padded) and attention mask [B, n_max]."""
    if not sequences:
        raise ValueError("cannot pad an empty list of sequences")
    lengths = torch.tensor([len(s) for s in sequences])
    if int(lengths.min()) == 0:
        raise ValueError(f"sequence {int(lengths.argmin())} of the batch is empty")
    ids = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True, padding_value=0)
    mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    return ids, mask


def pad_collate(
    examples: Sequence[dict], inputs: SequenceInputs = SEQUENCES
) -> dict[str, torch.Tensor]:
    """Examples {input_ids, labels[, input_ids_2]} -> a model batch with masks: each
    sequence the head declares (``inputs``, see models.heads) that the examples hold is
    padded, with its mask under the declared name."""
    batch: dict[str, torch.Tensor] = {}
    for sequence in inputs.sequences:
        if sequence.ids in examples[0]:
            ids, mask = pad_sequences([example[sequence.ids] for example in examples])
            batch[sequence.ids], batch[sequence.mask] = ids, mask
    batch["labels"] = torch.tensor([example["labels"] for example in examples])
    return batch
