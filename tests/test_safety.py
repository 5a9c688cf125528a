"""Files others send never run code, and names read from them never leave their folder.

Each payload is harmless: unpickling it would create a marker file (``Path.touch``), and
every test checks that the marker does not exist afterwards.
"""

from __future__ import annotations

import json
import pathlib
import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from test_data_readers import write_cifar

from ernie_sparse.analysis.experiments import make_spec, run_dir
from ernie_sparse.cli import main
from ernie_sparse.data.errors import DataFormatError
from ernie_sparse.data.listops import generate_listops
from ernie_sparse.data.lra import read_cifar10
from ernie_sparse.data.pathfinder import difficulty_dir, read_pathfinder
from ernie_sparse.data.pixels import read_cifar10_pixels
from ernie_sparse.data.safe_pickle import UnsafePickleError, load_data_pickle
from ernie_sparse.models.config import parse_overrides
from ernie_sparse.models.pretrained import read_weights
from ernie_sparse.safety import OutsideFolderError, inside
from ernie_sparse.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickled, it would touch ``marker``: it must never be."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


TINY = [
    "model.vocab_size=16",
    "model.hidden_size=16",
    "model.num_heads=2",
    "model.num_layers=1",
    "model.mlp_size=32",
    "model.max_positions=64",
    "model.attention.block_size=8",
    "model.attention.num_global=8",
    "train.max_length=64",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.max_steps=2",
    "train.eval_every=2",
    "train.log_every=1",
]


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("listops")
    generate_listops(root, num_train=24, num_val=8, num_test=8, seed=1, min_len=10, max_len=60)
    return root


# --- (a) train --resume ---


def test_train_resume_refuses_a_checkpoint_that_would_run_code(tmp_path, listops_dir, capsys):
    out, marker = tmp_path / "run", tmp_path / "marker"
    train = ["train", "--preset", "lra/listops-tiny", "--data", str(listops_dir)]
    assert main([*train, "--out", str(out), "--quiet", *TINY]) == 0
    # Our own checkpoint is tensors and plain types: numpy's RNG keys are a tensor.
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert isinstance(saved["rng"]["numpy"][1], torch.Tensor)
    resumed = ["train", "--out", str(out), "--resume", "--quiet"]
    capsys.readouterr()
    torch.save({"model": Payload(marker)}, out / "checkpoint.pt")
    assert main(resumed) == 2
    error = capsys.readouterr().err
    assert f"{out / 'checkpoint.pt'}: not loaded" in error
    assert "would run code" in error and "it needs getattr" in error
    assert not marker.exists()
    (out / "checkpoint.pt").write_bytes(pickle.dumps({"loop": Payload(marker)}, 2))  # raw
    assert main(resumed) == 2
    assert "would run code" in capsys.readouterr().err
    assert not marker.exists()


def test_a_checkpoint_written_before_the_change_is_refused_as_older(tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"rng": {"numpy": np.random.get_state()}}, path)  # the old format
    with pytest.raises(ValueError, match=r"checkpoint\.pt: not loaded.*older ernie-sparse"):
        load_checkpoint(path)


# --- (b) experiment resume ---


def test_experiment_resume_refuses_a_run_checkpoint_that_would_run_code(
    tmp_path, listops_dir, capsys
):
    overrides = parse_overrides([*TINY, f"train.data={listops_dir}"])
    spec = make_spec("robustness", "listops", overrides=overrides, attack_roll=3)
    folder, marker = tmp_path / "experiment", tmp_path / "marker"
    spec.save(folder)
    for cell in spec.cells:  # every run killed after a checkpoint that holds the payload
        directory = run_dir(folder, cell, 0)
        directory.mkdir(parents=True)
        config = spec.run_config(cell, 0).to_dict()
        (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        torch.save({"model": Payload(marker)}, directory / "checkpoint.pt")
    assert main(["experiment", "resume", str(folder), "--quiet", "--no-report"]) == 2
    error = capsys.readouterr().err
    assert "checkpoint.pt: not loaded" in error and "would run code" in error
    assert not marker.exists()


# --- (c) CIFAR-10 batches ---


def test_cifar_batch_with_a_payload_is_refused_by_name(tmp_path, capsys) -> None:
    root, marker = write_cifar(tmp_path / "cifar-10-batches-py"), tmp_path / "marker"
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}))
    batch = {b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 10, b"x": Payload(marker)}
    (root / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    refused = r"data_batch_1: refusing to load builtins.getattr from a pickle \(only numpy"
    for read in (read_cifar10, read_cifar10_pixels):
        with pytest.raises(UnsafePickleError, match=refused):
            read(root, split="train")
    assert main(["data", "info", str(root)]) == 2
    assert "data_batch_1: refusing to load builtins.getattr" in capsys.readouterr().err
    assert not marker.exists()
    assert len(read_cifar10(root, split="test")) == 10  # the untouched batch still reads


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_valid_cifar_batches_read_with_every_protocol_numpy_writes(tmp_path, protocol) -> None:
    rng = np.random.default_rng(protocol)
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [3, 1],
        b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
        b"filenames": [b"a.png", b""],
    }
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    if protocol == 5:  # numpy's out-of-band form needs _frombuffer: not the official format
        with pytest.raises(UnsafePickleError, match="_frombuffer"):
            load_data_pickle(path)
        return
    loaded = load_data_pickle(path)
    assert loaded[b"labels"] == [3, 1] and loaded[b"filenames"] == [b"a.png", b""]
    assert np.array_equal(loaded[b"data"], batch[b"data"])


