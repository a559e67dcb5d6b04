"""Small forward+backward runs of backend ``cuda`` for compute-sanitizer (gpu/cuda_sanitize.sh,
gpu/fuzz_gpu.py's racecheck child).

    python3 gpu/cuda_sanitize_driver.py memcheck|racecheck [--dry-run-cpu]

Awkward shapes: lengths that are not tile multiples (1, 63, 65, 130), N != M, D and E of 1,
60 and 256, MQA/GQA, every mask kind and broadcast shape, each dtype the backend serves
(a real GPU declines float32; ``--dry-run-cpu`` runs the kernels through their CPU emulator
to check this script); all gradients. Kept small because racecheck instruments every
shared-memory access. Prints ``SKIP`` for a declined case and ``driver cases run: N``.
"""
import os
import sys

DRY = "--dry-run-cpu" in sys.argv
if DRY:
    os.environ.setdefault("LINATTN_CUDA_EMULATE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import linattn  # noqa: E402

tool = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "memcheck"
DEV = "cpu" if DRY else "cuda"
CASES = [
    # B, H, Hkv, N, M, D, E, mask shape, causal, decay, state
    (1, 2, 1, 1, 1, 1, 1, None, False, False, False),
    (1, 2, 2, 65, 63, 60, 3, (1, 2, 65, 63), False, False, False),
    (2, 2, 1, 130, 130, 5, 65, (2, 1, 130, 130), True, False, False),
    (1, 4, 2, 65, 65, 48, 17, None, True, True, True),
    (1, 2, 1, 63, 63, 256, 256, (63, 63), True, True, False),
]
served = linattn.get_backend("cuda").dtypes
dtypes = [d for d in (torch.bfloat16, torch.float16, torch.float32) if d in served]
if tool == "racecheck":
    dtypes = dtypes[:2]
n = 0
for dtype in dtypes:
    for B, H, Hkv, N, M, D, E, ms, causal, decay, state in CASES:
        if tool == "racecheck" and D == 256 and n > 0:
            continue  # the widest tiles once: racecheck is slow on them
        if DRY and D == 256:
            continue  # the emulator is slow on D = 256
        g = torch.Generator(device=DEV).manual_seed(n)
        r = lambda *s: torch.randn(*s, generator=g, device=DEV).to(dtype).requires_grad_()  # noqa: E731
        q, k, v = r(B, H, N, D), r(B, Hkv, M, D), r(B, Hkv, M, E)
        mask = r(*ms) if ms else None
        s = (torch.rand(H, device=DEV) * 0.2).requires_grad_() if decay else None
        s0 = torch.randn(B, H, D, E, device=DEV, requires_grad=True) if state else None
        try:
            out = linattn.linear_attention(q, k, v, mask, causal=causal, decay=s, initial_state=s0,
                                           output_final_state=state, backend="cuda")
        except linattn.UnsupportedRequest as e:
            print(f"SKIP {dtype} N={N} D={D}: {str(e).splitlines()[0][:120]}", flush=True)
            continue
        o = out.o if state else out
        loss = o.float().square().sum() + (out.final_state.square().sum() if state else 0)
        loss.backward()
        if DEV == "cuda":
            torch.cuda.synchronize()
        n += 1
        print(f"case {n}: {dtype} B={B} H={H}/{Hkv} N={N} M={M} D={D} E={E} mask={ms} ok", flush=True)
print(f"driver cases run: {n}", flush=True)
