"""Checkpoints written atomically (temp file + rename): a kill never leaves half a file.

A checkpoint holds only tensors and plain types (dicts, lists, tuples, numbers, strings,
None), so it is read with ``torch.load(weights_only=True)`` and loading a run folder that
someone else sent can never run code: numpy's RNG state is stored as a tensor and turned
back into numpy's form on load.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..safety import torch_load_weights_only


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def rng_states() -> dict[str, Any]:
    states = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(_numpy_state_from_plain(states["numpy"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _numpy_state_to_plain(state: tuple) -> tuple:
    """numpy's legacy RNG state (name, uint32 keys, pos, has_gauss, cached) with the keys
    as an int64 tensor: ``weights_only`` loading admits no numpy arrays."""
    name, keys, *rest = state
    return (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), *rest)


def _numpy_state_from_plain(state: tuple) -> tuple:
    name, keys, *rest = state
    return (name, np.asarray(keys, dtype=np.int64).astype(np.uint32), *rest)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A ``checkpoint.pt`` of tensors and plain types; anything else is refused, never run.
    A truncated or corrupt file is a ``ValueError`` naming it."""
    try:
        checkpoint = torch_load_weights_only(
            path,
            advice="either it was written by an older ernie-sparse (before checkpoints held "
            "only tensors) or it is unsafe. Start the run again, or resume it with the version "
            "that wrote it if you trust the file",
        )
    except (RuntimeError, EOFError) as error:  # e.g. "failed finding central directory"
        detail = str(error).split(". ")[0].strip() or type(error).__name__
        raise ValueError(
            f"{path}: not a readable checkpoint ({detail}): it is truncated or corrupt; "
            "move it away to train the run again from step 0"
        ) from None
    keys = checkpoint if isinstance(checkpoint, dict) else {}
    missing = [key for key in CHECKPOINT_KEYS if key not in keys]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
    return checkpoint


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "loop", "rng", "pattern_generator")
