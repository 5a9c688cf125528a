"""Issue 17, "runs that cannot be resumed or silently ignore what was asked": resuming a
run killed before its first checkpoint, what --resume may change, experiment locks of
reused pids, every TrainConfig field validated, truncated weights / configs / metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from test_training import TINY, records, write_config

from ernie_sparse.analysis.experiments import RunLock, make_spec, run_dir
from ernie_sparse.cli import main
from ernie_sparse.data.listops import generate_listops
from ernie_sparse.models import ModelConfig
from ernie_sparse.training.config import TrainConfig, resolve

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_listops(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("listops")
    generate_listops(root, num_train=64, num_val=16, num_test=16, seed=1, min_len=10, max_len=60)
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_listops) -> tuple[Path, Path]:
    """(config file, run folder) of a finished run of 4 steps; copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    config = write_config(
        root / "run.yaml", small_listops, max_steps=4, eval_every=2, log_every=2
    )  # fmt: skip
    out = root / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    return config, out


def copy_run(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished[1], tmp_path / "run"))


def train_steps(out: Path) -> list[int]:
    return [r["step"] for r in records(out) if "loss" in r]


# --- 1. a run killed before its first checkpoint ---


def test_resume_before_the_first_checkpoint_starts_from_step_zero(
    tmp_path, finished, capsys
) -> None:
    out = copy_run(finished, tmp_path)
    (out / "checkpoint.pt").unlink()  # killed while writing its first checkpoint
    (out / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "lo')
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "training from step 0" in printed and "checkpoint.pt.tmp" in printed
    assert not (out / "checkpoint.pt.tmp").exists() and (out / "checkpoint.pt").is_file()
    assert train_steps(out) == [2, 4]  # trained once from the start, nothing twice
    again, never_killed = records(out), records(finished[1])  # the same run
    assert [sorted(r) for r in again] == [sorted(r) for r in never_killed]
    for a, b in zip(again, never_killed, strict=True):
        assert a == pytest.approx(b, rel=1e-5), (a, b)


# --- 2. what --resume may change ---


def test_resume_extends_max_steps_and_refuses_other_changes_by_name(
    tmp_path, finished, capsys
) -> None:
    config, _ = finished
    out = copy_run(finished, tmp_path)
    saved = (out / "config.yaml").read_text()
    resume = ["train", "--out", str(out), "--resume", "--quiet"]
    capsys.readouterr()
    for change in (["train.lr=0.5"], ["model.hidden_size=32"], ["--preset", "lra/listops-tiny"]):
        assert main([*resume, *change]) == 2, change
        error = capsys.readouterr().err
        assert "size mismatch" not in error and "another --out" in error
        named = change[-1].split("=")[0]
        assert named in error, (named, error)
    assert (out / "config.yaml").read_text() == saved  # nothing of those reached the run
    assert main([*resume, "--max-steps", "8", "train.eval_every=4"]) == 0
    printed = capsys.readouterr().out
    assert "train.max_steps: 4 -> 8" in printed and "schedule is rebuilt" in printed
    assert "train.eval_every: 2 -> 4" in printed
    assert train_steps(out) == [2, 4, 6, 8]  # steps 5-8 trained on top of the finished 4
    evals = [r["step"] for r in records(out) if "val_accuracy" in r]
    assert evals == [2, 4, 8]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 8
    # the config file it started from is accepted (it is the run's), not re-read
    assert main([*resume, "--config", str(config)]) == 0
    assert train_steps(out) == [2, 4, 6, 8]
    assert main([*resume, "--max-steps", "6"]) == 2
    assert "has done 8 steps" in capsys.readouterr().err


# --- 3. experiment locks ---


def _spec(data: Path):
    overrides = {"model": {}, "train": {"data": str(data)}}
    for item in ("model.hidden_size=16", "model.num_heads=2", "model.num_layers=1",
                 "model.mlp_size=32", "model.max_positions=64", "model.attention.block_size=8",
                 "train.max_length=64", "train.batch_size=8", "train.max_steps=2",
                 "train.eval_every=2"):  # fmt: skip
        key, value = item.split("=")
        section, name = key.split(".", 1)
        group, _, leaf = name.rpartition(".")
        target = overrides[section].setdefault(group, {}) if group else overrides[section]
        target[leaf] = yaml.safe_load(value)
    return make_spec("robustness", "listops", overrides=overrides, attack_roll=3)


def test_a_lock_of_a_reused_pid_is_stale_and_unfinished_runs_fail_the_command(
    tmp_path, small_listops, capsys
) -> None:
    from ernie_sparse.analysis.experiments.runner import _is_stale, host_id, process_start

    lock = tmp_path / "seed-0.lock"
    lock.write_text("x")
    me, host, start = os.getpid(), socket.gethostname(), process_start(os.getpid())
    machine, _, boot = host_id().rpartition(":")
    assert start is not None and not _is_stale(f"{me} {host} {host_id()} {start} 1", lock)
    assert _is_stale(f"{me} {host} {host_id()} proc:1 1", lock)  # pid alive, not its owner
    assert _is_stale(f"{me} {host} {machine}:another-boot {start} 1", lock)  # rebooted
    assert not _is_stale(f"{me} {host} other-machine:{boot} proc:1 1", lock)  # cannot tell
    # An experiment whose runs are held by live processes ends non-zero, listing them.
    spec, folder = _spec(small_listops), tmp_path / "experiment"
    spec.save(folder)
    held = [RunLock(run_dir(folder, cell, 0).parent / "seed-0.lock") for cell in spec.cells]
    try:
        assert all(lock.acquire() for lock in held)  # this process: alive, same start time
        capsys.readouterr()
        assert main(["experiment", "resume", str(folder), "--quiet"]) == 1
        error = capsys.readouterr().err
        assert f"{len(spec.cells)} of {len(spec.cells)} runs not finished" in error
        assert f"held by pid {me}" in error and str(held[0].path) in error
    finally:
        for lock in held:
            lock.release()


# --- 4. every training field validated ---


BAD_TRAIN_VALUES = [
    ("batch_size", 0), ("grad_accum", 0), ("eval_every", 0), ("max_steps", -1),
    ("lr", -0.1), ("mlm.val_fraction", 1.5), ("log_every", 0), ("max_length", 0),
    ("warmup_steps", -1), ("weight_decay", -1.0), ("clip_norm", float("nan")),
    ("stop_at", -0.5), ("mlm.mask_probability", 0.0), ("mlm.mask_probability", 1.0),
    ("qa.doc_stride", 0), ("qa.max_answer_tokens", 0), ("qa.global_prefix", -1),
    ("text.val_from_train", 1.0), ("patience", -1), ("decay", "step"),
    ("grad_accum", 16), ("bf16", "yes"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BAD_TRAIN_VALUES)
def test_train_config_refuses_bad_values_naming_the_field(field, value) -> None:
    group, _, name = field.rpartition(".")
    values = {group: {name: value}} if group else {name: value}
    if field == "grad_accum":
        values["batch_size"] = 8
    with pytest.raises((ValueError, TypeError), match=rf"train\.{re.escape(field)}"):
        TrainConfig(**values)
    with pytest.raises((ValueError, TypeError), match=rf"train\.{re.escape(field)}"):
        TrainConfig.from_dict(values)


def test_saved_train_sections_with_flat_task_keys_still_load() -> None:
    legacy = {"task": "triviaqa", "val_fraction": 0.2, "mask_probability": 0.3,
              "doc_stride": 64, "max_answer_tokens": 8, "global_prefix": 16,
              "val_from_train": 0.1}  # fmt: skip
    train = TrainConfig.from_dict(legacy)
    assert (train.mlm.val_fraction, train.mlm.mask_probability) == (0.2, 0.3)
    assert (train.qa.doc_stride, train.qa.max_answer_tokens, train.qa.global_prefix) == (64, 8, 16)
    assert train.text.val_from_train == 0.1
    assert TrainConfig.from_dict(dataclasses.asdict(train)) == train
    with pytest.raises(ValueError, match=r"train\.doc_stride \(the old spelling\) and train\.qa"):
        TrainConfig.from_dict({"doc_stride": 64, "qa": {"doc_stride": 32}})
    with pytest.raises(ValueError, match=r"train\.doc_stride is now train\.qa\.doc_stride"):
        resolve({"model": {"vocab_size": 16}, "train": {"doc_stride": 64}})


def test_model_config_refuses_bad_norms_inits_and_global_tokens() -> None:
    for field, value in (("layer_norm_eps", -1e-5), ("initializer_range", 0.0)):
        with pytest.raises(ValueError, match=field):
            ModelConfig(vocab_size=16, **{field: value})
    with pytest.raises(ValueError, match=r"num_global=80.*max_positions=64"):
        ModelConfig(
            vocab_size=16, max_positions=64, attention={"num_global": 80, "pattern": "bigbird"}
        )


def test_a_batch_larger_than_the_training_split_is_refused(tmp_path, small_listops) -> None:
    from ernie_sparse.training.loop import Run

    values = json.loads(json.dumps(TINY))
    values["train"].update(data=str(small_listops), batch_size=1000)
    with pytest.raises(ValueError, match=r"batch_size=1000 .*\(64 examples"):
        Run(resolve(values), tmp_path / "run", resume=False, quiet=True)


# --- 5. truncated weights, configs and metrics ---


def test_truncated_weights_configs_and_metrics_name_the_file(tmp_path, finished, capsys) -> None:
    from ernie_sparse.models.pretrained import load_encoder
    from ernie_sparse.training.warm_start import read_source_checkpoint

    out = copy_run(finished, tmp_path)
    best = out / "best.safetensors"
    best.write_bytes(best.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 2
    assert f"{best}: not a readable safetensors file" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"best\.safetensors: not a readable safetensors"):
        read_source_checkpoint(out)  # a run folder as train.init_from
    config = out / "config.yaml"
    text = config.read_text()
    config.write_text(text[: text.index("pattern_params")] + "pattern_params: {window: [1,")
    assert main(["evaluate", str(out), "--weights", "model.safetensors"]) == 2
    assert f"{config}: not valid YAML" in capsys.readouterr().err
    config.write_text(text)
    checkpoint = tmp_path / "bert"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "bert", "hidden_si')
    with pytest.raises(ValueError, match=r"bert/config\.json: not valid JSON.*truncated"):
        load_encoder(checkpoint)
    # a half-written last metrics line (killed mid-write) is dropped, with a note
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "loss": 2.')
    assert main(["train", "--out", str(out), "--resume", "--quiet", "--max-steps", "6"]) == 0
    assert "dropped the half-written last line of metrics.jsonl" in capsys.readouterr().out
    assert train_steps(out) == [2, 4, 6]
