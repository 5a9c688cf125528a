"""The Hugging Face workflow on our classes: Trainer, loss kwargs, hidden states, tuples,
gradient checkpointing, attn_implementation, BERT's pooler (ernie_sparse.models.hf)."""

from __future__ import annotations

import json

import pytest
import torch

from ernie_sparse.cli import main
from ernie_sparse.files import load_safetensors

transformers = pytest.importorskip("transformers")
from test_hf import tiny_config as hf_tiny_config  # noqa: E402

from ernie_sparse.models.hf import (  # noqa: E402
    ErnieSparseConfig,
    ErnieSparseForMaskedLM,
    ErnieSparseForQuestionAnswering,
    ErnieSparseForSequenceClassification,
    ErnieSparseModel,
)

TOLERANCE = 1e-5


def tiny_config(**overrides) -> ErnieSparseConfig:
    """test_hf's tiny ERNIE-Sparse (BigBird pattern + HST + global tokens), no segments."""
    return hf_tiny_config(**{"type_vocab_size": 0, **overrides})


def band_examples(count: int, *, length: int = 22, seed: int = 0) -> list[dict]:
    """Label c: every token is drawn from band c of the vocabulary; some rows padded."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for index in range(count):
        label = index % 3
        ids = torch.randint(5 + 15 * label, 20 + 15 * label, (length,), generator=generator)
        mask = torch.ones(length, dtype=torch.long)
        if index % 4 == 1:
            mask[length - 7 :] = 0
            ids[length - 7 :] = 0
        examples.append({"input_ids": ids, "attention_mask": mask, "labels": label})
    return examples


def mean_loss(model, examples: list[dict]) -> float:
    batch = transformers.default_data_collator(examples)
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def trainer_run(tmp_path, *, batch_size: int, accumulation: int):
    """6 Trainer steps of 8 examples each (one label ignored); returns (model, Trainer,
    loss on the labelled examples before training). BigBird pattern and global tokens;
    HST off, which learns this task in 6 steps by a wide margin whatever the seed."""
    torch.manual_seed(0)
    config = tiny_config(
        dropout=0.0,
        attention={"dropout": 0.0},
        initializer_range=0.2,
        hst={"enabled": False, "pooling": "mean"},
    )
    model = ErnieSparseForSequenceClassification(config)
    examples = band_examples(24)
    examples[3]["labels"] = -100
    before = mean_loss(model, labelled(examples))
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path / f"trainer-{batch_size}"),
        max_steps=6,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=2e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=examples)
    trainer.train()
    return model, trainer, before


def labelled(examples: list[dict]) -> list[dict]:
    return [example for example in examples if example["labels"] != -100]


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_fine_tunes_a_sequence_classifier(tmp_path):
    pytest.importorskip("accelerate")
    model, trainer, before = trainer_run(tmp_path, batch_size=4, accumulation=2)
    assert trainer.model_accepts_loss_kwargs  # Trainer passes num_items_in_batch
    assert trainer.state.global_step == 6 and len(losses(trainer)) == 6
    examples = band_examples(24)
    after = mean_loss(model, labelled(examples))
    assert after < 0.6 * before, (before, after)
    # num_items_in_batch: two accumulated micro-batches of 4 train as one batch of 8.
    _, whole, _ = trainer_run(tmp_path, batch_size=8, accumulation=1)
    assert losses(whole) == pytest.approx(losses(trainer), rel=1e-5)

    model.save_pretrained(tmp_path / "tuned")
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "tuned")
    assert type(loaded) is ErnieSparseForSequenceClassification
    batch = transformers.default_data_collator(examples[:8])
    del batch["labels"]
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_num_items_in_batch_divides_the_summed_loss():
    torch.manual_seed(0)
    classifier = ErnieSparseForSequenceClassification(tiny_config()).eval()
    ids = torch.randint(0, 50, (4, 18))
    labels = torch.tensor([0, 2, -100, 1])
    with torch.no_grad():
        mean = classifier(ids, labels=labels).loss
        counted = classifier(ids, labels=labels, num_items_in_batch=torch.tensor(3)).loss
        over_step = classifier(ids, labels=labels, num_items_in_batch=12).loss
    assert torch.allclose(counted, mean)  # 3 labelled rows: the mean
    assert torch.allclose(over_step, mean * 3 / 12)  # a quarter of an accumulated step's items
    mlm = ErnieSparseForMaskedLM(tiny_config()).eval()
    tokens = torch.full((4, 18), -100)
    tokens[:, 3] = 7
    tokens[1, 9] = 11
    with torch.no_grad():
        mean = mlm(ids, labels=tokens).loss
        summed = mlm(ids, labels=tokens, num_items_in_batch=1).loss
    assert torch.allclose(summed, mean * 5)
    qa = ErnieSparseForQuestionAnswering(tiny_config()).eval()
    spans = {"start_positions": torch.tensor([1, 2, 3, 4]), "end_positions": torch.tensor([2] * 4)}
    with torch.no_grad():
        mean = qa(ids, **spans).loss
        counted = qa(ids, **spans, num_items_in_batch=4).loss  # items: examples
    assert torch.allclose(counted, mean)
    base = ErnieSparseModel(tiny_config()).eval()
    assert base(ids, num_items_in_batch=4).last_hidden_state.shape == (4, 18, 16)  # ignored


@pytest.mark.parametrize("model_class", [ErnieSparseModel, ErnieSparseForSequenceClassification])
def test_hidden_states_and_tuples(model_class):
    torch.manual_seed(0)
    model = model_class(tiny_config(layer_norm="pre")).eval()  # last entry: after final norm
    ids = torch.randint(0, 50, (2, 21))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    with torch.no_grad():
        plain = model(ids, attention_mask=mask)
        out = model(ids, attention_mask=mask, output_hidden_states=True)
        as_tuple = model(ids, attention_mask=mask, output_hidden_states=True, return_dict=False)
    assert plain.hidden_states is None
    states = out.hidden_states
    assert isinstance(states, tuple) and len(states) == 3
    assert all(state.shape == (2, 21, 16) for state in states)
    encoder = model.encoder if model_class is ErnieSparseModel else model.ernie_sparse.encoder
    embedded = encoder.embeddings(ids, None, encoder.plan(21))
    assert torch.equal(states[0], embedded[:, encoder.plan(21).token_positions])
    assert not torch.equal(states[1], states[0])
    if model_class is ErnieSparseModel:
        assert torch.equal(states[-1], out.last_hidden_state)
        assert torch.equal(plain.pooler_output, out.pooler_output)  # no pooler: the pooled state
    assert isinstance(as_tuple, tuple)
    expected = out.to_tuple()
    assert len(as_tuple) == len(expected)
    for mine, theirs in zip(as_tuple, expected, strict=True):
        if isinstance(mine, tuple):
            assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))
        else:
            assert torch.equal(mine, theirs)
    model.config.output_hidden_states = True  # the config's default, as in transformers
    with torch.no_grad():
        assert len(model(ids).hidden_states) == 3
    with pytest.raises(ValueError, match="never forms the attention matrix"):
        model(ids, output_attentions=True)
    with torch.no_grad():  # a tokenizer's all-zero token types: one segment, no embeddings
        segments = model(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    assert torch.equal(segments[0], plain[0])
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        model(ids, token_type_ids=torch.ones_like(ids))
    with pytest.raises(TypeError, match="unexpected past_key_values"):
        model(ids, past_key_values=None, use_extra=1)


def test_gradient_checkpointing_reaches_the_encoder():
    torch.manual_seed(0)
    model = ErnieSparseForSequenceClassification(
        tiny_config(dropout=0.0, attention={"dropout": 0.0})
    )
    ids = torch.randint(0, 50, (3, 19))
    labels = torch.tensor([0, 1, 2])
    model.train()

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        out = model(ids, labels=labels, output_hidden_states=True)
        out.loss.backward()
        assert len(out.hidden_states) == 3
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    assert model.supports_gradient_checkpointing
    with pytest.warns(FutureWarning):  # transformers 5 renamed it; both reach the flag
        model.gradient_checkpointing_enable()
    assert model.ernie_sparse.encoder.gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], atol=1e-6), name
    model.activation_checkpointing_disable()
    assert not model.ernie_sparse.encoder.gradient_checkpointing
    model.activation_checkpointing_enable()
    assert model.ernie_sparse.encoder.gradient_checkpointing


def test_attn_implementation_selects_our_backend(tmp_path):
    torch.manual_seed(0)
    model = ErnieSparseModel(tiny_config()).eval()
    assert model.config._attn_implementation == "auto"
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 50, (2, 30))
    with torch.no_grad():
        expected = model(ids).last_hidden_state
    for backend in ("reference", "blocked", "fused"):
        loaded = transformers.AutoModel.from_pretrained(tmp_path, attn_implementation=backend)
        assert loaded.encoder.config.attention.backend == backend
        assert loaded.config.model["attention"]["backend"] == backend  # saved with the model
        with torch.no_grad():
            states = loaded.eval()(ids).last_hidden_state
        assert float((states - expected).abs().max()) < TOLERANCE, backend
    loaded.set_attn_implementation("reference")
    assert loaded.encoder.config.attention.backend == "reference"
    for refused in ("sdpa", "eager", "flash_attention_2"):
        with pytest.raises(ValueError, match="not an ERNIE-Sparse attention backend"):
            transformers.AutoModel.from_pretrained(tmp_path, attn_implementation=refused)
    with pytest.raises(ValueError, match="choose one of auto, reference, blocked, flex"):
        loaded.set_attn_implementation("sdpa")
    assert loaded.encoder.config.attention.backend == "reference"  # unchanged
    with pytest.raises(ValueError, match="not an ERNIE-Sparse attention backend"):
        ErnieSparseConfig(model=model.config.model, attn_implementation="eager")
    config = ErnieSparseConfig(model=model.config.model, attn_implementation="flex")
    assert ErnieSparseModel(config).encoder.config.attention.backend == "flex"


def test_convert_keeps_berts_pooler(tmp_path, capsys):
    torch.manual_seed(0)
    bert_config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
    )
    reference = transformers.BertModel(bert_config).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(std=0.2)
    reference.save_pretrained(tmp_path / "bert")
    out = tmp_path / "converted"
    argv = ["convert", "--from", str(tmp_path / "bert"), "--out", str(out)]
    assert main([*argv, "--max-positions", "40", "--pattern", "dense", "--no-hst"]) == 0
    assert "pooler: copied" in capsys.readouterr().out
    model = transformers.AutoModel.from_pretrained(out).eval()
    assert model.config.use_pooler
    assert torch.equal(model.pooler.dense.weight, reference.pooler.dense.weight)
    ids = torch.randint(3, 99, (2, 25))
    with torch.no_grad():
        ours, theirs = model(ids), reference(input_ids=ids)
    assert float((ours.pooler_output - theirs.pooler_output).abs().max()) < 1e-4
    # Converting the converted folder again keeps the pooler.
    again = tmp_path / "again"
    assert main(["convert", "--from", str(out), "--out", str(again), "--pattern", "dense"]) == 0
    assert "pooler: copied" in capsys.readouterr().out
    reloaded = transformers.AutoModel.from_pretrained(again)
    assert torch.equal(reloaded.pooler.dense.bias, reference.pooler.dense.bias)


# --- ernie-sparse export: a training run as a Hugging Face folder ---

RUN_CONFIG = {
    "model": {
        "preset": "ernie-sparse",
        "vocab_size": 16,
        "hidden_size": 16,
        "num_heads": 2,
        "num_layers": 2,
        "mlp_size": 32,
        "max_positions": 64,
        "attention": {"block_size": 8, "num_global": 8},
        "saor": {"alpha": 1.0, "roll_tokens": 3},
    },
    "train": {
        "task": "listops",
        "max_length": 64,
        "batch_size": 8,
        "lr": 0.01,
        "warmup_steps": 1,
        "max_steps": 2,
        "eval_every": 1,
        "eval_max_batches": 1,
        "log_every": 1,
    },
}


@pytest.fixture(scope="module")
def listops_run(tmp_path_factory):
    """A 2-step ``ernie-sparse train`` run on ListOps (HST + SAOR + BigBird globals)."""
    import yaml

    from ernie_sparse.data.listops import generate_listops

    root = tmp_path_factory.mktemp("export")
    generate_listops(
        root / "data", num_train=40, num_val=16, num_test=16, seed=1, min_len=10, max_len=60
    )
    values = {**RUN_CONFIG, "train": {**RUN_CONFIG["train"], "data": str(root / "data")}}
    (root / "run.yaml").write_text(yaml.safe_dump(values))
    run = root / "run"
    argv = ["train", "--config", str(root / "run.yaml"), "--out", str(run), "--quiet"]
    assert main(argv) == 0
    return run


def test_export_run_loads_with_the_runs_outputs(listops_run, tmp_path, capsys):
    from ernie_sparse.data.collate import pad_collate
    from ernie_sparse.models import SequenceClassifier
    from ernie_sparse.training.config import load_run_config
    from ernie_sparse.training.tasks import load_split

    out = tmp_path / "hf"
    assert main(["export", str(listops_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ErnieSparseForSequenceClassification" in printed and "best.safetensors" in printed
    run = load_run_config(listops_run / "config.yaml")
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == run.model.to_dict()  # pattern, HST, SAOR ... as trained
    assert saved["model"]["hst"]["enabled"] and saved["model"]["saor"]["alpha"] == 1.0
    assert saved["id2label"] == {str(i): str(i) for i in range(10)}  # ListOps' digits
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert isinstance(model, ErnieSparseForSequenceClassification)
    native = SequenceClassifier(run.model, 10).eval()
    native.load_state_dict(load_safetensors(listops_run / "best.safetensors"))
    examples = [load_split(run.train, "val")[i] for i in range(6)]
    batch = pad_collate(examples)
    with torch.no_grad():
        expected = native(batch["input_ids"], batch["attention_mask"]).logits
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(logits, expected)

    final = tmp_path / "final"
    assert main(["export", str(listops_run), "--out", str(final), "--weights", "final"]) == 0
    again = transformers.AutoModelForSequenceClassification.from_pretrained(final)
    final_state = load_safetensors(listops_run / "model.safetensors")
    assert torch.equal(
        again.ernie_sparse.classifier.output.weight, final_state["classifier.output.weight"]
    )
    names = ",".join("abcdefghij")
    assert main(["export", str(listops_run), "--out", str(out), "--labels", names]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["export", str(listops_run), "--out", str(out), "--force", "--labels", "a,b"]) == 2
    assert "2 label names for 10 classes" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "hf"), "--out", str(tmp_path / "x")]) == 2
    assert "not a run directory" in capsys.readouterr().err


# --- pipelines on folders with a tokenizer ---

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(40))]


def tiny_tokenizer_file(path):
    """A word-level tokenizer.json: [CLS] words [SEP] (pairs: [CLS] a [SEP] b [SEP], the
    second in segment 1), BERT's special-token names."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {word: index for index, word in enumerate(WORDS)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def test_pipelines_on_a_folder_with_a_tokenizer(tmp_path):
    from ernie_sparse.training.config import RunConfig, TrainConfig
    from ernie_sparse.training.export import export_tokenizer

    source = tiny_tokenizer_file(tmp_path / "tokenizer" / "words.json")
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(WORDS), type_vocab_size=0)
    config.id2label = {0: "low", 1: "mid", 2: "high"}
    config.label2id = {"low": 0, "mid": 1, "high": 2}
    folder = tmp_path / "model"
    ErnieSparseForSequenceClassification(config).save_pretrained(folder)
    run = RunConfig(
        config.to_model_config(), TrainConfig(task="classification", tokenizer=str(source))
    )
    line = export_tokenizer(run, folder)  # what export does for a subword run
    assert "wrote tokenizer_config.json" in line
    texts = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12", "w30 w31 w7 w1 unknown"]

    classify = transformers.pipeline("text-classification", model=str(folder), device="cpu")
    results = classify(texts)
    assert [set(result) for result in results] == [{"label", "score"}] * 2
    model = classify.model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert "token_type_ids" not in tokenizer(texts[0])  # the model has no segments
    with torch.no_grad():
        for text, result in zip(texts, results, strict=True):
            probabilities = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
            best = int(probabilities.argmax())
            assert result["label"] == config.id2label[best]
            assert result["score"] == pytest.approx(float(probabilities[best]), abs=1e-6)
    top = classify(texts[0], top_k=None)
    assert sorted(entry["label"] for entry in top) == ["high", "low", "mid"]

    extract = transformers.pipeline("feature-extraction", model=str(folder), device="cpu")
    assert isinstance(extract.model, ErnieSparseModel)  # the base model of the same folder
    features = extract(texts[1], return_tensors=True)
    encoded = tokenizer(texts[1], return_tensors="pt")
    with torch.no_grad():
        states = extract.model.eval()(**encoded).last_hidden_state
    assert features.shape == (1, encoded["input_ids"].shape[1], 16)
    assert torch.allclose(features, states, atol=1e-6)
    nested = extract(texts)
    assert len(nested) == 2 and len(nested[0][0]) == 14 and len(nested[0][0][0]) == 16


