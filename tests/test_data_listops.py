"""ListOps: the written form, the values, the generator's files, the reader and the command."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ernie_sparse.data import listops
from ernie_sparse.data.errors import DataFormatError
from ernie_sparse.data.listops import (
    HEADER,
    TOKEN_IDS,
    VOCAB,
    VOCAB_SIZE,
    add_arguments,
    detokenize_listops,
    generate_listops,
    listops_value,
    read_listops,
    read_listops_dir,
    run,
    tokenize_listops,
)

SPEC_EXAMPLE = "( ( ( [MAX 4 ) 3 ) ] )"  # the spec's written form of [MAX 4 3]
SMALL = {"min_len": 10, "max_len": 60}  # short trees: fast to draw, still nested

# A hand-written tree: a digit, or (operator, [children]).
Tree = int | tuple[str, list]


def write(tree: Tree) -> str:
    """The written form by the rule read off the spec's example, built recursively."""
    if isinstance(tree, int):
        return str(tree)
    operator, children = tree
    text = "( " * (len(children) + 1) + operator
    for child in children:
        text += f" {write(child)} )"
    return text + " ] )"


def value(tree: Tree) -> int:
    """The spec's definitions, written out by hand for the test trees."""
    if isinstance(tree, int):
        return tree
    operator, children = tree
    values = [value(child) for child in children]
    return {
        "[MIN": min(values),
        "[MAX": max(values),
        "[MED": int(np.median(values)),
        "[SM": sum(values) % 10,
    }[operator]


def script(tree: Tree, depth: int = 1) -> list[float]:
    """The uniforms that make the generator draw ``tree``: r (below depth 10), then a digit or
    an operator and a child count, then the children depth first."""
    draws = [] if depth >= 10 else [0.9 if isinstance(tree, int) else 0.1]
    if isinstance(tree, int):
        return [*draws, (tree + 0.5) / 10]
    operator, children = tree
    op_index = listops.OPERATORS.index(operator)
    draws += [(op_index + 0.5) / 4, (len(children) - 2 + 0.5) / 9]
    for child in children:
        draws += script(child, depth + 1)
    return draws


def draw(tree: Tree, max_len: int = 10**6) -> tuple[str, int, int] | None:
    """Run the generator's tree drawer on the scripted uniforms of ``tree``."""
    uniforms = script(tree)
    stream = iter(uniforms)
    drawn = listops._draw_tree(stream.__next__, max_len)
    if drawn is None:
        return None
    assert next(stream, None) is None, "the generator left scripted draws unused"
    parts, target, length = drawn
    return " ".join(parts), target, length


def nested(depth: int) -> Tree:
    """A chain of MAX nodes whose deepest leaves sit at ``depth``."""
    tree: Tree = ("[SM", [7, 8])
    for level in range(depth - 2):
        tree = ("[MAX", [tree, level % 10])
    return tree


HAND_TREES = [
    (("[MAX", [4, 3]), 4),
    (("[MIN", [4, 3, 9]), 3),
    (("[MED", [1, 2, 3, 4]), 2),  # even count: mean of 2 and 3, truncated
    (("[MED", [9, 0]), 4),
    (("[MED", [8, 1, 5, 2]), 3),  # 3.5 truncated, not rounded
    (("[MED", [9, 0, 5]), 5),
    (("[SM", [7, 8, 9]), 4),
    (("[SM", [7, ("[MIN", [9, 5, 6]), 8]), 0),
    (("[MED", [("[MAX", [1, 8]), ("[SM", [5, 5]), 6, ("[MIN", [3, 7])]), 4),
    (nested(10), 7),
]


def test_spec_example_written_form_value_and_tokens() -> None:
    assert write(("[MAX", [4, 3])) == SPEC_EXAMPLE
    assert draw(("[MAX", [4, 3])) == (SPEC_EXAMPLE, 4, 4)
    assert listops_value(SPEC_EXAMPLE) == 4
    ids = tokenize_listops(SPEC_EXAMPLE)
    assert ids == [TOKEN_IDS["[MAX"], TOKEN_IDS["4"], TOKEN_IDS["3"], TOKEN_IDS["X"]]
    assert detokenize_listops([*ids, 0, 0]) == "[MAX 4 3 X"


def test_vocabulary_is_pad_then_fifteen_symbols() -> None:
    assert VOCAB_SIZE == 16 and VOCAB[0] == "<pad>"
    assert [TOKEN_IDS[str(d)] for d in range(10)] == list(range(1, 11))
    assert [TOKEN_IDS[s] for s in ("[MIN", "[MAX", "[MED", "[SM", "X")] == list(range(11, 16))
    with pytest.raises(ValueError, match="unknown ListOps symbol"):
        tokenize_listops("( [MAX 4 ) [AVG ] )")
    with pytest.raises(ValueError, match="outside"):
        detokenize_listops([16])


