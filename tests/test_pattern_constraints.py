"""Patterns declare their own constraints (head count, block multiple, being full) in the
registry; ModelConfig enforces what each declares, naming the pattern's field, and its
validation names no pattern. Cases come from the registry, so a new pattern is covered."""

from __future__ import annotations

import ast
import inspect
import re

import pytest
import torch

from ernie_sparse.attention import validation
from ernie_sparse.attention.combiner import COMBINER_VARIANTS
from ernie_sparse.models import Encoder, ModelConfig, config, presets
from ernie_sparse.models.presets import merge_overrides
from ernie_sparse.patterns import (
    PATTERNS,
    SPECS,
    PatternConstraints,
    PatternSpec,
    check_layout,
    dense,
    make_layout,
    pattern_constraints,
    pattern_parameters,
)


def model(name: str, *, num_heads: int, **overrides) -> ModelConfig:
    values = dict(
        vocab_size=11,
        hidden_size=4 * num_heads,
        num_heads=num_heads,
        num_layers=1,
        mlp_size=8,
        max_positions=256,
        attention={"block_size": 4, "pattern": name, "pattern_params": dict(SPECS[name].example)},
    )
    return ModelConfig(**merge_overrides(values, overrides))


def declared(name: str) -> PatternConstraints:
    return pattern_constraints(name, SPECS[name].example)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_pattern_declares_a_buildable_example_and_valid_constraints(name) -> None:
    needs = declared(name)
    heads = needs.num_heads or 2
    layout = make_layout(
        name,
        seq_len=8 * 4 * needs.block_multiple,
        block_size=4,
        num_heads=heads,
        generator=torch.Generator().manual_seed(0),
        **SPECS[name].example,
    )
    check_layout(layout)
    assert layout.shape[0] in (1, heads)
    assert needs.block_multiple >= 1
    if needs.num_heads is not None or needs.block_multiple > 1:
        assert needs.field in pattern_parameters(name), "constraints name the pattern's field"
    if SPECS[name].full:
        assert bool(layout.all()), "a full pattern's layout is every block"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_head_count_constraints_are_enforced_naming_the_field(name) -> None:
    needs = declared(name)
    if needs.num_heads is None:
        for heads in (1, 2, 3):  # any head count
            assert model(name, num_heads=heads).num_heads == heads
        return
    assert model(name, num_heads=needs.num_heads).num_heads == needs.num_heads
    with pytest.raises(ValueError, match=re.escape(f"pattern_params.{needs.field}")) as info:
        model(name, num_heads=needs.num_heads + 1)
    assert repr(name) in str(info.value) and f"{needs.num_heads} heads" in str(info.value)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_block_multiples_reach_the_sequence_plan(name) -> None:
    needs = declared(name)
    config = model(name, num_heads=needs.num_heads or 2)
    assert config.attention.block_multiple == needs.block_multiple
    encoder = Encoder(config)
    for length in (1, 5, 13, 30):
        plan = encoder.plan(length)
        assert plan.num_blocks % needs.block_multiple == 0
        assert plan.num_blocks * plan.block_size >= length


@pytest.mark.parametrize("name", sorted(SPECS))
def test_only_full_patterns_go_without_a_layout(name) -> None:
    """Combiner and a dense causal decoder replace the layout: only a full pattern allows it."""
    heads = declared(name).num_heads or 2
    if SPECS[name].full and not SPECS[name].example:
        combiner = model(name, num_heads=heads, attention={"kind": "combiner"})
        assert combiner.attention.kind == "combiner"
        assert model(name, num_heads=heads, causal=True).causal
        return
    with pytest.raises(ValueError, match="replaces the block pattern"):
        model(name, num_heads=heads, attention={"kind": "combiner"})
    if not SPECS[name].full:
        with pytest.raises(ValueError, match=re.escape(f"got attention.pattern={name!r}")):
            model(name, num_heads=heads, causal=True)


def test_a_new_pattern_is_validated_from_its_declaration_alone(monkeypatch) -> None:
    """A pattern registered with constraints is enforced by ModelConfig with no edit there."""

    def striped(num_blocks: int, *, parts: int) -> torch.Tensor:
        return dense(num_blocks).expand(parts, num_blocks, num_blocks)

    def needs(parts: int) -> PatternConstraints:
        return PatternConstraints(field="parts", num_heads=parts, block_multiple=parts)

    spec = PatternSpec(striped, example={"parts": 3}, constraints=needs)
    monkeypatch.setitem(SPECS, "striped", spec)
    monkeypatch.setitem(PATTERNS, "striped", striped)
    assert model("striped", num_heads=3).attention.block_multiple == 3
    with pytest.raises(ValueError, match=r"pattern_params\.parts=3 covers 3 heads"):
        model("striped", num_heads=2)


def _compared_strings(module) -> set[str]:
    """String constants that module's code compares against (==, !=, in, not in)."""
    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                for item in ast.walk(operand):
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        found.add(item.value)
    return found


@pytest.mark.parametrize("module", [config, presets], ids=lambda m: m.__name__)
def test_config_and_presets_branch_on_no_pattern_or_variant_name(module) -> None:
    names = set(SPECS) | set(COMBINER_VARIANTS)
    assert not _compared_strings(module) & names


def test_check_layout_lives_with_the_patterns_and_is_still_re_exported() -> None:
    assert validation.check_layout is check_layout
    assert check_layout.__module__.startswith("ernie_sparse.patterns")
    check_layout(torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"torch\.bool"):
        check_layout(torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match=r"\[H or 1, nb, nb\]"):
        check_layout(torch.ones(2, 3, dtype=torch.bool))