# --- fill-mask and extractive question answering on converted and built folders ---


def bert_with_tokenizer(tmp_path, head: str):
    """A tiny BERT (``head``: transformers class name) with the word-level tokenizer, and
    its ``ernie-sparse convert`` (dense pattern, HST off: the same function)."""
    from ernie_sparse.training.export import write_tokenizer_config

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
    )
    bert = getattr(transformers, head)(config).eval()
    with torch.no_grad():
        for parameter in bert.parameters():
            parameter.normal_(std=0.2)
    source = tmp_path / "bert"
    bert.save_pretrained(source)
    write_tokenizer_config(
        tiny_tokenizer_file(source / "tokenizer.json"), max_positions=40, segments=True
    )
    out = tmp_path / "converted"
    argv = ["convert", "--from", str(source), "--out", str(out), "--max-positions", "40"]
    assert main([*argv, "--pattern", "dense", "--no-hst"]) == 0
    return bert, source, out


def test_fill_mask_pipeline_on_a_converted_folder_is_berts(tmp_path):
    _, source, converted = bert_with_tokenizer(tmp_path, "BertForMaskedLM")
    ours = transformers.pipeline("fill-mask", model=str(converted), device="cpu")
    theirs = transformers.pipeline("fill-mask", model=str(source), device="cpu")
    assert isinstance(ours.model, ErnieSparseForMaskedLM)
    assert isinstance(theirs.model, transformers.BertForMaskedLM)
    for text in ["w1 w2 [MASK] w4 w5 w6", "[MASK] w30 w31 w32 w33 w34 w35 w36 w37 w38 w39"]:
        mine, bert = ours(text, top_k=5), theirs(text, top_k=5)
        assert [r["token_str"] for r in mine] == [r["token_str"] for r in bert]
        assert [r["score"] for r in mine] == pytest.approx([r["score"] for r in bert], abs=1e-5)
        assert all(set(r) == {"score", "token", "token_str", "sequence"} for r in mine)


