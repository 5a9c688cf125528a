"""Warm start from BERT / RoBERTa: read a Hugging Face checkpoint into our modules.

``load_encoder(directory, **overrides)`` reads a BERT or RoBERTa checkpoint
directory (config.json + model.safetensors or pytorch_model.bin, sharded or not)
or a directory written by ``ernie-sparse convert`` / ``save_pretrained``, and
returns our ``ModelConfig`` and a state dict for ``Encoder``. No transformers
import is needed. Weights our encoder has and the checkpoint lacks (HST's
hierarchical attention, the representative embedding) are simply absent from the
state dict, so ``encoder.load_state_dict(sd, strict=False)`` reports them.

``load_checkpoint_into(head, checkpoint)`` is the one way a checkpoint goes into a
task head (``load_pretrained_head`` here, ``training.warm_start`` for runs, which
also reads a training run's folder and hands it over as ``checkpoint_from_state``): the
encoder, a masked LM's head, and the HST policy (hierarchical attention the
checkpoint lacks copied from its layer's sparse attention, as ``convert`` does).
``read_checkpoint_config`` reads a checkpoint's config without its weights.

Longer inputs than the checkpoint was trained on (Longformer, Beltagy et al.
2020, section 5; ERNIE-Sparse section 4.2): ``max_positions=4096`` extends the
position table by repeating the learned rows; RoBERTa's first ``padding_idx + 1``
rows (never used as positions) are kept in front.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import load_json, load_safetensors
from ..safety import OutsideFolderError, inside, torch_load_weights_only
from .config import LEGACY_MODEL_KEYS, ModelConfig, refuse_legacy_keys
from .encoder import Encoder
from .heads import MaskedLM

HF_MODEL_TYPES = ("bert", "roberta")
ERNIE_SPARSE_MODEL_TYPE = "ernie_sparse"
# Hugging Face hidden_act -> our activation.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
HF_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "intermediate_size",
    "max_position_embeddings",
)
# Fields fixed by the checkpoint's weights and training: an override would load wrongly.
FIXED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_heads",
    "num_layers",
    "mlp_size",
    "type_vocab_size",
    "position_offset",
    "layer_norm",
    "layer_norm_eps",
    "activation",
)
# Buffers, not weights: never reported.
POSITION_IDS = re.compile(r"(^|\.)position_ids$")
# Weights with no counterpart in our encoder (BERT's pooler and NSP head): reported by
# convert, not warned about by load_encoder.
EXPECTED_UNUSED = re.compile(r"^pooler\.|^cls\.seq_relationship\.")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Hugging Face layer sublayer -> ours (each with .weight and .bias).
_LAYER_PARTS = {
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention.norm",
    "intermediate.dense": "feed_forward.intermediate",
    "output.dense": "feed_forward.output",
    "output.LayerNorm": "feed_forward.norm",
}
_EMBEDDING_PARTS = {
    "embeddings.word_embeddings.weight": "embeddings.word.weight",
    "embeddings.position_embeddings.weight": "embeddings.position.weight",
    "embeddings.LayerNorm.weight": "embeddings.norm.weight",
    "embeddings.LayerNorm.bias": "embeddings.norm.bias",
}
# MLM head (BERT cls.predictions, RoBERTa lm_head) -> MaskedLM's own parameters.
_MLM_PARTS = {
    "bert": {
        "cls.predictions.transform.dense.weight": "transform.weight",
        "cls.predictions.transform.dense.bias": "transform.bias",
        "cls.predictions.transform.LayerNorm.weight": "norm.weight",
        "cls.predictions.transform.LayerNorm.bias": "norm.bias",
        "cls.predictions.bias": "bias",
    },
    "roberta": {
        "lm_head.dense.weight": "transform.weight",
        "lm_head.dense.bias": "transform.bias",
        "lm_head.layer_norm.weight": "norm.weight",
        "lm_head.layer_norm.bias": "norm.bias",
        "lm_head.bias": "bias",
    },
}
# Tied to the word embeddings (ours always is) or duplicates of ``bias`` above.
_MLM_TIED = {
    "bert": ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"),
    "roberta": ("lm_head.decoder.weight", "lm_head.decoder.bias"),
}


@dataclass
class Checkpoint:
    """A checkpoint in our terms: encoder weights, the MLM head's if present, leftovers."""

    config: ModelConfig
    encoder: dict[str, torch.Tensor]  # keys as in Encoder.state_dict()
    mlm_head: dict[str, torch.Tensor] | None  # MaskedLM's transform.*, norm.*, bias
    source: str  # "bert", "roberta" or "ernie_sparse"
    unused: list[str] = field(default_factory=list)  # checkpoint entries that went nowhere
    old_max_positions: int = 0  # before any max_positions override
    pooler: dict[str, torch.Tensor] | None = None  # BERT's pooler: dense.weight, dense.bias


