"""Attention of query blocks over their own gathered key blocks, in cache-sized chunks.

Each of R query blocks ([R, bs, D]) attends to the K = slots * bs keys of the
key blocks listed in its row of ``key_index`` (indices into the flattened key
blocks [M, bs, D]). Query blocks are processed in chunks small enough that a
chunk's scores stay in cache (plain batched matmuls run near the machine's
matmul speed there, and no N-sized temporaries are page-faulted in). When a
backward will run, each chunk keeps its gathered keys, values and
probabilities, O(N * slots * bs) in all, so the backward needs no second
gather or softmax. Attention dropout regenerates its mask from a saved seed.
Half-precision inputs are computed in float32 (scores, probabilities, P V, the
gradients and their sums over query blocks) and rounded once, at the end.
"""

from __future__ import annotations

import functools

import torch

# Bytes of float32 scores per chunk. CPU: small enough to stay in a core's L2 cache (2 MiB
# measured best on 2 cores). GPU: large, so that kernel launches do not dominate.
CPU_CHUNK_SCORE_BYTES = 2 * 1024 * 1024
GPU_CHUNK_SCORE_BYTES = 256 * 1024 * 1024


def _chunks(rows: int, slots: int, block_size: int, device: torch.device):
    """(start, stop) ranges of query blocks whose [n, bs, slots * bs] scores fit the budget."""
    budget = CPU_CHUNK_SCORE_BYTES if device.type == "cpu" else GPU_CHUNK_SCORE_BYTES
    per_chunk = max(1, budget // (4 * slots * block_size * block_size))
    for start in range(0, rows, per_chunk):
        yield start, min(rows, start + per_chunk)


def _knows_values(tensor: torch.Tensor) -> bool:
    """Whether shortcuts may read the tensor's values: not on the meta device (shape
    inference, no values) nor under torch.compile (a read would break the graph)."""
    return tensor.device.type != "meta" and not torch.compiler.is_compiling()


def _key_bias(key_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Additive bias [R, 1, K] (0 allowed, -inf masked) and, if some block has no key at all,
    a [R, 1, 1] float multiplier that zeroes those blocks (their bias is made 0 to avoid NaN)."""
    if key_mask is None:
        return None, None
    has_key = key_mask.any(dim=-1, keepdim=True)  # [R, 1, 1]
    allowed = key_mask | ~has_key
    bias = torch.zeros(key_mask.shape, dtype=torch.float32, device=key_mask.device)
    bias.masked_fill_(~allowed, float("-inf"))
    every_block_has_a_key = _knows_values(has_key) and bool(has_key.all())
    keep_rows = None if every_block_has_a_key else has_key.to(torch.float32)
    return bias, keep_rows


def _rows_with_masked_keys(key_mask: torch.Tensor | None) -> list[int] | None:
    """Running count of query blocks with a masked key, so a chunk without one skips the bias
    (None: no mask, or its values are unknown and every chunk takes the bias)."""
    if key_mask is None or not _knows_values(key_mask):
        return None
    return [0, *(~key_mask).any(dim=-1).flatten().cumsum(0).tolist()]


def _chunk_bias(bias, masked_so_far, start, stop):
    """The bias of query blocks [start, stop), or None when none of them has a masked key."""
    if bias is None or (masked_so_far is not None and masked_so_far[stop] == masked_so_far[start]):
        return None
    return bias[start:stop]


def _probabilities(scaled_queries, keys, bias, keep_rows):
    """Softmax probabilities [n, bs, K] of one chunk's pre-scaled queries and keys (both of
    the compute dtype, float32 or float64)."""
    if bias is None:
        scores = torch.bmm(scaled_queries, keys.transpose(1, 2))
    else:  # the mask as an additive 0 / -inf bias, fused into the matmul
        scores = torch.baddbmm(bias.to(keys.dtype), scaled_queries, keys.transpose(1, 2))
    probs = torch.softmax(scores, dim=-1)
    if keep_rows is not None:
        probs.mul_(keep_rows)  # blocks with no allowed key give zeros
    return probs


def _dropout_keep(shape, dropout_p, seed, chunk_start, device):
    """The chunk's dropout mask, regenerated from the seed in the backward. Under
    torch.compile (which cannot trace a seeded generator) it comes from torch's global
    generator instead and is kept for the backward: a byte per probability."""
    if seed is None:
        return torch.rand(shape, device=device) >= dropout_p
    generator = torch.Generator(device=device).manual_seed(seed + chunk_start)
    return torch.rand(shape, generator=generator, device=device) >= dropout_p


def _without_autocast(method):
    """Run a pass with autocast off: the kernel sets its own precision (float32 scores
    and probabilities), and the backward must meet the dtypes the forward saved (under
    bf16 autocast the forward's matmuls would otherwise round to bf16)."""

    @functools.wraps(method)
    def wrapped(ctx, first, *rest):
        if not torch.amp.is_autocast_available(first.device.type):  # meta: shapes only
            return method(ctx, first, *rest)
        with torch.autocast(first.device.type, enabled=False):
            return method(ctx, first, *rest)

    return wrapped


class GatheredBlockAttention(torch.autograd.Function):
    @staticmethod
    @_without_autocast
    def forward(
        ctx, queries, key_blocks, value_blocks, key_index, key_mask, dropout_p, keep_for_backward
    ):
        rows, block_size, dim = queries.shape
        # Half precision computes in float32 throughout (scores, probabilities, P V, the
        # scale) and rounds only the output, as PyTorch's own SDPA kernels do.
        wide = torch.promote_types(queries.dtype, torch.float32)
        scale = dim**-0.5
        drawn_seed = dropout_p > 0 and not torch.compiler.is_compiling()
        seed = int(torch.randint(0, 2**62, (1,))) if drawn_seed else None
        bias, keep_rows = _key_bias(key_mask)
        masked_so_far = _rows_with_masked_keys(key_mask)
        out = torch.empty_like(queries)
        saved = []  # per chunk: gathered keys, values and probabilities, for the backward
        for start, stop in _chunks(rows, key_index.shape[1], block_size, key_blocks.device):
            index = key_index[start:stop].flatten()
            keys = key_blocks.index_select(0, index).view(stop - start, -1, dim)
            values = value_blocks.index_select(0, index).view(stop - start, -1, dim)
            probs = _probabilities(
                queries[start:stop].to(wide) * scale,  # S = (scale * Q) K^T
                keys.to(wide),
                _chunk_bias(bias, masked_so_far, start, stop),
                None if keep_rows is None else keep_rows[start:stop],
            )
            used, keep = probs, None
            if dropout_p > 0:
                keep = _dropout_keep(probs.shape, dropout_p, seed, start, probs.device)
                used = probs * keep / (1.0 - dropout_p)
            if out.dtype == wide:
                torch.bmm(used, values, out=out[start:stop])
            else:  # rounded once, from the float32 product
                out[start:stop] = torch.bmm(used, values.to(wide))
            if keep_for_backward:  # stored in the queries' dtype (exact, see below)
                kept_mask = keep if seed is None else None
                saved.append((keys.to(queries.dtype), values.to(queries.dtype), probs, kept_mask))
        ctx.save_for_backward(queries, key_blocks, value_blocks, key_index, out)
        ctx.chunks = saved
        ctx.scale, ctx.dropout_p, ctx.seed = scale, dropout_p, seed
        return out

    @staticmethod
    @_without_autocast
    def backward(ctx, grad_out):
        queries, key_blocks, value_blocks, key_index, out = ctx.saved_tensors
        rows, block_size, dim = queries.shape
        wide = torch.promote_types(out.dtype, torch.float32)
        grad_out = grad_out.contiguous()
        # softmax backward: dS = P * (dP - sum_j P_j dP_j), and sum_j P_j dP_j = <dO, O>.
        row_dot = (grad_out.to(wide) * out.to(wide)).sum(dim=-1, keepdim=True)  # [R, bs, 1]
        grad_queries = torch.empty_like(queries)
        # dK, dV sum over every query block that visits a key block: accumulate them wide.
        grad_keys = torch.zeros(key_blocks.shape, dtype=wide, device=key_blocks.device)
        grad_values = torch.zeros(value_blocks.shape, dtype=wide, device=value_blocks.device)
        ranges = _chunks(rows, key_index.shape[1], block_size, key_blocks.device)
        for (start, stop), (keys, values, probs, keep) in zip(ranges, ctx.chunks, strict=True):
            index = key_index[start:stop].flatten()
            keys, values = keys.to(wide), values.to(wide)
            chunk_grad = grad_out[start:stop].to(wide)
            grad_probs = torch.bmm(chunk_grad, values.transpose(1, 2))
            used = probs
            if ctx.dropout_p > 0:
                if keep is None:
                    keep = _dropout_keep(probs.shape, ctx.dropout_p, ctx.seed, start, probs.device)
                used = probs * keep / (1.0 - ctx.dropout_p)
                grad_probs.mul_(keep).div_(1.0 - ctx.dropout_p)
            chunk_grad_values = torch.bmm(used.transpose(1, 2), chunk_grad)
            grad_scores = grad_probs.sub_(row_dot[start:stop]).mul_(probs)
            # S = (scale * Q) K^T, so dQ = scale * dS K and dK = dS^T (scale * Q).
            grad_queries[start:stop] = torch.bmm(grad_scores, keys).mul_(ctx.scale)
            chunk_queries = queries[start:stop].to(wide) * ctx.scale
            chunk_grad_keys = torch.bmm(grad_scores.transpose(1, 2), chunk_queries)
            grad_keys.index_add_(0, index, chunk_grad_keys.view(-1, block_size, dim))
            grad_values.index_add_(0, index, chunk_grad_values.view(-1, block_size, dim))
        grad_keys, grad_values = grad_keys.to(key_blocks.dtype), grad_values.to(key_blocks.dtype)
        return grad_queries, grad_keys, grad_values, None, None, None, None


def gathered_block_attention(
    queries: torch.Tensor,
    key_blocks: torch.Tensor,
    value_blocks: torch.Tensor,
    key_index: torch.Tensor,
    key_mask: torch.Tensor | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention of ``queries`` [R, bs, D] over the key blocks ``key_index`` [R, slots] names.

    ``key_blocks`` and ``value_blocks`` are [M, bs, D], of the queries' dtype or, for
    half-precision queries, float32 holding half-precision values (then their gradients come
    back in float32, unrounded, to be summed with other float32 contributions); ``key_mask``
    [R, 1, slots * bs] is True for keys that may be attended. Returns [R, bs, D].
    """
    # Keep per-chunk state for the backward only when one will run.
    keep_for_backward = torch.is_grad_enabled() and any(
        t.requires_grad for t in (queries, key_blocks, value_blocks)
    )
    return GatheredBlockAttention.apply(
        queries, key_blocks, value_blocks, key_index, key_mask, dropout_p, keep_for_backward
    )
