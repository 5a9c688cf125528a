"""Block reachability against a token-level brute force, window cases, the encoder helper,
and per-(seed, layer) random layouts."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from ernie_sparse.models import preset
from ernie_sparse.models.encoder import Encoder, PatternLayouts
from ernie_sparse.models.presets import merge_overrides
from ernie_sparse.models.reachability import encoder_reachability
from ernie_sparse.models.structure import (
    SequencePlan,
    internal_key_mask,
    plan_sequence,
    representative_mask,
)
from ernie_sparse.patterns import (
    block_knowledge,
    block_reachability,
    reachable_fraction,
    readout_sources,
    window,
)

VOCAB = 50


# --- brute force over the token graph ---


def token_knowledge(
    plan: SequencePlan,
    layouts: list[torch.Tensor],
    *,
    mask: torch.Tensor,
    hierarchical: list[bool],
    distribute: str,
) -> torch.Tensor:
    """[L, L] bool: internal position p holds information from the real input token at q."""
    rep_mask = representative_mask(plan, mask[None]) if plan.hst else None
    keys = internal_key_mask(plan, mask[None], rep_mask)[0]  # [L]
    block = torch.arange(plan.length) // plan.block_size
    know = torch.zeros(plan.length, plan.length, dtype=torch.bool)
    real_tokens = plan.token_positions[mask]
    know[real_tokens, real_tokens] = True
    reps = plan.representative_positions
    for layout, with_hst in zip(layouts, hierarchical, strict=True):
        before = know.clone()
        for head in layout:  # query position q reads key position k through this head
            edges = head[block[:, None], block[None, :]] & keys[None, :]  # [L, L]
            know |= (edges.float() @ before.float()) > 0
        if with_hst:
            pooled = know[reps[rep_mask[0]]].any(0)  # the real representatives' union
            if distribute == "representative":
                know[reps] |= pooled
            else:
                start = plan.global_blocks * plan.block_size
                know[start : start + plan.local_blocks * plan.block_size] |= pooled
    return know


def by_blocks(know_rows: torch.Tensor, plan: SequencePlan, mask: torch.Tensor) -> torch.Tensor:
    """[..., L] token knowledge -> [..., nb src]: some real input token of src is known."""
    out = torch.zeros(*know_rows.shape[:-1], plan.num_blocks, dtype=torch.bool)
    positions = plan.token_positions[mask]
    for src in range(plan.num_blocks):
        inside = positions[positions // plan.block_size == src]
        if len(inside):
            out[..., src] = know_rows[..., inside].any(-1)
    return out


def random_case(rng: random.Random, *, diagonal: bool) -> dict:
    while True:
        block_size, hst = rng.choice([3, 4]), rng.random() < 0.6
        num_global = rng.choice([0, 0, 1, block_size, block_size + 1])
        input_len = rng.randint(1, 7 * block_size)
        if hst and input_len <= num_global:
            continue
        plan = plan_sequence(
            input_len,
            block_size=block_size,
            num_global=num_global,
            hst=hst,
            block_multiple=rng.choice([1, 1, 2, 3]),
        )
        if plan.num_blocks <= 8:
            break
    nb, layers = plan.num_blocks, rng.randint(1, 3)
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    eye = torch.eye(nb, dtype=torch.bool) & diagonal
    layouts = [
        (torch.rand(rng.choice([1, 2]), nb, nb, generator=generator) < rng.uniform(0.05, 0.35))
        | eye
        for _ in range(layers)
    ]
    # Trailing padding (as when batched with longer inputs); HST keeps a local token.
    shortest = num_global + 1 if hst else 1
    real_len = rng.randint(min(shortest, input_len), input_len)
    return dict(
        plan=plan,
        layouts=layouts,
        mask=torch.arange(input_len) < real_len,
        hierarchical=[hst and rng.random() < 0.7 for _ in range(layers)],
        distribute=rng.choice(["representative", "block"]),
    )


def block_arguments(plan: SequencePlan, mask: torch.Tensor) -> dict:
    rep_mask = representative_mask(plan, mask[None]) if plan.hst else None
    keys = internal_key_mask(plan, mask[None], rep_mask)[0]
    start = plan.global_blocks
    local = range(start, start + plan.local_blocks) if plan.hst else None
    return dict(real_blocks=keys.view(plan.num_blocks, -1).any(1), local_blocks=local)


@pytest.mark.parametrize("diagonal", [True, False])
def test_block_reachability_matches_token_brute_force(diagonal):
    rng = random.Random(int(diagonal))
    partial = hst_helps = padded = 0
    for _ in range(150 if diagonal else 60):
        case = random_case(rng, diagonal=diagonal)
        plan, mask = case["plan"], case["mask"]
        know = token_knowledge(
            plan,
            case["layouts"],
            mask=mask,
            hierarchical=case["hierarchical"],
            distribute=case["distribute"],
        )
        args = block_arguments(plan, mask)
        tokens, reps = block_knowledge(
            case["layouts"],
            hierarchical=case["hierarchical"],
            distribute=case["distribute"],
            **args,
        )
        positions = plan.token_positions[mask]
        token_block = positions // plan.block_size
        has_tokens = torch.zeros(plan.num_blocks, dtype=torch.bool)
        has_tokens[token_block] = True
        per_token = by_blocks(know[positions], plan, mask)  # [real tokens, nb src]
        for dst in has_tokens.nonzero().flatten().tolist():
            rows = per_token[token_block == dst]
            assert (rows == rows[0]).all(), "tokens of one block must know the same"
            assert torch.equal(rows[0][has_tokens], tokens[dst][has_tokens]), (case, dst)
        if plan.hst:  # each real representative
            rep_mask = representative_mask(plan, mask[None])[0]
            known = by_blocks(know[plan.representative_positions[rep_mask]], plan, mask)
            local = torch.arange(plan.local_blocks)[rep_mask] + plan.global_blocks
            assert torch.equal(known[:, has_tokens], reps[local][:, has_tokens])
        # The readout of each pooling.
        for pooling in ("cls", "mean", "max"):
            if pooling == "cls":
                brute = know[positions[0]]
            elif plan.hst:
                rep_mask = representative_mask(plan, mask[None])[0]
                brute = know[plan.representative_positions[rep_mask]].any(0)
            else:
                brute = know[positions].any(0)
            seen = readout_sources(
                tokens, reps, pooling=pooling, first_block=int(token_block[0]), **args
            )
            assert torch.equal(by_blocks(brute, plan, mask)[has_tokens], seen[has_tokens])
        fraction = reachable_fraction(tokens, has_tokens)
        partial += 0 < fraction < 1
        without = block_reachability(case["layouts"], distribute=case["distribute"], **args)
        hst_helps += reachable_fraction(without, has_tokens) < fraction
        padded += bool((~args["real_blocks"]).any())
    # The cases are rich enough to tell a wrong algorithm from the right one.
    if diagonal:
        assert partial > 50 and hst_helps > 10 and padded > 20


# --- a sliding window: the HST route and its layer counts ---

NB = 8


def _window_reach(layers: int, hierarchical: list[bool], distribute: str) -> torch.Tensor:
    return block_reachability(
        [window(NB, 1)] * layers,
        real_blocks=torch.ones(NB, dtype=torch.bool),
        local_blocks=range(NB),
        hierarchical=hierarchical,
        distribute=distribute,
    )


def _band(width: int) -> torch.Tensor:
    index = torch.arange(NB)
    return (index[:, None] - index[None, :]).abs() <= width


@pytest.mark.parametrize("distribute", ["representative", "block"])
def test_window_far_blocks_need_hst(distribute):
    assert torch.equal(_window_reach(2, [False, False], distribute), _band(2))
    full = torch.ones(NB, NB, dtype=torch.bool)
    assert torch.equal(_window_reach(2, [True, True], distribute), full)
    assert torch.equal(_window_reach(2, [True, False], distribute), full)
    # After the last layer's hierarchical attention only the representatives know more,
    # unless the update goes to every token of the block.
    expected = full if distribute == "block" else _band(2)
    assert torch.equal(_window_reach(2, [False, True], distribute), expected)
    expected = full if distribute == "block" else _band(1)
    assert torch.equal(_window_reach(1, [True], distribute), expected)


def test_padding_blocks_carry_nothing():
    real = torch.tensor([True, True, False, True])
    reach = block_reachability([window(4, 1)] * 3, real_blocks=real)
    assert not reach[3, 0] and reach[1, 0] and reach[0, 1]
    assert reachable_fraction(reach, real) == pytest.approx(5 / 9)


def test_bad_arguments():
    real = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="local_blocks"):
        block_reachability([window(4)], real_blocks=real, hierarchical=[True])
    with pytest.raises(ValueError, match="distribute"):
        block_reachability([window(4)], real_blocks=real, distribute="all")
    with pytest.raises(ValueError, match="hierarchical flags"):
        block_reachability([window(4)] * 2, real_blocks=real, hierarchical=[False])


# --- the encoder helper ---


def tiny(name: str = "longformer", **overrides) -> Encoder:
    sizes = dict(hidden_size=16, num_heads=2, num_layers=2, mlp_size=32, max_positions=128)
    values = merge_overrides({**sizes, "attention": {"block_size": 4}}, overrides)
    config = preset(name, vocab_size=VOCAB, **values)
    return Encoder(config).eval()


def test_encoder_window_without_hst():
    encoder = tiny(attention={"num_global": 0})
    result = encoder_reachability(encoder, 32, source_token=31)  # 8 blocks of 4 tokens
    assert result.fraction == result.fraction_without_hst == pytest.approx(34 / 64)
    assert result.readout_blocks == result.token_blocks == 8  # mean pooling reads all tokens
    assert result.source_reaches_readout
    cls = encoder_reachability(
        tiny(attention={"num_global": 0}, hst={"pooling": "cls"}), 32, source_token=31
    )
    assert (cls.readout_blocks, cls.readout_fraction) == (3, 3 / 8)
    assert cls.describe() == (
        "reachability over 2 layers: 53% of block pairs (HST route off: 53%); "
        "readout sees 3 of 8 blocks; token 31 -> readout: no"
    )


def test_encoder_window_with_hst():
    # 24 tokens, 3 per block after the representative: 8 local blocks.
    for pooling in ("mean", "cls"):
        hst = {"enabled": True, "pooling": pooling, "distribute": "representative"}
        result = encoder_reachability(
            tiny(attention={"num_global": 0}, hst=hst), 24, source_token=23
        )
        assert result.fraction == 1.0 and result.fraction_without_hst == pytest.approx(34 / 64)
        assert result.readout_blocks == 8 and result.source_reaches_readout
    rep_only = {"enabled": True, "pooling": "mean", "distribute": "representative"}
    one_layer = tiny(attention={"num_global": 0}, num_layers=1, hst=rep_only)
    result = encoder_reachability(one_layer, 24, source_token=23)
    assert result.fraction == pytest.approx(22 / 64)  # the tokens still see their window
    assert result.readout_blocks == 8  # the representatives met after the layer


def test_encoder_global_blocks():
    # 2 global blocks + 6 local blocks, window 1, 1 layer: globals see all, all see globals.
    result = encoder_reachability(
        tiny(attention={"num_global": 8}, num_layers=1), 32, source_token=31
    )
    local_pairs = 6 + 2 * 5
    assert result.fraction == pytest.approx((64 - 36 + local_pairs) / 64)
    assert result.readout_blocks == 8


def autograd_reach(encoder: Encoder, input_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's dataflow by blocks: ([dst, src] token blocks, [src] readout) where some
    output's gradient with respect to some input token embedding is non-zero."""
    embedded: list[torch.Tensor] = []
    hook = encoder.embeddings.word.register_forward_hook(lambda _m, _i, out: embedded.append(out))
    out = encoder(torch.randint(0, VOCAB, (1, input_len)))
    hook.remove()
    token_block = encoder.plan(input_len).token_positions // encoder.config.attention.block_size
    blocks = token_block.unique()
    assert torch.equal(blocks, torch.arange(len(blocks)))  # unpadded: blocks 0 .. k-1
    weights = torch.randn(encoder.config.hidden_size)  # LayerNorm outputs sum to a constant
    outputs = [out.hidden_states[0, token_block == b] for b in blocks] + [out.pooled[0]]
    rows = []
    for output in outputs:
        (grad,) = torch.autograd.grad((output @ weights).sum(), embedded[0], retain_graph=True)
        touched = grad[0].abs().sum(-1) > 0  # [n]
        rows.append(torch.stack([touched[token_block == b].any() for b in blocks]))
    reach = torch.stack(rows)  # [dst blocks + readout, src blocks]
    return reach[:-1], reach[-1]


