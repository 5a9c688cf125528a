"""What every task dataset is: token-id examples in memory, with the task's facts.

An example is a dict: ``input_ids`` (1-D int64 tensor, no padding), ``labels``
(an int) and, for two-document tasks, ``input_ids_2``. Inputs longer than the
task's ``max_length`` are cut to it (LRA's convention); each cut is counted in
``truncated`` and logged, never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from .errors import BadRecords, DataFormatError

log = logging.getLogger("ernie_sparse.data")


@dataclass
class TaskInfo:
    task: str  # listops | text | retrieval | image | pathfinder | documents
    vocab_size: int  # ids are in [0, vocab_size); 0 is padding
    num_labels: int  # classes
    max_length: int  # tokens per document after truncation
    far_token: int | None = None  # probes: an input token the readout must hear from


@dataclass
class TokenDataset(Dataset):
    """A list of examples plus the task's facts and what reading them dropped or cut."""

    info: TaskInfo
    examples: list[dict] = field(default_factory=list)
    bad: BadRecords = field(default_factory=BadRecords)  # malformed records skipped
    truncated: int = 0  # documents cut to info.max_length
    raw_lengths: list[int] = field(default_factory=list)  # tokens per document before any cut
    label_names: Sequence[str] = ()  # label id -> name, where the source has names

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]

    def add(self, labels: int, input_ids: Sequence[int], input_ids_2: Sequence[int] | None = None):
        """Append an example, cutting each document to ``max_length`` (counted)."""
        example = {"input_ids": self._cut(input_ids), "labels": int(labels)}
        if input_ids_2 is not None:
            example["input_ids_2"] = self._cut(input_ids_2)
        self.examples.append(example)

    def _cut(self, ids: Sequence[int]) -> torch.Tensor:
        self.raw_lengths.append(len(ids))
        limit = self.info.max_length
        if len(ids) > limit:
            self.truncated += 1
            ids = ids[:limit]
        return torch.as_tensor(ids, dtype=torch.long)

    def finish(self, source: str, *, empty: bool = True) -> TokenDataset:
        """Log what was skipped or cut while reading ``source``; returns self. With
        ``empty=False`` a source that holds no record at all is an error naming it (one
        whose records were all skipped as bad is not: ``bad`` says what happened)."""
        if not self.examples and not self.bad.count and not empty:
            raise DataFormatError(source, None, "no examples: it holds no records")
        if self.bad.count:
            log.warning("%s: %s", source, self.bad.summary())
        if self.truncated:
            log.info(
                "%s: %d of %d documents cut to %d tokens",
                source,
                self.truncated,
                len(self),
                self.info.max_length,
            )
        return self
