"""Models: configuration, the encoder (with HST) and task heads; baselines are presets."""

from .config import HSTConfig, ModelConfig, SAORConfig
from .encoder import Encoder, EncoderOutput
from .heads import (
    TASKS,
    MaskedLM,
    MultipleChoice,
    SequenceClassifier,
    SpanQA,
    TaskOutput,
    TwoTowerMatcher,
)
from .presets import PRESETS, preset

__all__ = [
    "PRESETS",
    "TASKS",
    "Encoder",
    "EncoderOutput",
    "HSTConfig",
    "MaskedLM",
    "ModelConfig",
    "MultipleChoice",
    "SAORConfig",
    "SequenceClassifier",
    "SpanQA",
    "TaskOutput",
    "TwoTowerMatcher",
    "preset",
]
