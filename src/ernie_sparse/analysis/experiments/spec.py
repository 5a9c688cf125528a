"""What an experiment trains: its cells (model variants), seeds and shared settings.

An experiment is data (``ExperimentSpec``), saved as ``experiment.json`` in its
folder, so any process can pick up its unfinished runs. A *run* is one cell
trained with one seed, in ``runs/<cell key>/seed-<s>/``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...models.config import LEGACY_MODEL_KEYS, migrate_legacy_keys
from ...training.config import LEGACY_TRAIN_KEYS, RunConfig, merge_values, preset_values, resolve

KINDS = ("ablation", "bottleneck", "robustness", "hst-route")
PROBE_TASKS = ("probe-copy-far", "probe-match", "probe-majority")
SEED_KEYS = ("train.seed", "model.attention.pattern_seed")  # per run, from the experiment's seeds
SCALES = ("tiny", "paper")


@dataclass(frozen=True)
class Cell:
    key: str  # folder name under runs/, e.g. "0-ernie-sparse"
    label: str  # as the paper's table names it, e.g. "#0 ERNIE-Sparse"
    model: dict[str, Any]  # model-section overrides (a "preset" plus fields)


@dataclass
class ExperimentSpec:
    kind: str  # ablation | bottleneck | robustness
    task: str  # listops | text | retrieval | image | pathfinder
    scale: str = "tiny"  # the preset size: configs/lra/<task>-<scale>.yaml
    seeds: tuple[int, ...] = (0,)  # train.seed and model.attention.pattern_seed of each run
    cells: tuple[Cell, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)  # on top of preset + cell
    attack_rolls: tuple[int, ...] = ()  # robustness: word-order-shift ks (each evaluated)
    global_tokens: tuple[int, ...] = ()  # bottleneck: the x axis
    patterns: tuple[str, ...] = ()  # bottleneck: one curve pair (ST, HST) per pattern

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"experiment kind must be one of {', '.join(KINDS)}; got {self.kind!r}"
            )
        if self.scale not in SCALES:
            raise ValueError(f"--scale must be tiny or paper, got {self.scale!r}")
        if not self.seeds:
            raise ValueError("an experiment needs at least one seed")
        keys = [cell.key for cell in self.cells]
        if len(set(keys)) != len(keys):
            raise ValueError(f"cell keys must be distinct, got {keys}")

    @property
    def preset(self) -> str:
        return task_preset(self.task, self.scale)

    def run_config(self, cell: Cell, seed: int) -> RunConfig:
        """preset < the command line's overrides < the cell's model settings < the seed."""
        given = set(_dotted(self.overrides, ""))
        clashes = sorted(given & {*_dotted(cell.model, "model."), *SEED_KEYS})
        if clashes:
            raise ValueError(
                f"override {', '.join(clashes)} would change what the {self.kind} experiment "
                "varies across its runs (cells, or seeds: use --seeds); leave it out"
            )
        values = merge_values(preset_values(self.preset), self.overrides)
        values = merge_values(values, {"model": cell.model})
        attention = cell.model.get("attention", {})
        if "pattern_params" in attention:  # a cell's pattern comes whole, never merged
            values["model"]["attention"]["pattern_params"] = dict(attention["pattern_params"])
        seeded = {"train": {"seed": seed}, "model": {"attention": {"pattern_seed": seed}}}
        return resolve(merge_values(values, seeded))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / "experiment.json.tmp"
        temporary.write_text(json.dumps(asdict(self), indent=1) + "\n")
        temporary.replace(folder / "experiment.json")

    @classmethod
    def load(cls, folder: Path) -> ExperimentSpec:
        path = Path(folder) / "experiment.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not an experiment folder (no experiment.json)")
        values = _migrate(json.loads(path.read_text()))
        values["cells"] = tuple(Cell(**cell) for cell in values["cells"])
        values["seeds"] = tuple(values["seeds"])
        for name in ("global_tokens", "attack_rolls", "patterns"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)


def _migrate(values: dict[str, Any]) -> dict[str, Any]:
    """An experiment.json of an older version: its model and train settings with the
    config's legacy flat keys moved (as a run folder's config.yaml loads), and one
    ``attack_roll`` k (0 = no attacked evaluation) as ``attack_rolls``."""
    if "attack_roll" in values:
        if "attack_rolls" in values:
            raise ValueError("experiment.json has both attack_roll (old) and attack_rolls")
        roll = values.pop("attack_roll")
        values["attack_rolls"] = [roll] if roll else []
    for cell in values.get("cells", ()):
        cell["model"] = migrate_legacy_keys(cell["model"], LEGACY_MODEL_KEYS, section="model.")
    overrides = values.get("overrides") or {}
    for section, legacy in (("model", LEGACY_MODEL_KEYS), ("train", LEGACY_TRAIN_KEYS)):
        if section in overrides:
            overrides[section] = migrate_legacy_keys(
                overrides[section], legacy, section=f"{section}."
            )
    return values


def task_preset(task: str, scale: str) -> str:
    """configs/lra/<task>-<scale>, or configs/probe/<kind>-<scale> for probe-<kind>."""
    if task in PROBE_TASKS:
        return f"probe/{task.removeprefix('probe-')}-{scale}"
    return f"lra/{task}-{scale}"


def _dotted(values: dict[str, Any], prefix: str) -> list[str]:
    """{"hst": {"pooling": "max"}} -> ["hst.pooling"] (with ``prefix``)."""
    keys = []
    for key, value in values.items():
        if isinstance(value, dict):
            keys += _dotted(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


# --- the papers' experiments ---

# ERNIE-Sparse Table 5 rows; Table 6's MEAN pooling is row #0 itself.
ABLATION_CELLS = (
    Cell("0-ernie-sparse", "#0 ERNIE-Sparse", {"preset": "ernie-sparse"}),
    Cell("1-no-hst", "#1 w/o HST", {"preset": "ernie-sparse-no-hst"}),
    Cell("2-no-saor", "#2 w/o SAOR", {"preset": "ernie-sparse-no-saor"}),
    Cell("3-no-saor-ws-hst", "#3 w/o SAOR + ws in HST", {"preset": "ernie-sparse-ws-hst"}),
    Cell("4-no-saor-rdrop", "#4 w/o SAOR + R-Drop", {"preset": "ernie-sparse-rdrop"}),
    Cell("pool-max", "ERNIE-Sparse (MAX)", {"preset": "ernie-sparse", "hst": {"pooling": "max"}}),
    Cell("pool-cls", "ERNIE-Sparse (CLS)", {"preset": "ernie-sparse", "hst": {"pooling": "cls"}}),
)
TABLE5_KEYS = ABLATION_CELLS[0].key, *(cell.key for cell in ABLATION_CELLS[1:5])
TABLE6_ROWS = (  # (label, cell key)
    ("ERNIE-Sparse (MEAN)", "0-ernie-sparse"),
    ("ERNIE-Sparse (MAX)", "pool-max"),
    ("ERNIE-Sparse (CLSg-Only)", "pool-cls"),
)
ROBUSTNESS_CELLS = (
    Cell("ernie-sparse", "ERNIE-Sparse", {"preset": "ernie-sparse"}),
    Cell("no-saor", "w/o SAOR", {"preset": "ernie-sparse-no-saor"}),
)

# A pattern's fields, set in full by a cell (a probe preset names its own pattern).
PATTERN_FIELDS: dict[str, dict[str, Any]] = {  # model.attention settings
    "dense": {"pattern": "dense", "pattern_params": {}},
    "window": {"pattern": "window", "pattern_params": {"width": 1}},
    "bigbird": {"pattern": "bigbird", "pattern_params": {"window_width": 1, "num_random": 3}},
    # one random block per row and head: at probe lengths some draws leave the gap open
    "bigbird-1": {"pattern": "bigbird", "pattern_params": {"window_width": 1, "num_random": 1}},
}
_NO_HST = {"enabled": False}
_SAOR_OFF = {"alpha": 0.0}
_SAOR_ON = {"alpha": 5.0, "mode": "roll"}


def _model(
    pattern: str,
    *,
    hst: bool,
    saor: bool,
    hst_options: dict | None = None,
    attention: dict | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A cell's model section: the pattern (+ ``attention`` settings), HST and SAOR on
    or off, other fields."""
    preset = "ernie-sparse" if hst else "bigbird"
    values = {"preset": preset, **fields}
    values["attention"] = {**PATTERN_FIELDS[pattern], **(attention or {})}
    values["hst"] = {**(hst_options or {}), "enabled": hst}
    values["saor"] = dict(_SAOR_ON if saor else _SAOR_OFF)
    return values


