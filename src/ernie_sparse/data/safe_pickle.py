"""Pickles of plain data and numpy arrays (the CIFAR-10 "python version" batches), read
without running code: a restricted unpickler admits exactly the globals a pickled numpy
array needs and refuses every other one by name.

What a batch needs (checked by pickling one): ``numpy.core.multiarray._reconstruct``
(numpy 1.x and the official files, written by Python 2) or ``numpy._core.multiarray
._reconstruct`` (numpy 2), ``numpy.ndarray``, ``numpy.dtype``, and for a protocol 0-2
pickle written by Python 3, ``_codecs.encode(text, "latin1")`` for its bytes (and
``bytes()`` for an empty one: both admitted in exactly that use). Dicts,
lists, ints, floats and bytes need no global at all. Read with ``encoding="bytes"`` as the
official loader does, so the keys are ``b"data"``, ``b"labels"``.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

ALLOWED_TYPES = "only numpy arrays, lists, dicts, bytes are allowed"

_reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own, whatever its module


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes (protocol < 3): latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}: only latin-1")
    return codecs.encode(text, "latin1", errors)


def _bytes(*args: Any) -> bytes:
    """``bytes()`` as Python 3 pickles an empty bytes object (protocol < 3): nothing else."""
    if args:
        raise pickle.UnpicklingError("bytes() with arguments: only the empty bytes")
    return b""


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _bytes,
}


class UnsafePickleError(ValueError):
    """A pickle that names a global outside the allowed ones (it could run code).

    A ``ValueError``, not a ``pickle.UnpicklingError``: readers that turn unpickling errors
    into "not a CIFAR-10 batch" let this message through as it is."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, handle: BinaryIO, path: Path) -> None:
        super().__init__(handle, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (__builtin__.getattr) as Python 3 spells them, as pickle does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"{self.path}: refusing to load {module}.{name} from a pickle ({ALLOWED_TYPES})"
            )
        return allowed


def load_data_pickle(path: str | Path) -> Any:
    """The pickle at ``path`` if it holds only plain data and numpy arrays.

    Raises ``UnsafePickleError`` (a ``ValueError``) naming the file and the refused
    global; nothing in the file is called except numpy's array reconstruction.
    """
    path = Path(path)
    with path.open("rb") as handle:
        return _RestrictedUnpickler(handle, path).load()
