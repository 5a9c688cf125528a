"""The paper's models as configurations of one encoder.

Baselines (ERNIE-Sparse Table 1): dense Transformer, local attention,
Longformer-style window + global, Sparse Transformer (fixed), BigBird, BlockBERT.
ERNIE-Sparse = BigBird pattern + HST + SAOR; its Table 5 ablations are presets
too, and Table 6's pooling is the override ``hst.pooling=mean|max|cls``.
"""

from __future__ import annotations

from typing import Any

from ..attention.combiner import VARIANTS
from .config import LEGACY_MODEL_KEYS, ModelConfig, refuse_legacy_keys

# Overrides of ModelConfig per preset. Placeholders: "{global}" = 2 blocks of tokens
# (BigBird's 2 global blocks); "{blockbert_split}" = half the heads per permutation.
_GLOBAL = "{global}"
# Sub-configs: a preset's or the caller's mapping merges into the defaults key by key.
GROUPS = ("attention", "hst", "saor")
_BIGBIRD: dict[str, Any] = {
    "attention": {
        "pattern": "bigbird",
        "pattern_params": {"window_width": 1, "num_random": 3},
        "num_global": _GLOBAL,
    }
}
_ERNIE: dict[str, Any] = {
    **_BIGBIRD,
    "hst": {"enabled": True, "shared_weights": False, "pooling": "mean"},
    "saor": {"alpha": 5.0, "roll_tokens": 8, "mode": "roll"},
}
PRESETS: dict[str, dict[str, Any]] = {
    "dense": {"attention": {"pattern": "dense"}},
    "local": {"attention": {"pattern": "local"}},
    "longformer": {
        "attention": {"pattern": "window", "pattern_params": {"width": 1}, "num_global": _GLOBAL}
    },
    "sparse-fixed": {
        "attention": {"pattern": "fixed", "pattern_params": {"stride": 4, "summary": 1}}
    },
    "bigbird": _BIGBIRD,
    "blockbert": {
        "attention": {"pattern": "blockbert", "pattern_params": {"head_split": "{blockbert_split}"}}
    },
    "ernie-sparse": _ERNIE,
    # Table 5 ablations.
    "ernie-sparse-no-hst": {**_ERNIE, "hst": {"enabled": False}},  # 1
    "ernie-sparse-no-saor": {**_ERNIE, "saor": {"alpha": 0.0}},  # 2
    "ernie-sparse-ws-hst": {  # 3: w/o SAOR, HST shares the sparse layer's weights
        **_ERNIE,
        "hst": {"enabled": True, "shared_weights": True, "pooling": "mean"},
        "saor": {"alpha": 0.0},
    },
    "ernie-sparse-rdrop": {  # 4: w/o SAOR's roll, R-Drop (dropout-only second pass)
        **_ERNIE,
        "saor": {"alpha": 5.0, "roll_tokens": 0, "mode": "dropout"},
    },
}
# Combiner (one preset per variant): "combiner-<variant>" bidirectional; decoders
# "causal-dense" and "causal-combiner-<variant>", pre-LN as in Combiner appendix E.3.
_CAUSAL: dict[str, Any] = {"causal": True, "layer_norm": "pre"}
PRESETS["causal-dense"] = {**_CAUSAL, "attention": {"pattern": "dense"}}
for _name, _variant in VARIANTS.items():
    PRESETS[f"combiner-{_name}"] = {"attention": {"kind": "combiner", "combiner_variant": _name}}
    if _variant.causal:  # not "learnable": k-means routing sorts by content
        PRESETS[f"causal-combiner-{_name}"] = {**PRESETS[f"combiner-{_name}"], **_CAUSAL}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset's config with ModelConfig field ``overrides`` (``attention`` / ``hst`` /
    ``saor`` given as dicts merge into the preset's). ``vocab_size`` is required."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    refuse_legacy_keys(overrides, LEGACY_MODEL_KEYS, section="")
    attention = overrides.get("attention", {})
    resolved = _resolve(
        PRESETS[name],
        block_size=attention.get("block_size", 64) if isinstance(attention, dict) else 64,
        heads=overrides.get("num_heads", 4),
    )
    return ModelConfig.from_dict(merge_overrides(resolved, overrides))


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig values with ``overrides`` on top; a sub-config (``GROUPS``) given as a
    mapping merges into the base's key by key (``pattern_params`` is replaced whole)."""
    merged = dict(base)
    for key, value in overrides.items():
        if key in GROUPS and isinstance(value, dict):
            value = {**base.get(key, {}), **value}
        merged[key] = value
    return merged


def preset_fields(
    name: str, values: dict[str, Any], *, given: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Of ``values`` (a config's ``to_dict``), the fields preset ``name`` sets, and those
    ``given`` sets: top-level fields and ``hst`` / ``saor`` whole, of ``attention`` only
    the keys they name (the rest, such as a checkpoint's attention dropout, stay as they
    are where these fields are applied)."""
    picked: dict[str, Any] = {}
    for source in (PRESETS[name], given or {}):
        for key, value in source.items():
            if key == "attention" and isinstance(value, dict):
                chosen = {k: values[key][k] for k in value}
                picked[key] = {**picked.get(key, {}), **chosen}
            else:
                picked[key] = values[key]
    return picked


def _resolve(values: Any, *, block_size: int, heads: int) -> Any:
    """Fill the placeholders that depend on the block size and head count."""
    if isinstance(values, dict):
        return {k: _resolve(v, block_size=block_size, heads=heads) for k, v in values.items()}
    if values == _GLOBAL:
        return 2 * block_size
    if values == "{blockbert_split}":
        return f"{heads - heads // 2}:{heads // 2}" if heads > 1 else "1"
    return values
