"""Long-range probe tasks: labels checked independently, files, bad input, CLI, task, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ernie_sparse.cli import main
from ernie_sparse.data.errors import DataFormatError
from ernie_sparse.data.probes import (
    ProbeSpec,
    draw_example,
    generate_probe,
    read_probe,
    read_spec,
)
from ernie_sparse.training.config import TrainConfig, merge_values, preset_values, resolve
from ernie_sparse.training.tasks import load_split

READOUT, FIRST_SYMBOL = 1, 2  # the documented token ids

# Odd sizes on purpose: a partial last block (100 = 14 x 7 + 2), the far block at the end.
SPECS = [
    ProbeSpec("copy-far", length=64, block_size=8, distance=7),
    ProbeSpec("copy-far", length=100, block_size=7, distance=5, num_symbols=5, vocab_size=20),
    ProbeSpec("match", length=64, block_size=8, distance=7),
    ProbeSpec("match", length=100, block_size=7, distance=13, num_symbols=4, vocab_size=12),
    ProbeSpec("majority", length=100, block_size=7),
    ProbeSpec("majority", length=45, block_size=15),
]


def symbol_positions(ids: np.ndarray, spec: ProbeSpec) -> np.ndarray:
    """Positions holding a symbol id, found by value alone."""
    is_symbol = (ids >= FIRST_SYMBOL) & (ids < FIRST_SYMBOL + spec.num_symbols)
    return np.flatnonzero(is_symbol)


def derived_label(ids: list[int], spec: ProbeSpec) -> int:
    """The label re-derived from the ids, asserting the layout the kind promises."""
    ids_array = np.asarray(ids)
    positions = symbol_positions(ids_array, spec)
    blocks = positions // spec.block_size
    values = ids_array[positions] - FIRST_SYMBOL
    if spec.kind == "copy-far":
        assert len(positions) == 1 and blocks[0] == spec.distance
        return int(values[0])
    if spec.kind == "match":
        assert len(positions) == 2 and blocks.tolist() == [0, spec.distance]
        return int(values[0] == values[1])
    votes_per_block = np.bincount(blocks, minlength=spec.num_blocks)
    assert votes_per_block.tolist() == [1] * spec.num_blocks  # one vote in every block
    ones = int(values.sum())
    return int(ones > len(values) - ones)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.length}-{s.block_size}")
def test_labels_agree_with_an_independent_reading_of_the_ids(spec: ProbeSpec) -> None:
    labels = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        for _ in range(100):
            ids, label = draw_example(spec, rng)
            assert len(ids) == spec.length and ids[0] == READOUT
            assert READOUT not in ids[1:]
            assert min(ids) >= 1 and max(ids) < spec.vocab_size
            assert label == derived_label(ids, spec)
            labels.append(label)
    counts = np.bincount(labels, minlength=spec.num_labels)
    share = counts / counts.sum()
    assert len(counts) == spec.num_labels
    assert np.all(np.abs(share - 1 / spec.num_labels) < 0.05), counts  # roughly even of 2000


# --- files ---


def rows(path: Path) -> list[tuple[int, list[int]]]:
    parsed = []
    for line in path.read_text().splitlines():
        label, ids = line.split("\t")
        parsed.append((int(label), [int(x) for x in ids.split(" ")]))
    return parsed


def test_generate_then_read_round_trips_and_is_reproducible(tmp_path) -> None:
    spec = ProbeSpec("match", length=64, block_size=8, distance=6, num_symbols=3)
    counts = generate_probe(tmp_path / "a", spec, num_train=50, num_eval=20, seed=3)
    assert counts == {"train": 50, "val": 20, "test": 20}
    assert read_spec(tmp_path / "a") == spec
    parameters = json.loads((tmp_path / "a" / "probe.json").read_text())
    assert (parameters["seed"], parameters["counts"]) == (3, counts)
    for split, count in counts.items():
        dataset = read_probe(tmp_path / "a", split)
        assert len(dataset) == count and dataset.truncated == 0 and dataset.bad.count == 0
        assert (dataset.info.task, dataset.info.num_labels) == ("probe", 2)
        assert (dataset.info.vocab_size, dataset.info.max_length) == (64, 64)
        read = [(e["labels"], e["input_ids"].tolist()) for e in dataset.examples]
        assert read == rows(tmp_path / "a" / f"{split}.tsv")
        assert all(label == derived_label(ids, spec) for label, ids in read)

    generate_probe(tmp_path / "b", spec, num_train=50, num_eval=20, seed=3)
    generate_probe(tmp_path / "more", spec, num_train=80, num_eval=20, seed=3)
    generate_probe(tmp_path / "other", spec, num_train=50, num_eval=20, seed=4)
    for split in ("train", "val", "test"):
        first = (tmp_path / "a" / f"{split}.tsv").read_text()
        assert (tmp_path / "b" / f"{split}.tsv").read_text() == first
        assert (tmp_path / "other" / f"{split}.tsv").read_text() != first
    for split in ("val", "test"):  # more training examples leave the evaluation splits alone
        first = (tmp_path / "a" / f"{split}.tsv").read_text()
        assert (tmp_path / "more" / f"{split}.tsv").read_text() == first
    assert rows(tmp_path / "more" / "train.tsv")[:50] == rows(tmp_path / "a" / "train.tsv")
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"kind": "copy-far", "length": 64, "block_size": 16, "distance": 4}, "distance=4"),
        ({"kind": "match", "length": 64, "block_size": 8, "distance": 8}, "distance=8"),
        ({"kind": "majority", "length": 64, "block_size": 16}, "block_size=16"),
        ({"kind": "copy-far", "num_symbols": 4, "vocab_size": 6}, "vocab_size=6"),
        ({"kind": "copy-far", "vocab_size": 0}, "vocab_size"),
        ({"kind": "match", "num_symbols": 1}, "num_symbols=1"),
        ({"kind": "majority", "length": 45, "block_size": 15, "num_symbols": 3}, "num_symbols=3"),
        ({"kind": "copy-far", "block_size": 1}, "block_size"),
        ({"kind": "copy-far", "length": 0}, "length"),
        ({"kind": "copy-far", "length": True}, "length"),
        ({"kind": "far"}, "kind"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(fields: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ProbeSpec(**fields)


def test_majority_with_even_block_count_says_so() -> None:
    with pytest.raises(ValueError, match=r"odd number of blocks.*num_blocks=4"):
        ProbeSpec("majority", length=64, block_size=16)


def test_malformed_rows_and_files_are_errors_naming_file_and_line(tmp_path) -> None:
    spec = ProbeSpec("copy-far", length=32, block_size=4, distance=5)
    generate_probe(tmp_path, spec, num_train=5, num_eval=5, seed=0)
    val = tmp_path / "val.tsv"
    lines = val.read_text().splitlines(keepends=True)
    good = lines[0]
    for bad_line in ("x\t1 2 3\n", "0 1 2 3\n", "7\t" + good.split("\t")[1], "0\t1 2 3\n"):
        val.write_text(good + good + bad_line + good)
        with pytest.raises(DataFormatError, match=r"val\.tsv:3: "):
            read_probe(tmp_path, "val")
    skipped = read_probe(tmp_path, "val", skip_bad=True)
    assert (len(skipped), skipped.bad.count) == (3, 1)  # counted, not silently dropped
    with pytest.raises(ValueError, match="num_train"):
        generate_probe(tmp_path / "none", spec, num_train=0, num_eval=5, seed=0)
    with pytest.raises(ValueError, match="split"):
        read_probe(tmp_path, "dev")
    (tmp_path / "probe.json").write_text("{")
    with pytest.raises(DataFormatError, match=r"probe\.json:1"):
        read_probe(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="ernie-sparse data probe"):
        read_probe(tmp_path / "missing", "train")


# --- command line ---


def test_cli_writes_a_probe_and_data_info_describes_it(tmp_path, capsys) -> None:
    out = tmp_path / "match"
    command = ["data", "probe", "--kind", "match", "--out", str(out), "--length", "60"]
    sizes = ["--block-size", "6", "--distance", "9", "--num-train", "30", "--num-eval", "10"]
    assert main([*command, *sizes, "--seed", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "probe.json",
        "test.tsv",
        "train.tsv",
        "val.tsv",
    ]
    assert read_spec(out) == ProbeSpec("match", length=60, block_size=6, distance=9)
    assert "train 30, val 10, test 10" in capsys.readouterr().out
    assert main(["data", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "probe (match)" in printed
    for split, count in (("train", 30), ("val", 10), ("test", 10)):
        assert f"{split}: {count} examples" in printed
    bad = ["data", "probe", "--kind", "majority", "--out", str(tmp_path / "even")]
    assert main([*bad, "--length", "64", "--block-size", "16"]) == 2
    assert "odd number of blocks" in capsys.readouterr().err


# --- the task and a tiny run ---


@pytest.fixture(scope="module")
def copy_far_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe-copy-far")
    spec = ProbeSpec("copy-far", length=60, block_size=15, distance=3)
    generate_probe(root, spec, num_train=64, num_eval=16, seed=0)
    return root


def test_probe_task_reads_splits_and_refuses_to_cut(copy_far_dir) -> None:
    train = TrainConfig(task="probe", data=str(copy_far_dir), max_length=60)
    val = load_split(train, "val")
    expected = read_probe(copy_far_dir, "val")
    assert len(val) == 16 and val.info.task == "probe" and val.info.num_labels == 2
    assert all(
        a["labels"] == b["labels"] and a["input_ids"].equal(b["input_ids"])
        for a, b in zip(val.examples, expected.examples, strict=True)
    )
    short = TrainConfig(task="probe", data=str(copy_far_dir), max_length=59)
    with pytest.raises(ValueError, match=r"train\.max_length=59 .*probe length=60"):
        load_split(short, "train")
    with pytest.raises(ValueError, match=r"train\.data"):
        load_split(TrainConfig(task="probe"), "val")


def test_probe_presets_resolve_with_one_base() -> None:
    for kind in ("copy-far", "match", "majority"):
        config = resolve(preset_values(f"probe/{kind}-tiny"))
        assert (config.train.task, config.train.data) == ("probe", f"data/probe-{kind}")
        assert config.model.hst.enabled and config.model.hst.pooling == "cls"
        assert (config.model.attention.pattern, config.model.attention.pattern_params) == (
            "window",
            {"width": 1},
        )
        assert (config.model.attention.block_size, config.model.attention.num_global) == (16, 0)
        assert config.model.saor.alpha == 0.0 and config.train.max_length == 512


def test_a_few_training_steps_on_a_probe_write_metrics(tmp_path, copy_far_dir) -> None:
    from ernie_sparse.training.loop import Run

    small = {
        "model": {"hidden_size": 16, "mlp_size": 32, "num_layers": 1},
        "train": {
            "data": str(copy_far_dir),
            "batch_size": 8,
            "warmup_steps": 1,
            "max_steps": 4,
            "eval_every": 2,
            "log_every": 1,
        },
    }
    values = merge_values(preset_values("probe/copy-far-tiny"), small)
    run = Run(resolve(values), tmp_path / "run", resume=False, quiet=True)
    run.train()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert max(r["step"] for r in records) == 4
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert any("val_accuracy" in r for r in records)
    assert (tmp_path / "run" / "config.yaml").is_file()
