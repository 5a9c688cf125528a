"""Peak memory of a call: CUDA allocator statistics, or live tensor storage on CPU.

PyTorch's CPU allocator keeps no statistics, so on CPU we watch every ATen
call (a TorchDispatchMode) and keep a weak reference to each storage it
creates; the peak is the largest total size of storages alive at once. This
counts what the computation keeps (autograd's saved tensors included), not the
private scratch buffers inside fused kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class StoragePeakTracker(TorchDispatchMode):
    """Tracks the peak bytes of tensor storages created while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _forget_dead(self) -> None:
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._forget_dead()
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory in MiB allocated by ``fn()`` beyond what existed before it ran."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with StoragePeakTracker() as tracker:
        fn()
    return tracker.peak / 2**20
