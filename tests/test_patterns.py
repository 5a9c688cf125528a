"""Every pattern against a hand-written, loop-based definition from its paper.

The ``loop_*`` functions below are written from the papers, block by block, with
plain Python loops; they share no code with ``ernie_sparse.patterns``.
"""

from __future__ import annotations

import pytest
import torch

from ernie_sparse.patterns import (
    PATTERNS,
    SPECS,
    bigbird,
    blockbert,
    dense,
    fixed,
    global_blocks,
    local,
    make_layout,
    num_blocks_for,
    render_layout,
    window,
)

# --------------------------------------------------------------------------- loop definitions


def as_tensor(rows: list[list[bool]]) -> torch.Tensor:
    """[nb][nb] nested lists of bools -> bool tensor [1, nb, nb]."""
    return torch.tensor(rows, dtype=torch.bool)[None]


def loop_dense(nb: int) -> torch.Tensor:
    return as_tensor([[True for _ in range(nb)] for _ in range(nb)])


def loop_local(nb: int) -> torch.Tensor:
    return as_tensor([[i == j for j in range(nb)] for i in range(nb)])


def loop_window(nb: int, width: int) -> torch.Tensor:
    rows = []
    for i in range(nb):
        row = []
        for j in range(nb):
            row.append(i - width <= j <= i + width)
        rows.append(row)
    return as_tensor(rows)


def loop_global(nb: int, count: int) -> torch.Tensor:
    rows = []
    for i in range(nb):
        row = []
        for j in range(nb):
            # A global block sees everything (row) and is seen by everything (column).
            row.append(i < count or j < count)
        rows.append(row)
    return as_tensor(rows)


def loop_longformer(nb: int, width: int, count: int) -> torch.Tensor:
    """Longformer: sliding window plus global blocks that are symmetric."""
    rows = []
    for i in range(nb):
        row = []
        for j in range(nb):
            in_window = abs(i - j) <= width
            is_global = i < count or j < count
            row.append(in_window or is_global)
        rows.append(row)
    return as_tensor(rows)


def loop_blockbert(nb: int, counts: list[int]) -> torch.Tensor:
    """BlockBERT: n parts; a head of group k lets query part i see key part (i + k) mod n."""
    parts = len(counts)
    part_len = nb // parts
    heads = []
    for group, count in enumerate(counts):
        for _ in range(count):
            rows = []
            for i in range(nb):
                row = []
                for j in range(nb):
                    query_part = i // part_len
                    key_part = j // part_len
                    row.append((query_part + group) % parts == key_part)
                rows.append(row)
            heads.append(rows)
    return torch.tensor(heads, dtype=torch.bool)


