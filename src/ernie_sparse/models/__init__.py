"""Models: configuration, the encoder (with HST) and task heads; baselines are presets."""

from .causal import CausalLM, nats_to_bits, shift_labels
from .config import AttentionConfig, HSTConfig, ModelConfig, SAORConfig
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
    "AttentionConfig",
    "CausalLM",
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
    "nats_to_bits",
    "preset",
    "shift_labels",
]
