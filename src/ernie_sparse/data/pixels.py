"""Language-modelling data: images as pixel sequences, text files as byte sequences.

Every example is ``{"input_ids", "labels"}`` (1-D int64, same length) with
``labels[i]`` the token that follows input position ``i``:

- Images (bits per dim): one sequence per image in raster order, input =
  ``[START] + pixels[:-1]``, labels = ``pixels``, so every pixel is predicted and
  the sequence keeps the image's length (784 for Fashion-MNIST, 3072 for CIFAR-10).
  CIFAR-10 keeps its three channels interleaved per pixel (R, G, B of pixel 0,
  then pixel 1, ...): the raster order of Child et al.'s Sparse Transformer,
  whose image setup Combiner appendix E.1 follows.
- Text (bits per byte): the files' bytes as one stream, cut into chunks of
  ``chunk_length`` inputs; chunk k predicts bytes ``k * chunk_length + 1 ..``, so
  every byte but the first is predicted exactly once.

Splits: images as elsewhere in the package (train = training set[:90%], val =
[90%:], test = the test set); text streams train = [0, 90%), val = [90%, 95%),
test = [95%, 100%) of the bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import TaskInfo
from .images import FASHION_MNIST_DIR, check_split, read_cifar_split, read_fashion_mnist_images

PIXEL_LEVELS = 256  # 8-bit pixel values
START_TOKEN = PIXEL_LEVELS  # the input before the first pixel
IMAGE_LM_VOCAB_SIZE = PIXEL_LEVELS + 1
BYTE_VOCAB_SIZE = 256
TEXT_SPLITS = {"train": (0.0, 0.9), "val": (0.9, 0.95), "test": (0.95, 1.0)}


class PixelLMDataset(Dataset):
    """Images [N, T] (uint8, raster order) as next-pixel examples."""

    def __init__(self, pixels: np.ndarray, *, task: str = "image-lm") -> None:
        if pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be uint8 [N, T], got {pixels.dtype} {pixels.shape}")
        self.pixels = pixels
        self.info = TaskInfo(task, IMAGE_LM_VOCAB_SIZE, PIXEL_LEVELS, pixels.shape[1])

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> dict:
        labels = torch.from_numpy(self.pixels[index].astype(np.int64))  # [T]
        inputs = torch.cat([torch.tensor([START_TOKEN]), labels[:-1]])  # [T]
        return {"input_ids": inputs, "labels": labels}


class ByteLMDataset(Dataset):
    """A byte stream cut into next-byte examples of at most ``chunk_length`` tokens."""

    def __init__(self, stream: np.ndarray, *, chunk_length: int, task: str = "bytes-lm") -> None:
        if chunk_length < 1:
            raise ValueError(f"chunk_length must be >= 1, got {chunk_length}")
        if stream.ndim != 1 or len(stream) < 2:
            raise ValueError(f"a byte stream needs at least 2 bytes, got {stream.shape}")
        self.stream = stream
        self.chunk_length = chunk_length
        self.info = TaskInfo(task, BYTE_VOCAB_SIZE, BYTE_VOCAB_SIZE, chunk_length)

    def __len__(self) -> int:
        return -(-(len(self.stream) - 1) // self.chunk_length)  # ceil((S - 1) / chunk)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"chunk {index} out of range [0, {len(self)})")
        start = index * self.chunk_length
        window = torch.from_numpy(
            self.stream[start : start + self.chunk_length + 1].astype(np.int64)
        )  # [<= chunk + 1]
        return {"input_ids": window[:-1], "labels": window[1:]}


def read_fashion_mnist_pixels(
    root: str | Path = FASHION_MNIST_DIR, *, split: str = "train"
) -> PixelLMDataset:
    """Fashion-MNIST 28x28 images as 784-pixel sequences (no padding)."""
    images = read_fashion_mnist_images(root, split)  # [N, rows, cols]
    return PixelLMDataset(np.ascontiguousarray(images.reshape(len(images), -1)))


def read_cifar10_pixels(root: str | Path, *, split: str = "train") -> PixelLMDataset:
    """CIFAR-10 python batches as 3072-token sequences (channels interleaved per pixel)."""
    planes, _ = read_cifar_split(root, split)  # [N, channel, row, col]
    images = planes.transpose(0, 2, 3, 1)  # [N, row, col, channel]
    return PixelLMDataset(np.ascontiguousarray(images.reshape(len(images), -1)))


def read_text_bytes(root: str | Path, *, split: str, chunk_length: int) -> ByteLMDataset:
    """Every non-hidden file under ``root`` (or the file ``root``), in path order, as
    one byte stream; ``split`` takes its contiguous share (see the module docstring)."""
    root = Path(root)
    check_split(split)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    else:
        raise FileNotFoundError(f"{root}: no such file or folder of text files")
    stream = np.frombuffer(b"".join(p.read_bytes() for p in files), dtype=np.uint8)
    low, high = TEXT_SPLITS[split]
    part = stream[int(len(stream) * low) : int(len(stream) * high)]
    if len(part) < 2:
        raise ValueError(
            f"{root}: {len(stream)} bytes in {len(files)} files leave the {split} split "
            f"{len(part)} bytes; it needs at least 2 (add text)"
        )
    return ByteLMDataset(part, chunk_length=chunk_length)
