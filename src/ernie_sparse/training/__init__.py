"""Training: the loop, schedules, checkpoints, evaluation, data parallelism."""

from .config import RunConfig, TrainConfig
from .loop import Run

__all__ = ["Run", "RunConfig", "TrainConfig"]
