"""ONNX export (ernie_sparse.models.onnx_export, ``ernie-sparse export --onnx``): onnxruntime
runs the graph and matches PyTorch's own attention path (``blocked`` on the CPU, not the
reference path the graph uses) at two lengths, on padded batches."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ernie_sparse.cli import main
from ernie_sparse.models import MaskedLM, ModelConfig, SequenceClassifier, SpanQA
from ernie_sparse.models.onnx_export import export_onnx, run_onnx
from ernie_sparse.models.presets import merge_overrides

pytest.importorskip("onnx", reason="ONNX export needs: pip install 'ernie-sparse[onnx]'")
pytest.importorskip("onnxruntime", reason="the check needs: pip install 'ernie-sparse[onnx]'")

TOLERANCE = 1e-4  # fp32: the bound on max |onnx - torch|
LENGTHS = (29, 64)  # an odd length (padded to blocks inside) and the longest the model takes


def tiny_config(**overrides) -> ModelConfig:
    """BigBird pattern (random blocks per head) + global tokens + HST + segments."""
    values = dict(
        vocab_size=50,
        hidden_size=16,
        num_heads=2,
        num_layers=2,
        mlp_size=24,
        max_positions=64,
        type_vocab_size=2,
        attention={
            "block_size": 4,
            "pattern": "bigbird",
            "pattern_params": {"window_width": 1, "num_random": 1},
            "num_global": 4,
        },
        hst={"enabled": True, "pooling": "mean"},
    )
    return ModelConfig(**merge_overrides(values, overrides))


def padded_batch(length: int, *, seed: int) -> dict[str, torch.Tensor]:
    """Three rows of ``length`` tokens: full, half padding, one real token; mixed segments."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (3, length), generator=generator)
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, length // 2 :] = 0
    mask[2, 1:] = 0
    segments = torch.zeros_like(ids)
    segments[0, length // 3 :] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments}


def build(head: type, config: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    model = head(config, 3) if head is SequenceClassifier else head(config)
    return model.eval()


@pytest.mark.parametrize("head", [SequenceClassifier, MaskedLM, SpanQA])
def test_onnx_matches_pytorch_at_two_lengths(tmp_path, head, one_thread):
    model = build(head, tiny_config())
    assert model.config.attention.backend == "auto"  # PyTorch below: blocked on the CPU
    for length in LENGTHS:
        path = tmp_path / f"model-{length}.onnx"
        done = export_onnx(model, path, length=length)
        assert done.inputs == ("input_ids", "attention_mask", "token_type_ids")
        assert done.max_difference is not None and done.max_difference < TOLERANCE
        batch = padded_batch(length, seed=length)
        with torch.no_grad():
            expected = model(**batch).logits
        logits = run_onnx(path, batch)
        assert logits.shape == expected.shape
        difference = float((logits - expected).abs().max())
        print(f"{head.__name__} length {length}: max |onnx - torch| = {difference:.1e}")
        assert difference < TOLERANCE, (head.__name__, length, difference)
        assert "reference attention" in done.describe()


def test_the_exports_own_check_catches_a_wrong_graph(tmp_path, monkeypatch):
    """The TorchScript exporter drops an in-place write that later ops read (the encoder's
    first representative used to be one); the export's check on its example batch (one row
    with every local block empty) must then refuse the graph."""
    from ernie_sparse.models import encoder

    def in_place_first_representative(plan, attention_mask):
        """structure.representative_mask as it was, with the write the exporter loses."""
        local = attention_mask[:, plan.num_global :]
        padded_len = plan.local_blocks * plan.tokens_per_block
        local = torch.nn.functional.pad(local, (0, padded_len - local.shape[1]), value=False)
        shape = (local.shape[0], plan.local_blocks, plan.tokens_per_block)
        mask = local.view(shape).any(dim=-1)
        mask[:, :1] = True
        return mask

    monkeypatch.setattr(encoder, "representative_mask", in_place_first_representative)
    model = build(MaskedLM, tiny_config())
    try:
        export_onnx(model, tmp_path / "wrong.onnx", length=29)
    except ValueError as error:
        assert "onnxruntime differs from PyTorch" in str(error)
    else:
        pytest.skip("this torch exports in-place writes faithfully")


def test_onnx_export_of_a_transformers_class(tmp_path):
    hf = pytest.importorskip("ernie_sparse.models.hf")
    torch.manual_seed(0)
    model = hf.ErnieSparseForMaskedLM(hf.ErnieSparseConfig(model=tiny_config())).eval()
    done = export_onnx(model, tmp_path / "mlm.onnx", length=32)
    batch = padded_batch(32, seed=3)
    with torch.no_grad():
        expected = model(**batch).logits
    assert done.max_difference < TOLERANCE
    assert float((run_onnx(done.path, batch) - expected).abs().max()) < TOLERANCE


def test_onnx_graph_has_a_fixed_length_and_a_dynamic_batch(tmp_path):
    import onnxruntime

    model = build(SequenceClassifier, tiny_config(type_vocab_size=0, hst={"enabled": False}))
    path = tmp_path / "model.onnx"
    done = export_onnx(model, path, length=40)
    assert done.inputs == ("input_ids", "attention_mask")  # no segments: no token_type_ids
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [tuple(i.shape) for i in session.get_inputs()] == [("batch", 40)] * 2
    one = {k: v[:1] for k, v in padded_batch(40, seed=1).items() if k != "token_type_ids"}
    with torch.no_grad():
        expected = model(**one).logits
    assert float((run_onnx(path, one) - expected).abs().max()) < TOLERANCE  # batch of 1
    shorter = {k: v[:, :30] for k, v in one.items()}
    with pytest.raises(Exception, match="invalid dimensions"):  # onnxruntime's own error
        run_onnx(path, shorter)


def test_onnx_export_refuses_what_it_cannot_serve(tmp_path):
    model = build(SequenceClassifier, tiny_config())
    with pytest.raises(ValueError, match=r"ONNX length must be an integer in \[2, max_positions"):
        export_onnx(model, tmp_path / "m.onnx", length=65)
    combiner_config = tiny_config(
        attention={"kind": "combiner", "pattern": "dense", "pattern_params": {}, "num_global": 0},
        hst={},
    )
    combiner = build(SequenceClassifier, combiner_config)
    with pytest.raises(ValueError, match="block-sparse attention only, not Combiner"):
        export_onnx(combiner, tmp_path / "m.onnx", length=32)
    with pytest.raises(ValueError, match="ONNX export handles SequenceClassifier, MaskedLM"):
        export_onnx(model.encoder, tmp_path / "m.onnx", length=32)
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_export_names_the_missing_extra(tmp_path):
    code = f"""
import sys
sys.modules["onnx"] = None  # as if it were not installed
from ernie_sparse.models import ModelConfig, SequenceClassifier
from ernie_sparse.models.onnx_export import export_onnx
model = SequenceClassifier(ModelConfig(vocab_size=20, hidden_size=8, num_heads=2,
                                       num_layers=1, mlp_size=8, max_positions=16), 2)
export_onnx(model, {str(tmp_path / "m.onnx")!r}, length=8)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert "ONNX export needs: pip install 'ernie-sparse[onnx]'" in done.stderr


# --- ernie-sparse export RUN_DIR --out DIR --onnx ---


@pytest.fixture(scope="module")
def listops_run(tmp_path_factory):
    """A 2-step ``ernie-sparse train`` ListOps run (HST + SAOR + BigBird globals)."""
    pytest.importorskip("transformers")
    import yaml

    from ernie_sparse.data.listops import generate_listops

    root = tmp_path_factory.mktemp("onnx-run")
    generate_listops(
        root / "data", num_train=24, num_val=8, num_test=8, seed=1, min_len=10, max_len=60
    )
    values = {
        "model": {
            "preset": "ernie-sparse",
            "vocab_size": 16,
            "hidden_size": 16,
            "num_heads": 2,
            "num_layers": 2,
            "mlp_size": 32,
            "max_positions": 64,
            "attention": {"block_size": 8, "num_global": 8},
        },
        "train": {
            "task": "listops",
            "data": str(root / "data"),
            "max_length": 64,
            "batch_size": 8,
            "max_steps": 2,
            "eval_every": 2,
            "eval_max_batches": 1,
        },
    }
    (root / "run.yaml").write_text(yaml.safe_dump(values))
    run = root / "run"
    assert main(["train", "--config", str(root / "run.yaml"), "--out", str(run), "--quiet"]) == 0
    return run


def test_export_cli_writes_a_checked_onnx_graph(listops_run, tmp_path, capsys):
    from ernie_sparse.data.collate import pad_collate
    from ernie_sparse.files import load_safetensors
    from ernie_sparse.training.config import load_run_config
    from ernie_sparse.training.tasks import load_split

    out = tmp_path / "hf"
    argv = ["export", str(listops_run), "--out", str(out), "--onnx", "--onnx-length", "48"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "onnx: model.onnx, inputs input_ids, attention_mask [batch, 48]" in printed
    assert "max |onnx - torch| = " in printed
    assert (out / "config.json").is_file()  # the Hugging Face folder as without --onnx
    run = load_run_config(listops_run / "config.yaml")
    native = SequenceClassifier(run.model, 10).eval()
    native.load_state_dict(load_safetensors(listops_run / "best.safetensors"))
    examples = [load_split(run.train, "val")[i] for i in range(5)]
    examples = [e for e in examples if len(e["input_ids"]) <= 48]
    batch = pad_collate(examples)
    width = batch["input_ids"].shape[1]
    inputs = {
        key: torch.nn.functional.pad(batch[key], (0, 48 - width))
        for key in ("input_ids", "attention_mask")
    }
    with torch.no_grad():
        expected = native(**inputs).logits
    difference = float((run_onnx(out / "model.onnx", inputs) - expected).abs().max())
    assert difference < TOLERANCE

    default = tmp_path / "default"
    assert main(["export", str(listops_run), "--out", str(default), "--onnx"]) == 0
    assert "[batch, 64]" in capsys.readouterr().out  # the run's train.max_length
    too_long = ["--out", str(tmp_path / "x"), "--onnx", "--onnx-length", "65"]
    assert main(["export", str(listops_run), *too_long]) == 2
    assert "max_positions=64" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything was written
    assert main(["export", str(listops_run), "--out", str(tmp_path / "y"), "--onnx-length", "8"])
    assert "--onnx-length needs --onnx" in capsys.readouterr().err
