"""A training run's folder: the one place that knows its file names.

    RUN/
      config.yaml             the resolved config, written when the run starts
      checkpoint.pt           the latest checkpoint (tensors and plain types only)
      metrics.jsonl           one JSON record per logged or evaluated step
      best.safetensors        weights at the best validation metric so far
      model.safetensors       the final weights (the run finished)
      reachability.json       how far information can travel in this setting
      eval-SPLIT[-rollK].json what ``ernie-sparse evaluate`` measured

Files are replaced atomically (written beside as ``NAME.tmp``, then renamed), so a
kill at any moment leaves the previous version or the new one, never half of one;
the exception is metrics.jsonl, appended line by line, whose half-written last line
``read_metrics`` drops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..files import load_safetensors, load_yaml
from ..safety import inside

WEIGHTS = {"best": "best.safetensors", "final": "model.safetensors"}


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # --- where things are ---

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def reachability(self) -> Path:
        return self.path / "reachability.json"

    def weights(self, which: str) -> Path:
        """``best`` or ``final`` weights (the file may not exist yet)."""
        if which not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {which!r}")
        return self.path / WEIGHTS[which]

    def eval_result(self, split: str, roll: int | None = None) -> Path:
        return self.path / f"eval-{split}{'' if roll is None else f'-roll{roll}'}.json"

    @staticmethod
    def temporary(path: Path) -> Path:
        return path.with_name(path.name + ".tmp")

    # --- what state the run is in ---

    def is_run(self) -> bool:
        """The folder holds a run's config (it was started)."""
        return self.config.is_file()

    def has_progress(self) -> bool:
        """Something was trained here: a checkpoint or logged metrics."""
        return self.checkpoint.is_file() or self.metrics.is_file()

    def is_finished(self) -> bool:
        return self.weights("final").is_file()

    def require_run(self) -> None:
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such run folder")
        if not self.is_run():
            raise FileNotFoundError(f"{self.path}: not a run directory (no config.yaml)")

    def existing_weights(self, which: str) -> Path:
        """The ``best`` or ``final`` weights file, refused by name when it is missing."""
        self.require_run()
        path = self.weights(which)
        if not path.is_file():
            state = "finished" if self.is_finished() else "not finished (resume it)"
            raise FileNotFoundError(f"{path}: no {which} weights; the run is {state}")
        return path

    def weights_file(self, weights: str) -> Path:
        """``best`` or ``final``, or the name of a weights file inside the run folder (a
        name or symlink leading outside it is refused)."""
        if weights in WEIGHTS:
            self.existing_weights(weights)  # missing: says whether the run finished
        else:
            self.require_run()
        path = inside(self.path, WEIGHTS.get(weights, weights))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such weights file in the run folder")
        return path

    def load_weights_into(self, model: nn.Module, weights: str = "best") -> Path:
        """Load the run's ``weights`` into ``model``; a file that does not fit the model
        is refused naming both files."""
        path = self.weights_file(weights)
        try:
            model.load_state_dict(load_safetensors(path))
        except RuntimeError as error:  # size mismatch, missing or unexpected keys
            lines = [line.strip() for line in str(error).strip().splitlines()]
            detail = " ".join(lines[1:3]) or lines[0]
            raise ValueError(f"{path} does not fit the model of {self.config} ({detail})") from None
        return path

    def unfinished_start(self) -> list[Path]:
        """What a start killed before its first checkpoint leaves behind."""
        names = ["checkpoint.pt.tmp", "metrics.jsonl", "best.safetensors"]
        names += ["best.safetensors.tmp", "model.safetensors.tmp"]
        return [self.path / name for name in names if (self.path / name).is_file()]

    # --- reading and writing ---

    def config_values(self) -> dict:
        """The saved config as plain values, for readers that need no RunConfig."""
        self.require_run()
        values = load_yaml(self.config)
        if not isinstance(values, dict) or not isinstance(values.get("model"), dict):
            raise ValueError(f"{self.config}: no model section (not a run's config.yaml?)")
        return values

    def read_metrics(self) -> list[dict]:
        """Every metrics record; a half-written last line (a kill mid-write) is dropped,
        a bad line before the last names the file and line."""
        if not self.metrics.is_file():
            return []
        lines = [line for line in self.metrics.read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "step" not in record:
                    raise ValueError("no step")
            except ValueError:
                if number == len(lines):
                    break
                raise ValueError(
                    f"{self.metrics}: line {number} is not a metrics record ({line[:60]!r}); "
                    "the file is corrupt"
                ) from None
            records.append(record)
        return records

    def write_text(self, path: Path, text: str) -> None:
        """Replace ``path`` (a file of this run) atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        temporary = self.temporary(path)
        temporary.write_text(text)
        temporary.replace(path)

    def write_json(self, path: Path, value) -> None:
        self.write_text(path, json.dumps(value, indent=1) + "\n")
