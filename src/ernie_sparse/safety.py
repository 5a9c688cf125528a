"""Files others send are opened without running code, and names read from them stay in
their folder.

- ``inside``: a name from an index or metadata (a shard, an image path) joined to its
  folder, refused if absolute, with a ``..`` part, or a symlink out.
- ``torch_load_weights_only``: ``torch.load(weights_only=True)``; a file that needs more
  than tensors and plain types is refused with a message naming it.

Low level on purpose: it imports nothing from the package, so models, data and training
can all use it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any


class OutsideFolderError(ValueError):
    """A name that would lead outside its folder; the message names it and the folder."""

    def __init__(self, folder: Path, name: str, why: str) -> None:
        super().__init__(f"{name!r} leads outside {folder} ({why}); refusing to read it")
        self.folder = folder
        self.name = name


def inside(folder: Path, name: str) -> Path:
    """``folder / name`` if ``name`` stays inside ``folder``, else ``OutsideFolderError``.

    Refused: an empty or absolute name, any ``..`` part (even one that would come back
    inside), and a name whose resolved path (symlinks followed) is not under the resolved
    folder.
    """
    folder = Path(folder)
    text = str(name)
    if not text or "\x00" in text:
        raise OutsideFolderError(folder, text, "empty or not a file name")
    relative = Path(text)
    if relative.is_absolute() or relative.anchor:
        raise OutsideFolderError(folder, text, "an absolute path")
    if ".." in relative.parts:
        raise OutsideFolderError(folder, text, "it contains '..'")
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise OutsideFolderError(folder, text, "a symlink out of the folder")
    return path


def torch_load_weights_only(path: Path, *, advice: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file holding anything else is
    refused (``ValueError`` naming the file, the global it needs and ``advice``), never run.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:
            what = f"it holds more than tensors and plain types (it needs {found.group(1)})"
            risk = "loading it would run code"
        else:  # e.g. "Unsupported operand 149": a raw pickle, or not a torch file at all
            stop = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(error))
            what = "it is not a file of tensors and plain types" + (
                f" ({stop.group(1).strip()})" if stop else ""
            )
            risk = "it is corrupt, or loading it would run code"
        raise ValueError(f"{path}: not loaded: {what}, and {risk}; {advice}") from None
