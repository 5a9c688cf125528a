"""Run configuration: the model (a preset + overrides) and the training settings.

A YAML file holds ``model`` and ``train`` sections and at most one ``base``
(another preset whose values it overrides). ``key=value`` overrides on the
command line use dotted keys: ``train.lr=0.01``, ``model.hst.pooling=max``,
``model.attention.block_size=32``, ``train.qa.doc_stride=64``.

The settings only some tasks read sit in one group per task family: ``train.mlm``,
``train.qa``, ``train.text``. A run folder saved before they were grouped (flat
``train.doc_stride`` ...) still loads: ``TrainConfig.from_dict`` moves the old keys.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..cli_args import merge_nested as merge_values  # re-exported for run configs
from ..files import load_mapping, load_yaml
from ..models import ModelConfig, preset
from ..models.config import (
    LEGACY_MODEL_KEYS,
    _check_choice,
    _check_positive,
    build_dataclass,
    migrate_legacy_keys,
    refuse_legacy_keys,
)
from .run_dir import RunDir
from .tasks import get_task
from .warm_start import warm_start_config

DECAYS = ("rsqrt", "cosine", "linear", "constant")
# TrainConfig keys saved before the task-only settings were grouped -> their place now.
LEGACY_TRAIN_KEYS: dict[str, str] = {
    "val_fraction": "mlm.val_fraction",
    "mask_probability": "mlm.mask_probability",
    "doc_stride": "qa.doc_stride",
    "max_answer_tokens": "qa.max_answer_tokens",
    "global_prefix": "qa.global_prefix",
    "val_from_train": "text.val_from_train",
}


def compile_backends() -> list[str]:
    """The torch.compile backends this torch has (debug ones such as aot_eager included)."""
    import torch._dynamo

    return torch._dynamo.list_backends(exclude_tags=())


def config_dirs() -> tuple[Path, ...]:
    """Where presets are looked up: ./configs, then the repository's configs/."""
    return (Path.cwd() / "configs", Path(__file__).resolve().parents[3] / "configs")


@dataclass
class MLMConfig:
    """Masked language modelling (task mlm)."""

    val_fraction: float = 0.05  # share of the corpus's documents held out for validation
    mask_probability: float = 0.15  # share of tokens chosen for prediction (80/10/10)

    def __post_init__(self) -> None:
        _check_number(
            "train.mlm.val_fraction", self.val_fraction, low=0.0, high=1.0, open_high=True
        )
        _check_number(
            "train.mlm.mask_probability", self.mask_probability, low=0.0, high=1.0,
            open_low=True, open_high=True,
        )  # fmt: skip


@dataclass
class QAConfig:
    """Question answering (tasks triviaqa and wikihop): a global question prefix, windows."""

    global_prefix: int = 0  # tokens of the global question prefix; = model.attention.num_global
    doc_stride: int = 128  # triviaqa: tokens between the starts of consecutive context windows
    max_answer_tokens: int = 30  # triviaqa: longest predicted answer span, in tokens

    def __post_init__(self) -> None:
        _check_at_least_zero("train.qa.global_prefix", self.global_prefix)
        for name in ("doc_stride", "max_answer_tokens"):
            _check_positive(f"train.qa.{name}", getattr(self, name))


@dataclass
class TextConfig:
    """LRA text classification (task text: IMDB, which has no validation split)."""

    val_from_train: float = 0.0  # share of train held out for validation; 0 = test (LRA)

    def __post_init__(self) -> None:
        _check_number(
            "train.text.val_from_train", self.val_from_train, low=0.0, high=1.0, open_high=True
        )


