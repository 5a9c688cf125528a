"""Typed model configuration: one dataclass per concern, one comment per field.

``ModelConfig`` holds the sizes and three parts that each check themselves:
``attention`` (pattern or Combiner, block size, global tokens, backend), ``hst`` and
``saor``; ModelConfig checks the rules across them (``model.attention.pattern=bigbird``
on the command line, as ``model.hst.pooling=max``).

``ModelConfig.from_dict`` and ``with_overrides`` refuse unknown keys and wrong
types by name, so a YAML preset or a ``key=value`` override cannot silently do
nothing. Saved configs of older versions, whose attention settings were flat keys
(``block_size``, ``attention: combiner`` ...), load through ``migrate_legacy_keys``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from ..attention.combiner import (
    COMBINER_VARIANTS,
    VARIANTS,
    OptionNames,
    ceil_sqrt,
    check_variant_options,
)
from ..attention.dispatch import BACKENDS
from ..patterns.registry import PATTERNS, full_patterns, pattern_constraints, pattern_parameters

POOLINGS = ("mean", "max", "cls")
HST_DISTRIBUTE = ("representative", "block")
HST_POSITIONS = ("none", "block")
HST_INITS = ("random", "sparse")
SAOR_MODES = ("roll", "dropout")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
LAYER_NORMS = ("post", "pre")
ATTENTION_KINDS = ("sparse", "combiner")
COMBINER_FIELDS = OptionNames(
    "attention.combiner_variant",
    "attention.combiner_span",
    "attention.combiner_clusters",
    "num_heads",
    assign="=",
)
# ModelConfig keys saved before the attention settings became ``attention`` -> their
# place now. ``from_dict`` moves them (see migrate_legacy_keys); written config refuses them.
LEGACY_MODEL_KEYS: dict[str, str] = {
    "attention": "attention.kind",  # the old string "sparse" | "combiner"
    "pattern": "attention.pattern",
    "pattern_params": "attention.pattern_params",
    "block_size": "attention.block_size",
    "num_global": "attention.num_global",
    "pattern_seed": "attention.pattern_seed",
    "resample_pattern": "attention.resample_pattern",
    "attention_backend": "attention.backend",
    "attention_dropout": "attention.dropout",
    "combiner_variant": "attention.combiner_variant",
    "combiner_span": "attention.combiner_span",
    "combiner_clusters": "attention.combiner_clusters",
}


@dataclass
class AttentionConfig:
    """Who attends to whom: a block-sparse pattern (ernie_sparse.patterns) or Combiner's
    factorized attention, and the backend that computes it (ernie_sparse.attention)."""

    kind: Literal["sparse", "combiner"] = "sparse"  # block-sparse layout, or Combiner's
    pattern: str = "dense"  # sparse pattern family (ernie_sparse.patterns.PATTERNS)
    pattern_params: dict[str, Any] = field(default_factory=dict)  # the family's own parameters
    block_size: int = 64  # attention block, in positions (with HST: 1 representative + 63 tokens)
    num_global: int = 0  # leading input tokens that see all and are seen by all
    pattern_seed: int = 0  # seeds random blocks; layer l draws with seed * 2**20 + l
    resample_pattern: bool = False  # draw new random blocks every training forward
    backend: str = "auto"  # auto | blocked | flex | fused | reference (ernie_sparse.attention)
    dropout: float = 0.1  # on attention probabilities
    combiner_variant: str = "axial-rowmajor"  # attention.combiner.COMBINER_VARIANTS member
    combiner_span: int = 0  # span, row length (logsparse: direct block); 0: combiner_partition
    combiner_clusters: int = 0  # k-means clusters of "learnable"; 0 = ceil(sqrt(max_positions))

    def __post_init__(self) -> None:
        _check_choice("attention.kind", self.kind, ATTENTION_KINDS)
        _check_choice("attention.backend", self.backend, ("auto", *BACKENDS))
        _check_fraction("attention.dropout", self.dropout)
        self._check_pattern()
        for name in ("combiner_span", "combiner_clusters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"attention.{name} must be an integer >= 0 (0 = default), got {value!r}"
                )
        if self.kind == "combiner":
            self._check_combiner()

    def _check_pattern(self) -> None:
        _check_choice("attention.pattern", self.pattern, tuple(PATTERNS))
        accepted = set(pattern_parameters(self.pattern)) - {"num_heads", "generator"}
        unknown = sorted(set(self.pattern_params) - accepted)
        if unknown:
            raise ValueError(
                f"pattern {self.pattern!r} takes {', '.join(sorted(accepted)) or 'no parameters'}; "
                f"got attention.pattern_params {', '.join(unknown)}"
            )
        if "num_global" in self.pattern_params:
            raise ValueError(
                "set global tokens with attention.num_global (in tokens), not "
                "attention.pattern_params.num_global"
            )
        _check_positive("attention.block_size", self.block_size)
        value = self.num_global
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"attention.num_global must be an integer >= 0, got {value!r}")

    def _check_combiner(self) -> None:
        _check_choice("attention.combiner_variant", self.combiner_variant, COMBINER_VARIANTS)
        if self.pattern not in full_patterns() or self.pattern_params:
            raise ValueError(
                f"attention.kind='combiner' replaces the block pattern: leave {_full_patterns()} "
                f"with no attention.pattern_params (got attention.pattern={self.pattern!r})"
            )
        if self.num_global:
            raise ValueError(
                f"attention.num_global={self.num_global} needs attention.kind='sparse' "
                "(Combiner has no global tokens)"
            )

    def check_model(self, *, num_heads: int, max_positions: int, causal: bool) -> None:
        """What these settings need of the model around them (ModelConfig asks)."""
        if self.num_global > max_positions:
            raise ValueError(
                f"attention.num_global={self.num_global} global tokens do not fit in "
                f"max_positions={max_positions}"
            )
        needs = pattern_constraints(self.pattern, self.pattern_params)
        if needs.num_heads is not None and needs.num_heads != num_heads:
            raise ValueError(
                f"pattern {self.pattern!r}: attention.pattern_params.{needs.field}="
                f"{self.pattern_params.get(needs.field)!r} covers {needs.num_heads} heads but "
                f"num_heads={num_heads}"
            )
        if self.kind == "combiner":
            check_variant_options(
                VARIANTS[self.combiner_variant],
                span=self.combiner_span,
                clusters=bool(self.combiner_clusters),
                causal=causal,
                heads=num_heads,
                names=COMBINER_FIELDS,
            )
        if causal:
            self._check_causal()

    def _check_causal(self) -> None:
        """What a decoder's attention cannot have: anything that shows a token later ones."""
        if self.num_global:
            raise ValueError(
                f"causal=True cannot use global tokens (attention.num_global={self.num_global}): "
                "they see the whole sequence"
            )
        if self.kind == "sparse" and self.pattern not in full_patterns():
            raise ValueError(
                f"causal=True with attention.kind='sparse' needs {_full_patterns()} (got "
                f"attention.pattern={self.pattern!r}: block layouts are bidirectional inside a "
                "block); for a sparse decoder use attention.kind='combiner'"
            )

    @property
    def block_multiple(self) -> int:
        """The pattern's block count must be a multiple of this (BlockBERT's parts)."""
        return pattern_constraints(self.pattern, self.pattern_params).block_multiple


