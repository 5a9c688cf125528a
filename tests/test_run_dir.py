"""The run folder object: names, state, metrics reading, atomic writes."""

from __future__ import annotations

import json

import pytest

from ernie_sparse.training.run_dir import RunDir


def test_names_are_the_documented_ones(tmp_path) -> None:
    run = RunDir(tmp_path)
    assert run.config.name == "config.yaml" and run.checkpoint.name == "checkpoint.pt"
    assert run.weights("best").name == "best.safetensors"
    assert run.weights("final").name == "model.safetensors"
    assert run.eval_result("test").name == "eval-test.json"
    assert run.eval_result("test", roll=8).name == "eval-test-roll8.json"
    with pytest.raises(ValueError, match="weights must be one of best, final, got 'last'"):
        run.weights("last")


def test_a_folder_that_is_not_a_run_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        RunDir(tmp_path / "absent").require_run()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        RunDir(tmp_path).existing_weights("best")


def test_missing_weights_say_whether_the_run_finished(tmp_path) -> None:
    run = RunDir(tmp_path)
    run.config.write_text("model: {}\n")
    with pytest.raises(FileNotFoundError, match="not finished"):
        run.existing_weights("final")
    run.weights("final").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no best weights; the run is finished"):
        run.existing_weights("best")
    assert run.existing_weights("final") == run.weights("final")


def test_metrics_drop_a_half_written_last_line_only(tmp_path) -> None:
    run = RunDir(tmp_path)
    assert run.read_metrics() == []
    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    text = "".join(json.dumps(r) + "\n" for r in records)
    run.metrics.write_text(text + '{"step": 3, "lo')
    assert run.read_metrics() == records
    run.metrics.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2 is not a metrics record"):
        run.read_metrics()


def test_writes_are_atomic_and_leave_no_temporary(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_json(run.reachability, {"fraction": 0.5})
    assert json.loads(run.reachability.read_text()) == {"fraction": 0.5}
    assert sorted(p.name for p in run.path.iterdir()) == ["reachability.json"]


def test_unfinished_start_lists_what_a_killed_start_left(tmp_path) -> None:
    run = RunDir(tmp_path)
    for name in ("checkpoint.pt.tmp", "metrics.jsonl", "config.yaml"):
        (tmp_path / name).write_text("")
    assert sorted(p.name for p in run.unfinished_start()) == ["checkpoint.pt.tmp", "metrics.jsonl"]
    assert run.has_progress() and run.is_run() and not run.is_finished()
