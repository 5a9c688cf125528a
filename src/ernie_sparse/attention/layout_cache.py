"""Cache what backends derive from a layout by the layout's content, not its identity.

A resampled layout (new random blocks each step) gets its own entry; the same
pattern rebuilt each call hits the cache. Layouts are small ([H, nb, nb] bools),
so hashing their bytes costs far less than attention.
"""

from __future__ import annotations

import torch

LayoutKey = tuple[bytes, tuple[int, ...]]


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