def robustness_cells(task: str) -> tuple[Cell, ...]:
    """Table 7's two rows; on a probe also the controls that say what is specific to
    sparse attention: BigBird and dense attention with and without the same SAOR."""
    if task not in PROBE_TASKS:
        return ROBUSTNESS_CELLS
    return (
        Cell("dense", "dense", _model("dense", hst=False, saor=False)),
        Cell("dense-saor", "dense + SAOR", _model("dense", hst=False, saor=True)),
        Cell("bigbird", "BigBird", _model("bigbird", hst=False, saor=False)),
        Cell("bigbird-saor", "BigBird + SAOR", _model("bigbird", hst=False, saor=True)),
        Cell("no-saor", "ERNIE-Sparse w/o SAOR", _model("bigbird", hst=True, saor=False)),
        Cell("ernie-sparse", "ERNIE-Sparse", _model("bigbird", hst=True, saor=True)),
    )


# The HST-route study (issue: is the route token -> representative -> representatives ->
# readout learned?): HST variants at BERT's initialization and at a width-scaled one.
HST_VARIANTS: dict[str, dict[str, Any]] = {
    "representative": {"distribute": "representative"},  # updates at the representative only
    "block": {"distribute": "block"},  # every token of the block gets its update
    "warm-start": {"distribute": "representative", "init": "sparse"},  # as the sparse layer's
}
HST_ROUTE_INITS = (0.02, 0.125)  # BERT's std; 1 / sqrt(hidden 64)


