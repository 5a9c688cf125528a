"""The GPU acceptance targets (issue 14), checked against benchmark results.

``python -m ernie_sparse.bench.targets --attention DIR --model DIR`` reads the
results.json that ``bench attention`` and ``bench model`` wrote there and prints one
PASS or FAIL line per target; the exit status is 0 when every target passed, 1
otherwise. A target whose rows are missing or did not run (oom, skipped) fails and
says why. ``scripts/gpu-check.sh`` runs the benchmarks and then this.

Targets, bf16 on one GPU at the bert-base shape:

- attention, BigBird pattern, fwd+bwd: flex <= 0.5x dense SDPA's time at N=4096 and
  <= 0.15x at N=16384;
- model, training step at n=4096: ERNIE-Sparse (no SAOR) >= 2x faster than dense,
  >= 3x faster than HF BigBird, and peak memory <= HF BigBird's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..cli_args import int_list

ATTENTION_LENGTHS = (4096, 16384)
MODEL_LENGTH = 4096


@dataclass(frozen=True)
class Target:
    """One acceptance target: a ratio read off a benchmark's rows, and its bound."""

    name: str  # what is checked, as printed
    bench: str  # "attention" | "model": which results it reads
    ratio: Callable[[list[dict]], float]  # raises Missing when a row is absent or not ok
    bound: float
    at_most: bool  # True: ratio <= bound passes; False: ratio >= bound passes

    def passes(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound


class Missing(Exception):
    """A row a target needs is absent or did not run."""


def _row(rows: list[dict], **match) -> dict:
    found = [r for r in rows if all(r.get(key) == value for key, value in match.items())]
    described = ", ".join(f"{key} {value}" for key, value in match.items())
    if not found:
        raise Missing(f"no row for {described}")
    if found[0]["status"] != "ok":
        raise Missing(f"{described}: {found[0]['status']}")
    return found[0]


def attention_time_ratio(backend: str, baseline: str, seq_len: int) -> Callable:
    """backend's fwd+bwd time / baseline's at one length."""

    def ratio(rows: list[dict]) -> float:
        pick = {"seq_len": seq_len, "mode": "fwd+bwd"}
        fast, slow = (_row(rows, backend=name, **pick) for name in (backend, baseline))
        return fast["median_ms"] / slow["median_ms"]

    return ratio


def model_ratio(top: str, bottom: str, seq_len: int, key: str) -> Callable:
    """top's ``key`` / bottom's at one length (step time: median_ms; memory: peak_mem_mb)."""

    def ratio(rows: list[dict]) -> float:
        first, second = (_row(rows, model=name, seq_len=seq_len) for name in (top, bottom))
        if not first.get(key) or not second.get(key):
            raise Missing(f"{key} was not measured for {top} and {bottom} at n={seq_len}")
        return first[key] / second[key]

    return ratio


def gpu_targets(
    *,
    sparse_backend: str = "flex",
    attention_lengths: tuple[int, int] = ATTENTION_LENGTHS,
    model_length: int = MODEL_LENGTH,
) -> list[Target]:
    """Issue 14's targets; the backend and lengths can be moved for a dry run on CPU."""
    short, long = attention_lengths
    n = model_length
    return [
        Target(
            f"attention N={short}: {sparse_backend} fwd+bwd time / dense SDPA's",
            "attention", attention_time_ratio(sparse_backend, "dense", short), 0.5, at_most=True,
        ),
        Target(
            f"attention N={long}: {sparse_backend} fwd+bwd time / dense SDPA's",
            "attention", attention_time_ratio(sparse_backend, "dense", long), 0.15, at_most=True,
        ),
        Target(
            f"model n={n}: dense step time / ernie-sparse's (speed-up)",
            "model", model_ratio("dense", "ernie-sparse", n, "median_ms"), 2.0, at_most=False,
        ),
        Target(
            f"model n={n}: hf-bigbird step time / ernie-sparse's (speed-up)",
            "model", model_ratio("hf-bigbird", "ernie-sparse", n, "median_ms"), 3.0,
            at_most=False,
        ),
        Target(
            f"model n={n}: ernie-sparse peak memory / hf-bigbird's",
            "model", model_ratio("ernie-sparse", "hf-bigbird", n, "peak_mem_mb"), 1.0,
            at_most=True,
        ),
    ]  # fmt: skip


def check(target: Target, results: dict[str, dict | None]) -> tuple[bool, str]:
    """(passed, the line to print) for one target against {bench: results or None}."""
    result = results.get(target.bench)
    bound = f"{'<=' if target.at_most else '>='} {target.bound:g}"
    if result is None:
        return False, f"FAIL {target.name}: no {target.bench} results (target {bound})"
    try:
        value = target.ratio(result["rows"])
    except Missing as missing:
        return False, f"FAIL {target.name}: not measured, {missing} (target {bound})"
    verdict = "PASS" if target.passes(value) else "FAIL"
    return target.passes(value), f"{verdict} {target.name} = {value:.3f} (target {bound})"


def load_results(folder: str | None) -> dict | None:
    """results.json in ``folder``; None where it was not given or not written (a step that
    failed or timed out)."""
    if not folder:
        return None
    path = Path(folder) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attention", help="bench attention's output folder")
    parser.add_argument("--model", help="bench model's output folder")
    parser.add_argument("--sparse-backend", default="flex", help="the attention backend checked")
    parser.add_argument(
        "--attention-lengths",
        type=int_list,
        default=ATTENTION_LENGTHS,
        help="the two attention lengths (targets 0.5x and 0.15x)",
    )
    parser.add_argument("--model-length", type=int, default=MODEL_LENGTH)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if len(args.attention_lengths) != 2:
        raise ValueError(f"--attention-lengths takes two lengths, got {args.attention_lengths}")
    targets = gpu_targets(
        sparse_backend=args.sparse_backend,
        attention_lengths=tuple(args.attention_lengths),
        model_length=args.model_length,
    )
    results = {"attention": load_results(args.attention), "model": load_results(args.model)}
    outcomes = [check(target, results) for target in targets]
    for _, line in outcomes:
        print(line)
    return 0 if all(passed for passed, _ in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ernie_sparse.bench.targets",
        description="Check the GPU acceptance targets against benchmark results.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"targets: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
