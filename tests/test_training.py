"""Training: schedules, presets, the loop's exact resume after SIGKILL, DDP, evaluate, plot."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ernie_sparse.cli import main
from ernie_sparse.data.listops import generate_listops
from ernie_sparse.models.config import LEGACY_MODEL_KEYS, parse_overrides
from ernie_sparse.training.config import (
    LEGACY_TRAIN_KEYS,
    RunConfig,
    TrainConfig,
    load_run_config,
    merge_values,
    preset_values,
    resolve,
)
from ernie_sparse.training.schedule import lr_factor

# --- schedules and presets ---


def test_lra_rsqrt_schedule_and_decays() -> None:
    assert lr_factor(0, warmup=100, total=1000, decay="rsqrt") == pytest.approx(1 / 100 / 10)
    assert lr_factor(99, warmup=100, total=1000, decay="rsqrt") == pytest.approx(1 / 10)
    assert lr_factor(399, warmup=100, total=1000, decay="rsqrt") == pytest.approx(1 / 20)
    assert lr_factor(49, warmup=100, total=1000, decay="cosine") == pytest.approx(0.5)
    assert lr_factor(999, warmup=100, total=1000, decay="cosine") == pytest.approx(0.0)
    assert lr_factor(549, warmup=100, total=1000, decay="linear") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="decay must be"):
        lr_factor(0, warmup=1, total=2, decay="step")


def test_presets_resolve_with_one_base_and_overrides() -> None:
    values = preset_values("lra/listops-tiny")
    assert values["train"]["task"] == "listops"  # from the base (listops-paper)
    assert values["model"]["hidden_size"] == 64  # the tiny preset's own
    overrides = parse_overrides(["model.hst.pooling=max", "train.lr=0.5", "model.preset=bigbird"])
    config = resolve({**values, "model": {**values["model"], **overrides["model"]}})
    assert config.model.hst.pooling == "max" and not config.model.hst.enabled
    assert config.model.saor.alpha == 0.0  # the bigbird preset's, not ERNIE-Sparse's
    assert config.model_preset == "bigbird"
    paper = resolve(preset_values("lra/listops-paper"))
    assert (paper.model.hidden_size, paper.train.lr, paper.train.decay) == (512, 0.05, "rsqrt")
    assert paper.model.hst.enabled and paper.model.saor.alpha == 5.0
    with pytest.raises(ValueError, match="unknown preset"):
        preset_values("lra/nope")
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["train.lr"])


def test_grouped_settings_take_dotted_overrides() -> None:
    values = preset_values("finetune/triviaqa-tiny")
    overrides = parse_overrides(
        ["model.attention.pattern=window", "model.attention.pattern_params.width=2",
         "model.attention.num_global=32", "train.qa.doc_stride=32", "train.qa.global_prefix=32"]
    )  # fmt: skip
    config = resolve(merge_values(values, overrides))
    attention = config.model.attention
    assert (attention.pattern, attention.pattern_params, attention.num_global) == (
        "window",
        {"width": 2},
        32,
    )
    assert attention.block_size == 16  # the preset's, kept beside the overrides
    assert (config.train.qa.doc_stride, config.train.qa.global_prefix) == (32, 32)
    assert config.train.qa.max_answer_tokens == 16  # the preset's
    for legacy, new in (("model.block_size=8", "model.attention.block_size"),
                        ("model.attention=combiner", "model.attention.kind"),
                        ("train.doc_stride=8", "train.qa.doc_stride")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"is now {re.escape(new)}"):
            resolve(merge_values(values, parse_overrides([legacy])))


# --- the loop, run as the command line does ---

TINY = {
    "model": {
        "preset": "ernie-sparse",
        "vocab_size": 16,
        "hidden_size": 16,
        "num_heads": 2,
        "num_layers": 1,
        "mlp_size": 32,
        "max_positions": 64,
        "attention": {"block_size": 8, "num_global": 8},
        "dropout": 0.1,
        "saor": {"alpha": 1.0, "roll_tokens": 3},
    },
    "train": {
        "task": "listops",
        "max_length": 64,
        "batch_size": 8,
        "lr": 0.01,
        "warmup_steps": 5,
        "decay": "cosine",
        "max_steps": 30,
        "eval_every": 10,
        "log_every": 5,
    },
}


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("listops")
    generate_listops(root, num_train=200, num_val=40, num_test=40, seed=1, min_len=10, max_len=60)
    return root


def write_config(path: Path, data: Path, *, model: dict | None = None, **train) -> Path:
    values = json.loads(json.dumps(TINY))
    values["train"].update(data=str(data), **train)
    values["model"].update(model or {})
    path.write_text(yaml.safe_dump(values))
    return path


def train_command(config: Path, out: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "ernie_sparse", "train", "--config", str(config)]
    return [*command, "--out", str(out), "--quiet", *extra]


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in lines]


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, listops_dir) -> None:
    config = write_config(tmp_path / "run.yaml", listops_dir)
    whole = tmp_path / "whole"
    subprocess.run(train_command(config, whole), check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(config, killed), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill after the step-10 checkpoint, mid-way to step 20
        if (killed / "checkpoint.pt").is_file() and any(r["step"] >= 15 for r in records(killed)):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before the kill"
    resume = train_command(config, killed, "--resume")
    subprocess.run(resume, check=True, capture_output=True)
    assert records(killed) == records(whole)
    assert records(whole)[-1]["step"] == 30 and "val_accuracy" in records(whole)[-1]


def test_train_refuses_to_overwrite_and_evaluate_prints_json(tmp_path, listops_dir, capsys) -> None:
    config = write_config(tmp_path / "run.yaml", listops_dir, max_steps=10, eval_every=5)
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "best.safetensors"):
        assert (out / name).is_file(), name
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["evaluate", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["examples"] == 40 and 0.0 <= result["accuracy"] <= 1.0
    assert main(["evaluate", str(out), "--attack", "roll=3"]) == 0
    attacked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert attacked["attack"] == "roll=3" and (out / "eval-test-roll3.json").is_file()
    assert main(["evaluate", str(out), "--attack", "shuffle"]) == 2
    assert main(["plot", str(out), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.skipif(
    not Path(sys.executable).with_name("torchrun").exists(), reason="no torchrun beside python"
)
def free_port() -> int:
    """A TCP port nobody listens on now (a fixed one may be taken or in TIME_WAIT)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_ddp_matches_one_process(tmp_path, listops_dir) -> None:
    config = write_config(tmp_path / "run.yaml", listops_dir, max_steps=10, eval_every=5)
    values = yaml.safe_load(config.read_text())
    values["model"]["dropout"] = values["model"]["attention"]["dropout"] = 0.0  # same randomness
    config.write_text(yaml.safe_dump(values))
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run(train_command(config, single), check=True, capture_output=True)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port())]
    command += train_command(config, double)[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]  # the ranks' tracebacks, if they failed
    one, two = records(single), records(double)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "val_accuracy"):
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=1e-3, abs_tol=1e-4), (key, a, b)
    # the two-process checkpoint resumes in one process
    resume = train_command(config, double, "--resume", "--max-steps", "12")
    subprocess.run(resume, check=True, capture_output=True)
    assert records(double)[-1]["step"] == 12


