"""Issue 17, bad input on the command line: each case is refused with a message naming the
file or flag and what is wrong, or works as the help says; nothing is silently reused.

| input | before | after |
|---|---|---|
| ``evaluate RUN --data heldout.tsv`` (ListOps) | "heldout.tsv/basic_test.tsv not found" | evaluates the file |
| ``train --data one.tsv`` (ListOps or Text) | Text: trained and validated on the same rows | refused, naming the file |
| a ListOps train split with only its header | a batch-size error / IndexError | "no examples: ... only its header" |
| ``--config missing.yaml`` | "unknown preset" | "the file does not exist" |
| ``evaluate --batch-size 0`` | "range() arg 3 must not be zero" | "argument --batch-size: must be ..." |
| Text validating on its test split | silent | a warning line; ``validation`` in the records |
"""  # noqa: E501

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_training import records, write_config

from ernie_sparse.cli import main
from ernie_sparse.data.listops import HEADER, generate_listops
from ernie_sparse.training.config import TrainConfig
from ernie_sparse.training.tasks import get_task, validation_note

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def listops(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("listops")
    generate_listops(root, num_train=32, num_val=8, num_test=12, seed=1, min_len=10, max_len=60)
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory, listops) -> Path:
    """A finished 2-step ListOps run (copy it before changing it)."""
    root = tmp_path_factory.mktemp("run")
    config = write_config(root / "run.yaml", listops, max_steps=2, eval_every=1, log_every=1)
    assert main(["train", "--config", str(config), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_evaluate_takes_a_single_listops_file(finished, listops, capsys) -> None:
    capsys.readouterr()
    heldout = listops / "basic_test.tsv"
    assert main(["evaluate", str(finished), "--data", str(heldout)]) == 0
    captured = capsys.readouterr()
    assert last_json(captured.out)["examples"] == 12
    assert "basic_test.tsv: a single file, read as the test split" in captured.err


def test_training_on_a_single_file_is_refused_naming_it(listops, tmp_path, capsys) -> None:
    config = write_config(tmp_path / "run.yaml", listops / "basic_val.tsv", max_steps=2)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "basic_val.tsv: one file cannot be the training split" in err


def test_a_header_only_training_split_names_the_file(listops, tmp_path, capsys) -> None:
    data = Path(shutil.copytree(listops, tmp_path / "data"))
    (data / "basic_train.tsv").write_text(HEADER + "\n")
    config = write_config(tmp_path / "run.yaml", data, max_steps=2)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "basic_train.tsv: no examples: the file holds only its header" in err


def test_a_missing_config_file_is_named_as_a_missing_file(tmp_path, capsys) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["train", "--config", str(missing), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"--config {missing}: the file does not exist" in err and "unknown preset" not in err
    (tmp_path / "notes.txt").write_text("model: {}\n")
    assert main(["train", "--config", str(tmp_path / "notes.txt"), "--out", "x"]) == 2
    assert "expected a .yaml or .yml file" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["0", "-3", "many"])
def test_evaluate_refuses_a_batch_size_below_one_by_name(finished, size, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["evaluate", str(finished), "--batch-size", size])
    assert caught.value.code == 2
    assert "argument --batch-size: must be an integer >= 1" in capsys.readouterr().err


def write_reviews(path: Path, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{('neg', 'pos')[i % 2]}\t{'a fine long review ' * 3}{i}" for i in range(count)]
    path.write_text("label\ttext\n" + "".join(row + "\n" for row in rows), encoding="utf-8")


def test_text_says_it_validates_on_test_in_the_log_and_the_records(tmp_path, capsys) -> None:
    write_reviews(tmp_path / "imdb" / "train.tsv", 8)
    write_reviews(tmp_path / "imdb" / "test.tsv", 4)
    write_reviews(tmp_path / "one.tsv", 8)
    args = ["train", "--preset", "lra/text-tiny", "--quiet", "--max-steps", "1"]
    small = [
        "model.attention.num_global=0",
        "model.max_positions=64",
        "model.attention.block_size=16",
    ]
    small += ["train.max_length=64", "train.batch_size=4"]
    out = tmp_path / "run"
    assert main([*args, "--data", str(tmp_path / "one.tsv"), "--out", str(out), *small]) == 2
    assert "one.tsv: one file cannot be the training split" in capsys.readouterr().err
    assert main([*args, "--data", str(tmp_path / "imdb"), "--out", str(out), *small]) == 0
    captured = capsys.readouterr()
    said = "validation reads the test split (LRA's convention for IMDB"
    assert said in captured.err and said in last_json(captured.out)["validation"]
    assert said in next(r for r in records(out) if "val_accuracy" in r)["validation"]
    assert main(["evaluate", str(out), "--split", "test"]) == 0
    captured = capsys.readouterr()
    assert said in captured.err and said in last_json(captured.out)["validation"]
    other = ["evaluate", str(out), "--data", str(tmp_path / "one.tsv")]  # held-out data
    assert main(other) == 0
    captured = capsys.readouterr()
    assert said not in captured.err and "validation" not in last_json(captured.out)


def test_text_can_hold_a_seeded_share_of_train_out_for_validation(tmp_path) -> None:
    write_reviews(tmp_path / "imdb" / "train.tsv", 40)
    (tmp_path / "imdb" / "test.tsv").write_text("label\ttext\npos\ta test review\nneg\tanother\n")
    train = TrainConfig(
        task="text", data=str(tmp_path / "imdb"), text={"val_from_train": 0.25}, seed=3
    )
    assert validation_note(train) == ""  # validation no longer reads test
    task = get_task("text")
    train_rows = {tuple(e["input_ids"].tolist()) for e in task.read(train, "train")}
    val_rows = [tuple(e["input_ids"].tolist()) for e in task.read(train, "val")]
    test_rows = {tuple(e["input_ids"].tolist()) for e in task.read(train, "test")}
    assert 0 < len(val_rows) < 40 and len(train_rows) + len(val_rows) == 40
    assert not set(val_rows) & train_rows and not set(val_rows) & test_rows
    again = [tuple(e["input_ids"].tolist()) for e in task.read(train, "val")]
    assert again == val_rows  # the same seed holds out the same rows
    with pytest.raises(ValueError, match=r"train.text.val_from_train must be a number in \[0, 1\)"):
        TrainConfig(task="text", text={"val_from_train": 1.0})


def test_qa_tasks_say_when_validation_and_test_are_one_file(tmp_path) -> None:
    for name in ("train.json", "dev.json"):  # qangaroo's WikiHop: no test file
        (tmp_path / name).write_text("[]")
    note = validation_note(TrainConfig(task="wikihop", data=str(tmp_path)))
    assert note.startswith("validation and test both read dev.json")
    (tmp_path / "test.json").write_text("[]")
    note = validation_note(TrainConfig(task="triviaqa", data=str(tmp_path)))
    assert note == "validation reads dev.json"
    assert validation_note(TrainConfig(task="listops", data=str(tmp_path))) == ""


def test_evaluation_batches_refuse_a_batch_size_below_one() -> None:
    from ernie_sparse.training.distributed import init_world
    from ernie_sparse.training.evaluation import batches

    with pytest.raises(ValueError, match="evaluation batch_size must be an integer >= 1, got 0"):
        next(batches([{"input_ids": None}], batch_size=0, world=init_world()))


def test_evaluate_run_is_the_function_behind_the_command(finished, tmp_path, capsys) -> None:
    from ernie_sparse.training.evaluate import evaluate_run

    run = tmp_path / "copy"
    shutil.copytree(finished, run)
    clean = evaluate_run(run, split="test", weights="final")
    attacked = evaluate_run(run, split="test", roll=0)  # a roll of 0 keeps every token
    assert attacked["accuracy"] == evaluate_run(run, split="test")["accuracy"]
    assert json.loads((run / "eval-test-roll0.json").read_text())["attack"] == "roll=0"
    assert json.loads((run / "eval-test.json").read_text())["weights"] == "best"
    assert main(["evaluate", str(run), "--weights", "final"]) == 0
    assert last_json(capsys.readouterr().out)["accuracy"] == clean["accuracy"]
    with pytest.raises(ValueError, match=r"it contains '\.\.'"):
        evaluate_run(run, weights="../copy/best.safetensors")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        evaluate_run(run, batch_size=0)


def test_saved_paths_are_absolute(tmp_path, monkeypatch) -> None:
    from ernie_sparse.models import preset
    from ernie_sparse.training.config import RunConfig

    monkeypatch.chdir(tmp_path)
    train = TrainConfig(data="data/x", init_from="runs/mlm", tokenizer="tok/tokenizer.json")
    saved = RunConfig(model=preset("ernie-sparse", vocab_size=64), train=train).to_dict()["train"]
    assert saved["data"] == str(tmp_path / "data" / "x")
    assert saved["init_from"] == str(tmp_path / "runs" / "mlm")
    assert saved["tokenizer"] == str(tmp_path / "tok" / "tokenizer.json")
    assert (
        RunConfig(model=preset("ernie-sparse", vocab_size=64), train=TrainConfig()).to_dict()[
            "train"
        ]["init_from"]
        == ""
    )  # empty stays empty
