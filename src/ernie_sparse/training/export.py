"""``ernie-sparse export RUN_DIR --out DIR``: a training run as a Hugging Face folder.

The run's task model maps to its transformers class, which ``AutoModelFor...``
loads after ``import ernie_sparse`` with the run's outputs:

    SequenceClassifier -> ErnieSparseForSequenceClassification (id2label)
    MaskedLM           -> ErnieSparseForMaskedLM
    SpanQA             -> ErnieSparseForQuestionAnswering
    MultipleChoice     -> ErnieSparseForMultipleChoice (WikiHop's choice_mask is not an input)

config.json holds the run's whole ModelConfig (pattern, HST, SAOR, attention
backend ...). Class names come from ``--labels``, else from the run's data (its
validation split's label names), else ``LABEL_i``. The run's tokenizer files are
copied (a lone tokenizer.json gets a tokenizer_config.json for AutoTokenizer).
Two-tower matching (retrieval) and causal LM runs have no transformers class here
and are refused.

``--onnx`` also writes ``model.onnx`` (classification, MLM and span-QA runs): a graph
for inputs of exactly ``--onnx-length`` tokens (default: the run's train.max_length),
checked against PyTorch with onnxruntime; models.onnx_export says what it holds.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from ..data.qa import QAInfo
from ..data.tokenize import SPECIAL_NAMES, read_tokenizer_file
from ..files import load_safetensors
from ..models import MaskedLM, MultipleChoice, SequenceClassifier, SpanQA
from ..models.convert import _check_out, copy_tokenizer
from .config import RunConfig, load_run
from .run_dir import WEIGHTS, RunDir
from .tasks import get_task

# Native task model -> the name of its transformers class in models.hf.
HF_CLASSES = (
    (SequenceClassifier, "ErnieSparseForSequenceClassification"),
    (MaskedLM, "ErnieSparseForMaskedLM"),
    (SpanQA, "ErnieSparseForQuestionAnswering"),
    (MultipleChoice, "ErnieSparseForMultipleChoice"),
)
# tokenizer_config.json keys for the special tokens a tokenizer.json may hold.
SPECIAL_KEYS = {"pad": "pad_token", "cls": "cls_token", "sep": "sep_token", "mask": "mask_token"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (ernie-sparse train/pretrain)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    parser.add_argument(
        "--weights",
        choices=list(WEIGHTS),
        default="best",
        help="best: best.safetensors (best validation); final: model.safetensors",
    )
    parser.add_argument(
        "--labels", help="class names, comma-separated (default: the run's data, else LABEL_i)"
    )
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx (classification / MLM / span QA; pip install "
        "'ernie-sparse[onnx]')",
    )
    parser.add_argument(
        "--onnx-length",
        type=int,
        help="the ONNX graph's fixed input length (default: the run's train.max_length)",
    )
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    _check_out(args.out, force=args.force)
    labels = args.labels.split(",") if args.labels else None
    if args.onnx_length is not None and not args.onnx:
        raise ValueError("--onnx-length needs --onnx")
    lines = export_run(
        args.run_dir,
        args.out,
        weights=args.weights,
        labels=labels,
        onnx=args.onnx,
        onnx_length=args.onnx_length,
    )
    for line in lines:
        print(line)
    return 0


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    weights: str = "best",
    labels: list[str] | None = None,
    onnx: bool = False,
    onnx_length: int | None = None,
) -> list[str]:
    """Write the run's model to ``out`` as a Hugging Face folder and, with ``onnx``,
    ``model.onnx`` for inputs of ``onnx_length`` tokens (default: the run's
    train.max_length); returns what was done."""
    try:
        from ..models import hf
    except ImportError as error:
        raise ValueError(
            f"export needs transformers: pip install 'ernie-sparse[hf]' ({error})"
        ) from error

    run_dir, out = Path(run_dir), Path(out)
    run = load_run(run_dir)
    native, weights_path = load_run_model(run_dir, run, weights=weights)
    class_name = hf_class_name(native, task=run.train.task)
    if onnx:  # refuse before writing anything
        onnx_length = default_onnx_length(run) if onnx_length is None else onnx_length
        check_onnx(native, onnx_length)
    label_fields, label_note = _label_fields(native, run, labels)
    config = hf.ErnieSparseConfig(model=run.model, **label_fields)
    model = getattr(hf, class_name)(config)
    model.ernie_sparse.load_state_dict(native.state_dict())  # strict: the same module
    model.save_pretrained(out)
    return [
        f"from: {run_dir} (task {run.train.task}, {weights_path.name})",
        f"model: {class_name}, {run.model.num_layers} layers, "
        f"pattern {run.model.attention.pattern}, "
        f"HST {'on' if run.model.hst.enabled else 'off'}, SAOR alpha {run.model.saor.alpha:g}",
        *([label_note] if label_note else []),
        export_tokenizer(run, out),
        *([_write_onnx(native, out, onnx_length)] if onnx else []),
        f"wrote {out}",
    ]


def default_onnx_length(run: RunConfig) -> int:
    """The run's training length, within what the position table holds."""
    return min(run.train.max_length, run.model.max_positions)


