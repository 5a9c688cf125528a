"""Checks of tensor values (token ids in range, masks, labels) that also compile.

Eagerly a failed check raises ``ValueError`` with a message that names the values
found. Under ``torch.compile`` reading a value back would break the graph (and on
a GPU wait for it), so there the same condition becomes an asynchronous assert in
the graph: it still stops the run, with a shorter message that names the rule (on
CUDA as a device-side assert, which ends the process's CUDA context).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def require(ok: torch.Tensor, rule: str, describe: Callable[[], str] | None = None) -> None:
    """Refuse the input unless the bool tensor ``ok`` holds everywhere. ``rule`` says what
    must hold; ``describe()``, called eagerly on failure only, may name what was found."""
    if torch.compiler.is_compiling():
        torch._assert_async(ok.all(), rule)
    elif not bool(ok.all()):
        raise ValueError(describe() if describe is not None else rule)