def windows_of(tokenizer, question: str, context: str, *, max_seq_len: int, doc_stride: int):
    return tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=max_seq_len,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=True,  # the last window is shorter
        return_tensors="pt",
    )


def best_answer_by_brute_force(model, tokenizer, question, context, **window) -> tuple:
    """transformers 4's rule, written out: per window, softmax of start and of end logits
    over the context tokens; the best p(start) * p(end) span of at most 15 tokens over all
    windows; its characters."""
    encoded = windows_of(tokenizer, question, context, **window)
    inputs = {key: encoded[key] for key in tokenizer.model_input_names}
    with torch.no_grad():
        out = model(**inputs)
    best = (-1.0, "")
    for window_index in range(len(encoded["input_ids"])):
        context_tokens = [s == 1 for s in encoded.sequence_ids(window_index)]
        keep = torch.tensor(context_tokens)
        start = out.start_logits[window_index].masked_fill(~keep, -10000.0).softmax(-1)
        end = out.end_logits[window_index].masked_fill(~keep, -10000.0).softmax(-1)
        offsets = encoded["offset_mapping"][window_index]
        for i in keep.nonzero().flatten().tolist():
            for j in keep.nonzero().flatten().tolist():
                if i <= j < i + 15 and float(start[i] * end[j]) > best[0]:
                    first, last = int(offsets[i][0]), int(offsets[j][1])
                    best = (float(start[i] * end[j]), context[first:last])
    return best