def check_onnx(native: nn.Module, length: int) -> None:
    """The ONNX export can serve this model at this length, with its packages installed."""
    from ..models.onnx_export import check_length, native_model, require_onnx

    require_onnx()
    check_length(native_model(native), length)


def _write_onnx(native: nn.Module, out: Path, length: int) -> str:
    from ..models.onnx_export import export_onnx

    return export_onnx(native, out / "model.onnx", length=length).describe()


def load_run_model(run_dir: Path, run: RunConfig, *, weights: str) -> tuple[nn.Module, Path]:
    """The run's task model (as ``task.build`` makes it) with its ``weights`` loaded."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    path = RunDir(run_dir).weights_file(weights)  # a symlink out of the run is refused
    state = load_safetensors(path)
    classes = state.get("classifier.output.weight")
    info = QAInfo(
        task=run.train.task,
        vocab_size=run.model.vocab_size,
        num_labels=int(classes.shape[0]) if classes is not None else 2,
        max_length=run.train.max_length,
        global_prefix=run.model.attention.num_global,
    )
    native = get_task(run.train.task).build(run.model, info)
    try:
        native.load_state_dict(state)
    except RuntimeError as error:  # missing, unexpected or misshapen weights
        lines = [line.strip() for line in str(error).strip().splitlines()]
        detail = " ".join(lines[1:3]) or lines[0]
        raise ValueError(f"{path} does not fit the model of its config.yaml ({detail})") from None
    return native.eval(), path


def hf_class_name(native: nn.Module, *, task: str) -> str:
    for native_class, name in HF_CLASSES:
        if isinstance(native, native_class):
            return name
    raise ValueError(
        f"task {task!r} builds a {type(native).__name__}, which has no Hugging Face class "
        f"(export handles {', '.join(c.__name__ for c, _ in HF_CLASSES)})"
    )


def _label_fields(
    native: nn.Module, run: RunConfig, labels: list[str] | None
) -> tuple[dict[str, Any], str]:
    """num_labels / id2label / label2id for classifiers, and a line saying where from."""
    if not isinstance(native, SequenceClassifier):
        if labels:
            raise ValueError(f"--labels applies to classification runs, not {run.train.task}")
        return {}, ""
    count = native.classifier.output.out_features
    where = "--labels"
    if labels is None:
        labels, where = run_label_names(run)
    if labels is not None and len(labels) != count:
        raise ValueError(f"{len(labels)} label names for {count} classes ({where})")
    if labels is None:
        labels = [f"LABEL_{index}" for index in range(count)]
    id2label = dict(enumerate(labels))
    fields = {
        "num_labels": count,
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
    }
    return fields, f"labels: {', '.join(labels)} ({where})"


def run_label_names(run: RunConfig) -> tuple[list[str] | None, str]:
    """The label names of the run's validation split, or None and why not."""
    if not run.train.data or not Path(run.train.data).exists():
        return None, f"LABEL_i: the run's data {run.train.data or '(none)'} is not here"
    try:
        dataset = get_task(run.train.task).read(run.train, "val")
    except (OSError, ValueError) as error:
        return None, f"LABEL_i: the run's data could not be read ({error})"
    names = [str(name) for name in getattr(dataset, "label_names", ())]
    if not names:
        return None, "LABEL_i: the run's data names no labels"
    return names, f"from {run.train.data}"