def loop_fixed(nb: int, stride: int, summary: int) -> torch.Tensor:
    """Sparse Transformer fixed (bidirectional): same segment, or a summary key block."""
    rows = []
    for i in range(nb):
        row = []
        for j in range(nb):
            same_segment = (i // stride) == (j // stride)
            summary_key = (j % stride) >= stride - summary
            row.append(same_segment or summary_key)
        rows.append(row)
    return as_tensor(rows)


def assert_layout_equal(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == torch.bool
    assert got.dim() == 3
    assert tuple(got.shape) == tuple(expected.shape), (got.shape, expected.shape)
    assert torch.equal(got, expected), f"layout differs:\n{got.int()}\nexpected\n{expected.int()}"


# --------------------------------------------------------------------------- simple patterns


@pytest.mark.parametrize("nb", [1, 2, 5, 9])
def test_dense_is_all_true(nb: int) -> None:
    assert_layout_equal(dense(nb), loop_dense(nb))


@pytest.mark.parametrize("nb", [1, 2, 5, 9])
def test_local_is_block_diagonal(nb: int) -> None:
    assert_layout_equal(local(nb), loop_local(nb))


@pytest.mark.parametrize("nb", [1, 4, 7])
@pytest.mark.parametrize("width", [0, 1, 2, 3, 6, 7, 20])
def test_window_matches_loop(nb: int, width: int) -> None:
    assert_layout_equal(window(nb, width), loop_window(nb, width))


def test_window_default_width_is_three_blocks() -> None:
    layout = window(8)
    assert_layout_equal(layout, loop_window(8, 1))
    # Interior rows see exactly 3 blocks, the two end rows 2.
    assert layout[0].sum(dim=-1).tolist() == [2, 3, 3, 3, 3, 3, 3, 2]


def test_window_at_least_nb_is_dense() -> None:
    for width in (5, 6, 100):
        assert_layout_equal(window(6, width), loop_dense(6))


@pytest.mark.parametrize(("nb", "count"), [(1, 0), (1, 1), (6, 0), (6, 1), (6, 3), (6, 6)])
def test_global_blocks_match_loop(nb: int, count: int) -> None:
    assert_layout_equal(global_blocks(nb, count), loop_global(nb, count))


def test_pattern_argument_errors() -> None:
    with pytest.raises(ValueError, match="count"):
        global_blocks(4, 5)
    with pytest.raises(ValueError, match="width"):
        window(4, -1)
    with pytest.raises(ValueError, match="num_blocks"):
        dense(0)
    with pytest.raises(ValueError, match="num_blocks"):
        local(-2)


@pytest.mark.parametrize(("nb", "width", "count"), [(1, 1, 1), (8, 1, 1), (9, 2, 2), (7, 0, 3)])
def test_window_or_global_is_longformer(nb: int, width: int, count: int) -> None:
    assert_layout_equal(
        window(nb, width) | global_blocks(nb, count), loop_longformer(nb, width, count)
    )


def test_composition_broadcasts_over_heads(generator: torch.Generator) -> None:
    per_head = bigbird(
        8, num_heads=3, num_global=0, window_width=0, num_random=1, generator=generator
    )
    combined = per_head | global_blocks(8, 1)
    assert combined.shape == (3, 8, 8)
    for head in range(3):
        expected = per_head[head] | loop_global(8, 1)[0]
        assert torch.equal(combined[head], expected)
    both = window(8, 2) & local(8)
    assert_layout_equal(both, loop_local(8))


# --------------------------------------------------------------------------- BigBird


def bigbird_fixed_part(nb: int, num_global: int, width: int) -> torch.Tensor:
    return loop_longformer(nb, width, num_global)[0]


BIGBIRD_CASES = [
    # nb, heads, num_global, window_width, num_random
    (16, 4, 2, 1, 3),
    (12, 3, 1, 2, 2),
    (6, 2, 2, 1, 5),  # fewer candidates than num_random in most rows
    (5, 2, 0, 0, 1),
    (1, 2, 1, 1, 3),
    (8, 1, 8, 1, 2),  # every block global: dense
]


@pytest.mark.parametrize(("nb", "heads", "num_global", "width", "num_random"), BIGBIRD_CASES)
def test_bigbird_structure(
    nb: int, heads: int, num_global: int, width: int, num_random: int
) -> None:
    gen = torch.Generator().manual_seed(7)
    layout = bigbird(
        nb,
        num_heads=heads,
        num_global=num_global,
        window_width=width,
        num_random=num_random,
        generator=gen,
    )
    assert layout.dtype == torch.bool
    assert tuple(layout.shape) == (heads, nb, nb)
    fixed_part = bigbird_fixed_part(nb, num_global, width)
    for head in range(heads):
        for i in range(nb):
            # Global rows and columns are full.
            if i < num_global:
                assert bool(layout[head, i].all())
                assert bool(layout[head, :, i].all())
            # Window and global blocks are always present.
            for j in range(nb):
                if fixed_part[i, j]:
                    assert bool(layout[head, i, j]), (head, i, j)
            if i < num_global:
                continue
            available = [j for j in range(nb) if not fixed_part[i, j]]
            chosen = [j for j in available if layout[head, i, j]]
            assert len(chosen) == min(num_random, len(available)), (head, i, chosen)


def test_bigbird_heads_differ_and_seed_reproducible() -> None:
    def make(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return bigbird(24, num_heads=4, num_global=1, window_width=1, num_random=2, generator=gen)

    first = make(0)
    assert not all(torch.equal(first[0], first[h]) for h in range(1, 4))
    # The layout depends on the generator only, not on the global RNG.
    torch.manual_seed(99)
    again = make(0)
    assert torch.equal(first, again)
    assert not torch.equal(first, make(1))


def test_bigbird_zero_random_is_window_plus_global() -> None:
    layout = bigbird(10, num_heads=3, num_global=2, window_width=1, num_random=0)
    expected = loop_longformer(10, 1, 2).expand(3, 10, 10)
    assert_layout_equal(layout, expected)


def test_bigbird_random_blocks_are_uniform() -> None:
    """Each candidate block of a row is chosen equally often over many heads."""
    heads, nb = 4000, 12
    gen = torch.Generator().manual_seed(3)
    layout = bigbird(nb, num_heads=heads, num_global=1, window_width=1, num_random=1, generator=gen)
    row = 5
    candidates = [j for j in range(nb) if not bigbird_fixed_part(nb, 1, 1)[row, j]]
    assert candidates == [1, 2, 3, 7, 8, 9, 10, 11]
    counts = layout[:, row, candidates].sum(dim=0).float()
    assert int(counts.sum()) == heads
    expected = heads / len(candidates)  # 500, binomial std about 21
    assert torch.all((counts - expected).abs() < 110), counts


def test_bigbird_is_block_granular_for_long_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    layout = bigbird(512, num_heads=4, num_global=2, window_width=1, num_random=3, generator=gen)
    assert tuple(layout.shape) == (4, 512, 512)
    # Non-global rows: 3 window + 2 global + 3 random blocks.
    assert torch.all(layout[:, 4:-1].sum(dim=-1) == 8)


def test_bigbird_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        bigbird(8, num_heads=0)
    with pytest.raises(ValueError, match="num_random"):
        bigbird(8, num_random=-1)


# --------------------------------------------------------------------------- BlockBERT


def test_blockbert_10_2_with_two_blocks() -> None:
    layout = blockbert(2, "10:2")
    assert layout.dtype == torch.bool
    assert tuple(layout.shape) == (12, 2, 2)
    identity = torch.tensor([[True, False], [False, True]])
    anti = torch.tensor([[False, True], [True, False]])
    for head in range(10):
        assert torch.equal(layout[head], identity), head
    for head in (10, 11):
        assert torch.equal(layout[head], anti), head


@pytest.mark.parametrize(
    ("nb", "split", "counts"),
    [
        (2, "10:2", [10, 2]),
        (3, "8:2:2", [8, 2, 2]),
        (6, "8:2:2", [8, 2, 2]),
        (8, "1:1:1:1", [1] * 4),
    ],
)
def test_blockbert_matches_loop(nb: int, split: str, counts: list[int]) -> None:
    layout = blockbert(nb, split)
    assert_layout_equal(layout, loop_blockbert(nb, counts))
    parts = len(counts)
    density = layout.float().mean(dim=(1, 2))
    assert torch.allclose(density, torch.full_like(density, 1 / parts))


def test_blockbert_8_2_2_three_blocks_are_shifted_identities() -> None:
    layout = blockbert(3, "8:2:2")
    eye = torch.eye(3, dtype=torch.bool)
    for head in range(12):
        shift = 0 if head < 8 else (1 if head < 10 else 2)
        assert torch.equal(layout[head], eye.roll(shift, dims=1)), head


@pytest.mark.parametrize(("nb", "split"), [(3, "10:2"), (4, "8:2:2"), (5, "1:1")])
def test_blockbert_needs_multiple_of_parts(nb: int, split: str) -> None:
    with pytest.raises(ValueError, match="multiple"):
        blockbert(nb, split)


@pytest.mark.parametrize("split", ["a:b", "", "0:0", "2:-1", "10:", ":2", "1.5:2"])
def test_blockbert_rejects_malformed_split(split: str) -> None:
    with pytest.raises(ValueError, match="head_split"):
        blockbert(4, split)


# --------------------------------------------------------------------------- fixed


@pytest.mark.parametrize(
    ("nb", "stride", "summary"),
    [(8, 4, 1), (9, 4, 2), (6, 3, 3), (5, 1, 1), (7, 8, 1), (12, 3, 1), (1, 2, 2)],
)
def test_fixed_matches_loop(nb: int, stride: int, summary: int) -> None:
    assert_layout_equal(fixed(nb, stride=stride, summary=summary), loop_fixed(nb, stride, summary))


def test_fixed_small_example_by_hand() -> None:
    # stride 2, summary 1, 4 blocks: segments {0,1}, {2,3}; summary blocks 1 and 3.
    expected = as_tensor(
        [
            [True, True, False, True],
            [True, True, False, True],
            [False, True, True, True],
            [False, True, True, True],
        ]
    )
    assert_layout_equal(fixed(4, stride=2, summary=1), expected)


def test_fixed_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="summary"):
        fixed(8, stride=2, summary=3)
    with pytest.raises(ValueError, match="stride"):
        fixed(8, stride=0)
    with pytest.raises(ValueError, match="summary"):
        fixed(8, stride=2, summary=0)


# --------------------------------------------------------------------------- registry, render


@pytest.mark.parametrize(
    ("seq_len", "block_size", "expected"), [(100, 16, 7), (64, 16, 4), (1, 16, 1), (17, 1, 17)]
)
def test_num_blocks_for(seq_len: int, block_size: int, expected: int) -> None:
    assert num_blocks_for(seq_len, block_size) == expected


def test_num_blocks_for_rejects_non_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        num_blocks_for(0, 16)
    with pytest.raises(ValueError, match="positive"):
        num_blocks_for(16, 0)


def test_make_layout_matches_direct_calls() -> None:
    assert_layout_equal(
        make_layout("window", seq_len=100, block_size=16, width=2), loop_window(7, 2)
    )
    assert_layout_equal(make_layout("dense", seq_len=33, block_size=8), loop_dense(5))
    assert_layout_equal(
        make_layout("global", seq_len=64, block_size=16, count=1), loop_global(4, 1)
    )
    assert_layout_equal(
        make_layout("fixed", seq_len=96, block_size=8, stride=4, summary=2), loop_fixed(12, 4, 2)
    )
    assert_layout_equal(
        make_layout("blockbert", seq_len=128, block_size=32, head_split="2:2"),
        loop_blockbert(4, [2, 2]),
    )
    from_registry = make_layout(
        "bigbird",
        seq_len=200,
        block_size=16,
        num_heads=3,
        generator=torch.Generator().manual_seed(5),
        num_random=2,
        num_global=1,
    )
    direct = bigbird(
        13, num_heads=3, num_global=1, num_random=2, generator=torch.Generator().manual_seed(5)
    )
    assert_layout_equal(from_registry, direct)


def test_make_layout_unknown_pattern_names_it_and_the_choices() -> None:
    with pytest.raises(ValueError, match="longfomer") as info:
        make_layout("longfomer", seq_len=64, block_size=16)
    for name in PATTERNS:
        assert name in str(info.value)


def test_make_layout_unknown_parameter_names_it_and_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="wdth") as info:
        make_layout("window", seq_len=64, block_size=16, wdth=2)
    assert "width" in str(info.value)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_registered_pattern_gives_a_layout(name: str) -> None:
    layout = make_layout(
        name,
        seq_len=60,
        block_size=8,
        num_heads=2,
        generator=torch.Generator().manual_seed(0),
        **SPECS[name].example,  # the registry's small valid parameters
    )
    assert layout.dtype == torch.bool
    assert layout.dim() == 3
    assert layout.shape[1:] == (8, 8)
    assert layout.shape[0] in (1, 2)
    assert bool(layout.any())


def test_render_layout_writes_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    layout = bigbird(8, num_heads=5, generator=torch.Generator().manual_seed(0))
    path = render_layout(layout, tmp_path / "sub" / "bigbird.png", title="bigbird")
    assert path.exists()
    data = path.read_bytes()
    assert len(data) > 100
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_layout_rejects_non_bool(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    with pytest.raises(TypeError, match="bool"):
        render_layout(torch.ones(1, 4, 4), tmp_path / "x.png")
