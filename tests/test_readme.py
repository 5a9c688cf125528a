"""The README runs as written, so it cannot drift from the code: every ```python block,
and every ``ernie-sparse`` command of its ```bash blocks, in order, in one scratch folder,
except the commands an explicit rule below skips (each rule says why). Commands run with
small sizes (``SMALLER``: a few steps, a few examples); each skip rule and each size
substitution must still match a command, so a rule cannot outlive what it was for.

The "## Use with Hugging Face" section is not run here (tests/test_hf_workflow.py covers
it).
"""

from __future__ import annotations

import random
import re
import shlex
from pathlib import Path

import pytest

from ernie_sparse.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_HERE = ("## Use with Hugging Face",)  # sections another test runs

# (pattern, why): a command matching one is not run. The first match counts.
SKIP = (
    (r"^make ", "make demo / make test set up their own environment and run for minutes"),
    (r"^pip ", "installs packages"),
    (r"^torchrun ", "two processes: test_training's DDP test runs this loop under torchrun"),
    (r"\[--", "a usage line: [--flag] marks optional flags, not a command"),
    (r"-paper\b", "a paper-scale preset: hours on a GPU"),
    (r"roberta-base/|rb-4096", "needs a real RoBERTa checkpoint, which offline machines lack"),
    (r"^ernie-sparse demo\b", "what make demo runs: 21 trainings, minutes"),
    (r"^ernie-sparse bench\b", "benchmarks: a minute to hours; --device cuda needs a GPU"),
    (r"^ernie-sparse experiment\b", "experiments train many runs or profile memory: minutes"),
)
# (pattern, replacement, why): applied to every command that is run.
SMALLER = (
    (r"--num-train \d+ --num-val \d+ --num-test \d+", "--num-train 64 --num-val 16 --num-test 16",
     "64 ListOps trees are enough to train 2 steps"),
    (r"^(ernie-sparse data listops(?!.*--num-train).*)$",
     r"\1 --num-train 64 --num-val 16 --num-test 16", "not LRA's 100,000 trees"),
    (r"--num \d+", "--num 12", "12 Pathfinder images, not 20,000"),
    (r"^(ernie-sparse (?:train|pretrain) .*)$", r"\1 --max-steps 2", "2 training steps"),
    (r" runs/ddp", "", "the torchrun run is skipped (see SKIP)"),
)  # fmt: skip


def readme_blocks(language: str) -> list[tuple[str, str]]:
    """(section heading, code) of every ```language block outside ``NOT_HERE``."""
    blocks, heading, skipping = [], "", False
    for part in re.split(r"^(#{2,3} .*)$", README.read_text(), flags=re.M):
        if re.match(r"#{2,3} ", part):
            if part.startswith("## "):
                skipping = part.strip() in NOT_HERE
            heading = part.strip()
            continue
        if not skipping:
            for code in re.findall(rf"^```{language}\n(.*?)^```", part, flags=re.M | re.S):
                blocks.append((heading, code))
    return blocks


def readme_commands() -> list[str]:
    """The bash blocks' commands, comments removed, continuation lines joined."""
    commands = []
    for _, code in readme_blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(" ".join(words))
    return commands


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIP if re.search(pattern, command)), None)


def smaller(command: str) -> str:
    for pattern, replacement, _ in SMALLER:
        command = re.sub(pattern, replacement, command)
    return command


def write_user_files(root: Path) -> None:
    """What the README assumes a user has: ``my-texts/`` (a corpus with enough distinct
    words for pretrain's 8,000-token BPE) and ``docs/`` (one folder per label)."""
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9)))
             for _ in range(3000)]  # fmt: skip
    corpus = root / "my-texts"
    corpus.mkdir()
    for index in range(40):
        (corpus / f"doc{index}.txt").write_text(" ".join(rng.choices(words, k=400)) + "\n")
    for label, topic in (("cats", words[:50]), ("stars", words[50:100])):
        (root / "docs" / label).mkdir(parents=True)
        for index in range(20):
            text = " ".join(rng.choices(topic, k=60))
            (root / "docs" / label / f"{index}.txt").write_text(text + "\n")


PYTHON_BLOCKS = readme_blocks("python")


@pytest.mark.parametrize(
    "code", [code for _, code in PYTHON_BLOCKS], ids=[heading for heading, _ in PYTHON_BLOCKS]
)
def test_every_python_block_runs(code, tmp_path, monkeypatch, one_thread) -> None:
    if "render_layout" in code:
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_the_commands_run_in_order(tmp_path, monkeypatch, capsys, one_thread) -> None:
    pytest.importorskip("matplotlib")  # ernie-sparse plot
    pytest.importorskip("tokenizers")  # ernie-sparse pretrain trains a BPE
    monkeypatch.chdir(tmp_path)
    write_user_files(tmp_path)
    ran = []
    for command in readme_commands():
        if skip_reason(command):
            continue
        assert command.startswith("ernie-sparse "), f"no rule for {command!r}"
        run = smaller(command)
        code = main(shlex.split(run)[1:])
        captured = capsys.readouterr()
        assert code == 0, f"README command failed: {run}\n{captured.err[-3000:]}"
        ran.append(run)
        if "init_from=runs/mlm-scratch" in run:  # pretrain/mlm-tiny -> finetune/*-tiny
            said = [line for line in captured.err.splitlines() if "warm start" in line]
            assert said and not [line for line in said if "lacks" in line], said
    assert len(ran) >= 10, ran
    assert (tmp_path / "runs" / "cls-tiny" / "model.safetensors").is_file()
    # finetune/*-paper holds RoBERTa-base's sizes: from another checkpoint it names them
    paper = "train --preset finetune/classification-paper --data docs/ --out runs/cls"
    assert main([*paper.split(), "train.init_from=runs/mlm-scratch"]) == 2
    assert "model.hidden_size=768 (checkpoint: 64)" in capsys.readouterr().err


def test_every_rule_still_matches_a_command() -> None:
    commands = readme_commands()
    for pattern, why in SKIP:
        assert any(re.search(pattern, c) for c in commands), f"stale skip rule: {why}"
    kept = [c for c in commands if not skip_reason(c)]
    for pattern, _, why in SMALLER:
        assert any(re.search(pattern, c, flags=re.M) for c in kept), f"stale size rule: {why}"
