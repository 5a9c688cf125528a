"""The command line: entry points and the layout command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ernie_sparse import __version__
from ernie_sparse.cli import add_log_level, build_parser, main, parse_arguments
from ernie_sparse.training.config import preset_values, resolve


def test_python_dash_m_is_the_same_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ernie_sparse", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"ernie-sparse {__version__}"


def test_layout_command_writes_png(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "bigbird.png"
    code = main(["layout", "bigbird", "num_random=1", "--seq-len", "512", "--out", str(path)])
    assert code == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layout (4, 8, 8)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bigbird", "colour=3"], "got unknown colour"),
        (["blockbert", "head_split=10:2", "--seq-len", "192"], "not a multiple of 2"),
        (["window", "width"], "must look like key=value"),
    ],
)
def test_layout_command_names_bad_parameters(args, message, tmp_path, capsys) -> None:
    code = main(["layout", *args, "--out", str(tmp_path / "x.png")])
    assert code == 2
    assert message in capsys.readouterr().err


# --- issue 17: logging, pipes, overrides anywhere, presets that fit together ---


def long_review_file(path: Path) -> Path:
    path.write_text("label\ttext\npos\t" + "long review " * 200 + "\n", encoding="utf-8")
    return path


def test_truncation_counts_show_at_the_default_log_level(tmp_path, capsys) -> None:
    """Before: counts went to log.info and nothing configured logging: never shown."""
    reviews = long_review_file(tmp_path / "reviews.tsv")
    assert main(["data", "info", str(reviews)]) == 0
    err = capsys.readouterr().err
    assert "INFO ernie_sparse.data: " in err and "1 of 1 documents cut to 1000 tokens" in err
    assert main(["data", "info", str(reviews), "--log-level", "WARNING"]) == 0  # anywhere
    assert "cut to" not in capsys.readouterr().err
    assert main(["--log-level", "warning", "data", "info", str(reviews)]) == 0
    assert "cut to" not in capsys.readouterr().err


def test_overrides_may_come_before_between_and_after_options() -> None:
    parser = build_parser()
    add_log_level(parser)
    argv = ["train", "--preset", "p", "train.lr=0.5", "--out", "o", "--max-steps", "4"]
    args = parse_arguments(parser, [*argv, "train.eval_every=2", "model.dropout=0.0"])
    assert args.overrides == ["train.lr=0.5", "train.eval_every=2", "model.dropout=0.0"]
    assert (args.max_steps, str(args.out)) == (4, "o")
    with pytest.raises(SystemExit):
        parse_arguments(parser, [*argv, "--bogus"])


def test_a_closed_pipe_ends_the_command_quietly(tmp_path) -> None:
    """``ernie-sparse ... | head``: stdout's reader is gone before the command writes."""
    reviews = long_review_file(tmp_path / "reviews.tsv")
    read_end, write_end = os.pipe()
    os.close(read_end)
    done = subprocess.run(
        [sys.executable, "-m", "ernie_sparse", "data", "info", str(reviews)],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    assert "Broken pipe" not in done.stderr and "Exception ignored" not in done.stderr
    assert done.returncode == 141  # as a process ended by SIGPIPE


def model_structure(name: str) -> dict:
    """The fields of a preset's resolved model that decide which weights exist."""
    model = resolve(preset_values(name)).model
    hst = model.hst
    return {"hst": (hst.enabled, hst.shared_weights, hst.feed_forward), "causal": model.causal}


PRESET_PAIRS = [
    *((p, f"{f}-tiny") for p in ("mlm-tiny", "mlm-warm-tiny") for f in ("classification",
                                                                        "triviaqa", "wikihop")),
    *(("mlm-paper", f"{f}-paper") for f in ("classification", "imdb", "hyperpartisan",
                                            "triviaqa", "wikihop")),
]  # fmt: skip


@pytest.mark.parametrize(("pretrain", "finetune"), PRESET_PAIRS)
def test_pretrain_and_finetune_presets_build_the_same_weights(pretrain, finetune) -> None:
    """Before: mlm-tiny had HST's own weights, finetune/*-tiny shared ones, so a fine-tune
    from a pretraining run dropped every pretrained HST weight."""
    assert model_structure(f"pretrain/{pretrain}") == model_structure(f"finetune/{finetune}")


def test_a_run_folder_works_from_any_working_directory(tmp_path, monkeypatch, capsys) -> None:
    """Before: config.yaml stored --data as given (relative to where train ran)."""
    from ernie_sparse.data.listops import generate_listops

    work = tmp_path / "work"
    generate_listops(work / "lo", num_train=16, num_val=4, num_test=4, min_len=10, max_len=40)
    monkeypatch.chdir(work)
    small = ["model.hidden_size=16", "model.num_layers=1", "model.mlp_size=32"]
    small += ["train.batch_size=4", "train.max_length=64", "model.max_positions=64"]
    args = ["train", "--preset", "lra/listops-tiny", "--data", "lo", "--out", "run"]
    assert main([*args, "--quiet", "--max-steps", "1", *small]) == 0
    saved = yaml.safe_load((work / "run" / "config.yaml").read_text())["train"]["data"]
    assert saved == str(work / "lo")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(work / "run")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["examples"] == 4
