"""The seed float32 step through backend triton_dense with its default (autotuned) kernels, for
Nsight Compute: the step is run warm (autotuning done), then once more inside the NVTX range
"probe", which `gpu/probe_triton.sh` gives ncu as --nvtx-include.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import linattn  # noqa: E402

B, H, N, D = 16, 12, 1024, 64
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(B, H, N, D, generator=g, device="cuda", requires_grad=True) for _ in range(3))
M = torch.randint(0, 2, (1, 1, N, N), generator=g, device="cuda").float()
do = torch.randn(B, H, N, D, generator=g, device="cuda")
for _ in range(3):
    linattn.linear_attention(q, k, v, M, backend="triton_dense").backward(do)
torch.cuda.synchronize()
torch.cuda.nvtx.range_push("probe")
linattn.linear_attention(q, k, v, M, backend="triton_dense").backward(do)
torch.cuda.synchronize()
torch.cuda.nvtx.range_pop()
print("probe done", torch.cuda.get_device_name())