@dataclass
class HSTConfig:
    """Hierarchical Sparse Transformer (ERNIE-Sparse section 3.2)."""

    enabled: bool = False  # insert a representative token per local block + hierarchical attention
    shared_weights: bool = False  # hierarchical attention reuses the sparse layer's (Table 5 #3)
    pooling: Literal["mean", "max", "cls"] = "mean"  # over representatives, or the first token
    distribute: Literal["representative", "block"] = "block"  # update its block, or only itself
    position: Literal["none", "block"] = "none"  # block: + position embedding of its first token
    init: Literal["random", "sparse"] = "random"  # sparse: start as a copy of the layer's weights
    feed_forward: bool = False  # a feed-forward sublayer on the representatives after it

    def __post_init__(self) -> None:
        _check_choice("hst.pooling", self.pooling, POOLINGS)
        _check_choice("hst.distribute", self.distribute, HST_DISTRIBUTE)
        _check_choice("hst.position", self.position, HST_POSITIONS)
        _check_choice("hst.init", self.init, HST_INITS)
        if self.init == "sparse" and self.shared_weights:
            raise ValueError(
                "hst.init='sparse' copies the sparse layer's weights; with hst.shared_weights "
                "they are the same weights already"
            )


@dataclass
class SAORConfig:
    """Sparse-Attention-Oriented Regularization (ERNIE-Sparse section 3.3)."""

    alpha: float = 0.0  # weight of the symmetric KL; 0 = one plain forward pass
    roll_tokens: int = 8  # k: the second pass rolls the local tokens right by k
    mode: Literal["roll", "dropout"] = "roll"  # dropout = R-Drop: no roll (Table 5 #4)

    def __post_init__(self) -> None:
        _check_choice("saor.mode", self.mode, SAOR_MODES)
        if self.alpha < 0:
            raise ValueError(f"saor.alpha must be >= 0, got {self.alpha}")


