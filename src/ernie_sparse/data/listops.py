"""Long Range Arena ListOps: generate the official TSV files, evaluate them, read them as tokens.

A ListOps example is a random expression tree over the digits 0-9 with the operators MIN, MAX,
MED (median, truncated) and SM (sum modulo 10); the label is its value. The files use LRA's
layout (``basic_{train,val,test}.tsv``, header ``Source\\tTarget``) and its written form with
extra parentheses, so files made here and the public release are read by the same code.

Generation is reproducible from the seed alone: trees are drawn in fixed-size chunks of draws,
each chunk from its own numpy generator seeded by ``(seed, chunk index)``, and the chunks are
joined in index order, so the files do not depend on how many worker processes drew them.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .base import TaskInfo, TokenDataset
from .errors import BadRecords, DataFormatError

log = logging.getLogger("ernie_sparse.data")
TASK = "listops"
NUM_LABELS = 10
MAX_LENGTH = 2000  # LRA's input length for ListOps
SPLITS = ("train", "val", "test")
HEADER = "Source\tTarget"

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
DIGITS = tuple(str(d) for d in range(10))
CLOSE = "X"  # LRA's token for the closing bracket "]"
# id 0 is padding; the 15 symbols take ids 1..15 in this order.
VOCAB: tuple[str, ...] = ("<pad>", *DIGITS, *OPERATORS, CLOSE)
VOCAB_SIZE = len(VOCAB)  # 16
TOKEN_IDS: dict[str, int] = {symbol: i for i, symbol in enumerate(VOCAB) if i}

MAX_DEPTH = 10
MAX_ARGS = 10
LEAF_ABOVE = 0.25  # r > 0.25 makes a leaf
# Part of the reproducibility contract: changing either changes every generated file.
CHUNK_DRAWS = 1024  # tree draws per chunk (one numpy generator each)
_UNIFORM_BLOCK = 8192  # uniforms fetched from numpy at a time within a chunk
MAX_STALE_CHUNKS = 200  # give up when this many chunks in a row add no new tree

Row = tuple[str, int, int]  # (source, target, length)


# --------------------------------------------------------------------------- values, tokens


def _median(values: Sequence[int]) -> int:
    """int(numpy.median(values)) for non-negative ints, without numpy's per-call cost."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) // 2


def _apply(operator: str, values: Sequence[int]) -> int:
    if operator == "[MIN":
        return min(values)
    if operator == "[MAX":
        return max(values)
    if operator == "[MED":
        return _median(values)
    if operator == "[SM":
        return sum(values) % 10
    raise ValueError(f"unknown operator {operator!r}")


def listops_value(source: str) -> int:
    """Evaluate a Source string with a stack, independently of the generator (a test oracle).

    Parentheses carry no meaning for the value and are ignored. The operators are computed with
    numpy as the spec words them (MED = int(numpy.median)), not with the generator's own code,
    so a slip in the generator's arithmetic shows up as a wrong Target.
    """
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for token in source.split():
        if token in ("(", ")"):
            continue
        if result is not None:
            raise ValueError(f"tokens after the end of the expression: {token!r}")
        if token in OPERATORS:
            stack.append((token, []))
        elif token == "]":
            if not stack:
                raise ValueError("']' without an open operator")
            operator, values = stack.pop()
            if not values:
                raise ValueError(f"{operator} has no arguments")
            value = _reference_apply(operator, values)
            result = _push(stack, value)
        elif token in DIGITS:
            result = _push(stack, int(token))
        else:
            raise ValueError(f"unknown token {token!r}")
    if result is None:
        raise ValueError("incomplete expression" if stack else "empty expression")
    return result


def _push(stack: list[tuple[str, list[int]]], value: int) -> int | None:
    """Give ``value`` to the open operator; returns it when it is the whole expression's."""
    if stack:
        stack[-1][1].append(value)
        return None
    return value


def _reference_apply(operator: str, values: list[int]) -> int:
    """The spec's definitions, spelled with numpy and shared with nothing in the generator."""
    array = np.asarray(values)
    if operator == "[MIN":
        return int(array.min())
    if operator == "[MAX":
        return int(array.max())
    if operator == "[MED":
        return int(np.median(array))
    return int(array.sum()) % 10


def tokenize_listops(source: str) -> list[int]:
    """LRA's tokenization: ``]`` -> X, parentheses dropped, split on whitespace, then ids."""
    try:
        return [TOKEN_IDS[symbol] for symbol in _symbols(source)]
    except KeyError as error:
        raise ValueError(f"unknown ListOps symbol {error.args[0]!r}") from None


def _symbols(source: str) -> list[str]:
    return source.replace("]", CLOSE).replace("(", "").replace(")", "").split()