def load_encoder(
    directory: str | Path, **model_overrides: Any
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A BERT / RoBERTa / ernie-sparse checkpoint -> (our config, an ``Encoder`` state dict).

    ``model_overrides`` are ModelConfig fields (``attention`` / ``hst`` / ``saor`` as
    dicts merge): the pattern, block size, HST, dropout, ``max_positions`` (position rows are
    repeated to extend, or cut to shrink). Architecture fields are refused.
    """
    checkpoint = read_checkpoint(directory, **model_overrides)
    _warn_unused(directory, checkpoint.unused)
    return checkpoint.config, checkpoint.encoder


def load_pretrained_head(
    directory: str | Path,
    head_cls: type[nn.Module],
    *,
    model_overrides: dict[str, Any] | None = None,
    hst_init: str = "copy",
    **head_kwargs: Any,
) -> tuple[nn.Module, list[str]]:
    """A task head (SequenceClassifier, MaskedLM, ...) with a pretrained encoder.

    Returns the head and the names of its parameters the checkpoint did not
    provide (freshly initialized: the task layers; HST's sublayers unless
    ``hst_init="copy"`` copied them from each layer's sparse attention).
    """
    checkpoint = read_checkpoint(directory, **(model_overrides or {}))
    _warn_unused(directory, checkpoint.unused)
    head = head_cls(checkpoint.config, **head_kwargs)
    loaded = load_checkpoint_into(head, checkpoint, hst_init=hst_init)
    _warn_unused(directory, loaded.unused, what=f"{head_cls.__name__} has no place for")
    return head, loaded.fresh


@dataclass
class Loaded:
    """What :func:`load_checkpoint_into` did to a head."""

    loaded: list[str]  # parameters set from the checkpoint
    copied: list[str]  # hierarchical attention copied from its layer's sparse attention
    fresh: list[str]  # parameters left as initialized (the task layers, ...)
    unused: list[str]  # checkpoint tensors the head has no place for


HST_INITS = ("copy", "fresh")


def load_checkpoint_into(
    head: nn.Module, checkpoint: Checkpoint, *, hst_init: str = "copy"
) -> Loaded:
    """Load ``checkpoint`` into a task ``head`` (anything with an ``.encoder``): the
    encoder's weights, a masked LM's head when both have one, then the one HST policy:
    with ``hst_init="copy"`` every hierarchical attention the checkpoint lacks starts as
    a copy of its layer's pretrained sparse attention (as ``convert`` does); ``"fresh"``
    keeps its initialization. Checkpoint tensors the head has no place for (say, a last
    layer's hierarchical attention, which a head reading every token lacks) are left out
    and returned in ``unused``.
    """
    if hst_init not in HST_INITS:
        raise ValueError(f"hst_init must be copy or fresh, got {hst_init!r}")
    state = {f"encoder.{key}": value for key, value in checkpoint.encoder.items()}
    if isinstance(head, MaskedLM) and checkpoint.mlm_head is not None:
        state.update(checkpoint.mlm_head)
    result = head.load_state_dict(state, strict=False)
    missing, unused = list(result.missing_keys), list(result.unexpected_keys)
    copied = []
    if hst_init == "copy":
        copied = copy_attention_to_hierarchical(head.encoder, missing=missing)
    skipped, set_now = set(unused), set(copied)
    loaded = [key for key in state if key not in skipped]
    fresh = [key for key in missing if key not in set_now]
    return Loaded(loaded=loaded, copied=copied, fresh=fresh, unused=unused)


def load_into(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """``load_state_dict(strict=False)`` that refuses entries the module lacks; returns
    the module's parameters left as they were."""
    result = module.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(
            f"{type(module).__name__} has no parameter(s) {', '.join(result.unexpected_keys)}"
        )
    return list(result.missing_keys)


def copy_attention_to_hierarchical(encoder: Encoder, *, missing: Collection[str]) -> list[str]:
    """Initialize HST's hierarchical attention from the same layer's sparse attention,
    in the layers whose hierarchical weights are in ``missing`` (``encoder.``-prefixed
    names, as ``load_state_dict`` reports them): trained ones are left alone.

    Returns the parameter names set; none without HST or with shared weights (the
    sparse attention already serves both).
    """
    copied = []
    for index, layer in enumerate(encoder.layers):
        key = f"encoder.layers.{index}.hierarchical.query_key_value.weight"
        if layer.hierarchical is None or key not in missing:
            continue
        layer.hierarchical.load_state_dict(layer.attention.state_dict())
        names = layer.hierarchical.state_dict()
        copied += [f"encoder.layers.{index}.hierarchical.{name}" for name in names]
    return copied


def read_checkpoint(directory: str | Path, **model_overrides: Any) -> Checkpoint:
    """The whole checkpoint in our terms, overrides applied (see ``load_encoder``)."""
    directory = Path(directory)
    hf_config = read_config(directory)
    model_type = _model_type(hf_config, directory)
    if model_type == ERNIE_SPARSE_MODEL_TYPE:
        checkpoint = _from_ernie_sparse(hf_config, read_weights(directory), directory)
    else:
        config = bert_like_config(hf_config, source=model_type)  # refuse a bad config first
        checkpoint = _from_bert_like(config, model_type, read_weights(directory), directory)
    _check_shapes(checkpoint, directory)
    return apply_overrides(checkpoint, model_overrides)


def read_checkpoint_config(directory: str | Path, **model_overrides: Any) -> ModelConfig:
    """The checkpoint's model config with ``model_overrides`` applied, as
    ``read_checkpoint(directory, **model_overrides).config``, from its config file
    alone (config.json, or a run's config.yaml): the weights are not read."""
    directory = Path(directory)
    hf_config = read_config(directory)
    model_type = _model_type(hf_config, directory)
    if model_type == ERNIE_SPARSE_MODEL_TYPE:
        config = _ernie_sparse_config(hf_config, directory)
    else:
        config = bert_like_config(hf_config, source=model_type)
    return override_config(config, model_overrides)


def checkpoint_from_state(
    model_section: dict[str, Any],
    weights: dict[str, torch.Tensor],
    *,
    is_mlm: bool,
    source: Path,
    **model_overrides: Any,
) -> Checkpoint:
    """A checkpoint from our own model config (``ModelConfig`` values) and state dict, as
    a training run holds them (``training.warm_start`` reads the run folder)."""
    hf_config = {
        "model": model_section,
        "architectures": ["ErnieSparseForMaskedLM"] if is_mlm else [],
    }
    checkpoint = _from_ernie_sparse(hf_config, weights, source)
    _check_shapes(checkpoint, source)
    return apply_overrides(checkpoint, model_overrides)


def _model_type(hf_config: dict[str, Any], directory: Path) -> str:
    model_type = hf_config.get("model_type")
    if model_type not in (*HF_MODEL_TYPES, ERNIE_SPARSE_MODEL_TYPE):
        raise ValueError(
            f"{directory}: model_type {model_type!r} is not supported; "
            f"expected one of {', '.join((*HF_MODEL_TYPES, ERNIE_SPARSE_MODEL_TYPE))}"
        )
    return model_type


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such checkpoint directory")
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory}: no config.json (not a Hugging Face checkpoint; a training run's "
            "folder is exported with `ernie-sparse export RUN --out DIR`, or warm-starts a "
            "run directly through train.init_from)"
        )
    return load_json(path)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors or pytorch_model.bin, or their sharded ``.index.json`` form."""
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return _load_weight_file(directory / name)
        index = directory / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(load_json(index)["weight_map"].values()))
            paths = [_shard_path(index, directory, shard) for shard in shards]  # all, first
            weights: dict[str, torch.Tensor] = {}
            for path in paths:
                weights.update(_load_weight_file(path))
            return weights
    raise FileNotFoundError(
        f"{directory}: no weights ({' or '.join(WEIGHT_FILES)}, or a sharded index of them)"
    )


def _shard_path(index: Path, directory: Path, shard: object) -> Path:
    """A shard named by the index, refused unless it is a file name inside ``directory``."""
    if not isinstance(shard, str):
        raise ValueError(f"{index}: shard name {shard!r} is not a string")
    try:
        return inside(directory, shard)
    except OutsideFolderError as error:
        raise ValueError(f"{index}: shard {error}") from None


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    return torch_load_weights_only(
        path, advice="it is unsafe or not a plain state dict (use its safetensors weights)"
    )


def extend_positions(weight: torch.Tensor, *, offset: int, max_positions: int) -> torch.Tensor:
    """Position table [offset + n, d] -> [offset + max_positions, d]: the first ``offset``
    rows kept, then the n learned rows repeated (or cut) to ``max_positions``."""
    reserved, learned = weight[:offset], weight[offset:]
    copies = math.ceil(max_positions / learned.shape[0])
    rows = learned.repeat(copies, 1)[:max_positions]  # [max_positions, d]
    return torch.cat([reserved, rows]).contiguous()


def override_config(config: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """A checkpoint's config with ModelConfig ``overrides`` (``attention`` / ``hst`` /
    ``saor`` dicts merge); fields fixed by the weights (``FIXED_FIELDS``) are refused."""
    refuse_legacy_keys(overrides, LEGACY_MODEL_KEYS, section="")
    fixed = sorted(set(overrides) & set(FIXED_FIELDS))
    if fixed:
        raise ValueError(
            f"cannot override {', '.join(fixed)} of a pretrained checkpoint "
            "(they are fixed by its weights)"
        )
    values = config.to_dict()
    for key, value in overrides.items():
        if key not in values:
            raise ValueError(f"unknown config key {key!r}")
        if key in ("attention", "hst", "saor") and isinstance(value, dict):
            value = {**values[key], **value}
        values[key] = value
    return ModelConfig.from_dict(values)


def apply_overrides(checkpoint: Checkpoint, overrides: dict[str, Any]) -> Checkpoint:
    """ModelConfig overrides; a new ``max_positions`` resizes the position table."""
    config = override_config(checkpoint.config, overrides)
    encoder = dict(checkpoint.encoder)
    if config.max_positions != checkpoint.config.max_positions:
        encoder["embeddings.position.weight"] = extend_positions(
            encoder["embeddings.position.weight"],
            offset=config.position_offset,
            max_positions=config.max_positions,
        )
    return Checkpoint(
        config,
        encoder,
        checkpoint.mlm_head,
        checkpoint.source,
        checkpoint.unused,
        old_max_positions=checkpoint.config.max_positions,
        pooler=checkpoint.pooler,
    )


def bert_like_config(hf_config: dict[str, Any], *, source: str) -> ModelConfig:
    """A BERT / RoBERTa config.json -> our ModelConfig (dense pattern, no HST)."""
    refused = {
        "position_embedding_type": ("absolute", None),
        "is_decoder": (False, None),
        "add_cross_attention": (False, None),
    }
    for key, allowed in refused.items():
        if hf_config.get(key) not in allowed:
            raise ValueError(f"{key}={hf_config[key]!r} is not supported (only {allowed[0]!r})")
    act = hf_config.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"hidden_act {act!r} is not supported; known: {', '.join(HF_ACTIVATIONS)}")
    required = (*HF_REQUIRED, "pad_token_id") if source == "roberta" else HF_REQUIRED
    absent = [key for key in required if key not in hf_config]
    if absent:
        raise ValueError(f"config.json lacks {', '.join(absent)}")
    # RoBERTa numbers positions from padding_idx + 1; the rows below are never used.
    offset = hf_config["pad_token_id"] + 1 if source == "roberta" else 0
    return ModelConfig(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hf_config["hidden_size"],
        num_heads=hf_config["num_attention_heads"],
        num_layers=hf_config["num_hidden_layers"],
        mlp_size=hf_config["intermediate_size"],
        dropout=float(hf_config.get("hidden_dropout_prob", 0.1)),
        max_positions=hf_config["max_position_embeddings"] - offset,
        type_vocab_size=hf_config.get("type_vocab_size", 2),
        position_offset=offset,
        layer_norm="post",
        layer_norm_eps=float(hf_config.get("layer_norm_eps", 1e-12)),
        activation=HF_ACTIVATIONS[act],
        initializer_range=float(hf_config.get("initializer_range", 0.02)),
        attention={
            "pattern": "dense",
            "dropout": float(hf_config.get("attention_probs_dropout_prob", 0.1)),
        },
        hst={"enabled": False, "pooling": "cls"},
    )


def _from_bert_like(
    config: ModelConfig, source: str, weights: dict[str, torch.Tensor], directory: Path
) -> Checkpoint:
    weights = {_modern_name(key, source): value for key, value in weights.items()}
    remaining = dict(weights)

    def take(name: str) -> torch.Tensor:
        if name not in remaining:
            raise ValueError(f"{directory}: the {source} checkpoint has no weight {name!r}")
        return remaining.pop(name)

    encoder = {ours: take(theirs) for theirs, ours in _EMBEDDING_PARTS.items()}
    if config.type_vocab_size:
        encoder["embeddings.token_type.weight"] = take("embeddings.token_type_embeddings.weight")
    for index in range(config.num_layers):
        encoder.update(_layer_weights(index, take))
    mlm_head = None
    # Our MaskedLM's transform uses gelu; BERT's uses hidden_act (RoBERTa's always gelu).
    if source == "roberta" or config.activation == "gelu":
        mlm_head = _mlm_head(source, remaining, encoder["embeddings.word.weight"], directory)
    pooler = _pooler(remaining)
    unused = sorted(key for key in remaining if not POSITION_IDS.search(key))
    return Checkpoint(config, encoder, mlm_head, source, unused, pooler=pooler)


def _pooler(remaining: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """BERT's pooler (``pooler.dense.*``, popped from ``remaining``), or None."""
    names = ("pooler.dense.weight", "pooler.dense.bias")
    if not all(name in remaining for name in names):
        return None
    return {name.removeprefix("pooler."): remaining.pop(name) for name in names}


def _modern_name(key: str, source: str) -> str:
    """Drop the ``bert.`` / ``roberta.`` prefix of task checkpoints; old LayerNorm names."""
    key = key.removeprefix(f"{source}.")
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias"
    )