def hst_route_cells(inits: tuple[float, ...] = HST_ROUTE_INITS) -> tuple[Cell, ...]:
    if not inits or any(not std > 0 for std in inits):
        raise ValueError(f"--inits needs initialization stds > 0, got {inits}")
    cells = []
    for std in inits:
        dense = _model("dense", hst=False, saor=False, initializer_range=std)
        cells.append(Cell(f"dense-i{std}", f"dense, init {std}", dense))
        for name, options in HST_VARIANTS.items():
            model = _model(
                "window", hst=True, saor=False, hst_options=options, initializer_range=std
            )
            cells.append(Cell(f"hst-{name}-i{std}", f"HST ({name}), init {std}", model))
    control = _model("window", hst=False, saor=False, initializer_range=max(inits))
    cells.append(Cell("st-window", f"ST window (no route), init {max(inits)}", control))
    return tuple(cells)


# The papers' numbers (test accuracy, %), shown beside ours in the reports.
PAPER_TABLE5 = {
    "listops": (37.75, 35.97, 37.36, 37.41, 37.68),
    "text": (64.47, 63.25, 63.54, 62.55, 61.73),
    "retrieval": (62.64, 62.24, 61.87, 60.32, 60.59),
    "image": (45.28, 42.76, 42.77, 42.62, 43.48),
    "pathfinder": (78.77, 78.79, 75.25, 76.55, 78.11),
}
PAPER_TABLE6 = {"image": (45.28, 46.51, 42.88), "retrieval": (62.64, 58.98, 60.03)}
PAPER_TABLE7 = {  # (ERNIE-Sparse clean, adv), (w/o SAOR clean, adv)
    "listops": ((37.40, 18.90), (37.30, 9.65)),
    "text": ((63.14, 63.17), (62.54, 62.41)),
    "retrieval": ((61.89, 61.80), (61.84, 61.52)),
    "image": ((44.82, 42.78), (43.59, 40.12)),
    "pathfinder": ((78.22, 67.29), (76.39, 51.00)),
}


