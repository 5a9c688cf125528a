"""Fused CPU backend: one C++/OpenMP kernel for block-sparse attention, forward and backward.

The kernel (``csrc/block_sparse.cpp``, shipped as package data) walks the layout as
CSR (per query block: how many key blocks, and which, in increasing order), keeps a
running softmax per query (online softmax, no probability matrix is stored) and saves
only the output and each query's log-sum-exp; the backward recomputes the
probabilities from those, FlashAttention-style. Keys and values are read in place,
never gathered. float32, bfloat16 and float16 accumulate in float32; float64 in
float64 (tests, gradcheck). Attention dropout draws its mask from a hash of a seed (from
torch's default generator, so ``torch.manual_seed`` reproduces it), the head, the query
and the key; the backward regenerates the same mask.

It is compiled on first use with ``torch.utils.cpp_extension`` (needs a C++ compiler
and ninja) into ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/ernie_sparse/extensions``,
once per source, torch version and CPU instruction set; later processes load the
cached build. Without a compiler, or if the build fails, the reason is logged once,
``backend="fused"`` raises an error naming it, and ``auto`` (which never picks this
backend yet) is unaffected. ``ERNIE_SPARSE_FUSED=0`` switches the build off.

The kernel is the torch custom op ``ernie_sparse::fused_block_sparse_attention``
(with a fake implementation and an autograd formula), so autograd and ``torch.compile``
see one opaque op.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .layout_cache import (
    KeyedLayout,
    LayoutKey,
    allowed_blocks_first,
    derived_from_layout,
    layout_from_key,
)
from .padding import effective_block_size, pad_to_multiple

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "block_sparse.cpp"
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
DISABLE_ENV = "ERNIE_SPARSE_FUSED"

# Vector instructions per CPU capability (torch's own detection). The build is keyed by
# the capability, so a cache shared by different machines never loads a foreign build.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}
_BASE_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast"]

# Backward splits of each head's query blocks (0: chosen by the kernel from the thread count).
BACKWARD_SPLITS = 0


@dataclass(frozen=True)
class BuildStatus:
    ok: bool
    reason: str = ""  # why the kernel is unavailable (empty when ok)


def _cpu_capability() -> str:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "DEFAULT"
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "DEFAULT"


def build_directory(name: str) -> Path:
    """Where the extension ``name`` is built and cached."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root) / name
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ernie_sparse" / "extensions" / name


def _extension_name(flags: list[str], capability: str) -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join([torch.__version__, *flags]).encode())
    return f"ernie_sparse_fused_{capability.lower()}_{digest.hexdigest()[:12]}"


def _short_reason(error: BaseException) -> str:
    """The gist of a build error: its first line (without the compiler command line) and the
    compiler's first ``error:`` line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0].split(": [", 1)[0] if lines else ""
    detail = next((line for line in lines[1:] if "error:" in line), "")
    if not detail and lines and ": [" not in lines[0]:
        detail = lines[-1] if len(lines) > 1 else ""
    summary = f"{type(error).__name__}: {first}" + (f"; {detail}" if detail else "")
    return summary[:500]


def _compile() -> BuildStatus:
    from torch.utils import cpp_extension

    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return BuildStatus(False, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return BuildStatus(False, f"no C++ compiler ({compiler!r} is not on PATH)")
    if not cpp_extension.is_ninja_available():
        return BuildStatus(False, "ninja is not installed (pip install ninja)")
    capability = _cpu_capability()
    flags = _BASE_FLAGS + _ISA_FLAGS.get(capability, [])
    name = _extension_name(flags, capability)
    directory = build_directory(name)
    if not (directory / f"{name}.so").exists():
        logger.warning(
            "ernie-sparse: compiling the fused CPU attention kernel (once; about a minute) into %s",
            directory,
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # compiler errors, missing headers, linker, loader
        logger.debug("fused kernel build failed", exc_info=True)
        reason = f"the build failed ({_short_reason(error)}; debug logging shows the full output)"
        return BuildStatus(False, reason)
    return BuildStatus(True)


_build_status: BuildStatus | None = None


def build_status() -> BuildStatus:
    """Compile (or load the cached build of) the kernel once per process. A module global,
    not ``functools.cache``: ``torch.compile`` reads it, where it would trace the build."""
    global _build_status
    if _build_status is not None:
        return _build_status
    status = _build_status = _compile()
    if not status.ok:
        logger.warning(
            "ernie-sparse: the fused CPU attention kernel is unavailable: %s. "
            "backend='fused' will raise; backend='auto' keeps using 'blocked'.",
            status.reason,
        )
    return status


def fused_available() -> bool:
    """True when the kernel is built (building it now if needed)."""
    return build_status().ok


def _require_kernel() -> None:
    status = build_status()
    if not status.ok:
        raise RuntimeError(
            f"backend 'fused' is unavailable: {status.reason}; use backend='blocked' (or 'auto')"
        )


# --------------------------------------------------------------------------- layout as CSR


@functools.lru_cache(maxsize=64)
def _cached_csr(key: LayoutKey) -> tuple[torch.Tensor, torch.Tensor]:
    layout = layout_from_key(key)
    num_blocks = layout.shape[-1]
    counts, order = allowed_blocks_first(layout.reshape(-1, num_blocks))  # [Hl*nb], [Hl*nb, nb]
    used = torch.arange(num_blocks) < counts[:, None]
    cols = order[used]  # each row's allowed key blocks, increasing, rows one after another
    row_offsets = F.pad(counts.cumsum(0), (1, 0))  # [Hl*nb + 1]
    return row_offsets.to(torch.int64).contiguous(), cols.to(torch.int64).contiguous()


def layout_csr(layout: torch.Tensor | KeyedLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR of a layout [Hl, nb, nb]: row offsets [Hl*nb + 1] and key block indices [nnz]
    (row ``h * nb + qb`` lists query block qb's key blocks in head h), cached by content."""
    return derived_from_layout(layout, ("fused",), _cached_csr)