def test_encoder_matches_autograd():
    """The block-level reachability is the model's dataflow."""
    torch.manual_seed(0)
    sparse = {"window_width": 0, "num_random": 1}
    configs = [
        ("ernie-sparse", dict(num_layers=1, attention={"num_global": 4})),
        (
            "ernie-sparse",
            dict(attention={"num_global": 0}, hst={"distribute": "block", "pooling": "cls"}),
        ),
        ("bigbird", dict(num_layers=1, attention={"num_global": 4})),
        ("bigbird", dict(attention={"num_global": 0}, hst={"pooling": "cls"})),
    ]
    for name, overrides in configs:
        encoder = tiny(
            name, **merge_overrides(overrides, {"attention": {"pattern_params": sparse}})
        )
        reach, readout = autograd_reach(encoder, 30)
        result = encoder_reachability(encoder, 30)
        assert reach.float().mean().item() == pytest.approx(result.fraction)
        assert int(readout.sum()) == result.readout_blocks
        for token in range(0, 30, 3):
            block = (
                int(encoder.plan(30).token_positions[token]) // encoder.config.attention.block_size
            )
            answer = encoder_reachability(encoder, 30, source_token=token).source_reaches_readout
            assert answer == bool(readout[block])


def test_layout_free_encoder_reports_dense():
    result = encoder_reachability(tiny("combiner-axial-rowmajor"), 20, source_token=3)
    assert result.fraction == 1.0 and result.source_reaches_readout
    assert "no block layout" in result.describe()


# --- random blocks per (seed, layer) ---


def test_random_layouts_differ_per_seed_and_layer():
    def layouts(seed: int) -> list[torch.Tensor]:
        encoder = tiny("bigbird", num_layers=4, attention={"pattern_seed": seed, "num_global": 4})
        keyed = encoder.layouts.for_layers(encoder.plan(120), training=False)
        return [layout.tensor for layout in keyed]

    drawn = {
        (seed, layer): layout for seed in range(4) for layer, layout in enumerate(layouts(seed))
    }
    for (a, first), (b, second) in itertools.combinations(drawn.items(), 2):
        assert not torch.equal(first, second), (a, b)
    assert all(torch.equal(x, y) for x, y in zip(layouts(2), layouts(2), strict=True))


def test_layer_seed_range():
    seed = PatternLayouts.layer_seed
    assert seed(0, 3) == 3 and seed(1, 0) == 2**20 and seed(-1, 5) == 5 - 2**20
    with pytest.raises(ValueError, match="layer"):
        seed(0, 2**20)
    with pytest.raises(ValueError, match="too large"):
        seed(2**43, 0)
