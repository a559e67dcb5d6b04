"""Time the chunk backend's fwd and fwd+bwd on B4 H16 N8192 D128 bf16 decay (the library on PYTHONPATH)."""
import os
import sys

import torch
import triton

import linattn
from linattn.backends.triton import chunk

B, H, N, D = 4, 16, 8192, 128
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v, do = (torch.randn(B, H, N, D, device="cuda", generator=g, dtype=torch.bfloat16) / 4 for _ in range(4))
s = torch.linspace(0.01, 0.3, H, device="cuda")
xs = [t.clone().requires_grad_() for t in (q, k, v)]


def fwd():
    return chunk.chunk_linear_attention(q, k, v, decay=s)[0]


def fb():
    o = chunk.chunk_linear_attention(*xs, decay=s)[0]
    o.backward(do)


fb()
torch.cuda.synchronize()
a = triton.testing.do_bench(fwd, warmup=10, rep=60, return_mode="median")
b = triton.testing.do_bench(fb, warmup=10, rep=60, grad_to_none=xs, return_mode="median")
print(f"{sys.argv[1] if len(sys.argv) > 1 else ''} LINATTN_CHUNK={os.environ.get('LINATTN_CHUNK', '')!r}: fwd {a:.3f} ms, fwd+bwd {b:.3f} ms",
      flush=True)
