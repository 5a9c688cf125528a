"""Learning-rate schedules: linear warmup, then the decay of ERNIE-Sparse Table 11."""

from __future__ import annotations

import math

import torch

DECAYS = ("rsqrt", "cosine", "linear", "constant")


def lr_factor(step: int, *, warmup: int, total: int, decay: str) -> float:
    """Multiplier of ``lr`` at optimizer step ``step`` (0-based).

    ``rsqrt`` is LRA's ``linear_warmup * rsqrt_decay`` (ERNIE-Sparse Table 11's "root
    square"): min(1, s / warmup) / sqrt(max(s, warmup)), so the peak is lr / sqrt(warmup).
    ``cosine`` and ``linear`` warm up linearly to lr, then decay to 0 at ``total``.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be rsqrt, cosine, linear or constant; got {decay!r}")
    step += 1
    if decay == "rsqrt":
        return min(1.0, step / max(warmup, 1)) / math.sqrt(max(step, warmup, 1))
    if warmup and step <= warmup:
        return step / warmup
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress  # linear


def make_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup: int, total: int, decay: str
) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(0, warmup=warmup, total=total, decay=decay)  # refuse a bad decay now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup=warmup, total=total, decay=decay)
    )