# --------------------------------------------------------------------------- custom op


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("ernie_sparse::fused_block_sparse_attention", mutates_args=())
def fused_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    row_offsets: torch.Tensor,
    cols: torch.Tensor,
    key_valid: torch.Tensor | None,
    block_size: int,
    scale: float,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output [B, H, Np, D] and log-sum-exp [B, H, Np] (+inf for queries with no real key)
    of block-sparse attention; Np a multiple of ``block_size``, key_valid [B, Np] or None;
    ``seed`` (one int64) draws the dropout mask when ``dropout_p > 0``."""
    _require_kernel()
    return torch.ops.ernie_sparse_fused.attention_forward(
        q, k, v, row_offsets, cols, key_valid, block_size, scale, dropout_p, seed
    )


@fused_block_sparse_attention.register_fake
def _fused_forward_fake(q, k, v, row_offsets, cols, key_valid, *args):
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=_accumulation_dtype(q.dtype), device=q.device)
    return out, lse


@torch.library.custom_op("ernie_sparse::fused_block_sparse_attention_backward", mutates_args=())
def fused_block_sparse_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    row_offsets: torch.Tensor,
    cols: torch.Tensor,
    key_valid: torch.Tensor | None,
    block_size: int,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    splits: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of ``fused_block_sparse_attention`` from its output and log-sum-exp."""
    _require_kernel()
    return torch.ops.ernie_sparse_fused.attention_backward(
        grad_out, q, k, v, out, lse, row_offsets, cols, key_valid, block_size, scale,
        dropout_p, seed, splits,
    )  # fmt: skip


@fused_block_sparse_attention_backward.register_fake
def _fused_backward_fake(grad_out, q, k, v, out, lse, row_offsets, cols, key_valid, *args):
    return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, row_offsets, cols, key_valid, block_size, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, row_offsets, cols, key_valid, seed)
    ctx.block_size, ctx.scale, ctx.dropout_p = block_size, scale, dropout_p


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, row_offsets, cols, key_valid, seed = ctx.saved_tensors
    grad_q, grad_k, grad_v = fused_block_sparse_attention_backward(
        grad_out, q, k, v, out, lse, row_offsets, cols, key_valid,
        ctx.block_size, ctx.scale, ctx.dropout_p, seed, BACKWARD_SPLITS,
    )  # fmt: skip
    return grad_q, grad_k, grad_v, None, None, None, None, None, None, None


fused_block_sparse_attention.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- backend


def fused_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor | KeyedLayout,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Block-sparse attention over [B, H, N, D] CPU inputs with the fused kernel; N is padded
    to the block size inside (a block larger than N is cut to N: one block, the same
    attention). Inputs are checked by ``sparse_attention``. On ``meta`` inputs (with a CPU
    layout) the op's fake implementation infers shapes without the kernel."""
    if q.device.type not in ("cpu", "meta"):
        raise ValueError(
            f"backend 'fused' is a CPU kernel, got {q.device.type} tensors; "
            "use backend='flex' or 'blocked' there"
        )
    if q.dtype not in FUSED_DTYPES:
        names = ", ".join(str(t).removeprefix("torch.") for t in FUSED_DTYPES)
        raise TypeError(f"backend 'fused' supports {names}; got {q.dtype}")
    if q.device.type == "cpu":
        _require_kernel()
    seq_len = q.shape[2]
    block_size = effective_block_size(block_size, seq_len)
    q, k, v, key_valid = pad_to_multiple(q, k, v, key_padding_mask, block_size)
    if key_valid is not None:
        key_valid = key_valid.contiguous()
    row_offsets, cols = layout_csr(layout)
    seed = torch.randint(0, 2**62, (1,)) if dropout_p > 0 else None
    out, _ = fused_block_sparse_attention(
        q, k, v, row_offsets, cols, key_valid, block_size, q.shape[-1] ** -0.5, dropout_p, seed
    )
    return out[:, :, :seq_len]
