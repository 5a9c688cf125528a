"""Time spent inside attention during a training step, forward and backward.

Each attention call is wrapped by two autograd boundaries: one on its inputs
(q, k, v), one on its output. Forward, they mark the call's start and end; in the
backward the output's boundary runs first (its gradient arrives) and the inputs'
boundary last (once dq, dk and dv are all done), so the backward of the attention
lies between them. On CUDA the marks are CUDA events on the current stream (the
backward of a custom function runs on its forward's stream); on CPU they are wall
clock readings (CPU ops run synchronously). The rest of the step is "outside".

What counts as attention: the attention function of every encoder layer (the
pattern's softmax(QK^T)V, whichever backend computes it), and for Hugging Face
BigBird its ``bigbird_block_sparse_attention``. The q/k/v and output projections, and
HST's attention among representatives, count as outside.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.layers import AttentionSublayer
from .hf_bigbird import HF_METHOD, block_sparse_modules


@dataclass
class AttentionCall:
    """The four marks of one call: forward start/end, backward start/end."""

    marks: dict[str, object] = field(default_factory=dict)


class AttentionClock:
    """Collects the marks of every attention call while hooked into a model."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.calls: list[AttentionCall] = []

    def new_call(self) -> AttentionCall:
        call = AttentionCall()
        self.calls.append(call)
        return call

    def mark(self, call: AttentionCall, name: str) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            call.marks[name] = event
        else:
            call.marks[name] = time.perf_counter()

    def total_ms(self) -> float:
        """Forward + backward time inside the calls so far (a backward not run counts 0)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return sum(
            self._elapsed_ms(call, start, end)
            for call in self.calls
            for start, end in (("forward", "forward_end"), ("backward", "backward_end"))
            if start in call.marks and end in call.marks
        )

    def _elapsed_ms(self, call: AttentionCall, start: str, end: str) -> float:
        first, last = call.marks[start], call.marks[end]
        if self.device.type == "cuda":
            return first.elapsed_time(last)
        return (last - first) * 1e3


class _InputsBoundary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, clock: AttentionClock, call: AttentionCall, *tensors: torch.Tensor):
        ctx.clock, ctx.call = clock, call
        clock.mark(call, "forward")
        return tuple(tensor.view_as(tensor) for tensor in tensors)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        ctx.clock.mark(ctx.call, "backward_end")  # dq, dk and dv are all computed
        return None, None, *grads


class _OutputBoundary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, clock: AttentionClock, call: AttentionCall, output: torch.Tensor):
        ctx.clock, ctx.call = clock, call
        clock.mark(call, "forward_end")
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.clock.mark(ctx.call, "backward")
        return None, None, grad


def timed(fn: Callable, clock: AttentionClock, *, returns_tuple: bool = False) -> Callable:
    """``fn(q, k, v, *rest)`` with its forward and backward timed by ``clock``;
    ``returns_tuple``: fn returns (output, extra...) and only the output is timed."""

    def wrapped(q, k, v, *rest, **kwargs):
        call = clock.new_call()
        q, k, v = _InputsBoundary.apply(clock, call, q, k, v)
        result = fn(q, k, v, *rest, **kwargs)
        if returns_tuple:
            return _OutputBoundary.apply(clock, call, result[0]), *result[1:]
        return _OutputBoundary.apply(clock, call, result)

    return wrapped


@contextlib.contextmanager
def time_attention(model: nn.Module, clock: AttentionClock) -> Iterator[None]:
    """While active, every attention call of ``model`` is timed by ``clock``: the attend
    function passed to each ``AttentionSublayer`` (replaced through a forward pre-hook,
    so the model itself is not changed), or Hugging Face BigBird's block-sparse method."""

    def time_attend(module: nn.Module, args: tuple) -> tuple:
        if len(args) < 2:
            raise ValueError(f"{type(module).__name__} was called without its attend function")
        return (args[0], timed(args[1], clock), *args[2:])

    sublayers = [m for m in model.modules() if isinstance(m, AttentionSublayer)]
    hf_modules = block_sparse_modules(model)
    if not sublayers and not hf_modules:
        raise ValueError(f"found no attention to time in {type(model).__name__}")
    handles = [sublayer.register_forward_pre_hook(time_attend) for sublayer in sublayers]
    # An instance attribute (the method, maybe already wrapped by hf_bigbird) shadows the
    # class's method; put back exactly what was there.
    saved = [module.__dict__.get(HF_METHOD) for module in hf_modules]
    for module in hf_modules:
        setattr(module, HF_METHOD, timed(getattr(module, HF_METHOD), clock, returns_tuple=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, method in zip(hf_modules, saved, strict=True):
            if method is None:
                delattr(module, HF_METHOD)
            else:
                setattr(module, HF_METHOD, method)