SAVED_RUN_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "docs").rglob("config.yaml"))


@pytest.mark.parametrize("path", SAVED_RUN_CONFIGS, ids=lambda p: p.parent.name)
def test_run_configs_saved_with_flat_keys_still_load(path) -> None:
    """docs/ holds real runs saved before attention and task-only settings were grouped."""
    flat = yaml.safe_load(path.read_text())
    assert "block_size" in flat["model"] and "doc_stride" in flat["train"]  # the old keys
    run = load_run_config(path)
    for section, legacy in (("model", LEGACY_MODEL_KEYS), ("train", LEGACY_TRAIN_KEYS)):
        for old, new in legacy.items():
            group, leaf = new.split(".")
            moved = getattr(getattr(getattr(run, section), group), leaf)
            if old in flat[section]:  # (older runs lack some newer settings)
                assert moved == flat[section][old], f"{section}.{old}"
    saved = run.to_dict()  # in the new keys
    assert "block_size" not in saved["model"] and "doc_stride" not in saved["train"]
    assert RunConfig.from_dict(saved).to_dict() == saved


def test_every_preset_resolves() -> None:
    folder = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.with_suffix("").relative_to(folder).as_posix() for p in folder.rglob("*.yaml"))
    assert len(names) >= 10
    for name in names:
        config = resolve(preset_values(name))
        assert config.model.max_positions >= config.train.max_length, name


