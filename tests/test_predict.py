"""``ernie-sparse predict`` (training.predict) on tiny runs trained here: labels are the
model's own argmax, QA answers the spans its logits pick; and the pipelines on the
folders ``ernie-sparse export`` writes from those runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_finetune_tasks import TINY_MODEL, WORDS, triviaqa_folder, word_tokenizer

from ernie_sparse.cli import main
from ernie_sparse.data.classification import read_classification
from ernie_sparse.data.qa import read_span_qa
from ernie_sparse.data.tokenize import Subword
from ernie_sparse.files import load_safetensors
from ernie_sparse.models import SequenceClassifier, SpanQA
from ernie_sparse.training.config import load_run_config, merge_values, preset_values, resolve
from ernie_sparse.training.loop import Run

pytest.importorskip("tokenizers")
VOCAB_SIZE = 5 + len(WORDS)  # test_finetune_tasks' specials and words
QA_WINDOW = {"doc_stride": 8, "max_answer_tokens": 16}  # train.qa; 32 tokens: 5 windows each
QA_LENGTH = 32


def documents_folder(root: Path, labels: tuple[str, ...] = ("low", "high")) -> Path:
    """label<TAB>text files: each label's words come from its own band of the vocabulary."""
    root.mkdir(parents=True)
    for split, count in (("train", 16), ("val", 4), ("test", 7)):
        lines = []
        for number in range(count):
            band = number % len(labels)
            words = [WORDS[band * 12 + (number * 5 + i) % 12] for i in range(6 + number % 9)]
            lines.append(f"{labels[band]}\t{' '.join(words)}")
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def corpus_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    for number in range(4):
        text = " ".join(WORDS[(number * 3 + i) % 40] for i in range(80))
        (root / f"doc{number}.txt").write_text(text + "\n")
    return root


def train_run(out: Path, preset: str, **train) -> Path:
    values = preset_values(preset)
    values["model"] = merge_values(values["model"], {**TINY_MODEL, "vocab_size": VOCAB_SIZE})
    steps = {"max_steps": 4, "eval_every": 2, "batch_size": 2, "warmup_steps": 1}
    values["train"] = merge_values(values["train"], {**steps, **train})
    Run(resolve(values), out, resume=False, quiet=True).train()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """Tiny classification, TriviaQA and MLM runs that share one word-level tokenizer."""
    root = tmp_path_factory.mktemp("predict")
    tokenizer = word_tokenizer(root / "tokenizer.json")
    documents = documents_folder(root / "data" / "docs")
    squad = triviaqa_folder(root / "data" / "trivia")
    qa = {**QA_WINDOW, "global_prefix": 8}
    return SimpleNamespace(
        root=root,
        tokenizer=tokenizer,
        documents=documents,
        squad=squad,
        docs=train_run(
            root / "runs" / "docs",
            "finetune/classification-tiny",
            data=str(documents),
            tokenizer=str(tokenizer),
            max_length=64,
        ),
        trivia=train_run(
            root / "runs" / "trivia",
            "finetune/triviaqa-tiny",
            data=str(squad),
            tokenizer=str(tokenizer),
            max_length=QA_LENGTH,
            qa=qa,
        ),
        mlm=train_run(
            root / "runs" / "mlm",
            "pretrain/mlm-tiny",
            data=str(corpus_folder(root / "data" / "corpus")),
            tokenizer=str(tokenizer),
            max_length=32,
            mlm={"val_fraction": 0.3},
        ),
    )


def native_model(run_dir: Path, weights: str = "best.safetensors"):
    run = load_run_config(run_dir / "config.yaml")
    state = load_safetensors(run_dir / weights)
    if run.train.task == "triviaqa":
        model = SpanQA(run.model)
    else:
        model = SequenceClassifier(run.model, int(state["classifier.output.weight"].shape[0]))
    model.load_state_dict(state)
    return model.eval()


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_labels(run_dir: Path, documents: Path, tokenizer: Path, weights: str) -> list[dict]:
    """Each test document alone through the run's model: argmax and probabilities."""
    model = native_model(run_dir, weights)
    dataset = read_classification(documents, split="test", tokenizer=str(tokenizer), max_length=64)
    names = list(dataset.label_names)
    expected = []
    with torch.no_grad():
        for example in dataset.examples:
            probabilities = model(example["input_ids"][None]).logits.softmax(-1)[0]
            best = int(probabilities.argmax())
            expected.append(
                {
                    "label": names[best],
                    "score": float(probabilities[best]),
                    "scores": dict(zip(names, probabilities.tolist(), strict=True)),
                    "gold": names[example["labels"]],
                }
            )
    return expected


