"""What ``--resume`` may change in a run. The run's saved ``config.yaml`` is its config;
the preset is not read again.

On the command line of a resume (``key=value`` overrides, ``--max-steps``, ``--data``):

- ``train.max_steps`` may change, to at least the steps the run has done: a finished run
  of 4 steps resumed with ``--max-steps 8`` trains steps 5 to 8. The learning-rate
  schedule is rebuilt for the new total (the step count and optimizer state are kept):
  cosine and linear decay then reach 0 at the new total, so the learning rate goes up
  again a little at the extension; rsqrt and constant do not depend on the total.
- the logging and evaluation cadence may change: ``train.log_every``,
  ``train.eval_every``, ``train.tensorboard``.
- anything else (learning rate, model shape, data, seed, ...) is refused, naming the
  fields: train with other settings in another ``--out``.

Each change is said in a printed line. ``--preset`` / ``--config`` on resume must name
the one the run started from (recorded as ``source`` in its config.yaml); for a run
without that record, the preset's values must agree with the run's config except the
fields above, whose values in the preset are not applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import same_path
from .config import RunConfig, find_preset, merge_values, preset_values, resolve

RESUMABLE = {
    "train.max_steps": "the run trains on to step {new}; the learning-rate schedule is "
    "rebuilt for the new total",
    "train.log_every": "a metrics.jsonl line every {new} steps from now on",
    "train.eval_every": "an evaluation every {new} steps from now on",
    "train.tensorboard": "TensorBoard scalars {on_off} from now on",
}
PATH_FIELDS = ("train.data", "train.init_from", "train.tokenizer")


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (old value, new value) where two configs differ (paths compared
    as resolved paths; ``source`` is not a setting)."""
    before, after = flatten(old.to_dict()), flatten(new.to_dict())
    changed = {}
    for key in sorted((set(before) | set(after)) - {"source"}):
        left, right = before.get(key), after.get(key)
        if left == right or (key in PATH_FIELDS and same_path(left, right)):
            continue
        changed[key] = (left, right)
    return changed


def apply_resume_changes(
    saved: RunConfig, asked: dict[str, Any], *, run_dir: Path
) -> tuple[RunConfig, list[str]]:
    """The saved config with the command line's ``asked`` values (nested, as
    ``parse_overrides`` gives) applied where a resume allows; the lines that say so.
    Any other change is a ``ValueError`` naming each field."""
    unknown = sorted(set(asked) - {"model", "train"})
    if unknown:
        raise ValueError(
            f"unknown override section(s) {', '.join(unknown)}; keys start with model. or train."
        )
    model_asked = dict(asked.get("model") or {})
    preset_name = model_asked.pop("preset", None)
    top = {"model": model_asked, "train": asked.get("train") or {}}
    values = merge_values(saved.to_dict(), top)
    candidate = RunConfig.from_dict(values)  # a wrong key, type or value is refused by name
    changed = differences(saved, candidate)
    if preset_name is not None and preset_name != saved.model_preset:
        changed = {"model.preset": (saved.model_preset, preset_name), **changed}
    refused = [f"{key} ({old!r} -> {new!r})" for key, (old, new) in changed.items()
               if key not in RESUMABLE]  # fmt: skip
    if refused:
        raise ValueError(
            f"{run_dir}: cannot change on resume: {', '.join(refused)} (only "
            f"{', '.join(RESUMABLE)} may). Resume without them (the run's config.yaml is "
            "used), or train with them in another --out"
        )
    for key in PATH_FIELDS:  # the same file named another way: keep the saved spelling
        name = key.removeprefix("train.")
        setattr(candidate.train, name, getattr(saved.train, name))
    candidate.source = saved.source
    notes = [_note(key, old, new) for key, (old, new) in changed.items()]
    return candidate, notes


def _note(key: str, old: Any, new: Any) -> str:
    on_off = "on" if new else "off"
    return f"{key}: {old!r} -> {new!r} on resume: " + RESUMABLE[key].format(new=new, on_off=on_off)


def same_source(given: str, saved: str) -> bool:
    """Whether two --preset / --config names lead to the same file."""
    if given == saved:
        return True
    try:
        return find_preset(given).resolve() == find_preset(saved).resolve()
    except ValueError:
        return False


def check_source(
    run: RunConfig, given: str, *, flag: str, asked: dict[str, Any], run_dir: Path
) -> list[str]:
    """Refuse a --preset / --config on resume that is not the run's (naming it); the
    lines saying which of its values are not applied."""
    if run.source:
        if same_source(given, run.source):
            return []
        raise ValueError(
            f"{flag} {given} does not match the run in {run_dir}, which started from "
            f"{run.source}; resume without {flag} (the run's config.yaml is used), "
            "or use another --out"
        )
    source = resolve(merge_values(preset_values(given), asked))
    changed = differences(run, source)
    refused = [f"{key}: {old!r} in the run, {new!r} in {given}"
               for key, (old, new) in changed.items() if key not in RESUMABLE]  # fmt: skip
    if refused:
        raise ValueError(
            f"{flag} {given} does not match the run in {run_dir} ({'; '.join(refused)}); "
            f"resume without {flag} (the run's config.yaml is used), or use another --out"
        )
    return [f"{key}={new!r} of {flag} {given} not applied: the run keeps {old!r} (set it on "
            "the command line to change it)" for key, (old, new) in changed.items()]  # fmt: skip