def test_restricted_unpickler_admits_only_latin1_codecs(tmp_path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(pickle.UnpicklingError, match="only latin-1"):
        load_data_pickle(path)


# --- (d) sharded checkpoint index ---


def write_sharded(directory: pathlib.Path, shards: dict[str, str]) -> pathlib.Path:
    directory.mkdir()
    config = {"model_type": "bert", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 4, "intermediate_size": 48, "max_position_embeddings": 40,
              "type_vocab_size": 2}  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    index = {"metadata": {}, "weight_map": shards}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


@pytest.mark.parametrize("shard", ["../outside.safetensors", "ABSOLUTE"])
def test_convert_refuses_a_shard_outside_the_folder(tmp_path, monkeypatch, capsys, shard):
    outside = tmp_path / "outside.safetensors"
    save_file({"w": torch.zeros(1)}, outside)
    shard = str(outside) if shard == "ABSOLUTE" else shard
    source = write_sharded(tmp_path / "bert", {"a": "model-1.safetensors", "b": shard})
    save_file({"a": torch.ones(1)}, source / "model-1.safetensors")
    read: list[pathlib.Path] = []
    monkeypatch.setattr("ernie_sparse.models.pretrained._load_weight_file", read.append)
    assert main(["convert", "--from", str(source), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"model.safetensors.index.json: shard {shard!r} leads outside {source}" in error
    assert read == []  # no shard read, the outside one least of all
    monkeypatch.undo()
    with pytest.raises(ValueError, match="refusing to read it"):
        read_weights(source)


def test_shards_inside_the_folder_still_load(tmp_path) -> None:
    source = write_sharded(
        tmp_path / "bert", {"a": "model-1.safetensors", "b": "sub/2.safetensors"}
    )
    save_file({"a": torch.ones(1)}, source / "model-1.safetensors")
    (source / "sub").mkdir()
    save_file({"b": torch.zeros(2)}, source / "sub" / "2.safetensors")
    assert sorted(read_weights(source)) == ["a", "b"]


# --- (e) Pathfinder metadata ---


def test_pathfinder_refuses_or_counts_image_paths_outside_the_release(tmp_path) -> None:
    root = tmp_path / "release"
    folder = root / difficulty_dir("easy")
    (folder / "imgs" / "0").mkdir(parents=True)
    (folder / "metadata").mkdir()
    png = Image.new("L", (32, 32), 128)
    png.save(folder / "imgs" / "0" / "sample_0.png")
    png.save(root / "x.png")  # a valid image, outside the release folder: must not be read
    rows = [["imgs/0", "sample_0.png", "0", "1"], ["imgs/0", "../../../x.png", "1", "0"],
            ["imgs/0", str(root / "x.png"), "2", "1"]]  # fmt: skip
    np.save(folder / "metadata" / "0.npy", np.array(rows, dtype=str))
    with pytest.raises(DataFormatError, match=r"0\.npy:row 1: image path .*x\.png' leads outside"):
        read_pathfinder(root, difficulty="easy")
    dataset = read_pathfinder(root, difficulty="easy", skip_bad=True)
    assert len(dataset) == 1 and dataset.bad.count == 2
    problems = [str(error) for error in dataset.bad.skipped]
    assert "../../../x.png" in problems[0] and "'..'" in problems[0]
    assert str(root / "x.png") in problems[1] and "absolute" in problems[1]


# --- the helper ---


def test_inside_keeps_names_in_their_folder(tmp_path) -> None:
    folder = tmp_path / "folder"
    (folder / "a").mkdir(parents=True)
    assert inside(folder, "a/b.png") == folder / "a" / "b.png"
    (folder / "out").symlink_to(tmp_path)
    (folder / "ok").symlink_to(folder / "a")
    assert inside(folder, "ok/b.png") == folder / "ok" / "b.png"
    for name, why in [("/etc/passwd", "absolute"), ("a/../b", "'..'"), ("out/x", "symlink"),
                      ("", "empty")]:  # fmt: skip
        with pytest.raises(OutsideFolderError, match=why):
            inside(folder, name)