@pytest.mark.parametrize(
    ("weights", "file"), [("best", "best.safetensors"), ("final", "model.safetensors")]
)
def test_predict_classification_gives_the_models_argmax(runs, tmp_path, capsys, weights, file):
    out = tmp_path / "preds.jsonl"
    argv = ["predict", str(runs.docs), "--data", str(runs.documents), "--out", str(out)]
    assert main([*argv, "--weights", weights, "--batch-size", "3"]) == 0  # padded batches
    assert f"wrote 7 predictions (JSON lines) to {out}" in capsys.readouterr().out
    lines = read_lines(out)
    expected = expected_labels(runs.docs, runs.documents, runs.tokenizer, file)
    assert [line["index"] for line in lines] == list(range(7))
    for line, reference in zip(lines, expected, strict=True):
        assert line["label"] == reference["label"] and line["gold"] == reference["gold"]
        assert line["score"] == pytest.approx(reference["score"], abs=1e-5)
        assert line["scores"] == pytest.approx(reference["scores"], abs=1e-5)
        assert line["score"] == max(line["scores"].values())
    golds = {line["gold"] for line in lines}
    assert golds == {"low", "high"}


def test_predict_classifies_documents_without_labels(runs, tmp_path, capsys):
    texts = [line.split("\t")[1] for line in (runs.documents / "test.tsv").read_text().splitlines()]
    records = [{"id": f"doc-{n}", "text": text} for n, text in enumerate(texts)]
    records[2] = {"text": texts[2]}  # an id is optional
    data = tmp_path / "documents.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records) + "\n")
    out = tmp_path / "labels.jsonl"
    assert main(["predict", str(runs.docs), "--data", str(data), "--out", str(out)]) == 0
    lines = read_lines(out)
    expected = expected_labels(runs.docs, runs.documents, runs.tokenizer, "best.safetensors")
    assert [line.get("id") for line in lines] == [record.get("id") for record in records]
    for line, reference in zip(lines, expected, strict=True):
        assert "gold" not in line  # the documents have no labels
        assert line["label"] == reference["label"]  # names from the run's own data
        assert line["scores"] == pytest.approx(reference["scores"], abs=1e-5)
    data.write_text('{"text": "w1 w2"}\n{"txt": "w3"}\n')
    assert main(["predict", str(runs.docs), "--data", str(data), "--out", str(out)]) == 2
    assert f'{data}:2: expected an object with a non-empty "text"' in capsys.readouterr().err
    tsv = runs.documents / "test.tsv"
    assert main(["predict", str(runs.docs), "--data", str(tsv), "--out", str(out)]) == 2
    assert "come as JSON lines (.jsonl" in capsys.readouterr().err


def best_span_by_brute_force(model, dataset, question_index: int, max_tokens: int) -> str:
    """The answer text maximizing start + end logit over every window's context spans."""
    question = dataset.questions[question_index]
    best = (-float("inf"), "")
    with torch.no_grad():
        for index in question.windows:
            example = dataset.examples[index]
            start, end = model(example["input_ids"][None]).logits[0]  # each [n]
            first, last = example["context_start"], len(example["input_ids"]) - 2
            shift = example["window_start"] - first
            for i in range(first, last + 1):
                for j in range(i, min(last, i + max_tokens - 1) + 1):
                    score = float(start[i] + end[j])
                    if score > best[0]:
                        begin, stop = question.offsets[i + shift][0], question.offsets[j + shift][1]
                        best = (score, question.context[begin:stop].strip())
    return best[1]


