"""Which kernel ``F.scaled_dot_product_attention`` really ran: read off the profiler.

SDPA picks flash, cuDNN, memory-efficient or the plain math path at run time from
the inputs (dtype, mask, head size, device), so a benchmark that says "dense SDPA"
names the one it saw, not the one it hoped for. Each choice dispatches to its own
ATen op, which the profiler records on every device.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from torch.profiler import ProfilerActivity, profile

# ATen op behind SDPA -> the kernel's name (the CPU's flash kernel is named "flash (cpu)").
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def sdpa_kernels_used(run: Callable[[], object]) -> list[str]:
    """The SDPA kernels ``run()`` called (named by their forward ops), in the order the
    profiler lists them; [] for none. Only CPU-side op events are recorded (every op is
    dispatched from the CPU), so no CUDA profiler (CUPTI) starts."""
    profiler = profile(activities=[ProfilerActivity.CPU])
    with _without_stderr():
        profiler.start()
    try:
        run()
    finally:
        with _without_stderr():
            profiler.stop()
    names = (SDPA_OPS.get(event.name) for event in profiler.events())
    return list(dict.fromkeys(name for name in names if name))


@contextlib.contextmanager
def _without_stderr() -> Iterator[None]:
    """File descriptor 2 closed to /dev/null: the profiler's C++ side prints five stage
    lines per start and stop there (torch 2.13), which would bury the benchmark's output.
    Only its start and stop run inside this, never the benchmarked step."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to hide
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
