"""Warm starts (``train.init_from``): a run whose encoder starts from a checkpoint.

One path for every head and every command (``train``, ``pretrain --from``):

1. :func:`warm_start_config`, while the run's config is resolved: the checkpoint's
   model config, from its config file alone (config.json, or a run's config.yaml;
   the weights are not read), with the run's model values on top.
2. :func:`warm_start`, once the run has built its model: the checkpoint's weights,
   read once, go in through ``models.pretrained.load_checkpoint_into``, the loader
   ``load_pretrained_head`` uses too: the encoder, a masked LM's head when both have
   one, and one HST policy, the one ``ernie-sparse convert`` applies by default:
   hierarchical attention the checkpoint lacks starts as a copy of its layer's
   pretrained sparse attention. Task layers keep their initialization.

A BERT / RoBERTa directory, a converted one and a training run's folder all work
(see ``models.pretrained``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..files import load_safetensors
from ..models import ModelConfig, preset
from ..models.presets import preset_fields
from ..models.pretrained import (
    EXPECTED_UNUSED,
    FIXED_FIELDS,
    Checkpoint,
    Loaded,
    checkpoint_from_state,
    load_checkpoint_into,
    override_config,
    read_checkpoint,
    read_checkpoint_config,
)
from .run_dir import RunDir

log = logging.getLogger("ernie_sparse.training")
HST_POLICY = "copy"  # hierarchical attention the checkpoint lacks: a copy of the sparse one


def warm_start_config(
    directory: str | Path, model_values: dict[str, Any], *, preset_name: str | None = None
) -> ModelConfig:
    """The checkpoint's model config, then the fields ``preset_name`` sets (its sparse
    pattern, HST, SAOR), then this run's ``model_values``. Reads the checkpoint's
    config file only.

    Fields fixed by the checkpoint's weights (sizes, vocabulary, norms: the loader's
    ``FIXED_FIELDS``) may appear in the run's values only with the checkpoint's own
    value (so a preset file can spell out RoBERTa-base's sizes); a different value is
    an error naming it.
    """
    base = read_source_config(directory)
    differ = [
        f"model.{key}={model_values[key]!r} (checkpoint: {getattr(base, key)!r})"
        for key in FIXED_FIELDS
        if key in model_values and model_values[key] != getattr(base, key)
    ]
    if differ:
        raise ValueError(
            f"{directory}: {', '.join(differ)}; these are fixed by the checkpoint's weights "
            "(leave them out of a warm start's config)"
        )
    chosen = dict(model_values)
    if preset_name:  # the preset's own fields, resolved for the checkpoint's sizes
        sizes = {key: getattr(base, key) for key in FIXED_FIELDS}
        full = preset(preset_name, **{**model_values, **sizes}).to_dict()
        chosen = preset_fields(preset_name, full, given=chosen)
    overrides = {k: v for k, v in chosen.items() if k not in FIXED_FIELDS}
    return override_config(base, overrides)


def warm_start(module: nn.Module, directory: str | Path, config: ModelConfig) -> Loaded:
    """Load the checkpoint in ``directory`` into ``module`` (a task head built from
    ``config``, which :func:`warm_start_config` resolved from it); its weights are read
    once. Logs what was loaded, copied and left as initialized."""
    overrides = {k: v for k, v in config.to_dict().items() if k not in FIXED_FIELDS}
    checkpoint = read_source_checkpoint(directory, **overrides)
    if checkpoint.config != config:
        raise ValueError(
            f"{directory}: the checkpoint no longer matches this run's model config "
            "(it was resolved from another checkpoint?)"
        )
    loaded = load_checkpoint_into(module, checkpoint, hst_init=HST_POLICY)
    log.warning(
        "warm start from %s: %d tensors loaded, %d copied to the hierarchical attention; "
        "left initialized: %s",
        directory,
        len(loaded.loaded),
        len(loaded.copied),
        ", ".join(loaded.fresh) or "none",
    )
    unused = [k for k in checkpoint.unused if not EXPECTED_UNUSED.search(k)] + loaded.unused
    if unused:
        log.warning("warm start: checkpoint tensors this model lacks: %s", ", ".join(unused))
    return loaded


def _run_folder(directory: str | Path) -> RunDir | None:
    """The training run in ``directory``, or None for a Hugging Face / converted folder."""
    run = RunDir(directory)
    return run if run.is_run() and not (run.path / "config.json").is_file() else None


def read_source_config(directory: str | Path) -> ModelConfig:
    """The checkpoint's model config from its config file alone (weights not read)."""
    run = _run_folder(directory)
    if run is None:
        return read_checkpoint_config(directory)
    return ModelConfig.from_dict(run.config_values()["model"])


def read_source_checkpoint(directory: str | Path, **overrides: Any) -> Checkpoint:
    """The checkpoint in ``directory``: a HF / converted folder, or a training run's best
    weights (else its final ones) with the model section of its config."""
    run = _run_folder(directory)
    if run is None:
        return read_checkpoint(directory, **overrides)
    values = run.config_values()
    weights = next((run.weights(w) for w in ("best", "final") if run.weights(w).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{run.path}: the run has no weights yet (train it first)")
    is_mlm = values.get("train", {}).get("task") == "mlm"
    state = load_safetensors(weights)
    return checkpoint_from_state(
        values["model"], state, is_mlm=is_mlm, source=run.path, **overrides
    )