@dataclass
class TrainConfig:
    task: str = "listops"  # a registered task (training/tasks.py); a wrong name lists them
    data: str = ""  # the task's data folder or file (config.yaml stores it absolute)
    max_length: int = 2000  # tokens per document (longer ones are cut, counted)
    batch_size: int = 32  # global batch (split across processes), per optimizer step
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size / grad_accum each)
    max_steps: int = 1000  # optimizer steps
    lr: float = 5e-2  # peak learning rate
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not on biases and norms)
    warmup_steps: int = 1000  # linear warmup to lr
    decay: Literal["rsqrt", "cosine", "linear", "constant"] = "rsqrt"  # after warmup
    clip_norm: float = 1.0  # gradient norm clipping; 0 = off
    eval_every: int = 200  # steps between evaluations on the validation split
    eval_max_batches: int = 0  # 0 = the whole validation split
    patience: int = 0  # stop after this many evaluations without improvement; 0 = never
    stop_at: float = 0.0  # stop once the validation metric reaches this (probes); 0 = never
    seed: int = 0  # parameters, data order, dropout
    log_every: int = 10  # steps between metrics.jsonl lines
    bf16: bool = False  # bf16 autocast (CUDA)
    grad_checkpointing: bool = False  # recompute each layer in backward to save memory
    compile: str = ""  # torch.compile backend for the model ("inductor"; "aot_eager" traces only)
    length_buckets: int = 0  # pad batches to one of this many lengths (compile once each); 0 = off
    tensorboard: bool = False  # also write scalars to RUN_DIR/tensorboard (pip install tensorboard)
    init_from: str = ""  # pretrained folder (BERT/RoBERTa or converted) to warm-start the encoder
    tokenizer: str = ""  # tokenizer.json of subword tasks; "" = init_from's (classification: bytes)
    mlm: MLMConfig = field(default_factory=MLMConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        """Every field checked by name, so a bad value fails at load time, not mid-run."""
        for name, part in (("mlm", MLMConfig), ("qa", QAConfig), ("text", TextConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, part(**value))
            elif not isinstance(value, part):
                raise TypeError(f"train.{name} must be a mapping, got {value!r}")
        for name in ("max_length", "batch_size", "grad_accum", "max_steps", "eval_every"):
            _check_positive(f"train.{name}", getattr(self, name))
        _check_positive("train.log_every", self.log_every)
        for name in ("warmup_steps", "eval_max_batches", "patience", "seed", "length_buckets"):
            _check_at_least_zero(f"train.{name}", getattr(self, name))
        if self.grad_accum > self.batch_size:
            raise ValueError(
                f"train.grad_accum={self.grad_accum} is more micro-batches than "
                f"train.batch_size={self.batch_size} has examples"
            )
        for name in ("lr", "weight_decay", "clip_norm", "stop_at"):
            _check_number(f"train.{name}", getattr(self, name), low=0.0)
        _check_choice("train.decay", self.decay, DECAYS)
        for name in ("bf16", "grad_checkpointing", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"train.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("task", "data", "init_from", "tokenizer", "compile"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"train.{name} must be a string, got {getattr(self, name)!r}")
        if not self.task:
            raise ValueError("train.task must name a task (e.g. listops)")
        if self.compile:
            _check_choice("train.compile", self.compile, tuple(compile_backends()))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A saved train section; one of older versions, with the task-only settings as
        flat keys (LEGACY_TRAIN_KEYS), loads too (models.config.migrate_legacy_keys)."""
        values = migrate_legacy_keys(values, LEGACY_TRAIN_KEYS, section="train.")
        return build_dataclass(cls, values, prefix="train.")


def _check_at_least_zero(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _check_number(
    name: str,
    value: float,
    *,
    low: float,
    high: float = math.inf,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """A finite real number in [low, high] (open at either end when asked)."""
    left, right = "(" if open_low else "[", ")" if open_high else "]"
    interval = f"in {left}{low:g}, {high:g}{right}" if high < math.inf else f">= {low:g}"
    if open_low and high == math.inf:
        interval = f"> {low:g}"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if (
        not number
        or not math.isfinite(value)
        or value < low
        or value > high
        or (open_low and value == low)
        or (open_high and value == high)
    ):
        raise ValueError(f"{name} must be a number {interval}, got {value!r}")


@dataclass
class RunConfig:
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    model_preset: str = "ernie-sparse"  # the preset the model section started from
    source: str = ""  # the --preset or --config a command-line run started from; "" = none

    def to_dict(self) -> dict[str, Any]:
        values = {"source": self.source} if self.source else {}  # absent when none
        train = dataclasses.asdict(self.train)
        for key in ("data", "init_from", "tokenizer"):  # the run folder works from any cwd
            train[key] = absolute_path(train[key])
        return {
            **values,
            "model_preset": self.model_preset,
            "model": self.model.to_dict(),
            "train": train,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        return cls(
            model=ModelConfig.from_dict(values["model"]),
            train=TrainConfig.from_dict(values.get("train", {})),
            model_preset=values.get("model_preset", "ernie-sparse"),
            source=values.get("source") or "",
        )


def absolute_path(path: str) -> str:
    """A relative path as an absolute one from the working directory ("" stays "")."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


def find_preset(name: str) -> Path:
    """``lra/listops-tiny`` -> configs/lra/listops-tiny.yaml; a path to a YAML file as is."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for folder in config_dirs():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted(
        p.relative_to(folder).with_suffix("").as_posix()
        for folder in config_dirs()
        if folder.is_dir()
        for p in folder.rglob("*.yaml")
    )
    raise ValueError(f"unknown preset {name!r}; known: {', '.join(dict.fromkeys(known))}")


def load_run(run_dir: str | Path) -> RunConfig:
    """The saved RunConfig of the run folder ``run_dir`` (refused by name if it is none)."""
    run = RunDir(run_dir)
    run.require_run()
    return load_run_config(run.config)


def load_run_config(path: Path) -> RunConfig:
    """A run's saved ``config.yaml``; a truncated, corrupt or stale file names itself."""
    values = load_mapping(path, what="a run config with model and train sections")
    if not isinstance(values.get("model"), dict):
        raise ValueError(f"{path}: no model section (truncated, or not a run's config.yaml?)")
    try:
        return RunConfig.from_dict(values)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{path}: {error}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    values = load_yaml(path) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a preset must be a mapping with model/train sections")
    unknown = sorted(set(values) - {"base", "model", "train"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {', '.join(unknown)}")
    return values


def preset_values(name: str) -> dict[str, Any]:
    """The preset's model/train values with its base (one level) merged under them."""
    path = find_preset(name)
    values = _read_yaml(path)
    if "base" in values:
        base = _read_yaml(find_preset(values.pop("base")))
        if "base" in base:
            raise ValueError(f"{path}: its base has a base too; presets allow one level")
        values = merge_values(base, values)
    return values


def resolve(values: dict[str, Any], *, vocab_size: int | None = None) -> RunConfig:
    """Preset values (+ overrides) -> RunConfig; the model section is ``preset`` + fields."""
    model_values = dict(values.get("model", {}))
    name = model_values.pop("preset", "ernie-sparse")
    refuse_legacy_keys(model_values, LEGACY_MODEL_KEYS, section="model.")
    for group in ("attention", "hst", "saor"):
        if group in model_values and not isinstance(model_values[group], dict):
            raise ValueError(f"model.{group} must be a mapping")
    train_values = values.get("train", {})
    if isinstance(train_values, dict):
        refuse_legacy_keys(train_values, LEGACY_TRAIN_KEYS, section="train.")
    train = build_dataclass(TrainConfig, train_values, prefix="train.")
    if train.init_from:  # a warm start: the checkpoint's model, this run's model values on top
        named = values.get("model", {}).get("preset")  # applied only when named
        model = warm_start_config(train.init_from, model_values, preset_name=named)
        name = named or "pretrained"
    else:
        if vocab_size is not None:
            model_values.setdefault("vocab_size", vocab_size)
        model = preset(name, **model_values)
    get_task(train.task)  # an unknown task is refused here, naming the known ones
    return RunConfig(model=model, train=train, model_preset=name)
