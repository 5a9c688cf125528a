"""How strongly a far input token moves the loss at initialization.

The size of d loss / d (input embedding of token j) tells whether a route from
token j to the readout exists and how much signal it carries before training:
through a sparse layout with no route it is exactly 0; through HST's route
(token -> representative -> representatives -> readout) it is a product of
attention hops, each scaled by the initialization.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.collate import pad_collate
from ..data.probes import read_spec
from ..training.config import RunConfig
from ..training.tasks import get_task


def embedding_gradients(model: nn.Module, examples: Sequence[dict]) -> torch.Tensor:
    """[B, n] norm of d loss / d (token embedding) per input position (eval mode)."""
    batch = pad_collate(examples)
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output.retain_grad()
        captured.append(output)
        return output

    was_training = model.training
    handle = model.encoder.embeddings.word.register_forward_hook(keep)
    try:
        model.eval()
        model.zero_grad(set_to_none=True)
        model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss.backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return captured[0].grad.norm(dim=-1) * batch["attention_mask"]  # [B, n]


def far_token_gradient(model: nn.Module, examples: Sequence[dict], *, far_block: int,
                       block_tokens: int) -> dict[str, float]:  # fmt: skip
    """Mean gradient norm at the tokens of input block ``far_block`` (``block_tokens``
    tokens per block), and its ratio to the mean over the readout's own block."""
    grads = embedding_gradients(model, examples)
    start = far_block * block_tokens
    far = grads[:, start : start + block_tokens].mean()
    near = grads[:, 1:block_tokens].mean()  # the readout's block, the readout left out
    return {"far": float(far), "near": float(near), "ratio": float(far / near.clamp_min(1e-30))}


def initial_route_gradient(config: RunConfig, *, examples: int = 64) -> dict[str, float]:
    """``far_token_gradient`` of the run's model at initialization (its seed) on the first
    validation examples of its probe task."""
    torch.manual_seed(config.train.seed)  # as the training run draws its parameters
    task = get_task(config.train.task)
    validation = task.read(config.train, "val")
    model = task.build(config.model, validation.info)
    probe = read_spec(config.train.data)
    return far_token_gradient(
        model, validation.examples[:examples], far_block=probe.distance,
        block_tokens=probe.block_size,
    )  # fmt: skip
