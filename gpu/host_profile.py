"""Where the host time of a triton_dense call goes: cProfile of bf16 causal / decay fwd+bwd at
B1 H8 N8192 D64 (issue 4's in-kernel-mask problem), fixed tiles, after warm-up. Also the wall
time per step with and without waiting for the GPU. Prints the top functions by own time."""
import cProfile
import io
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("LINATTN_TRITON_AUTOTUNE", "0")
import torch  # noqa: E402

import linattn  # noqa: E402
from linattn.slopes import tnl_slopes  # noqa: E402

B, H, N, D = 1, 8, 8192, 64
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_() for _ in range(3))
do = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
s = tnl_slopes(H, device="cuda")
print(torch.cuda.get_device_name())
for name, kw in (("causal", dict(causal=True)), ("decay", dict(causal=True, decay=s))):
    def step():
        o = linattn.linear_attention(q, k, v, backend="triton_dense", **kw)
        o.backward(do)
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(50):
        step()
    host = (time.perf_counter() - t) / 50
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / 50
    print(f"{name}: host {host * 1e3:.3f} ms per step (no wait), wall {wall * 1e3:.3f} ms per step")
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(50):
        step()
    torch.cuda.synchronize()
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(18)
    print(out.getvalue()[-6000:])