@dataclass
class ModelConfig:
    """An encoder: sizes, regularization, attention (sparse pattern or Combiner), HST, SAOR."""

    vocab_size: int  # token ids are in [0, vocab_size)
    hidden_size: int = 256  # d: width of every token state
    num_heads: int = 4  # attention heads (hidden_size must divide evenly)
    num_layers: int = 4  # sparse transformer layers
    mlp_size: int = 1024  # inner width of each layer's feed-forward block
    dropout: float = 0.1  # on embeddings, sublayer outputs and heads
    max_positions: int = 4096  # learned position embeddings; longer inputs are refused
    type_vocab_size: int = 0  # segment (token type) embeddings; 0 = none (RoBERTa has 1)
    position_offset: int = 0  # first position id (RoBERTa: padding_idx + 1); rows below unused
    layer_norm: Literal["post", "pre"] = "post"  # post-LN (BERT) or pre-LN (+ a final LayerNorm)
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon (BERT 1e-12, RoBERTa 1e-5)
    activation: Literal["gelu", "gelu_tanh", "relu"] = "gelu"  # feed-forward nonlinearity
    initializer_range: float = 0.02  # std of the normal initialization of weights
    causal: bool = False  # decoder: token i attends tokens j <= i only (language modelling)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    hst: HSTConfig = field(default_factory=HSTConfig)
    saor: SAORConfig = field(default_factory=SAORConfig)

    def __post_init__(self) -> None:
        parts = {"attention": AttentionConfig, "hst": HSTConfig, "saor": SAORConfig}
        for name, part in parts.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, part(**value))
            elif not isinstance(value, part):
                raise TypeError(f"{name} must be a {part.__name__} or a mapping, got {value!r}")
        self._check_sizes()
        _check_fraction("dropout", self.dropout)
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        _check_choice("layer_norm", self.layer_norm, LAYER_NORMS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        self._check_parts_together()

    def _check_sizes(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_heads", "num_layers", "mlp_size"):
            _check_positive(name, getattr(self, name))
        _check_positive("max_positions", self.max_positions)
        if self.position_offset < 0:
            raise ValueError(f"position_offset must be >= 0, got {self.position_offset}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )

    def _check_parts_together(self) -> None:
        """The rules across attention, HST, SAOR and the model (each part checks itself)."""
        self.attention.check_model(
            num_heads=self.num_heads, max_positions=self.max_positions, causal=self.causal
        )
        if self.hst.enabled and self.attention.block_size < 2:
            raise ValueError(
                "attention.block_size must be >= 2 with hst.enabled (a representative and at "
                f"least one token per block), got {self.attention.block_size}"
            )
        if self.causal and self.hst.enabled:
            raise ValueError(
                "causal=True cannot use HST (hst.enabled): a representative summarizes its "
                "whole block, later tokens included"
            )
        if self.causal and self.saor.alpha > 0 and self.saor.mode == "roll":
            raise ValueError(
                "causal=True cannot use SAOR's roll (saor.mode='roll' with saor.alpha > 0): "
                "it moves later tokens first; use saor.alpha=0 or saor.mode=dropout"
            )

    @property
    def combiner_partition(self) -> int | None:
        """The span passed to Combiner: fixed per model, never the kernel's default of
        ceil(sqrt(N)) for the batch length N, so padding a batch moves no boundary.
        A variant whose default span does not depend on N (logsparse's direct block of 1)
        gets None, which keeps it."""
        if self.attention.combiner_span:
            return self.attention.combiner_span
        variant = VARIANTS.get(self.attention.combiner_variant)
        if variant is not None and variant.default_span is not None:
            return None
        return ceil_sqrt(self.max_positions)

    @property
    def combiner_cluster_count(self) -> int | None:
        """k-means clusters of a routed variant ("learnable"; None for others); like the span, fixed
        per model rather than the kernel's ceil(sqrt(N)) of the batch length."""
        variant = VARIANTS.get(self.attention.combiner_variant)
        if variant is None or not variant.takes_clusters:
            return None
        return self.attention.combiner_clusters or ceil_sqrt(self.max_positions)

    @property
    def tokens_per_block(self) -> int:
        """Input tokens in one local block: one position goes to the representative with HST."""
        block = self.attention.block_size
        return block - 1 if self.hst.enabled else block

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """A config from its ``to_dict`` values; a saved one with the flat attention keys
        of older versions (LEGACY_MODEL_KEYS) loads too (``migrate_legacy_keys``)."""
        values = migrate_legacy_keys(values, LEGACY_MODEL_KEYS, section="model.")
        return build_dataclass(cls, values, prefix="")

    def with_overrides(self, overrides: dict[str, Any]) -> ModelConfig:
        """A copy with dotted keys replaced: ``{"hst.pooling": "max", "num_layers": 2}``."""
        refuse_legacy_keys(overrides, LEGACY_MODEL_KEYS, section="")
        values = self.to_dict()
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            target = values
            for part in parents:
                if not isinstance(target.get(part), dict):
                    raise ValueError(f"unknown config key {dotted!r}")
                target = target[part]
            if leaf not in target and not (parents and parents[-1] == "pattern_params"):
                raise ValueError(f"unknown config key {dotted!r}")
            target[leaf] = value
        return ModelConfig.from_dict(values)


def migrate_legacy_keys(
    values: dict[str, Any], legacy: dict[str, str], *, section: str
) -> dict[str, Any]:
    """A saved config section with its flat keys of older versions moved into their sub-config.

    ``legacy`` maps each old key to its new place, ``"group.key"``. Nothing is dropped:
    each old value lands under its new name, and a section spelling one setting both
    ways (``block_size`` and ``attention.block_size``) is refused rather than resolved.
    An old key that is also a group's name (``attention``) is old only when it is not a
    mapping. This runs on loading (``from_dict``); presets and overrides use the new keys.
    """
    if not isinstance(values, dict):
        return values  # build_dataclass names the wrong type
    moved = dict(values)
    for old, new in legacy.items():
        group, leaf = new.split(".")
        if old not in moved or (old == group and isinstance(moved[old], dict)):
            continue
        value = moved.pop(old)
        target = moved.get(group, {})
        if not isinstance(target, dict):
            raise ValueError(f"config {section}{group} must be a mapping, got {target!r}")
        if leaf in target:
            raise ValueError(
                f"{section}{old} (the old spelling) and {section}{new} (the new one) name "
                f"the same setting; keep {section}{new} only"
            )
        moved[group] = {**target, leaf: value}
    return moved


def refuse_legacy_keys(values: dict[str, Any], legacy: dict[str, str], *, section: str) -> None:
    """For settings a person writes (presets, overrides): an old flat key is refused,
    naming its new place (saved configs are migrated instead: ``migrate_legacy_keys``)."""
    for old, new in legacy.items():
        group = new.split(".")[0]
        if old in values and not (old == group and isinstance(values[old], dict)):
            raise ValueError(
                f"{section}{old} is now {section}{new} (the old flat keys are read only "
                "from saved configs)"
            )


def build_dataclass(cls: type, values: dict[str, Any], *, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise TypeError(f"config {prefix.rstrip('.') or cls.__name__} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known: {', '.join(prefix + k for k in fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, hint)
    return cls(**kwargs)


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check a value against a field's annotation; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        _check_choice(name, value, typing.get_args(hint))
        return value
    if origin in (types.UnionType, typing.Union):
        return value
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
    if expected is int and isinstance(value, bool):
        raise TypeError(f"{name} must be int, got bool {value!r}")
    if not isinstance(value, expected):
        raise TypeError(f"{name} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _full_patterns() -> str:
    """The patterns attention without a layout stands in for, as a config would spell them."""
    return " or ".join(f"attention.pattern={name!r}" for name in full_patterns())


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _check_fraction(name: str, value: float) -> None:
    """A probability of dropping: in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "hst.pooling=max"]`` -> a nested dict; values are read as YAML."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value (e.g. train.lr=0.01)")
        *parents, leaf = key.split(".")
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = yaml.safe_load(text)
    return nested