def test_early_stopping_and_gradient_accumulation(tmp_path, listops_dir) -> None:
    frozen = write_config(
        tmp_path / "frozen.yaml", listops_dir, lr=0.0, patience=1, eval_every=2, max_steps=20
    )
    out = tmp_path / "frozen"
    assert main(["train", "--config", str(frozen), "--out", str(out), "--quiet"]) == 0
    evals = [r for r in records(out) if "val_accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4]  # no gain at step 4: stop
    whole = write_config(tmp_path / "whole.yaml", listops_dir, max_steps=4, eval_every=4)
    split = write_config(
        tmp_path / "split.yaml", listops_dir, max_steps=4, eval_every=4, grad_accum=2
    )
    losses = []
    for config in (whole, split):
        values = yaml.safe_load(config.read_text())
        values["model"]["dropout"] = values["model"]["attention"]["dropout"] = 0.0
        config.write_text(yaml.safe_dump(values))
        out = tmp_path / config.stem
        assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
        losses.append([r["loss"] for r in records(out) if "loss" in r])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_tensorboard_scalars(tmp_path, listops_dir) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(tmp_path / "tb.yaml", listops_dir, max_steps=10, eval_every=5)
    out = tmp_path / "tb"
    args = ["train", "--config", str(config), "--out", str(out), "--quiet"]
    assert main([*args, "train.tensorboard=true"]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "nll", "kl", "lr", "val_accuracy"} <= tags
    assert [e.step for e in events.Scalars("val_accuracy")] == [5, 10]


def test_bf16_autocast_and_gradient_checkpointing_train(tmp_path, listops_dir) -> None:
    config = write_config(
        tmp_path / "bf16.yaml", listops_dir, max_steps=4, eval_every=4, bf16=True,
        grad_checkpointing=True,
    )  # fmt: skip
    out = tmp_path / "bf16"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    losses = [r["loss"] for r in records(out) if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)


def test_compiled_training_on_length_buckets_matches_eager(tmp_path, listops_dir) -> None:
    """train.compile + train.length_buckets: batches padded to a few lengths, the model
    compiled in place (aot_eager: tracing without inductor's C++ build); the losses are
    those of eager training on the same buckets and, without dropout (whose draws follow
    the padded shapes), of unpadded training."""
    runs = {}
    settings = {
        "eager": {},
        "buckets": {"length_buckets": 2},
        "compiled": {"length_buckets": 2, "compile": "aot_eager"},
    }
    for name, extra in settings.items():
        config = write_config(
            tmp_path / f"{name}.yaml", listops_dir, model={"dropout": 0.0}, max_steps=4,
            eval_every=4, **extra,
        )  # fmt: skip
        out = tmp_path / name
        assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
        runs[name] = [r["loss"] for r in records(out) if "loss" in r]
    assert runs["compiled"] == pytest.approx(runs["buckets"], rel=1e-5)
    assert runs["buckets"] == pytest.approx(runs["eager"], rel=1e-5)
    with pytest.raises(ValueError, match=r"train\.compile"):
        TrainConfig(compile="no-such-backend")


# --- the task registry ---


def test_unknown_tasks_are_refused_naming_the_known_ones() -> None:
    values = preset_values("lra/listops-tiny")
    values["train"]["task"] = "nope"
    with pytest.raises(ValueError, match=r"unknown task 'nope'; known tasks: .*listops"):
        resolve(values)


def test_a_registered_task_drives_collate_randomness_and_best_checkpoint(
    tmp_path, listops_dir
) -> None:
    import torch
    from safetensors.torch import load_file

    from ernie_sparse.data.collate import pad_collate
    from ernie_sparse.training import tasks
    from ernie_sparse.training.evaluation import EVAL_SEED
    from ernie_sparse.training.loop import Run

    draws: list[int] = []

    def noisy_collate(examples, generator):  # stands in for MLM masking
        if generator.initial_seed() != EVAL_SEED:  # evaluation draws the same masks each time
            draws.append(int(torch.randint(1 << 30, (1,), generator=generator)))
        return pad_collate(examples)

    listops = tasks.get_task("listops")
    task = tasks.Task(
        "listops-by-loss",
        read=listops.read,
        build=listops.build,
        collate=noisy_collate,
        metric="loss",
        higher_is_better=False,
    )
    tasks.register_task(task)
    values = yaml.safe_load(write_config(tmp_path / "c.yaml", listops_dir).read_text())
    values["train"].update(task="listops-by-loss", max_steps=6, eval_every=2)
    runs = []
    for name in ("a", "b"):
        draws.clear()
        run = Run(resolve(values), tmp_path / name, resume=False, quiet=True)
        run.train()
        runs.append((run, list(draws)))
    (run, first), (_, second) = runs
    assert first == second and len(set(first)) == len(first) == 6  # per step, reproducible
    losses = [r["val_loss"] for r in records(tmp_path / "a") if "val_loss" in r]
    assert run.state.best_metric == min(losses)
    best_step = 2 * (losses.index(min(losses)) + 1)
    assert (tmp_path / "a" / "best.safetensors").is_file() and best_step in (2, 4, 6)
    assert set(load_file(str(tmp_path / "a" / "best.safetensors"))) == set(run.module.state_dict())


def test_exponent_floats_on_the_command_line_are_floats() -> None:
    values = preset_values("lra/listops-tiny")
    overrides = parse_overrides(["train.lr=1e-4", "train.weight_decay=2E-2"])
    config = resolve({**values, "train": {**values["train"], **overrides["train"]}})
    assert (config.train.lr, config.train.weight_decay) == (1e-4, 2e-2)
    with pytest.raises(TypeError, match=r"train\.lr must be float, got str 'fast'"):
        resolve({**values, "train": {**values["train"], "lr": "fast"}})


def test_evaluation_runs_in_eval_mode_and_restores_the_mode() -> None:
    import torch

    from ernie_sparse.models.heads import TaskOutput
    from ernie_sparse.training.distributed import World
    from ernie_sparse.training.evaluation import evaluate_accuracy

    modes: list[bool] = []

    class Recorder(torch.nn.Module):
        def forward(self, input_ids, attention_mask, labels):
            modes.append(self.training)
            logits = torch.zeros(len(labels), 2)
            return TaskOutput(logits, torch.tensor(0.7), None)

    data = [{"input_ids": torch.tensor([1, 2]), "labels": 0} for _ in range(5)]
    model = Recorder().train()
    metrics = evaluate_accuracy(model, data, batch_size=2, world=World())
    assert modes == [False] * 3 and model.training
    assert metrics == {"accuracy": 1.0, "loss": pytest.approx(0.7), "examples": 5}


def test_demo_runs_end_to_end_at_a_few_steps(tmp_path) -> None:
    out = tmp_path / "demo"
    options = ["--max-steps", "2", "--seeds", "1", "--workers", "1"]
    assert main(["demo", "--out", str(out), *options]) == 0
    report = (out / "report.md").read_text()
    rows = ("| ERNIE-Sparse (HST) | window only |", "| BigBird (no HST) | window only |",
            "| dense attention | all pairs |", "window + 3 random blocks", "window + 1 random block |")  # fmt: skip  # noqa: E501
    for row in rows:
        assert row in report, row
    assert "BigBird stays at" in report and "route in 0 of 1 runs" in report
    assert (out / "curves.png").is_file() and (out / "data" / "probe.json").is_file()
    results = json.loads((out / "experiment" / "results.json").read_text())
    assert results["runs_done"] == 7
