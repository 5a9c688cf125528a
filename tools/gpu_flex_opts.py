"""Which FlexAttention kernel options compile fwd+bwd for 64-token blocks in fp32 and bf16."""

import torch
from torch.nn.attention.flex_attention import flex_attention

from ernie_sparse import patterns
from ernie_sparse.attention.flex import layout_block_mask

compiled = torch.compile(flex_attention, dynamic=False)
B, H, N, D, bs = 2, 4, 1024, 64, 64
layout = patterns.bigbird(N // bs, num_heads=H, generator=torch.Generator().manual_seed(0))
mask = layout_block_mask(layout, bs, None, torch.device("cuda"))
variants = {
    "none": None,
    "fwd64": {"BLOCK_M": 64, "BLOCK_N": 64},
    "fwd64+bwd": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64,
                  "BLOCK_M2": 64, "BLOCK_N2": 32},
}
for dtype in (torch.float32, torch.bfloat16):
    for name, options in variants.items():
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=dtype, requires_grad=True)
                   for _ in range(3))
        try:
            out = compiled(q, k, v, block_mask=mask, kernel_options=options)
            out.sum().backward()
            torch.cuda.synchronize()
            print(dtype, name, "OK")
        except Exception as error:  # noqa: BLE001
            print(dtype, name, "FAIL", type(error).__name__, str(error).splitlines()[0][:200])