def bottleneck_cells(
    global_tokens: tuple[int, ...], patterns: tuple[str, ...] = ("bigbird",)
) -> tuple[Cell, ...]:
    """Figure 3: Sparse Transformer (no HST) vs HST per pattern, SAOR off in both."""
    if not global_tokens or any(g < 0 for g in global_tokens):
        raise ValueError(f"--global-tokens needs non-negative counts, got {global_tokens}")
    unknown = sorted(set(patterns) - set(PATTERN_FIELDS) - {"dense"})
    if unknown or not patterns:
        known = ", ".join(p for p in PATTERN_FIELDS if p != "dense")
        raise ValueError(f"--patterns takes {known}; got {', '.join(patterns)}")
    cells = []
    for pattern in patterns:
        for count in global_tokens:
            for hst, name in ((False, "ST"), (True, "HST")):
                model = _model(pattern, hst=hst, saor=False, attention={"num_global": count})
                key = f"{name.lower()}-{pattern}-g{count}"
                cells.append(Cell(key, f"{name} {pattern} g={count}", model))
    # Full attention: the ceiling, and how many steps a task takes when nothing is sparse.
    cells.append(Cell("dense", "dense attention", _model("dense", hst=False, saor=False)))
    return tuple(cells)


def make_spec(
    kind: str,
    task: str,
    *,
    scale: str = "tiny",
    seeds: int = 1,
    overrides: dict[str, Any] | None = None,
    global_tokens: tuple[int, ...] | None = None,
    attack_roll: int | tuple[int, ...] | None = None,
    patterns: tuple[str, ...] | None = None,
    inits: tuple[float, ...] | None = None,
) -> ExperimentSpec:
    """The spec of one of the papers' experiments (``kind`` in KINDS) on ``task``.
    ``global_tokens`` defaults to Figure 3's 2, 1 and 0 blocks (128, 64, 0 at block 64)."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if kind == "bottleneck" and global_tokens is None:
        values = merge_values(preset_values(task_preset(task, scale)), overrides or {})
        block = resolve(values).model.attention.block_size
        global_tokens = (2 * block, block, 0)
    patterns = tuple(patterns or ("bigbird",)) if kind == "bottleneck" else ()
    cells: tuple[Cell, ...] = ()
    if kind == "ablation":
        cells = ABLATION_CELLS
    elif kind == "bottleneck":
        cells = bottleneck_cells(tuple(global_tokens), patterns)
    elif kind == "robustness":
        cells = robustness_cells(task)
    elif kind == "hst-route":
        cells = hst_route_cells(tuple(inits or HST_ROUTE_INITS))
    spec = ExperimentSpec(
        kind=kind,
        task=task,
        scale=scale,
        seeds=tuple(range(seeds)),
        cells=cells,
        overrides=overrides or {},
        global_tokens=tuple(global_tokens or ()) if kind == "bottleneck" else (),
        patterns=patterns,
    )
    if kind == "robustness":
        # Section 5.2 rolls by SAOR's k unless told otherwise.
        rolls = attack_roll if attack_roll is not None else _saor_roll(spec)
        rolls = (rolls,) if isinstance(rolls, int) else tuple(rolls)
        if not rolls or 0 in rolls:
            raise ValueError(f"the word-order-shift attack needs non-zero rolls, got {rolls}")
        spec.attack_rolls = rolls
    for cell in spec.cells:  # refuse a bad preset/override now, not after hours of training
        spec.run_config(cell, spec.seeds[0])
    return spec


def _saor_roll(spec: ExperimentSpec) -> int:
    return spec.run_config(spec.cells[0], spec.seeds[0]).model.saor.roll_tokens
