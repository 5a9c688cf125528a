"""Task data: LRA generators (ListOps, Pathfinder), readers of the official formats,
offline stand-ins (Fashion-MNIST, document folders), tokenizers and collate."""

from .base import TaskInfo, TokenDataset
from .collate import pad_collate, pad_sequences
from .errors import BadRecords, DataFormatError

__all__ = [
    "BadRecords",
    "DataFormatError",
    "TaskInfo",
    "TokenDataset",
    "pad_collate",
    "pad_sequences",
]
