"""Fashion-MNIST from its IDX files, padded to 32x32: the offline stand-in for LRA Image.

The Debian package ``dataset-fashion-mnist`` installs the four gzipped IDX files
under /usr/share/datasets/fashion-mnist/. Splits mirror LRA Image:
train = train[:90%], val = train[90%:], test = t10k.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .base import TaskInfo, TokenDataset
from .lra import IMAGE_VOCAB_SIZE

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes: big-endian magic, dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ValueError(f"{path}: unreadable ({error})") from None
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: IDX magic number {found}, expected {magic}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(magic % 256)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(dims))
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} bytes of data for dimensions {dims}")
    return data.reshape(dims)


def read_fashion_mnist(
    root: str | Path = FASHION_MNIST_DIR, *, split: str = "train"
) -> TokenDataset:
    """Fashion-MNIST as 1024 pixel tokens (28x28 centred in 32x32 with zeros)."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, not {split!r}")
    prefix = "t10k" if split == "test" else "train"
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"), IMAGES_MAGIC)
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"), LABELS_MAGIC)
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise ValueError(f"{root}: {images.shape} images do not match {labels.shape} labels")
    if split != "test":
        cut = int(len(images) * 0.9)
        part = slice(None, cut) if split == "train" else slice(cut, None)
        images, labels = images[part], labels[part]
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2))).reshape(len(images), -1)
    dataset = TokenDataset(
        TaskInfo("image", IMAGE_VOCAB_SIZE, 10, 1024), label_names=FASHION_CLASSES
    )
    for row, label in zip(padded.astype(np.int64), labels, strict=True):
        dataset.add(int(label), row)
    return dataset.finish(str(root))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"{root / stem}[.gz]: missing (install the Debian package dataset-fashion-mnist)"
    )