def detokenize_listops(ids: Sequence[int]) -> str:
    """Ids back to space-separated symbols (padding dropped), for looking at a batch."""
    symbols = []
    for i in ids:
        i = int(i)
        if not 0 <= i < VOCAB_SIZE:
            raise ValueError(f"id {i} is outside the ListOps vocabulary (0..{VOCAB_SIZE - 1})")
        if i:
            symbols.append(VOCAB[i])
    return " ".join(symbols)


# --------------------------------------------------------------------------- drawing trees

# "( ( (" for a node with n children: one "(" per child plus one around the "]".
_OPENINGS = tuple(" ".join(["("] * (n + 1)) for n in range(MAX_ARGS + 1))


def _uniforms(rng: np.random.Generator) -> Iterator[float]:
    """An endless stream of U[0,1) floats, fetched in blocks (numpy's per-call cost is high)."""
    while True:
        yield from rng.random(_UNIFORM_BLOCK).tolist()


def _draw_tree(next_u: Callable[[], float], max_len: int) -> tuple[list[str], int, int] | None:
    """One tree as (written parts, value, length), or None once its length reaches max_len.

    The tree is written while it is drawn: a node's child count is known before its children,
    so its opening parentheses come first. Giving up at max_len keeps the cost of the long
    tail of huge trees bounded; the next draw starts from fresh uniforms, so the kept trees
    have the same distribution as drawing every tree in full and filtering.
    Uniforms used per node, depth first: r (only at depth < 10), then either the digit or
    the operator and the child count; each choice is int(u * k), uniform over k options.
    """
    parts: list[str] = []
    stack: list[list] = []  # open operator nodes: [operator, children left, values]
    length = 0
    while True:
        if len(stack) + 1 < MAX_DEPTH and next_u() <= LEAF_ABOVE:
            operator = OPERATORS[int(next_u() * 4)]
            children = 2 + int(next_u() * (MAX_ARGS - 1))
            parts.append(_OPENINGS[children])
            parts.append(operator)
            stack.append([operator, children, []])
            length += 2
            if length >= max_len:
                return None
            continue
        value = int(next_u() * 10)
        parts.append(DIGITS[value])
        length += 1
        if length >= max_len:
            return None
        while stack:  # close every node whose last child this was
            node = stack[-1]
            node[2].append(value)
            parts.append(")")
            node[1] -= 1
            if node[1]:
                break
            stack.pop()
            value = _apply(node[0], node[2])
            parts.append("] )")
        else:
            return parts, value, length


def _draw_chunk(seed: int, index: int, min_len: int, max_len: int) -> list[Row]:
    """The in-bounds trees among chunk ``index``'s CHUNK_DRAWS draws, in draw order."""
    next_u = _uniforms(np.random.default_rng([seed, index])).__next__
    rows: list[Row] = []
    for _ in range(CHUNK_DRAWS):
        tree = _draw_tree(next_u, max_len)
        if tree is not None and tree[2] > min_len:
            parts, value, length = tree
            rows.append((" ".join(parts), value, length))
    return rows