def _layer_weights(index: int, take: Any) -> dict[str, torch.Tensor]:
    theirs, ours = f"encoder.layer.{index}.", f"layers.{index}."
    state = {}
    for kind in ("weight", "bias"):
        # Our fused projection's outputs are [q heads | k heads | v heads].
        parts = [
            take(f"{theirs}attention.self.{name}.{kind}") for name in ("query", "key", "value")
        ]
        state[f"{ours}attention.query_key_value.{kind}"] = torch.cat(parts)
        for their_part, our_part in _LAYER_PARTS.items():
            state[f"{ours}{our_part}.{kind}"] = take(f"{theirs}{their_part}.{kind}")
    return state


def _mlm_head(
    source: str,
    remaining: dict[str, torch.Tensor],
    word_embeddings: torch.Tensor,
    directory: Path,
) -> dict[str, torch.Tensor] | None:
    """The MLM head's weights (popped from ``remaining``), or None when there is none."""
    parts = _MLM_PARTS[source]
    if not any(key in remaining for key in parts):
        return None
    decoder_weight, decoder_bias = _MLM_TIED[source]
    bias = next(theirs for theirs, ours in parts.items() if ours == "bias")
    if bias not in remaining and decoder_bias in remaining:
        remaining[bias] = remaining[decoder_bias]  # some checkpoints keep only the decoder's
    missing = [key for key in parts if key not in remaining]
    if missing:
        raise ValueError(f"{directory}: the MLM head lacks {', '.join(missing)}")
    decoder = remaining.pop(decoder_weight, None)
    if decoder is not None and not torch.equal(decoder, word_embeddings):
        raise ValueError(
            f"{directory}: the MLM decoder is not tied to the word embeddings; "
            "ernie-sparse's MaskedLM always ties them"
        )
    remaining.pop(decoder_bias, None)
    return {ours: remaining.pop(theirs) for theirs, ours in parts.items()}


