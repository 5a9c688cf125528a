"""The gradient a far token sends to the loss at initialization, per route."""

import numpy as np
import pytest
import torch

from ernie_sparse.analysis.route_gradient import far_token_gradient
from ernie_sparse.data.probes import ProbeSpec, draw_example
from ernie_sparse.models import SequenceClassifier, preset

SPEC = ProbeSpec("copy-far", length=105, block_size=7, distance=12, vocab_size=32)


def examples(count: int = 16) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = [draw_example(SPEC, rng) for _ in range(count)]
    return [{"input_ids": torch.tensor(ids), "labels": label} for ids, label in rows]


def ratio(hst: dict | None, *, pattern: str = "window") -> float:
    torch.manual_seed(0)
    params = {"width": 1} if pattern == "window" else {}
    name = "ernie-sparse-no-saor" if hst else "bigbird"
    attention = {"block_size": 8, "num_global": 0, "pattern": pattern, "pattern_params": params}
    config = preset(
        name, vocab_size=32, hidden_size=32, num_heads=2, num_layers=2, mlp_size=64,
        attention={**attention, "dropout": 0.0}, dropout=0.0, max_positions=128,
        layer_norm="pre", hst={"pooling": "cls", **(hst or {})},
    )  # fmt: skip
    gradient = far_token_gradient(
        SequenceClassifier(config, 2), examples(), far_block=12, block_tokens=7
    )
    return gradient["ratio"]


def test_no_route_gives_exactly_zero_and_hst_a_route() -> None:
    assert ratio(None) == 0.0  # window only, 0 globals: block 12 cannot reach token 0
    assert ratio({"enabled": True}) > 0.0
    assert ratio(None, pattern="dense") > 0.1  # one direct hop


def test_distributing_to_the_block_removes_a_hop() -> None:
    """The claim behind hst.distribute=block: the far token's gradient at the readout
    is much larger when the readout's block receives its representative's update."""
    through_representative = ratio({"enabled": True, "distribute": "representative"})
    through_block = ratio({"enabled": True, "distribute": "block"})
    assert through_block > 5 * through_representative


@pytest.mark.parametrize("distribute", ["representative", "block"])
def test_block_positions_and_warm_start_keep_the_route(distribute) -> None:
    assert ratio({"enabled": True, "distribute": distribute, "position": "block"}) > 0
    assert ratio({"enabled": True, "distribute": distribute, "init": "sparse"}) > 0
