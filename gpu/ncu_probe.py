"""One warm seed float32 fwd+bwd through backend cuda, for Nsight Compute (gpu/run_all.sh stage probe).

    python3 gpu/ncu_probe.py            # builds the extension and runs the step twice
    ncu ... -k regex:masked_product --launch-skip 4 --launch-count 4 python3 gpu/ncu_probe.py

The first step's four launches (fwd, dq, dk, dv) warm up; ncu then profiles the second step's.
PROBE_DTYPE=bfloat16 PROBE_N=4096 PROBE_B=4 for the half-precision kernel.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import linattn  # noqa: E402

dt = getattr(torch, os.environ.get("PROBE_DTYPE", "float32"))
B, H, N, D = int(os.environ.get("PROBE_B", "16")), 12, int(os.environ.get("PROBE_N", "1024")), 64
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(B, H, N, D, generator=g, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
M = torch.randint(0, 2, (1, 1, N, N), generator=g, device="cuda").to(dt)
do = torch.randn(B, H, N, D, generator=g, device="cuda", dtype=dt)
for _ in range(2):
    o = linattn.linear_attention(q, k, v, M, backend="cuda")
    o.backward(do)
torch.cuda.synchronize()
print("probe done", torch.cuda.get_device_name(), dt, B, H, N, D)