class _InlineExecutor(Executor):
    """Runs submitted calls at once in this process (workers=1: no pool, same results)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _chunks(seed: int, min_len: int, max_len: int, workers: int) -> Iterator[list[Row]]:
    """Chunk results in index order; with workers > 1 a few chunks are drawn ahead in parallel."""
    executor: Executor = ProcessPoolExecutor(workers) if workers > 1 else _InlineExecutor()
    ahead = 2 * workers if workers > 1 else 1
    pending: deque[Future] = deque()
    index = 0
    try:
        while True:
            while len(pending) < ahead:
                pending.append(executor.submit(_draw_chunk, seed, index, min_len, max_len))
                index += 1
            yield pending.popleft().result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- writing files


def _check_generate_args(
    counts: dict[str, int], *, seed: int, min_len: int, max_len: int, workers: int
) -> None:
    for name, count in counts.items():
        if count < 0:
            raise ValueError(f"num_{name} must be >= 0, got {count}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if min_len < 0:
        raise ValueError(f"min_len must be >= 0, got {min_len}")
    if min_len >= max_len:
        raise ValueError(f"min_len must be < max_len, got min_len={min_len}, max_len={max_len}")
    if max_len - min_len < 2:
        raise ValueError(f"no length lies strictly between min_len={min_len} and max_len={max_len}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


def generate_listops(
    out_dir: str | Path,
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    seed: int = 0,
    min_len: int = 500,
    max_len: int = 2000,
    workers: int = 1,
) -> dict:
    """Write basic_{train,val,test}.tsv: distinct trees with min_len < length < max_len.

    Kept trees are taken in chunk order, duplicates (by Source) dropped keeping the first, and
    the first num_train go to train, the next num_val to val, then num_test to test. Files are
    written under temporary names and renamed at the end, so a crash leaves no half file that
    looks finished. Returns what happened: counts, draws, duplicates, lengths, labels, seconds.
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    _check_generate_args(counts, seed=seed, min_len=min_len, max_len=max_len, workers=workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    paths = {split: out / f"basic_{split}.tsv" for split in SPLITS}
    temps = {split: path.with_name(path.name + ".tmp") for split, path in paths.items()}
    try:
        with _SplitWriter(temps, counts) as writer:
            stats = _fill(writer, seed=seed, min_len=min_len, max_len=max_len, workers=workers)
    except BaseException:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        raise
    for split in SPLITS:
        os.replace(temps[split], paths[split])
    stats.update(files={split: str(path) for split, path in paths.items()}, counts=counts)
    stats["seconds"] = time.perf_counter() - start
    return stats


class _SplitWriter:
    """Routes distinct rows to train, then val, then test until each has its count."""

    def __init__(self, paths: dict[str, Path], counts: dict[str, int]) -> None:
        self.paths = paths
        self.quotas = [split for split in SPLITS for _ in range(counts[split])]
        self.seen: set[bytes] = set()  # digests, not the multi-kilobyte sources
        self.lengths: list[int] = []
        self.labels: Counter[int] = Counter()
        self.duplicates = 0

    def __enter__(self) -> _SplitWriter:
        self.files = {
            split: path.open("w", encoding="utf-8", newline="\n")
            for split, path in self.paths.items()
        }
        for handle in self.files.values():
            handle.write(HEADER + "\n")
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self.files.values():
            handle.close()

    @property
    def done(self) -> bool:
        return len(self.lengths) == len(self.quotas)

    def take(self, rows: list[Row]) -> int:
        """Write what ``rows`` adds (in order, first occurrence wins); returns how many."""
        before = len(self.lengths)
        for source, target, length in rows:
            if self.done:
                break
            digest = hashlib.blake2b(source.encode(), digest_size=16).digest()
            if digest in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(digest)
            self.files[self.quotas[len(self.lengths)]].write(f"{source}\t{target}\n")
            self.lengths.append(length)
            self.labels[target] += 1
        return len(self.lengths) - before


def _fill(writer: _SplitWriter, *, seed: int, min_len: int, max_len: int, workers: int) -> dict:
    """Feed chunks to the writer until it is done; fail if the bounds stop yielding new trees."""
    chunks = in_bounds = stale = 0
    stream = _chunks(seed, min_len, max_len, workers)
    try:
        while not writer.done:
            rows = next(stream)
            chunks += 1
            in_bounds += len(rows)
            stale = 0 if writer.take(rows) else stale + 1
            if stale >= MAX_STALE_CHUNKS:
                raise ValueError(
                    f"no new distinct tree with {min_len} < length < {max_len} in the last "
                    f"{stale * CHUNK_DRAWS} draws ({len(writer.lengths)} of "
                    f"{len(writer.quotas)} found); widen the bounds or ask for fewer trees"
                )
    finally:
        stream.close()
    return {
        "draws": chunks * CHUNK_DRAWS,
        "chunks": chunks,
        "in_bounds": in_bounds,
        "duplicates": writer.duplicates,
        "written": len(writer.lengths),
        "length_percentiles": _percentiles(writer.lengths),
        "label_counts": {label: writer.labels[label] for label in range(NUM_LABELS)},
    }


def _percentiles(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    values = np.percentile(np.asarray(lengths), [50, 90, 95, 100])
    return {name: float(v) for name, v in zip(("p50", "p90", "p95", "max"), values, strict=True)}


# --------------------------------------------------------------------------- reading files


def read_listops(
    path: str | Path, *, max_length: int = MAX_LENGTH, skip_bad: bool = False
) -> TokenDataset:
    """One official TSV file -> token ids and labels; bad rows raise (file:line) or are counted.

    Line numbers are 1-based lines of the file, the header being line 1. A wrong header always
    raises: then the file is not a ListOps file at all, and skipping rows would hide that.
    """
    path = Path(path)
    info = TaskInfo(task=TASK, vocab_size=VOCAB_SIZE, num_labels=NUM_LABELS, max_length=max_length)
    dataset = TokenDataset(info=info, bad=BadRecords(skip_bad=skip_bad), label_names=DIGITS)
    with path.open("rb") as handle:
        _check_header(path, handle.readline())
        for number, raw in enumerate(handle, start=2):
            parsed = _parse_row(raw)
            if isinstance(parsed, str):
                dataset.bad.report(path, number, parsed)
            else:
                dataset.add(parsed[1], parsed[0])
    if not dataset.examples and not dataset.bad.count:
        raise DataFormatError(path, None, "no examples: the file holds only its header")
    return dataset.finish(str(path))


def _strip_newline(raw: bytes) -> bytes:
    return raw[:-1] if raw.endswith(b"\n") else raw


def _check_header(path: Path, raw: bytes) -> None:
    if not raw:
        raise DataFormatError(path, 1, f"empty file, expected the header {HEADER!r}")
    header = _strip_newline(raw).rstrip(b"\r").decode("utf-8", errors="replace")
    if header != HEADER:
        raise DataFormatError(path, 1, f"expected the header {HEADER!r}, got {header[:80]!r}")


def _parse_row(raw: bytes) -> tuple[list[int], int] | str:
    """(ids, label) for a good row, else what is wrong with it (accepts \\n or \\r\\n ends)."""
    try:
        line = _strip_newline(raw).rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError as error:
        return f"not UTF-8 ({error.reason} at byte {error.start})"
    columns = line.split("\t")
    if len(columns) != 2:
        return f"expected 2 tab-separated columns (Source, Target), got {len(columns)}"
    source, target = columns
    target = target.strip()
    if len(target) != 1 or target not in DIGITS:
        return f"Target must be a digit 0-9, got {target[:20]!r}"
    symbols = _symbols(source)
    if not symbols:
        return "empty Source"
    unknown = next((symbol for symbol in symbols if symbol not in TOKEN_IDS), None)
    if unknown is not None:
        return f"unknown symbol {unknown[:20]!r} in Source"
    return [TOKEN_IDS[symbol] for symbol in symbols], int(target)


def read_listops_dir(
    root: str | Path, split: str, *, max_length: int = MAX_LENGTH, skip_bad: bool = False
) -> TokenDataset:
    """``root/basic_{split}.tsv`` for split train, val or test (LRA's file names).

    A file given as ``root`` is itself the split: a validation or test file to evaluate
    (``ernie-sparse evaluate RUN --data heldout.tsv``). It is refused as the train split,
    since validation would then read the very rows the model trains on."""
    if split not in SPLITS:
        raise ValueError(f"ListOps split must be one of {', '.join(SPLITS)}, got {split!r}")
    if Path(root).is_file():
        if split == "train":
            raise ValueError(
                f"{root}: one file cannot be the training split (validation would read the "
                "same rows); give the folder holding basic_train.tsv and basic_val.tsv. A "
                "single file can be evaluated: ernie-sparse evaluate RUN --data FILE"
            )
        log.info("%s: a single file, read as the %s split", root, split)
        return read_listops(root, max_length=max_length, skip_bad=skip_bad)
    path = Path(root) / f"basic_{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a ListOps folder holds basic_train.tsv, basic_val.tsv and "
            "basic_test.tsv (make them with `ernie-sparse data listops --out DIR`)"
        )
    return read_listops(path, max_length=max_length, skip_bad=skip_bad)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ernie-sparse data listops``; LRA's sizes and bounds are the defaults."""
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--num-train", type=int, default=96_000)
    parser.add_argument("--num-val", type=int, default=2_000)
    parser.add_argument("--num-test", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-len", type=int, default=500, help="keep length > this")
    parser.add_argument("--max-len", type=int, default=2000, help="keep length < this")
    parser.add_argument("--workers", type=int, default=1, help="generator processes")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Generate the files and print what was made."""
    stats = generate_listops(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        seed=args.seed,
        min_len=args.min_len,
        max_len=args.max_len,
        workers=args.workers,
    )
    print(summary(stats))
    return 0


def summary(stats: dict) -> str:
    """A few lines: files, draws kept, lengths and label balance, time taken."""
    counts = ", ".join(f"{split} {n}" for split, n in stats["counts"].items())
    lengths = ", ".join(f"{k} {v:.0f}" for k, v in stats["length_percentiles"].items())
    total = max(stats["written"], 1)
    labels = " ".join(f"{k}:{100 * n / total:.1f}%" for k, n in stats["label_counts"].items())
    kept = 100 * stats["in_bounds"] / max(stats["draws"], 1)
    return "\n".join(
        [
            f"wrote {counts} to {Path(stats['files']['train']).parent}",
            f"draws {stats['draws']}, in bounds {stats['in_bounds']} ({kept:.1f}%), "
            f"duplicates dropped {stats['duplicates']}",
            f"lengths {lengths or 'none'}",
            f"labels {labels}",
            f"{stats['seconds']:.1f} s",
        ]
    )