def test_question_answering_pipeline_on_a_converted_folder(tmp_path):
    """The converted model (its span head copied into BERT's) answers as BERT does, and as
    the windowed search written out in the test, over a context of many windows."""
    _, source, converted = bert_with_tokenizer(tmp_path, "BertModel")
    ours = transformers.pipeline("extractive-question-answering", model=str(converted))
    assert isinstance(ours.model, ErnieSparseForQuestionAnswering)
    with torch.no_grad():
        ours.model.ernie_sparse.span.weight.normal_(std=0.5)  # a head with some preference
    bert = transformers.BertForQuestionAnswering.from_pretrained(source).eval()
    with torch.no_grad():
        bert.qa_outputs.weight.copy_(ours.model.ernie_sparse.span.weight)
        bert.qa_outputs.bias.copy_(ours.model.ernie_sparse.span.bias)
    theirs = transformers.pipeline(
        "extractive-question-answering", model=bert, tokenizer=str(source)
    )
    question = "w1 w2 w3"
    context = " ".join(f"w{(7 * i) % 40}" for i in range(70))
    window = {"max_seq_len": 24, "doc_stride": 6}
    assert len(windows_of(ours.tokenizer, question, context, **window)["input_ids"]) >= 4
    answer = ours(question=question, context=context, **window)
    assert answer == pytest.approx(theirs(question=question, context=context, **window))
    score, text = best_answer_by_brute_force(bert, ours.tokenizer, question, context, **window)
    assert answer["answer"] == text == context[answer["start"] : answer["end"]]
    assert answer["score"] == pytest.approx(score, abs=1e-6)
    top = ours(question=question, context=context, top_k=3, **window)
    assert len(top) == 3 and top[0] == pytest.approx(answer)
    assert top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    both = ours(question=[question, "w5"], context=[context, "w5 w6 w7 w8"], **window)
    assert both[0] == pytest.approx(answer) and both[1]["answer"] in "w5 w6 w7 w8"
    with pytest.raises(ValueError, match="both as strings or both as lists"):
        ours(question=question, context=[context])
    with pytest.raises(ValueError, match="max_seq_len must be a positive integer"):
        ours(question=question, context=context, max_seq_len=0)
    with pytest.raises(KeyError, match="question-answering has been removed"):
        transformers.pipeline("question-answering", model=str(converted))  # why ours exists