def test_predict_squad_answers_are_the_spans_the_logits_pick(runs, tmp_path, capsys):
    squad = json.loads((runs.squad / "dev.json").read_text())
    paragraph = squad["data"][0]["paragraphs"][0]
    twin = {**paragraph["qas"][0], "id": "unanswered", "answers": []}
    no_field = {key: value for key, value in twin.items() if key != "answers"} | {"id": "bare"}
    squad["data"].append(
        {"paragraphs": [{"context": paragraph["context"], "qas": [twin, no_field]}]}
    )
    data = tmp_path / "questions.json"
    data.write_text(json.dumps(squad))
    out = tmp_path / "predictions.json"
    argv = ["predict", str(runs.trivia), "--data", str(data), "--out", str(out)]
    assert main([*argv, "--batch-size", "2"]) == 0
    assert "wrote 5 answers (SQuAD predictions JSON)" in capsys.readouterr().out
    predictions = json.loads(out.read_text())
    assert set(predictions) == {"dev0", "dev1", "dev2", "unanswered", "bare"}
    model = native_model(runs.trivia)
    dataset = read_span_qa(
        runs.squad / "dev.json",
        Subword(runs.tokenizer),
        max_length=QA_LENGTH,
        num_global=8,
        stride=QA_WINDOW["doc_stride"],
        max_answer_tokens=QA_WINDOW["max_answer_tokens"],
    )
    assert all(len(question.windows) == 5 for question in dataset.questions)  # long contexts
    for index, question in enumerate(dataset.questions):
        expected = best_span_by_brute_force(model, dataset, index, QA_WINDOW["max_answer_tokens"])
        assert predictions[question.id] == expected, question.id
    # Questions without gold answers get the answer of the same question with them.
    assert predictions["unanswered"] == predictions["bare"] == predictions["dev0"]
    # A data folder: --split val reads its dev.json.
    folder_out = tmp_path / "folder.json"
    argv = ["predict", str(runs.trivia), "--data", str(runs.squad), "--split", "val"]
    assert main([*argv, "--out", str(folder_out)]) == 0
    assert json.loads(folder_out.read_text()) == {
        key: value for key, value in predictions.items() if key.startswith("dev")
    }


def test_predict_errors_name_what_is_wrong(runs, tmp_path, capsys):
    out = ["--out", str(tmp_path / "p.jsonl")]
    assert main(["predict", str(tmp_path), "--data", str(runs.documents), *out]) == 2
    assert "not a run directory" in capsys.readouterr().err

    mlm = ["predict", str(runs.mlm), "--data", str(runs.documents), *out]
    assert main(mlm) == 2
    error = capsys.readouterr().err
    assert "predict does not support task 'mlm'" in error
    assert "classification (classification, documents, image, listops" in error
    assert "span QA (triviaqa)" in error

    three = documents_folder(tmp_path / "three", labels=("a", "b", "c"))
    assert main(["predict", str(runs.docs), "--data", str(three), *out]) == 2
    assert "its data has 3 labels, the run's model 2 classes" in capsys.readouterr().err

    missing = tmp_path / "nowhere"
    assert main(["predict", str(runs.docs), "--data", str(missing), *out]) == 2
    assert f"{missing}: no such data file or folder" in capsys.readouterr().err

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": 3}))
    assert main(["predict", str(runs.trivia), "--data", str(bad), *out]) == 2
    assert f"{bad}:top level: needs 'data' as a list" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["predict", str(runs.trivia), "--data", str(broken), *out]) == 2
    assert f"{broken}" in capsys.readouterr().err and not (tmp_path / "p.jsonl").exists()

    assert main(["predict", str(runs.docs), "--data", str(runs.documents), "--split", "dev", *out])
    assert "split must be train, val or test" in capsys.readouterr().err

    import shutil

    copied = shutil.copytree(runs.docs, tmp_path / "copied-run")
    outside = tmp_path / "elsewhere.safetensors"
    (copied / "best.safetensors").rename(outside)
    (copied / "best.safetensors").symlink_to(outside)  # a weights file out of the run
    assert main(["predict", str(copied), "--data", str(runs.documents), *out]) == 2
    assert "leads outside" in capsys.readouterr().err


# --- pipelines on the folders ``ernie-sparse export`` writes from these runs ---


def exported(run_dir: Path, out: Path) -> Path:
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    return out


