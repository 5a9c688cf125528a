"""Probe tasks for long-range information flow, generated from a seed.

Each example is a sequence of ``length`` tokens whose label depends on tokens a
known number of attention blocks away from the readout (the first token, which
``hst.pooling: cls`` reads). They tell whether a model can move information
where its sparse pattern has no direct route.

- ``copy-far``: a label symbol sits in block ``distance`` (at a random offset);
  the label is which symbol.
- ``match``: a value symbol sits in block 0 and another in block ``distance``;
  the label is whether they are equal (half the examples are).
- ``majority``: every block holds one vote (symbol 0 or 1) at a random offset;
  the label is the majority vote (an odd number of blocks, so no ties).

Token ids: 0 padding, 1 the readout token (position 0), ``2 .. 2 + num_symbols``
the symbols, the rest distractors drawn uniformly. Blocks are ``block_size``
input tokens; a model with HST puts ``block_size - 1`` input tokens per attention
block, so write probes for an HST model with its ``block_size - 1``.

Files: ``probe.json`` (the parameters) and ``{train,val,test}.tsv`` with one
``label<TAB>space-separated ids`` row per example.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .base import TaskInfo, TokenDataset
from .errors import BadRecords, DataFormatError

KINDS = ("copy-far", "match", "majority")
SPLITS = ("train", "val", "test")
PAD, READOUT, FIRST_SYMBOL = 0, 1, 2
PARAMETERS_FILE = "probe.json"


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # copy-far | match | majority
    length: int = 256  # tokens per example
    block_size: int = 16  # input tokens per block
    distance: int = 12  # copy-far / match: the far symbol's block (the readout is in block 0)
    num_symbols: int = 2  # copy-far: labels; match: values; majority: always 2 votes
    vocab_size: int = 64  # ids in [0, vocab_size): padding, readout, symbols, distractors

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"probe kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        for name in ("length", "block_size", "distance", "num_symbols", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"probe {name} must be a positive integer, got {value!r}")
        if self.block_size < 2:  # block 0 needs a spot besides the readout
            raise ValueError(f"probe block_size must be >= 2, got {self.block_size}")
        if self.kind == "majority" and self.num_symbols != 2:
            raise ValueError(f"majority votes with 2 symbols, got num_symbols={self.num_symbols}")
        if self.num_symbols < 2:
            raise ValueError(
                f"{self.kind} needs num_symbols >= 2 (two labels or unequal pairs), "
                f"got num_symbols={self.num_symbols}"
            )
        if self.kind != "majority" and (self.distance + 1) * self.block_size > self.length:
            raise ValueError(
                f"probe distance={self.distance} blocks of {self.block_size} tokens does not fit "
                f"in length={self.length} (needs at least {(self.distance + 1) * self.block_size})"
            )
        if self.kind == "majority" and self.num_blocks % 2 == 0:
            raise ValueError(
                f"majority needs an odd number of blocks; length={self.length} with "
                f"block_size={self.block_size} gives num_blocks={self.num_blocks}"
            )
        if self.vocab_size < FIRST_SYMBOL + self.num_symbols + 1:
            raise ValueError(
                f"probe vocab_size={self.vocab_size} leaves no distractor token after the readout "
                f"and {self.num_symbols} symbols"
            )

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.length / self.block_size)

    @property
    def far_token(self) -> int | None:
        """The first position of the far block (None for majority: every block counts)."""
        return None if self.kind == "majority" else self.distance * self.block_size

    @property
    def num_labels(self) -> int:
        return self.num_symbols if self.kind == "copy-far" else 2


def draw_example(spec: ProbeSpec, rng: np.random.Generator) -> tuple[list[int], int]:
    """(ids, label) of one example of ``spec``."""
    ids = rng.integers(FIRST_SYMBOL + spec.num_symbols, spec.vocab_size, size=spec.length)
    ids[0] = READOUT
    if spec.kind == "copy-far":
        label = int(rng.integers(spec.num_symbols))
        ids[_spot(spec, spec.distance, rng)] = FIRST_SYMBOL + label
    elif spec.kind == "match":
        near = int(rng.integers(spec.num_symbols))
        equal = bool(rng.integers(2))
        far = near if equal else _other(near, spec.num_symbols, rng)
        ids[_spot(spec, 0, rng)] = FIRST_SYMBOL + near
        ids[_spot(spec, spec.distance, rng)] = FIRST_SYMBOL + far
        label = int(equal)
    else:
        votes = rng.integers(2, size=spec.num_blocks)
        for block, vote in enumerate(votes):
            ids[_spot(spec, block, rng)] = FIRST_SYMBOL + int(vote)
        label = int(2 * votes.sum() > len(votes))
    return ids.tolist(), label


def _spot(spec: ProbeSpec, block: int, rng: np.random.Generator) -> int:
    """A random position of ``block``, never the readout at 0."""
    start = block * spec.block_size
    end = min(start + spec.block_size, spec.length)
    return int(rng.integers(max(start, 1), end))


def _other(value: int, count: int, rng: np.random.Generator) -> int:
    """A value in [0, count) other than ``value``, uniformly (ProbeSpec ensures count >= 2)."""
    return (value + 1 + int(rng.integers(count - 1))) % count


def generate_probe(
    out: str | Path, spec: ProbeSpec, *, num_train: int, num_eval: int, seed: int
) -> dict[str, int]:
    """Write ``probe.json`` and the three splits; returns the example count per split.

    Each split draws from its own stream of ``seed``, so the test split does not
    change when ``num_train`` does.
    """
    counts = {"train": num_train, "val": num_eval, "test": num_eval}
    for name, count in (("num_train", num_train), ("num_eval", num_eval)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{name} must be a positive integer, got {count!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for index, (split, count) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, index])
        rows = (draw_example(spec, rng) for _ in range(count))
        lines = (f"{label}\t{' '.join(map(str, ids))}\n" for ids, label in rows)
        temporary = out / f"{split}.tsv.tmp"
        temporary.write_text("".join(lines))
        temporary.replace(out / f"{split}.tsv")
    parameters = {**asdict(spec), "seed": seed, "counts": counts}
    (out / PARAMETERS_FILE).write_text(json.dumps(parameters, indent=1) + "\n")
    return counts


def read_spec(root: str | Path) -> ProbeSpec:
    path = Path(root) / PARAMETERS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: make a probe folder with `ernie-sparse data probe --out DIR`"
        )
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataFormatError(path, error.lineno, f"not JSON: {error.msg}") from error
    if not isinstance(values, dict) or "kind" not in values:
        raise DataFormatError(path, None, "expected an object with the probe's kind and sizes")
    fields = {name: values[name] for name in ProbeSpec.__dataclass_fields__ if name in values}
    try:
        return ProbeSpec(**fields)
    except ValueError as error:
        raise DataFormatError(path, None, str(error)) from error


def read_probe(root: str | Path, split: str, *, skip_bad: bool = False) -> TokenDataset:
    """``root/{split}.tsv`` of a probe folder as a dataset (nothing is cut)."""
    if split not in SPLITS:
        raise ValueError(f"probe split must be one of {', '.join(SPLITS)}, got {split!r}")
    spec = read_spec(root)
    path = Path(root) / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (a probe folder holds {', '.join(SPLITS)})")
    info = TaskInfo("probe", spec.vocab_size, spec.num_labels, spec.length, spec.far_token)
    dataset = TokenDataset(info, bad=BadRecords(skip_bad=skip_bad))
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            parsed = _parse_row(line, spec)
            if isinstance(parsed, str):
                dataset.bad.report(path, number, parsed)
                continue
            dataset.add(parsed[1], parsed[0])
    return dataset.finish(str(path))


def _parse_row(line: str, spec: ProbeSpec) -> tuple[list[int], int] | str:
    label_text, tab, ids_text = line.rstrip("\n").partition("\t")
    if not tab:
        return "expected label<TAB>ids"
    try:
        label, ids = int(label_text), [int(token) for token in ids_text.split()]
    except ValueError:
        return "label and ids must be integers"
    if not 0 <= label < spec.num_labels:
        return f"label {label} outside [0, {spec.num_labels})"
    if len(ids) != spec.length:
        return f"expected {spec.length} ids (probe length), got {len(ids)}"
    if min(ids) < 1 or max(ids) >= spec.vocab_size:
        return f"ids must be in [1, {spec.vocab_size})"
    return ids, label


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--kind", required=True, choices=KINDS)
    defaults = ProbeSpec("copy-far")
    helps = {
        "length": "tokens per example (majority: an odd number of blocks)",
        "block_size": "input tokens per block (an HST model's block_size - 1)",
        "distance": "copy-far / match: the far symbol's block",
        "num_symbols": "copy-far: labels; match: values",
        "vocab_size": "token ids are in [0, vocab_size)",
    }
    for name, text in helps.items():
        default = getattr(defaults, name)
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=default, help=f"{text} ({default})"
        )
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-eval", type=int, default=500, help="validation and test examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = ProbeSpec(
        args.kind,
        length=args.length,
        block_size=args.block_size,
        distance=args.distance,
        num_symbols=args.num_symbols,
        vocab_size=args.vocab_size,
    )
    counts = generate_probe(
        args.out, spec, num_train=args.num_train, num_eval=args.num_eval, seed=args.seed
    )
    listed = ", ".join(f"{split} {count}" for split, count in counts.items())
    print(f"wrote {args.kind} probe ({listed}) to {args.out}")
    return 0


__all__ = ["KINDS", "ProbeSpec", "draw_example", "generate_probe", "read_probe", "read_spec"]
