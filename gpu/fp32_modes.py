"""float32 through triton_dense beyond the seed: the default (f16x3) against tf32x3, same process.

For each problem: fwd+bwd ms (triton.testing.do_bench, median; autotuned, first call excluded)
with each precision, and the largest error of o, dq, dk, dv against float64 (the reference
backend on the GPU) on a B1 H2 slice, relative to the largest float64 magnitude. JSON to
$OUT/fp32_modes.json. FP32_MODES_BUDGET_S (default 200) bounds it.
"""
import json
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.simplefilter("ignore")
import torch  # noqa: E402
import triton  # noqa: E402

import _env  # noqa: E402
import linattn  # noqa: E402
from linattn.slopes import tnl_slopes  # noqa: E402

#: FP32_MODES_SMOKE=1 (with TRITON_INTERPRET=1, no GPU): the same logic at toy sizes
SMOKE = os.environ.get("FP32_MODES_SMOKE") == "1"
DEV = "cpu" if SMOKE else "cuda"

T0 = time.time()
BUDGET = float(os.environ.get("FP32_MODES_BUDGET_S", "200"))
OUT = os.environ.get("OUT", "/tmp")
RES = {"card": "cpu (smoke)" if SMOKE else torch.cuda.get_device_name(), "triton": triton.__version__, "rows": []}
# (name, B, H, Hkv, N, D, E, mask, causal, decay)
PROBLEMS = [
    ("causal", 4, 12, 12, 4096, 64, 64, None, True, False),
    ("decay", 4, 12, 12, 4096, 64, 64, None, True, True),
    ("dense D128", 4, 12, 12, 2048, 128, 128, "11NN", False, False),
    ("dense D48 GQA", 16, 12, 4, 1024, 48, 48, "11NN", False, False),
    ("dense D256", 2, 8, 8, 1024, 256, 256, "11NN", False, False),
    ("dense+decay", 4, 12, 12, 2048, 64, 64, "1HNN", True, True),
]


def make(B, H, Hkv, N, D, E, mk, decay, dtype, g):
    q = torch.randn(B, H, N, D, device=DEV, generator=g, dtype=dtype)
    k = torch.randn(B, Hkv, N, D, device=DEV, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv, N, E, device=DEV, generator=g, dtype=dtype)
    m = None
    if mk == "11NN":
        m = torch.randint(0, 2, (1, 1, N, N), device=DEV, generator=g).to(dtype)
    elif mk == "1HNN":
        m = torch.rand(1, H, N, N, device=DEV, generator=g, dtype=dtype)
    s = tnl_slopes(H, device=DEV, dtype=dtype) if decay else None
    return q, k, v, m, s


def step(q, k, v, m, s, causal, backend, do):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    o = linattn.linear_attention(q, k, v, m, causal=causal, decay=s, backend=backend)
    o.backward(do)
    return o.detach(), q.grad, k.grad, v.grad


def main():
    for name, B, H, Hkv, N, D, E, mk, causal, decay in PROBLEMS:
        if SMOKE:
            B, H, N, D, E = 2, 4, 40, min(D, 20), min(E, 20)
            Hkv = min(Hkv, 4)
        if time.time() - T0 > BUDGET:
            print("budget spent", flush=True)
            break
        g = torch.Generator(device=DEV).manual_seed(0)
        q, k, v, m, s = make(B, H, Hkv, N, D, E, mk, decay, torch.float32, g)
        do = torch.randn(B, H, N, E, device=DEV, generator=g)
        G = H // Hkv
        q1, k1, v1, do1 = q[:1, :2], k[:1, : max(1, 2 // G)], v[:1, : max(1, 2 // G)], do[:1, :2]
        m1 = None if m is None else m[:, :2] if m.shape[1] > 1 else m
        s1 = None if s is None else s[:2]
        want = step(q1.double(), k1.double(), v1.double(), None if m1 is None else m1.double(),
                    None if s1 is None else s1.double(), causal, "reference", do1.double())
        row = dict(problem=name, shape=f"B{B} H{H}/{Hkv} N{N} D{D} E{E} mask={mk} causal={causal} decay={decay}")
        for mode in ("default", "tf32x3"):
            kv = {} if mode == "default" else {"LINATTN_TRITON_FP32_DOT": "tf32x3"}
            try:
                with _env.env(**kv):
                    got = step(q1, k1, v1, m1, s1, causal, "triton_dense", do1)
                    err = {n: round(((a.double() - b).abs().max() / b.abs().max()).item(), 9)
                           for n, a, b in zip(("o", "dq", "dk", "dv"), got, want)}
                    step(q, k, v, m, s, causal, "triton_dense", do)  # autotune / compile
                    if SMOKE:
                        ms = 0.0
                    else:
                        torch.cuda.synchronize()
                        ms = triton.testing.do_bench(lambda: step(q, k, v, m, s, causal, "triton_dense", do),
                                                     warmup=3, rep=30, return_mode="median")
                row[mode] = dict(ms=round(ms, 4), err=err)
            except Exception as e:  # noqa: BLE001
                row[mode] = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
        print(json.dumps(row), flush=True)
        RES["rows"].append(row)
        with open(os.path.join(OUT, "fp32_modes.json"), "w") as f:
            json.dump(RES, f, indent=1)


if __name__ == "__main__":
    main()