def _ernie_sparse_config(hf_config: dict[str, Any], directory: Path) -> ModelConfig:
    if not isinstance(hf_config.get("model"), dict):
        raise ValueError(f"{directory}: config.json has no 'model' section (ModelConfig)")
    return ModelConfig.from_dict(hf_config["model"])


def _from_ernie_sparse(
    hf_config: dict[str, Any], weights: dict[str, torch.Tensor], directory: Path
) -> Checkpoint:
    """A directory saved by ErnieSparseModel / ErnieSparseFor*.save_pretrained."""
    config = _ernie_sparse_config(hf_config, directory)
    # Base model: encoder.*; task models: ernie_sparse.encoder.*, ernie_sparse.<head>.*
    weights = {key.removeprefix("ernie_sparse."): value for key, value in weights.items()}
    encoder = {
        k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")
    }
    if not encoder:
        raise ValueError(f"{directory}: no encoder weights (encoder.* or ernie_sparse.encoder.*)")
    others = {k: v for k, v in weights.items() if not k.startswith("encoder.")}
    mlm_names = {"transform.weight", "transform.bias", "norm.weight", "norm.bias", "bias"}
    is_mlm = "ErnieSparseForMaskedLM" in (hf_config.get("architectures") or [])
    mlm_head = {k: others.pop(k) for k in mlm_names if k in others} if is_mlm else None
    pooler = _pooler(others)
    return Checkpoint(
        config, encoder, mlm_head or None, "ernie_sparse", sorted(others), pooler=pooler
    )


def _check_shapes(checkpoint: Checkpoint, directory: Path) -> None:
    """Every encoder weight must exist in our Encoder with the same shape."""
    with torch.device("meta"):
        expected = Encoder(checkpoint.config).state_dict()
    for key, value in checkpoint.encoder.items():
        if key not in expected:
            raise ValueError(f"{directory}: weight {key!r} has no place in our encoder")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{directory}: weight {key!r} has shape {tuple(value.shape)}, "
                f"config.json implies {tuple(expected[key].shape)}"
            )


def _warn_unused(
    directory: str | Path, unused: list[str], *, what: str = "checkpoint entries not loaded"
) -> None:
    unused = [key for key in unused if not EXPECTED_UNUSED.search(key)]
    if unused:
        warnings.warn(f"{directory}: {what}: {', '.join(unused)}", stacklevel=3)
