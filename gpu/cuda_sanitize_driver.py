"""Small forward+backward runs of backend ``cuda`` for compute-sanitizer (gpu/cuda_sanitize.sh).

Awkward shapes: lengths that are not tile multiples (1, 63, 65, 130), N != M, D and E of 1,
60 and 256, MQA/GQA, every mask kind and broadcast shape, each dtype; all gradients. Kept
small because racecheck instruments every shared-memory access.
"""
import sys

import torch

import linattn

tool = sys.argv[1] if len(sys.argv) > 1 else "memcheck"
CASES = [
    # B, H, Hkv, N, M, D, E, mask shape, causal, decay, state
    (1, 2, 1, 1, 1, 1, 1, None, False, False, False),
    (1, 2, 2, 65, 63, 60, 3, (1, 2, 65, 63), False, False, False),
    (2, 2, 1, 130, 130, 5, 65, (2, 1, 130, 130), True, False, False),
    (1, 4, 2, 65, 65, 48, 17, None, True, True, True),
    (1, 2, 1, 63, 63, 256, 256, (63, 63), True, True, False),
]
dtypes = [torch.float32, torch.bfloat16, torch.float16] if tool == "memcheck" else [torch.float32, torch.bfloat16]
n = 0
for dtype in dtypes:
    for B, H, Hkv, N, M, D, E, ms, causal, decay, state in CASES:
        if tool == "racecheck" and D == 256 and dtype != torch.float32:
            continue
        g = torch.Generator(device="cuda").manual_seed(n)
        r = lambda *s: torch.randn(*s, generator=g, device="cuda").to(dtype).requires_grad_()  # noqa: E731
        q, k, v = r(B, H, N, D), r(B, Hkv, M, D), r(B, Hkv, M, E)
        mask = r(*ms) if ms else None
        s = (torch.rand(H, device="cuda") * 0.2).requires_grad_() if decay else None
        s0 = torch.randn(B, H, D, E, device="cuda", requires_grad=True) if state else None
        out = linattn.linear_attention(q, k, v, mask, causal=causal, decay=s, initial_state=s0,
                                       output_final_state=state, backend="cuda")
        o = out.o if state else out
        loss = o.float().square().sum() + (out.final_state.square().sum() if state else 0)
        loss.backward()
        torch.cuda.synchronize()
        n += 1
print(f"driver cases run: {n}", flush=True)
