"""Experiment commands (ablation, bottleneck, robustness) at tiny scale: every cell trains,
finished runs are skipped, killed runs resume, lock files keep processes apart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ernie_sparse.analysis.experiments import RunLock, make_spec, run_dir, run_one
from ernie_sparse.analysis.experiments.report import cell_text, summarize
from ernie_sparse.analysis.experiments.spec import ExperimentSpec
from ernie_sparse.cli import main
from ernie_sparse.data.listops import generate_listops
from ernie_sparse.models.config import parse_overrides

TINY = [
    "model.hidden_size=16",
    "model.num_heads=2",
    "model.num_layers=1",
    "model.mlp_size=32",
    "model.max_positions=64",
    "model.attention.block_size=8",
    "model.attention.num_global=8",
    "model.dropout=0.0",
    "train.max_length=64",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.max_steps=4",
    "train.eval_every=2",
    "train.log_every=2",
]


pytestmark = pytest.mark.usefixtures("one_thread")


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("listops")
    generate_listops(root, num_train=80, num_val=24, num_test=24, seed=1, min_len=10, max_len=60)
    return root


def experiment(kind: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["experiment", kind, "--task", "listops", "--data", str(data), "--out", str(out),
            "--quiet", *extra, *TINY]  # fmt: skip


def metrics_steps(directory: Path) -> list[int]:
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]


def test_ablation_trains_each_cell_once_and_skips_finished_runs(tmp_path, listops_dir, capsys):
    out = tmp_path / "ablation"
    assert main(experiment("ablation", listops_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "7 trained now, 0 already done" in printed
    assert "| #3 w/o SAOR + ws in HST |" in printed and "| ERNIE-Sparse (CLSg-Only) |" in printed
    for name in ("report.md", "results.json", "ablation.png", "experiment.json"):
        assert (out / name).is_file(), name
    models = {
        path.parent.parent.name: yaml.safe_load(path.read_text())["model"]
        for path in out.glob("runs/*/seed-0/config.yaml")
    }
    assert not models["1-no-hst"]["hst"]["enabled"] and models["1-no-hst"]["saor"]["alpha"] > 0
    assert models["2-no-saor"]["saor"]["alpha"] == 0 and models["2-no-saor"]["hst"]["enabled"]
    assert models["3-no-saor-ws-hst"]["hst"]["shared_weights"]
    assert models["4-no-saor-rdrop"]["saor"]["mode"] == "dropout"
    assert models["pool-max"]["hst"]["pooling"] == "max"
    assert models["pool-cls"]["hst"]["pooling"] == "cls"
    assert models["0-ernie-sparse"]["attention"]["pattern"] == "bigbird"
    weights_time = (out / "runs/0-ernie-sparse/seed-0/model.safetensors").stat().st_mtime_ns
    assert main(experiment("ablation", listops_dir, out)) == 0
    assert "0 trained now, 7 already done" in capsys.readouterr().out
    assert (out / "runs/0-ernie-sparse/seed-0/model.safetensors").stat().st_mtime_ns == weights_time
    # The folder holds this experiment: other settings are refused, not mixed in.
    changed = experiment("ablation", listops_dir, out)
    changed[-1] = "train.log_every=1"
    assert main(changed) == 2
    assert "holds another experiment" in capsys.readouterr().err


def test_bottleneck_reports_mean_and_std_over_seeds(tmp_path, listops_dir, capsys):
    out = tmp_path / "bottleneck"
    args = experiment("bottleneck", listops_dir, out, "--seeds", "2", "--global-tokens", "8,0")
    assert main(args) == 2  # the cells vary num_global: an override of it is refused
    assert "model.attention.num_global" in capsys.readouterr().err
    args.remove("model.attention.num_global=8")
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["runs_done"] == results["runs_total"] == 10  # 2 x (4 cells + dense)
    for key in ("st-bigbird-g8", "st-bigbird-g0", "hst-bigbird-g8", "hst-bigbird-g0"):
        accuracies = [r["test_accuracy"] for r in results["runs"] if r["cell"] == key]
        cell = results["cells"][key]["test"]
        assert cell["n"] == 2 and cell["mean"] == pytest.approx(sum(accuracies) / 2)
        assert cell["std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2**0.5)
    config = yaml.safe_load((out / "runs/hst-bigbird-g0/seed-1/config.yaml").read_text())
    assert config["model"]["attention"]["num_global"] == 0 and config["model"]["hst"]["enabled"]
    assert config["train"]["seed"] == 1 and config["model"]["attention"]["pattern_seed"] == 1
    st = yaml.safe_load((out / "runs/st-bigbird-g8/seed-0/config.yaml").read_text())["model"]
    assert st["attention"]["num_global"] == 8 and not st["hst"]["enabled"]
    assert st["saor"]["alpha"] == 0
    assert (out / "bottleneck.png").stat().st_size > 0
    assert "| 0 |" in capsys.readouterr().out


def test_bottleneck_defaults_to_two_one_and_zero_blocks_of_global_tokens() -> None:
    assert make_spec("bottleneck", "listops").global_tokens == (32, 16, 0)  # tiny: block 16
    assert make_spec("bottleneck", "listops", scale="paper").global_tokens == (128, 64, 0)


def test_summary_statistics() -> None:
    assert summarize([]) == {"mean": None, "std": None, "n": 0}
    assert summarize([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert summarize([0.2, 0.4]) == pytest.approx({"mean": 0.3, "std": 0.1414213, "n": 2})
    assert cell_text(summarize([0.376])) == "37.60 (1)"  # one seed: no spread shown
    assert cell_text(summarize([0.2, 0.4])) == "30.00 ± 14.14 (2)"
    assert cell_text(summarize([])) == "-"


def test_killed_robustness_experiment_resumes_its_run(tmp_path, listops_dir):
    out = tmp_path / "robustness"
    slow = [a for a in TINY if not a.startswith(("train.max_steps", "train.eval_every"))]
    slow += ["train.max_steps=40", "train.eval_every=5"]
    command = [sys.executable, "-m", "ernie_sparse", "experiment", "robustness", "--task",
               "listops", "--data", str(listops_dir), "--out", str(out), "--quiet",
               "--attack-roll", "3", *slow]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD
    )
    first = out / "runs/ernie-sparse/seed-0"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill after a checkpoint, mid-run
        if (first / "checkpoint.pt").is_file() and max(metrics_steps(first), default=0) >= 6:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (first / "model.safetensors").exists(), "the run finished before the kill"
    lock = out / "runs/ernie-sparse/seed-0.lock"
    assert lock.read_text().split()[0] == str(process.pid)  # left behind by the dead process
    assert main(["experiment", "resume", str(out), "--quiet"]) == 0
    result = json.loads((first / "result.json").read_text())
    assert result["resumed"] and 0 <= result["test_attacked"]["3"] <= 1
    steps = metrics_steps(first)
    assert steps == sorted(set(steps)) and steps[-1] == 40  # nothing logged twice
    assert not lock.exists()
    report = (out / "report.md").read_text()
    assert "Runs finished: 2 of 2" in report and "rolled by 3" in report


def test_locks_keep_processes_apart_and_stale_locks_are_taken_over(tmp_path, listops_dir):
    overrides = parse_overrides([*TINY, f"train.data={listops_dir}"])
    spec = make_spec("robustness", "listops", overrides=overrides, attack_roll=3)
    cell = spec.cells[1]
    lock_path = run_dir(tmp_path, cell, 0).parent / "seed-0.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path.parent.mkdir(parents=True)
        lock_path.write_text(f"{sleeper.pid} {os.uname().nodename} 0\n")
        assert run_one(spec, tmp_path, cell, 0) == "busy"  # a live process holds it
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its owner is dead now, and the run died before its first checkpoint: start afresh.
    directory = run_dir(tmp_path, cell, 0)
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    assert run_one(spec, tmp_path, cell, 0) == "ran"
    assert metrics_steps(directory)[0] == 2 and not lock_path.exists()
    assert run_one(spec, tmp_path, cell, 0) == "done"
    first, second = RunLock(lock_path), RunLock(lock_path)
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_two_workers_share_the_runs_without_repeating_one(tmp_path, listops_dir, capsys):
    out = tmp_path / "workers"
    args = experiment("robustness", listops_dir, out, "--seeds", "2", "--workers", "2")
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["runs_done"] == 4
    for path in out.glob("runs/*/seed-*"):
        assert metrics_steps(path) == [2, 4], path  # trained once, by one worker
    assert "Table 7" in capsys.readouterr().out


def test_bad_requests_fail_before_training(tmp_path, listops_dir, capsys):
    assert main(experiment("ablation", listops_dir, tmp_path / "a", "model.hst.pool=max")) == 2
    assert "hst.pool" in capsys.readouterr().err
    assert main(experiment("bottleneck", listops_dir, tmp_path / "b", "--global-tokens", "-8")) == 2
    assert "non-negative" in capsys.readouterr().err
    missing = ["experiment", "robustness", "--task", "listops", "--scale", "paper",
               "--data", str(tmp_path / "none"), "--out", str(tmp_path / "c")]  # fmt: skip
    assert main(missing) == 2
    assert "no ListOps data" in capsys.readouterr().err
    assert main(experiment("robustness", listops_dir, tmp_path / "d", "train.seed=3")) == 2
    assert "train.seed" in capsys.readouterr().err
    assert not (tmp_path / "a" / "runs").exists()


# --- probe experiments: the bottleneck regime ---


def test_probe_bottleneck_reports_reachability_per_run(tmp_path, capsys):
    out, data = tmp_path / "probe", tmp_path / "probe-data"
    args = ["experiment", "bottleneck", "--task", "probe-copy-far", "--patterns", "window",
            "--global-tokens", "16,0", "--out", str(out), "--quiet", f"train.data={data}",
            "train.max_steps=2", "train.eval_every=2"]  # fmt: skip
    assert main(args) == 0
    assert (data / "probe.json").is_file()  # generated for the tiny scale
    results = json.loads((out / "results.json").read_text())
    reach = {r["cell"]: r["reachability"] for r in results["runs"]}
    # window only, no global token: the far block reaches the readout only through HST
    assert reach["st-window-g0"]["source_reaches_readout"] is False
    assert reach["hst-window-g0"]["source_reaches_readout"] is True
    assert reach["st-window-g16"]["source_reaches_readout"] is True  # the readout is global
    assert reach["st-window-g0"]["fraction"] < 0.5 <= reach["hst-window-g0"]["fraction"]
    table = capsys.readouterr().out
    assert "| window | 0 |" in table and "route 0/1" in table and "route 1/1" in table
    line = json.loads((out / "runs/st-window-g0/seed-0/reachability.json").read_text())["line"]
    assert line.startswith("reachability over 2 layers") and "-> readout: no" in line


def test_an_experiment_saved_with_flat_model_keys_loads_as_it_ran(tmp_path) -> None:
    spec = make_spec("bottleneck", "probe-copy-far", global_tokens=(16, 0), patterns=("window",))
    spec.save(tmp_path)
    values = json.loads((tmp_path / "experiment.json").read_text())
    for cell in values["cells"]:  # as experiment.json was written before model.attention
        cell["model"].update(cell["model"].pop("attention"))
    (tmp_path / "experiment.json").write_text(json.dumps(values))
    loaded = ExperimentSpec.load(tmp_path)
    assert loaded == spec
    cell = loaded.cells[0]
    assert loaded.run_config(cell, 0) == spec.run_config(spec.cells[0], 0)


SAVED_EXPERIMENTS = sorted(
    (Path(__file__).parents[1] / "docs/experiments").glob("*/experiment.json")
)


@pytest.mark.parametrize("path", SAVED_EXPERIMENTS, ids=lambda path: path.parent.name)
def test_every_saved_experiment_in_docs_loads_and_resolves(path: Path) -> None:
    """Folders written by older versions (flat model keys, one attack_roll) still load,
    so they can be resumed or reported."""
    spec = ExperimentSpec.load(path.parent)
    raw = json.loads(path.read_text())
    if "attack_roll" in raw:
        assert spec.attack_rolls == ((raw["attack_roll"],) if raw["attack_roll"] else ())
    assert spec.run_config(spec.cells[0], spec.seeds[0]).model is not None


def test_hst_route_and_robustness_specs_on_probes() -> None:
    route = make_spec("hst-route", "probe-copy-far")
    keys = [cell.key for cell in route.cells]
    assert "st-window" in keys and "hst-block-i0.02" in keys and "dense-i0.125" in keys
    config = route.run_config(route.cells[keys.index("hst-block-i0.02")], 0).model
    assert config.hst.distribute == "block" and config.initializer_range == 0.02
    assert (config.attention.pattern, config.attention.num_global) == ("window", 0)
    assert config.saor.alpha == 0
    robust = make_spec("robustness", "probe-copy-far", attack_roll=(4, 8))
    assert robust.attack_rolls == (4, 8)
    models = {cell.key: robust.run_config(cell, 0).model for cell in robust.cells}
    dense_saor = models["dense-saor"]
    assert dense_saor.attention.pattern == "dense" and dense_saor.saor.alpha > 0
    assert models["bigbird"].attention.pattern_params == {"window_width": 1, "num_random": 3}
    assert models["ernie-sparse"].hst.enabled and models["ernie-sparse"].saor.alpha > 0
    with pytest.raises(ValueError, match="non-zero rolls"):
        make_spec("robustness", "probe-copy-far", attack_roll=(4, 0))
    with pytest.raises(ValueError, match="--patterns"):
        make_spec("bottleneck", "probe-copy-far", patterns=("fixed",))
