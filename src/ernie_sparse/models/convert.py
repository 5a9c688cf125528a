"""``ernie-sparse convert``: warm-start a sparse model from a BERT / RoBERTa checkpoint.

The Longformer recipe (Beltagy et al. 2020; ERNIE-Sparse section 4.2, A.1.2):
copy every weight, extend the position table by repeating the learned rows,
pick a sparse pattern, initialize HST's hierarchical attention from each layer's
sparse attention (or freshly), and write a Hugging Face directory that
``transformers.AutoModel.from_pretrained`` loads after ``import ernie_sparse``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..cli_args import merge_nested
from .config import ModelConfig, parse_overrides
from .encoder import Encoder
from .presets import PRESETS, preset, preset_fields
from .pretrained import (
    Checkpoint,
    copy_attention_to_hierarchical,
    load_into,
    read_checkpoint,
    read_config,
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", type=Path, required=True, help="checkpoint dir")
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    parser.add_argument(
        "--max-positions", type=int, default=4096, help="longest input (learned rows repeated)"
    )
    parser.add_argument(
        "--pattern", default="ernie-sparse", help=f"a model preset: {', '.join(PRESETS)}"
    )
    parser.add_argument("--block-size", type=int, default=64, help="attention block, in tokens")
    parser.add_argument("--no-hst", action="store_true", help="turn HST off")
    parser.add_argument(
        "--hst-init",
        choices=["copy", "fresh"],
        default="copy",
        help="HST attention from each layer's sparse attention, or random",
    )
    parser.add_argument("--seed", type=int, default=0, help="for freshly initialized weights")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")
    parser.add_argument("overrides", nargs="*", help="ModelConfig key=value, e.g. dropout=0.0")
    parser.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    overrides = pattern_overrides(
        args.pattern, block_size=args.block_size, num_heads=_num_heads(args.source)
    )
    overrides["max_positions"] = args.max_positions
    if args.no_hst:
        overrides["hst"] = {**overrides.get("hst", {}), "enabled": False}
    overrides = merge_nested(
        overrides, parse_overrides(args.overrides)
    )  # hst.pooling=max keeps hst
    _check_out(args.out, force=args.force)
    for line in convert(
        args.source, args.out, overrides=overrides, hst_init=args.hst_init, seed=args.seed
    ):
        print(line)
    return 0


def convert(
    source: str | Path,
    out: str | Path,
    *,
    overrides: dict[str, Any],
    hst_init: str = "copy",
    seed: int = 0,
) -> list[str]:
    """Write the converted model to ``out``; returns what was done, one line each."""
    try:
        from .hf import ErnieSparseConfig, ErnieSparseForMaskedLM, ErnieSparseModel
    except ImportError as error:
        raise ValueError(
            f"convert needs transformers: pip install 'ernie-sparse[hf]' ({error})"
        ) from error

    if hst_init not in ("copy", "fresh"):
        raise ValueError(f"hst_init must be copy or fresh, got {hst_init!r}")
    source, out = Path(source), Path(out)
    checkpoint = read_checkpoint(source, **overrides)
    model_class = ErnieSparseForMaskedLM if checkpoint.mlm_head is not None else ErnieSparseModel
    # BERT's pooler lives in the base model (as in BertModel; BertForMaskedLM has none).
    use_pooler = checkpoint.pooler is not None and model_class is ErnieSparseModel
    config = ErnieSparseConfig(
        model=checkpoint.config, pad_token_id=_pad_token_id(source), use_pooler=use_pooler
    )
    with torch.random.fork_rng(devices=[]):  # weights the checkpoint lacks, reproducibly
        torch.manual_seed(seed)
        model = model_class(config)
    state = _prefixed(checkpoint.encoder, "encoder.")
    native = model
    if checkpoint.mlm_head is not None:
        native = model.ernie_sparse
        state.update(checkpoint.mlm_head)
    if use_pooler:
        state.update(_prefixed(checkpoint.pooler, "pooler."))
    missing = load_into(native, state)
    copied = []
    if hst_init == "copy":
        copied = copy_attention_to_hierarchical(native.encoder, missing=missing)
    fresh = [key for key in missing if key not in copied]
    model.save_pretrained(out)
    report = describe(checkpoint, native.encoder, copied=copied, fresh=fresh)
    report.append(copy_tokenizer(source, out, max_positions=checkpoint.config.max_positions))
    report.append(f"wrote {out} ({type(model).__name__})")
    return report


def pattern_overrides(name: str, *, block_size: int, num_heads: int) -> dict[str, Any]:
    """The fields a preset sets (pattern, global tokens, HST, SAOR, attention kind ...),
    resolved at this block size; the checkpoint decides everything else."""
    if name not in PRESETS:
        raise ValueError(f"unknown pattern preset {name!r}; choose one of {', '.join(PRESETS)}")
    # Sizes are placeholders: only the preset's own fields are read back.
    sizes = {"vocab_size": 1, "hidden_size": num_heads, "num_heads": num_heads}
    given = {"attention": {"block_size": block_size}}
    values = preset(name, **given, **sizes).to_dict()
    return preset_fields(name, values, given=given)


def describe(
    checkpoint: Checkpoint, encoder: Encoder, *, copied: list[str], fresh: list[str]
) -> list[str]:
    config: ModelConfig = checkpoint.config
    lines = [
        f"from: {checkpoint.source}, {config.num_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_heads} heads, vocab {config.vocab_size}",
        f"positions: {checkpoint.old_max_positions} -> {config.max_positions}"
        + _position_note(checkpoint),
        _attention_line(config),
    ]
    lines.append(_hst_line(config, encoder, copied=copied, fresh=fresh))
    lines.append(
        f"MLM head: {'copied' if checkpoint.mlm_head is not None else 'none in checkpoint'}"
    )
    lines.append(_pooler_line(checkpoint))
    if fresh:
        lines.append(f"freshly initialized: {', '.join(fresh)}")
    if checkpoint.unused:
        lines.append(f"not used from the checkpoint: {', '.join(checkpoint.unused)}")
    return lines


def _pooler_line(checkpoint: Checkpoint) -> str:
    if checkpoint.pooler is None:
        return "pooler: none in checkpoint"
    if checkpoint.mlm_head is not None:
        return "pooler: not used (the MaskedLM model has none; pooler.dense.* left out)"
    return "pooler: copied (dense + tanh on the pooled state, use_pooler)"


def _attention_line(config: ModelConfig) -> str:
    attention = config.attention
    if attention.kind != "sparse":
        return f"attention: {attention.kind} ({attention.combiner_variant}), causal={config.causal}"
    return (
        f"pattern: {attention.pattern}{_params(attention.pattern_params)}, block "
        f"{attention.block_size}, {attention.num_global} global tokens"
    )


def _hst_line(config: ModelConfig, encoder: Encoder, *, copied: list[str], fresh: list[str]) -> str:
    if not config.hst.enabled:
        return "HST: off"
    if config.hst.shared_weights:
        return "HST: on, hierarchical attention shares each layer's sparse attention"
    # Without pooling over the final representatives (MaskedLM) the last layer has none.
    built = sum(layer.hierarchical is not None for layer in encoder.layers)
    copied_layers, fresh_layers = _hierarchical_layers(copied), _hierarchical_layers(fresh)
    counts = (
        (len(copied_layers), "copied from the sparse attention"),
        (len(fresh_layers), "fresh"),
        (built - len(copied_layers) - len(fresh_layers), "from the checkpoint"),
    )
    parts = ", ".join(f"{count} {how}" for count, how in counts if count)
    return f"HST: on, hierarchical attention in {built} of {config.num_layers} layers: {parts}"


def _hierarchical_layers(keys: list[str]) -> set[str]:
    """Layer indices named in ``encoder.layers.<i>.hierarchical.*`` keys."""
    return {key.split(".")[2] for key in keys if ".hierarchical." in key}


def _position_note(checkpoint: Checkpoint) -> str:
    old, new = checkpoint.old_max_positions, checkpoint.config.max_positions
    offset = checkpoint.config.position_offset
    kept = f", first {offset} rows kept" if offset else ""
    if new > old:
        return f" (learned rows repeated{kept})"
    if new < old:
        return f" (rows past {new} dropped{kept})"
    return ""


def copy_tokenizer(source: Path, out: Path, *, max_positions: int) -> str:
    """Copy the tokenizer files; its model_max_length follows the new position count."""
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copyfile(source / name, out / name)
    if not copied:
        return "tokenizer: none found in the checkpoint"
    settings_path = out / "tokenizer_config.json"
    note = ""
    if settings_path.is_file():
        settings = json.loads(settings_path.read_text())
        old = settings.get("model_max_length")
        settings["model_max_length"] = max_positions
        settings_path.write_text(json.dumps(settings, indent=2) + "\n")
        note = f" (model_max_length {old} -> {max_positions})"
    return f"tokenizer: copied {', '.join(copied)}{note}"


def _params(params: dict[str, Any]) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in params.items())})" if params else ""


def _num_heads(source: Path) -> int:
    """Head count, for presets that split heads (BlockBERT)."""
    config = read_config(source)
    if config.get("model_type") == "ernie_sparse":
        return int(config.get("model", {}).get("num_heads", 1))
    return int(config.get("num_attention_heads", 1))


def _pad_token_id(source: Path) -> int | None:
    return read_config(source).get("pad_token_id")


def _check_out(out: Path, *, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty (use --force to write into it)")


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}
