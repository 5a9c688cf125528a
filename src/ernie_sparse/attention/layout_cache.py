"""Cache what backends derive from a layout by the layout's content, not its identity.

A resampled layout (new random blocks each step) gets its own entry; the same
pattern rebuilt each call hits the cache. Layouts are small ([H, nb, nb] bools),
so hashing their bytes costs far less than attention.

A model hashes each layout once, where it builds it (``KeyedLayout``): the layers and
steps that share a layout then read what backends derived from it off the object,
with no hashing per call. That matters on two counts: hashing a layout on a GPU
would copy it to the host (a sync per layer), and ``torch.compile`` cannot trace
the hashing (a graph break per layer), while it traces the attribute reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

LayoutKey = tuple[bytes, tuple[int, ...]]
Derived = TypeVar("Derived")


def layout_key(layout: torch.Tensor) -> LayoutKey:
    """Hashable content of a layout: its bytes and shape."""
    if layout.device.type == "meta":
        raise ValueError(
            "this backend plans its work from the layout's values, and a layout on the meta "
            "device has none; pass the layout as a CPU tensor (q, k and v may stay on meta)"
        )
    cpu_layout = layout.detach().to("cpu", torch.bool).contiguous()
    return cpu_layout.numpy().tobytes(), tuple(cpu_layout.shape)


def layout_from_key(key: LayoutKey) -> torch.Tensor:
    """The CPU layout a key was made from."""
    data, shape = key
    return torch.frombuffer(bytearray(data), dtype=torch.bool).view(shape)


def allowed_blocks_first(layout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a layout [..., nb]: how many key blocks it allows [...], and all key block
    indices [..., nb] with the allowed ones first, in increasing order (a stable sort)."""
    counts = layout.sum(dim=-1)
    order = torch.sort((~layout).to(torch.uint8), dim=-1, stable=True).indices
    return counts, order


class KeyedLayout:
    """A block layout with its content key, computed once on the host where the layout is
    built, and a memo of what backends derive from it (per backend, device, block size).

    Every backend and ``sparse_attention`` take one in place of the bool tensor. Under
    ``torch.compile`` a derived plan that is not built yet is built eagerly (a graph
    break in that first compiled call; the next call recompiles without it): an eager
    call before compiling, such as a first training step, builds them all.
    """

    __slots__ = ("_derived", "key", "tensor")

    def __init__(self, layout: torch.Tensor) -> None:
        if not isinstance(layout, torch.Tensor) or layout.device.type != "cpu":
            where = layout.device if isinstance(layout, torch.Tensor) else type(layout).__name__
            raise ValueError(f"KeyedLayout needs a CPU layout (hashed on the host), got {where}")
        self.tensor = layout  # bool [Hl, nb, nb]
        self.key = layout_key(layout)
        self._derived: dict[tuple, object] = {}

    def __repr__(self) -> str:
        heads, rows, cols = self.tensor.shape
        return f"KeyedLayout([{heads}, {rows}, {cols}], {int(self.tensor.sum())} blocks)"

    def derived(self, what: tuple, build: Callable[[LayoutKey], Derived]) -> Derived:
        """``build(key)`` once per ``what`` (a tuple naming the backend and its settings)."""
        if what not in self._derived:
            self._derived[what] = torch.compiler.disable(build)(self.key)
        return self._derived[what]  # type: ignore[return-value]


def layout_tensor(layout: torch.Tensor | KeyedLayout) -> torch.Tensor:
    """The bool layout tensor of either form."""
    return layout.tensor if isinstance(layout, KeyedLayout) else layout


def derived_from_layout(
    layout: torch.Tensor | KeyedLayout, what: tuple, build: Callable[[LayoutKey], Derived]
) -> Derived:
    """What ``build`` derives from the layout's key: memoized on a ``KeyedLayout``; for a
    plain tensor, the key is computed now (``build`` should cache by key itself)."""
    if isinstance(layout, KeyedLayout):
        return layout.derived(what, build)
    return build(layout_key(layout))
