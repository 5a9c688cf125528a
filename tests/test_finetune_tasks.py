"""The fine-tuning tasks through the training loop and ``ernie-sparse evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ernie_sparse.analysis.plot import training_nll
from ernie_sparse.cli import main
from ernie_sparse.training.config import merge_values, preset_values, resolve
from ernie_sparse.training.loop import Run
from ernie_sparse.training.tasks import get_task, task_names

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
WORDS = [f"w{i}" for i in range(40)] + ["what", "x", "y"]


def word_tokenizer(path: Path) -> Path:
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    tokenizer.save(str(path))
    return path


def triviaqa_folder(root: Path) -> Path:
    root.mkdir()
    for split, count in (("train", 6), ("dev", 3)):
        paragraphs = []
        for number in range(count):
            words = [WORDS[(number + i) % 40] for i in range(50)]
            answer = " ".join(words[30:33])
            context = " ".join(words)
            qa = {
                "id": f"{split}{number}",
                "question": "what x",
                "answers": [{"text": answer, "answer_start": context.index(answer)}],
            }
            paragraphs.append({"context": context, "qas": [qa]})
        (root / f"{split}.json").write_text(json.dumps({"data": [{"paragraphs": paragraphs}]}))
    return root


def wikihop_folder(root: Path) -> Path:
    root.mkdir()
    for split, count in (("train", 6), ("dev", 3)):
        records = [
            {
                "id": f"{split}{n}",
                "query": f"what w{n}",
                "answer": "x",
                "candidates": ["x", "y", "w1"][: 2 + n % 2],
                "supports": [" ".join(WORDS[n : n + 12]), "x w3 w4 w5 w6 w7 w8 w9"],
            }
            for n in range(count)
        ]
        (root / f"{split}.json").write_text(json.dumps(records))
    return root


def classification_folder(root: Path) -> Path:
    root.mkdir()
    for split, count in (("train", 8), ("val", 4), ("test", 4)):
        lines = [
            f"{'ab'[n % 2]}\t" + ("good day " if n % 2 else "bad night ") * 6 for n in range(count)
        ]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


TINY_MODEL = {
    "hidden_size": 16,
    "num_heads": 2,
    "num_layers": 1,
    "mlp_size": 32,
    "max_positions": 64,
    "attention": {"block_size": 8, "num_global": 8, "dropout": 0.0},
    "dropout": 0.0,
    "hst": {"enabled": True, "shared_weights": True},
    "saor": {"alpha": 1.0, "roll_tokens": 2},
}


@pytest.mark.parametrize(
    ("task", "preset", "make_data", "metric"),
    [
        ("triviaqa", "finetune/triviaqa-tiny", triviaqa_folder, "f1"),
        ("wikihop", "finetune/wikihop-tiny", wikihop_folder, "accuracy"),
        ("classification", "finetune/classification-tiny", classification_folder, "micro_f1"),
    ],
)
def test_task_trains_and_evaluates(tmp_path, task, preset, make_data, metric) -> None:
    values = preset_values(preset)
    values["model"] = merge_values(values["model"], TINY_MODEL)
    tokenizer = word_tokenizer(tmp_path / "tokenizer.json")
    values["train"].update(
        data=str(make_data(tmp_path / "data")),
        max_length=64,
        max_steps=4,
        eval_every=2,
        batch_size=2,
        warmup_steps=1,
    )
    if task != "classification":
        question = {"tokenizer": str(tokenizer), "qa": {"global_prefix": 8}}
        values["train"] = merge_values(values["train"], question)
    run = Run(resolve(values), tmp_path / "run", resume=False, quiet=True)
    run.train()
    assert get_task(task).metric == metric
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in lines if f"val_{metric}" in r]
    assert [r["step"] for r in evaluations] == [2, 4]
    # SAOR (alpha 1): the loss is NLL(p1) + NLL(p2) + KL; nll is per pass, as val_loss
    for record in (r for r in lines if "loss" in r):
        passes = record["nll_pass1"] + record["nll_pass2"]
        assert record["nll"] == pytest.approx(passes / 2, abs=2e-6)
        assert record["loss"] == pytest.approx(passes + record["kl"], abs=4e-6)
        assert training_nll(record, tmp_path / "run") == record["nll"]
    assert all(0.0 <= r[f"val_{metric}"] <= 1.0 for r in evaluations)
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert main(["evaluate", str(tmp_path / "run"), "--split", "val", "--batch-size", "2"]) == 0
    result = json.loads((tmp_path / "run" / "eval-val.json").read_text())
    best = max(evaluations, key=lambda r: r[f"val_{metric}"])  # the first best is kept
    assert result[metric] == pytest.approx(best[f"val_{metric}"])


def test_question_tasks_refuse_a_prefix_that_is_not_the_globals(tmp_path) -> None:
    values = preset_values("finetune/triviaqa-tiny")
    values["model"] = merge_values(values["model"], TINY_MODEL)
    values["train"] = merge_values(values["train"], {"qa": {"global_prefix": 4}})
    values["train"].update(
        data=str(triviaqa_folder(tmp_path / "data")),
        max_length=64,
        tokenizer=str(word_tokenizer(tmp_path / "tokenizer.json")),
    )
    with pytest.raises(
        ValueError, match=r"train.qa.global_prefix=4 but model.attention.num_global=8"
    ):
        Run(resolve(values), tmp_path / "run", resume=False, quiet=True)


def test_all_four_tasks_are_registered() -> None:
    assert {"mlm", "classification", "triviaqa", "wikihop"} <= set(task_names())
    configs = Path(__file__).resolve().parents[1] / "configs"
    config = yaml.safe_load((configs / "finetune/triviaqa-paper.yaml").read_text())
    assert config["train"]["qa"]["global_prefix"] == 128
