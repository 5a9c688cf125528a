"""Quick CUDA check of the flex and blocked backends against the reference (run on a GPU host)."""

import time

import torch

from ernie_sparse import patterns, sparse_attention
from ernie_sparse.attention import reference_attention

print(torch.__version__, torch.cuda.get_device_name())
device = "cuda"
generator = torch.Generator().manual_seed(0)
for B, H, N, D, bs in [(2, 4, 1000, 64, 64), (2, 4, 2048, 64, 128), (1, 2, 300, 32, 32)]:
    nb = patterns.num_blocks_for(N, bs)
    layout = patterns.bigbird(nb, num_heads=H, generator=generator)
    layout[:, 3] = False  # an empty row
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (
            torch.randn(B, H, N, D, device=device, dtype=dtype, requires_grad=True)
            for _ in range(3)
        )
        padding = torch.ones(B, N, dtype=torch.bool, device=device)
        padding[-1, N // 3 :] = False
        for key_padding in (None, padding):
            weight = torch.randn(B, H, N, D, device=device)
            qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
            ref = reference_attention(
                qf, kf, vf, layout.to(device), block_size=bs, key_padding_mask=key_padding
            )
            ref_grads = torch.autograd.grad((ref * weight).sum(), (qf, kf, vf))
            for backend in ("flex", "blocked"):
                start = time.time()
                out = sparse_attention(
                    q, k, v, layout, block_size=bs, key_padding_mask=key_padding, backend=backend
                )
                grads = torch.autograd.grad((out.float() * weight).sum(), (q, k, v))
                err = (out.float() - ref).abs().max().item()
                grad_err = max((a.float() - b).abs().max().item() for a, b in zip(grads, ref_grads))
                print(
                    f"N={N} bs={bs} {dtype} padded={key_padding is not None} {backend}: "
                    f"out {err:.2e} grad {grad_err:.2e} nan={out.isnan().any().item()} "
                    f"{time.time() - start:.1f}s"
                )
