"""Image files: CIFAR-10's python batches and Fashion-MNIST's IDX files, and the split
every image task here shares (LRA Image): train = the training set[:90%], val =
[90%:], test = the test set.

The Debian package ``dataset-fashion-mnist`` installs the four gzipped IDX files
under /usr/share/datasets/fashion-mnist/: the offline stand-in for LRA Image
(28x28 padded to 32x32). CIFAR-10 comes as the user brings it ("python version":
``data_batch_1..5``, ``test_batch``), read with a restricted unpickler that runs no code.
The readers of tokens are ``lra.read_cifar10``, ``read_fashion_mnist`` (below) and
``pixels`` (image language models); this module is what they share.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from .base import TaskInfo, TokenDataset
from .safe_pickle import load_data_pickle

SPLITS = ("train", "val", "test")
TRAIN_SHARE = 0.9  # of the training set; the rest is the validation split
IMAGE_VOCAB_SIZE = 256  # grayscale pixel values; images are always 1024 long, never padded
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
CIFAR_CLASSES = (
    "airplane automobile bird cat deer dog frog horse ship truck".split()  # noqa: SIM905
)
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be train, val or test, not {split!r}")


def split_part(split: str, count: int) -> slice:
    """The rows of ``split`` in its source: the first 90% of the training set (train), the
    rest (val), or all of the test set (test)."""
    check_split(split)
    if split == "test":
        return slice(None)
    cut = int(count * TRAIN_SHARE)
    return slice(None, cut) if split == "train" else slice(cut, None)


# --- CIFAR-10 ---


def is_cifar10(root: str | Path) -> bool:
    """Whether ``root`` holds CIFAR-10 python batches (a training or the test batch)."""
    root = Path(root)
    return any((root / name).is_file() for name in (CIFAR_TRAIN_BATCHES[0], CIFAR_TEST_BATCH))


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One python batch: ([N, 3072] uint8 rows, R plane then G then B; N labels 0-9)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing CIFAR-10 batch (python version)")
    try:
        batch = load_data_pickle(path)  # restricted: refuses anything but data, never runs it
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = [int(x) for x in batch[b"labels"]]
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError) as error:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({error!r})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: data must be [N, 3072] with N labels, got {data.shape}")
    bad = [i for i, label in enumerate(labels) if not 0 <= label < 10]
    if bad:
        raise ValueError(f"{path}: record {bad[0]} has label {labels[bad[0]]}, not 0-9")
    return data, labels


def read_cifar_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """([N, 3, 32, 32] uint8 images, [N] labels) of ``split`` (see the module)."""
    root = Path(root)
    check_split(split)
    names = [CIFAR_TEST_BATCH] if split == "test" else list(CIFAR_TRAIN_BATCHES)
    batches = [read_cifar_batch(root / name) for name in names]
    images = np.concatenate([data for data, _ in batches]).reshape(-1, 3, 32, 32)
    labels = np.asarray([label for _, batch_labels in batches for label in batch_labels])
    part = split_part(split, len(images))
    return images[part], labels[part]


# --- Fashion-MNIST ---


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


def find_idx(root: Path, stem: str) -> Path:
    """``root/stem.gz`` or ``root/stem``."""
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"{root / stem}[.gz]: missing (install the Debian package dataset-fashion-mnist)"
    )


def read_fashion_mnist_images(root: str | Path, split: str) -> np.ndarray:
    """[N, 28, 28] uint8 images of ``split`` (see the module)."""
    root = Path(root)
    check_split(split)
    prefix = "t10k" if split == "test" else "train"
    images = read_idx(find_idx(root, f"{prefix}-images-idx3-ubyte"), IMAGES_MAGIC)
    if images.ndim != 3:
        raise ValueError(f"{root}: images must be [N, rows, cols], got {images.shape}")
    return images[split_part(split, len(images))]


def read_fashion_mnist(
    root: str | Path = FASHION_MNIST_DIR, *, split: str = "train"
) -> TokenDataset:
    """Fashion-MNIST as 1024 pixel tokens (28x28 centred in 32x32 with zeros)."""
    root = Path(root)
    check_split(split)
    prefix = "t10k" if split == "test" else "train"
    images = read_idx(find_idx(root, f"{prefix}-images-idx3-ubyte"), IMAGES_MAGIC)
    labels = read_idx(find_idx(root, f"{prefix}-labels-idx1-ubyte"), LABELS_MAGIC)
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise ValueError(f"{root}: {images.shape} images do not match {labels.shape} labels")
    part = split_part(split, len(images))
    images, labels = images[part], labels[part]
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2))).reshape(len(images), -1)
    dataset = TokenDataset(
        TaskInfo("image", IMAGE_VOCAB_SIZE, 10, 1024), label_names=FASHION_CLASSES
    )
    for row, label in zip(padded.astype(np.int64), labels, strict=True):
        dataset.add(int(label), row)
    return dataset.finish(str(root))