def test_pipelines_on_exported_runs(runs, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from ernie_sparse.models import MaskedLM

    docs = exported(runs.docs, tmp_path / "docs")
    assert "added the readers' <s> ... </s> template" in capsys.readouterr().out
    tokenizer = transformers.AutoTokenizer.from_pretrained(docs)
    dataset = read_classification(
        runs.documents, split="test", tokenizer=str(runs.tokenizer), max_length=64
    )
    texts = [line.split("\t")[1] for line in (runs.documents / "test.tsv").read_text().splitlines()]
    for text, example in zip(texts, dataset.examples, strict=True):  # the reader's ids
        assert tokenizer(text)["input_ids"] == example["input_ids"].tolist()
    classify = transformers.pipeline("text-classification", model=str(docs), device="cpu")
    expected = expected_labels(runs.docs, runs.documents, runs.tokenizer, "best.safetensors")
    for result, reference in zip(classify(texts), expected, strict=True):
        assert result["label"] == reference["label"]
        assert result["score"] == pytest.approx(reference["score"], abs=1e-5)

    mlm_folder = exported(runs.mlm, tmp_path / "mlm")
    fill = transformers.pipeline("fill-mask", model=str(mlm_folder), device="cpu")
    text = "w3 w4 <mask> w6 w7"
    results = fill(text, top_k=3)
    native = MaskedLM(load_run_config(runs.mlm / "config.yaml").model).eval()
    native.load_state_dict(load_safetensors(runs.mlm / "best.safetensors"))
    encoded = fill.tokenizer(text, return_tensors="pt")
    position = int((encoded["input_ids"][0] == fill.tokenizer.mask_token_id).nonzero())
    with torch.no_grad():
        probabilities = native(encoded["input_ids"]).logits[0, position].softmax(-1)
    top = probabilities.topk(3)
    assert [r["token"] for r in results] == top.indices.tolist()
    assert [r["score"] for r in results] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert results[0]["sequence"].startswith("w3 w4 ")

    trivia = exported(runs.trivia, tmp_path / "trivia")
    qa = transformers.pipeline("extractive-question-answering", model=str(trivia), device="cpu")
    context = json.loads((runs.squad / "dev.json").read_text())["data"][0]["paragraphs"][0]
    windows = qa.tokenizer(
        "what x",
        context["context"],
        max_length=32,
        stride=8,
        truncation="only_second",
        return_overflowing_tokens=True,
    )["input_ids"]
    assert len(windows) > 1  # the context needs several windows of 32 tokens
    answer = qa(question="what x", context=context["context"], max_seq_len=32, doc_stride=8)
    assert set(answer) == {"score", "start", "end", "answer"} and 0 < answer["score"] <= 1
    assert answer["answer"] == context["context"][answer["start"] : answer["end"]]


# --- README: the "Use with Hugging Face" section, run on these runs ---

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use with Hugging Face"


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the section, in order."""
    import re

    text = README.read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL)


def run_shell_block(code: str) -> None:
    """Each line: ``pip install`` (skipped: the extras are installed here) or an
    ``ernie-sparse`` command, run in this process."""
    import shlex

    for line in code.splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[:2] == ["pip", "install"]:
            continue
        assert words[0] == "ernie-sparse", f"README command the test cannot run: {line}"
        assert main(words[1:]) == 0, line


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # Trainer on a CPU
def test_readme_use_with_hugging_face_runs(runs, tmp_path, monkeypatch):
    import shutil

    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pytest.importorskip("onnxruntime")
    for name in ("docs", "trivia", "mlm"):  # the section's paths, relative to here
        shutil.copytree(getattr(runs, name), tmp_path / "runs" / name)
    shutil.copytree(runs.documents, tmp_path / "data" / "docs")
    shutil.copytree(runs.squad, tmp_path / "data" / "trivia")
    (tmp_path / "data" / "report.txt").write_text(" ".join(WORDS * 3))
    monkeypatch.chdir(tmp_path)
    blocks = readme_blocks()
    assert [language for language, _ in blocks] == ["bash", "python", "python", "python"]
    namespace: dict = {}
    for language, code in blocks:
        if language == "bash":
            run_shell_block(code)
        else:
            exec(compile(code, str(README), "exec"), namespace)
    assert len(read_lines(tmp_path / "preds.jsonl")) == 7
    assert set(json.loads((tmp_path / "predictions.json").read_text())) == {"dev0", "dev1", "dev2"}
    assert (tmp_path / "hf" / "docs-onnx" / "model.onnx").is_file()
    assert namespace["logits"].shape == (1, 2)
    assert (tmp_path / "hf" / "docs-tuned" / "model.safetensors").is_file()
