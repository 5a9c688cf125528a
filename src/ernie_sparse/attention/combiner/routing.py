"""Combiner-Learnable's routing (appendix D): k-means on each head's keys, tokens in cluster order.

A routed variant sorts each head's tokens with ``cluster_order`` and runs another variant's
kernel (the fast path) or partition (the reference) on that order; see ``in_order``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KMEANS_ITERATIONS = 3


def cluster_order(k: torch.Tensor, real: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """[B, H, N] long: positions sorted stably by k-means cluster of their key, padding last.

    k [B, H, N, D]; real [B, 1 or H, N]. Deterministic: centroids start at evenly spaced real
    keys, KMEANS_ITERATIONS Lloyd steps, empty clusters keep their centroid; no gradient.
    """
    batch, heads, seq_len, dim = k.shape
    with torch.no_grad():
        keys = k.detach()
        if keys.dtype in (torch.float16, torch.bfloat16):
            keys = keys.float()  # distances in half precision tie and flip assignments
        real = real.expand(batch, heads, seq_len)
        ranks = real.long().cumsum(-1)  # [B, H, N]: real tokens up to and including each
        n_real = ranks[..., -1:]
        targets = torch.arange(num_clusters, device=k.device) * n_real // num_clusters + 1
        start = torch.searchsorted(ranks, targets).clamp(max=seq_len - 1)  # [B, H, C]
        centroids = keys.gather(2, start[..., None].expand(-1, -1, -1, dim))  # [B, H, C, D]
        weights = real.to(keys.dtype)[..., None]
        for _ in range(KMEANS_ITERATIONS):
            assign = _nearest(keys, centroids)
            onehot = F.one_hot(assign, num_clusters).to(keys.dtype) * weights  # [B, H, N, C]
            sums = onehot.transpose(-1, -2) @ keys  # [B, H, C, D]
            counts = onehot.sum(2)[..., None]
            centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        assign = _nearest(keys, centroids).masked_fill(~real, num_clusters)
        positions = torch.arange(seq_len, device=k.device)
        return torch.argsort(assign * seq_len + positions, dim=-1)


def _nearest(keys: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    distance = (centroids * centroids).sum(-1)[..., None, :] - 2 * keys @ centroids.transpose(
        -1, -2
    )
    return distance.argmin(-1)  # [B, H, N]