@pytest.mark.parametrize(("tree", "expected"), HAND_TREES)
def test_hand_trees_written_valued_and_tokenized(tree: Tree, expected: int) -> None:
    assert value(tree) == expected
    source, target, length = draw(tree)
    assert source == write(tree)
    assert target == expected
    assert listops_value(source) == expected
    symbols = source.replace("(", "").replace(")", "").replace("]", "X").split()
    assert length == len(symbols)
    assert detokenize_listops(tokenize_listops(source)) == " ".join(symbols)
    assert source.count("(") == source.count(")")


def test_depth_ten_draws_no_operator_and_too_long_trees_are_dropped() -> None:
    # The scripts give no r at depth 10, so a generator drawing one there misreads them.
    assert draw(nested(10)) is not None
    assert draw(("[MAX", [4, 3]), max_len=4) is None  # length 4 is not < 4
    assert draw(("[MAX", [4, 3]), max_len=5) is not None
    assert draw(("[SM", [1, ("[MIN", [2, 3])]), max_len=7) is None  # length 7


@pytest.mark.parametrize(
    ("source", "message"),
    [("", "empty"), ("( ( [MAX 4 )", "incomplete"), ("4 5", "after the end"), ("[MAX ]", "no ar")],
)
def test_value_rejects_malformed_sources(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        listops_value(source)


# --------------------------------------------------------------------------- generated files


def rows_of(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == HEADER and lines[-1] == ""
    rows = [line.split("\t") for line in lines[1:-1]]
    assert all(len(row) == 2 for row in rows)
    return [(source, int(target)) for source, target in rows]


def files_of(root: Path) -> dict[str, bytes]:
    return {split: (root / f"basic_{split}.tsv").read_bytes() for split in listops.SPLITS}


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("listops")
    stats = generate_listops(root, num_train=60, num_val=15, num_test=15, seed=3, **SMALL)
    return root, stats


def test_generated_files_are_right_and_in_bounds(small_sets) -> None:
    root, stats = small_sets
    assert sorted(p.name for p in root.iterdir()) == [
        "basic_test.tsv",
        "basic_train.tsv",
        "basic_val.tsv",
    ]
    sources = []
    for split, count in {"train": 60, "val": 15, "test": 15}.items():
        rows = rows_of(root / f"basic_{split}.tsv")
        assert len(rows) == count
        for source, target in rows:
            assert target == listops_value(source)
            assert SMALL["min_len"] < len(tokenize_listops(source)) < SMALL["max_len"]
            sources.append(source)
    assert len(set(sources)) == len(sources)
    assert stats["written"] == 90 and stats["draws"] >= stats["in_bounds"] >= 90
    assert sum(stats["label_counts"].values()) == 90
    assert (
        SMALL["min_len"] < stats["length_percentiles"]["p50"] <= stats["length_percentiles"]["max"]
    )
    assert stats["length_percentiles"]["max"] < SMALL["max_len"]


def test_generation_is_reproducible_and_independent_of_workers(small_sets, tmp_path) -> None:
    root, _ = small_sets
    sizes = {"num_train": 60, "num_val": 15, "num_test": 15}
    generate_listops(tmp_path / "again", seed=3, **sizes, **SMALL)
    generate_listops(tmp_path / "two", seed=3, workers=2, **sizes, **SMALL)
    generate_listops(tmp_path / "other", seed=4, **sizes, **SMALL)
    assert files_of(tmp_path / "again") == files_of(root)
    assert files_of(tmp_path / "two") == files_of(root)
    assert files_of(tmp_path / "other")["train"] != files_of(root)["train"]


def test_duplicates_are_dropped_and_impossible_requests_fail(tmp_path) -> None:
    # 3 < length < 6 allows only one operator over 2 or 3 digits: duplicates are common.
    stats = generate_listops(tmp_path, num_train=300, num_val=50, num_test=50, min_len=3, max_len=6)
    assert stats["duplicates"] > 0
    sources = [
        s for split in ("train", "val", "test") for s, _ in rows_of(tmp_path / f"basic_{split}.tsv")
    ]
    assert len(sources) == len(set(sources)) == 400
    # Only 4 x 10 x 10 trees have length 4: a 401st distinct one cannot be found.
    with pytest.raises(ValueError, match="400 of 401"):
        generate_listops(tmp_path / "x", num_train=401, num_val=0, num_test=0, min_len=3, max_len=5)
    assert not list((tmp_path / "x").iterdir())  # no half-written files left behind


def test_labels_are_skewed_towards_0_and_9(tmp_path) -> None:
    stats = generate_listops(
        tmp_path, num_train=1200, num_val=0, num_test=0, seed=0, min_len=100, max_len=400
    )
    counts = stats["label_counts"]
    share = {label: counts[label] / 1200 for label in range(10)}
    # The spec: 0 and 9 near 17% each, the others 7.5-9.6% (at LRA's lengths).
    assert share[0] > 0.13 and share[9] > 0.13
    assert all(0.05 < share[label] < 0.115 for label in range(1, 9))
    assert min(share[0], share[9]) > 1.3 * max(share[label] for label in range(1, 9))


def shape(source: str) -> tuple[list[tuple[int, str, int]], list[tuple[int, str]]]:
    """(depth, operator, children) per operator node and (depth, digit) per leaf, read back
    from the written form; checks each node has as many children as its "(" announce."""
    nodes, leaves, stack, opens = [], [], [], 0
    for token in source.split():
        if token in ("(", ")"):
            opens += token == "("
            continue
        assert opens >= 3 if token in listops.OPERATORS else opens == 0
        if token in listops.OPERATORS:
            stack.append([token, opens - 1, 0])
            opens = 0
            continue
        if token == "]":
            operator, announced, children = stack.pop()
            assert children == announced
            nodes.append((len(stack) + 1, operator, children))
        else:
            leaves.append((len(stack) + 1, token))
        if stack:
            stack[-1][2] += 1
    return nodes, leaves


def test_default_bounds_a_few_trees(tmp_path) -> None:
    stats = generate_listops(tmp_path, num_train=14, num_val=3, num_test=3, seed=1)
    nodes, leaves = [], []
    for split in listops.SPLITS:
        for source, target in rows_of(tmp_path / f"basic_{split}.tsv"):
            assert 500 < len(tokenize_listops(source)) < 2000
            assert target == listops_value(source)
            tree_nodes, tree_leaves = shape(source)
            nodes += tree_nodes
            leaves += tree_leaves
    assert 0.05 < stats["in_bounds"] / stats["draws"] < 0.12  # the spec: about 8% kept
    # The drawing rules, seen in ~3,300 operator nodes and ~10,000 leaves of these 20 trees.
    children = Counter(n for _, _, n in nodes)
    assert set(children) == set(range(2, 11))  # randint(2, 10), both ends included
    assert all(0.08 < children[n] / len(nodes) < 0.145 for n in range(2, 11))
    operators = Counter(op for _, op, _ in nodes)
    assert all(0.2 < operators[op] / len(nodes) < 0.3 for op in listops.OPERATORS)
    digits = Counter(d for _, d in leaves)
    assert all(0.07 < digits[d] / len(leaves) < 0.13 for d in listops.DIGITS)
    assert max(d for d, _, _ in nodes) == 9 and max(d for d, _ in leaves) == 10  # max_depth 10
    shallow_nodes = sum(d < 10 for d, _, _ in nodes)
    shallow = shallow_nodes + sum(d < 10 for d, _ in leaves)
    assert 0.23 < shallow_nodes / shallow < 0.27  # an operator when r <= 0.25


# --------------------------------------------------------------------------- reading


def test_generate_read_round_trip(small_sets) -> None:
    root, _ = small_sets
    for split in listops.SPLITS:
        dataset = read_listops_dir(root, split)
        rows = rows_of(root / f"basic_{split}.tsv")
        assert len(dataset) == len(rows)
        assert dataset.info.task == "listops" and dataset.info.num_labels == 10
        assert dataset.info.vocab_size == 16 and dataset.bad.count == 0 and dataset.truncated == 0
        for example, (source, target) in zip(dataset.examples, rows, strict=True):
            assert example["labels"] == target
            expected = source.replace("(", "").replace(")", "").replace("]", "X").split()
            assert detokenize_listops(example["input_ids"].tolist()) == " ".join(expected)


def test_reader_truncates_to_max_length(small_sets) -> None:
    root, _ = small_sets
    dataset = read_listops(root / "basic_val.tsv", max_length=8)
    assert dataset.truncated == len(dataset) == 15
    assert all(len(example["input_ids"]) == 8 for example in dataset)


GOOD_ROW = f"{SPEC_EXAMPLE}\t4"
BAD_ROWS = {
    "missing column": (SPEC_EXAMPLE, "expected 2 tab-separated columns"),
    "extra column": (f"{GOOD_ROW}\t1", "expected 2 tab-separated columns"),
    "bad label": (f"{SPEC_EXAMPLE}\t10", "Target must be a digit"),
    "letter label": (f"{SPEC_EXAMPLE}\tx", "Target must be a digit"),
    "empty source": ("( )\t3", "empty Source"),
    "unknown symbol": ("( ( ( [AVG 4 ) 3 ) ] )\t4", "unknown symbol '[AVG'"),
    "blank line": ("", "expected 2 tab-separated columns"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_reader_names_file_and_line_of_a_bad_row(name: str, tmp_path) -> None:
    row, message = BAD_ROWS[name]
    path = tmp_path / "basic_train.tsv"
    path.write_text(f"{HEADER}\n{GOOD_ROW}\n{row}\n{GOOD_ROW}\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=re.escape(message)) as caught:
        read_listops(path)
    assert str(caught.value).startswith(f"{path}:3: ")


def test_reader_skips_and_counts_bad_rows(tmp_path) -> None:
    path = tmp_path / "rows.tsv"
    lines = [HEADER, GOOD_ROW] + [row for row, _ in BAD_ROWS.values()] + [GOOD_ROW]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")  # CRLF files read too
    dataset = read_listops(path, skip_bad=True)
    assert len(dataset) == 2 and dataset.bad.count == len(BAD_ROWS)
    assert [error.where for error in dataset.bad.skipped] == list(range(3, 3 + len(BAD_ROWS)))


@pytest.mark.parametrize("header", ["Source\tLabel", "", f"{GOOD_ROW}"])
def test_reader_rejects_a_wrong_header_even_when_skipping(header: str, tmp_path) -> None:
    path = tmp_path / "x.tsv"
    path.write_text(f"{header}\n{GOOD_ROW}\n" if header else "", encoding="utf-8")
    with pytest.raises(DataFormatError, match="header") as caught:
        read_listops(path, skip_bad=True)
    assert str(caught.value).startswith(f"{path}:1: ")


def test_read_dir_names_bad_splits_and_missing_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="train, val, test"):
        read_listops_dir(tmp_path, "dev")
    with pytest.raises(FileNotFoundError, match=r"basic_val\.tsv"):
        read_listops_dir(tmp_path, "val")


def test_a_single_file_is_a_split_to_evaluate_never_the_train_split(small_sets) -> None:
    root, _ = small_sets
    test_file = root / "basic_test.tsv"
    for split in ("val", "test"):  # ernie-sparse evaluate RUN --data heldout.tsv
        dataset = read_listops_dir(test_file, split)
        assert len(dataset) == len(rows_of(test_file)) == 15
    with pytest.raises(ValueError, match=r"basic_test\.tsv: one file cannot be the training"):
        read_listops_dir(test_file, "train")


def test_a_file_with_only_its_header_is_an_error_naming_it(tmp_path) -> None:
    path = tmp_path / "basic_train.tsv"
    path.write_text(f"{HEADER}\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"basic_train\.tsv: no examples: the file holds "
                       "only its header"):  # fmt: skip
        read_listops_dir(tmp_path, "train")
    path.write_text(f"{HEADER}\n\tx\n", encoding="utf-8")  # every row bad, skipped: counted
    assert read_listops(path, skip_bad=True).bad.count == 1


# --------------------------------------------------------------------------- command line


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_run_writes_files_and_a_summary(tmp_path, capsys) -> None:
    out = tmp_path / "lo"
    argv = ["--out", str(out), "--num-train", "20", "--num-val", "5", "--num-test", "5"]
    args = parse([*argv, "--min-len", "10", "--max-len", "60", "--workers", "2", "--seed", "7"])
    assert args.run is run
    assert args.run(args) == 0
    for split, count in {"train": 20, "val": 5, "test": 5}.items():
        assert len(rows_of(out / f"basic_{split}.tsv")) == count
    printed = capsys.readouterr().out
    assert "train 20, val 5, test 5" in printed and "p95" in printed and "labels 0:" in printed


def test_run_defaults_are_lra_sizes() -> None:
    args = parse(["--out", "x"])
    sizes = (args.num_train, args.num_val, args.num_test, args.min_len, args.max_len)
    assert sizes == (96_000, 2_000, 2_000, 500, 2000) and args.workers == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min-len", "60", "--max-len", "60"], "min_len must be < max_len"),
        (["--min-len", "10", "--max-len", "11"], "strictly between"),
        (["--num-val", "-1"], "num_val"),
        (["--workers", "0"], "workers"),
    ],
)
def test_run_names_bad_arguments(extra: list[str], message: str, tmp_path) -> None:
    args = parse(["--out", str(tmp_path / "lo"), *extra])
    with pytest.raises(ValueError, match=message):
        run(args)
    assert not (tmp_path / "lo").exists()


def test_label_counts_of_a_read_file_match_the_summary(small_sets) -> None:
    root, stats = small_sets
    labels = Counter()
    for split in listops.SPLITS:
        labels.update(example["labels"] for example in read_listops_dir(root, split))
    assert {k: labels[k] for k in range(10)} == stats["label_counts"]