def export_tokenizer(run: RunConfig, out: Path) -> str:
    """Copy the run's subword tokenizer; ``bytes`` and task vocabularies have none."""
    source = _tokenizer_file(run)
    if source is None:
        return "tokenizer: none (the run reads bytes or task token ids)"
    max_positions = run.model.max_positions
    if source.name == "tokenizer.json":
        line = copy_tokenizer(source.parent, out, max_positions=max_positions)
    else:
        shutil.copyfile(source, out / "tokenizer.json")
        line = f"tokenizer: copied {source} as tokenizer.json"
    if add_reader_template(out / "tokenizer.json"):
        line += ", added the readers' <s> ... </s> template"
    if not (out / "tokenizer_config.json").is_file():
        segments = run.model.type_vocab_size > 0
        write_tokenizer_config(
            out / "tokenizer.json", max_positions=max_positions, segments=segments
        )
        line += ", wrote tokenizer_config.json"
    return line


def add_reader_template(path: Path) -> bool:
    """Give a tokenizer.json without a post-processor (``pretrain``'s BPE) the special
    tokens our readers add, so Hugging Face tokenizers build the inputs the run trained
    on: ``<s> text </s>`` and, for pairs (question answering), ``<s> a </s> b </s>``.
    A tokenizer that has its own template (a converted checkpoint's) is left alone."""
    from tokenizers import processors

    tokenizer = read_tokenizer_file(path)
    cls, sep = _special_name(tokenizer, "cls"), _special_name(tokenizer, "sep")
    if tokenizer.post_processor is not None or cls is None or sep is None:
        return False
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    tokenizer.save(str(path))
    return True


def _special_name(tokenizer, role: str) -> str | None:
    """The vocabulary's name for special token ``role`` (RoBERTa's, else BERT's)."""
    return next((n for n in SPECIAL_NAMES[role] if tokenizer.token_to_id(n) is not None), None)


def _tokenizer_file(run: RunConfig) -> Path | None:
    train = run.train
    if train.tokenizer and train.tokenizer != "bytes":
        path = Path(train.tokenizer)
    elif train.init_from and not train.tokenizer:
        from .finetune_tasks import tokenizer_path

        path = Path(tokenizer_path(train))
    else:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run's tokenizer is not here (needed by export)")
    return path


def write_tokenizer_config(path: Path, *, max_positions: int, segments: bool) -> None:
    """A tokenizer_config.json beside ``path`` (tokenizer.json): the fast tokenizer class,
    its special tokens (RoBERTa's or BERT's names), the model's longest input and, for a
    model without segment embeddings (``segments`` False), no token_type_ids."""
    tokenizer = read_tokenizer_file(path)
    settings: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_positions,
    }
    if not segments:  # no token_type_ids for a model without segment embeddings
        settings["model_input_names"] = ["input_ids", "attention_mask"]
    for role, key in SPECIAL_KEYS.items():
        name = _special_name(tokenizer, role)
        if name is not None:
            settings[key] = name
    unknown = next((n for n in ("<unk>", "[UNK]") if tokenizer.token_to_id(n) is not None), None)
    if unknown is not None:
        settings["unk_token"] = unknown
    (path.parent / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