def point_span_head_at(model: ErnieSparseForQuestionAnswering, token: int) -> None:
    """Start and end logits that rise only at ``token``, through every sparse layer: feature
    0 of the residual stream is 50 for ``token``, 0 elsewhere, and no sublayer writes it
    (pre-LN); the final norm keeps it the largest, the head reads it."""
    native = model.ernie_sparse
    with torch.no_grad():
        embeddings = native.encoder.embeddings
        embeddings.word.weight[:, 0] = 0.0
        embeddings.word.weight[token, 0] = 50.0
        embeddings.position.weight[:, 0] = 0.0
        embeddings.representative[0] = 0.0
        for module in native.encoder.modules():
            if hasattr(module, "output") and isinstance(module.output, torch.nn.Linear):
                module.output.weight[0] = 0.0  # attention, hierarchical and feed-forward
                module.output.bias[0] = 0.0
        native.span.weight.zero_()
        native.span.weight[:, 0] = 10.0
        native.span.bias.zero_()


def test_question_answering_pipeline_finds_an_answer_beyond_the_first_window(tmp_path):
    from ernie_sparse.training.export import write_tokenizer_config

    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(WORDS), layer_norm="pre", dropout=0.0)
    model = ErnieSparseForQuestionAnswering(config).eval()
    point_span_head_at(model, WORDS.index("w39"))
    folder = tmp_path / "qa"
    model.save_pretrained(folder)
    write_tokenizer_config(
        tiny_tokenizer_file(folder / "tokenizer.json"), max_positions=64, segments=False
    )
    qa = transformers.pipeline("extractive-question-answering", model=str(folder))
    words = [f"w{(3 * i) % 39}" for i in range(60)]
    words[50] = "w39"
    context = " ".join(words)
    window = {"max_seq_len": 24, "doc_stride": 4}
    encoded = windows_of(qa.tokenizer, "w1 w2", context, **window)
    holding = [int((row == WORDS.index("w39")).any()) for row in encoded["input_ids"]]
    assert holding[0] == 0 and sum(holding) >= 1  # only a later window holds the answer
    answer = qa(question="w1 w2", context=context, **window)
    assert answer["answer"] == "w39"
    assert answer["start"] == context.index(" w39") + 1 and answer["score"] > 0.9
    # The whole context in one window: the same answer (the head is not the windows).
    assert qa(question="w1 w2", context=context, max_seq_len=64)["answer"] == "w39"
