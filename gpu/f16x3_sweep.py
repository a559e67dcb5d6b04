"""Tile configurations of the dense kernels with float32 products as f16x3, on the seed problem.

float32 B16 H12 N1024 D=E=64, 0/1 mask [1, 1, N, N]. For each kernel (forward, dq, dk-only,
dv-only) and each (rows, cols, warps, stages): median ms (triton.testing.do_bench), registers,
spills and shared memory of the compiled kernel, and blocks per SM those allow. JSON to
$OUT/f16x3_sweep.json, one line per config on stdout. SWEEP_BUDGET_S (default 200) bounds it.
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("LINATTN_TRITON_FP32_DOT", "f16x3")
os.environ["PYTHONWARNINGS"] = "ignore"
import warnings  # noqa: E402

warnings.simplefilter("ignore")
import torch  # noqa: E402
import triton  # noqa: E402

from linattn.backends.triton import dense_bwd, dense_fwd  # noqa: E402

T0 = time.time()
BUDGET = float(os.environ.get("SWEEP_BUDGET_S", "200"))
OUT = os.environ.get("OUT", "/tmp")
RES = {"card": torch.cuda.get_device_name(), "triton": triton.__version__,
       "precision": os.environ["LINATTN_TRITON_FP32_DOT"], "rows": []}


def compiled(jit):
    """id -> CompiledKernel of everything ``jit`` has compiled so far."""
    out = {}
    for entry in getattr(jit, "device_caches", {}).values():
        cache = entry[0] if isinstance(entry, tuple) else entry
        for kern in cache.values():
            out[id(kern)] = kern
    return out


def describe(k):
    regs, spills = getattr(k, "n_regs", None), getattr(k, "n_spills", None)
    shared = getattr(k.metadata, "shared", None)
    warps = getattr(k.metadata, "num_warps", 4)
    by_smem = 233472 // max(shared + 1024, 1) if shared is not None else None
    by_regs = 65536 // (regs * 32 * warps) if regs else None
    return dict(regs=regs, spills=spills, shared=shared, blocks_per_sm=min(x for x in (by_smem, by_regs, 32) if x))


def main():
    B, H, N, D = 16, 12, 1024, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", generator=g) for _ in range(4))
    m = torch.randint(0, 2, (1, 1, N, N), device="cuda", generator=g).float()
    fl = 2 * B * H * N * N * D * 2  # two products
    kw = dict(need_dmask=False, need_dslopes=False)
    kernels = {
        "fwd": (dense_fwd._dense_fwd_kernel, lambda c: dense_fwd.dense_forward(q, k, v, m, None, False, 1.0, config=c), fl),
        "dq": (dense_bwd._dense_bwd_dq_kernel, lambda c: dense_bwd.dense_backward(
            do, q, k, v, m, None, False, 1.0, need_dq=True, need_dkv=(False, False), configs={"dq": c}, **kw), 1.5 * fl),
        "dk": (dense_bwd._dense_bwd_dkdv_kernel, lambda c: dense_bwd.dense_backward(
            do, q, k, v, m, None, False, 1.0, need_dq=False, need_dkv=(True, False), configs={"dkdv": c}, **kw), 1.5 * fl),
        "dv": (dense_bwd._dense_bwd_dkdv_kernel, lambda c: dense_bwd.dense_backward(
            do, q, k, v, m, None, False, 1.0, need_dq=False, need_dkv=(False, True), configs={"dkdv": c}, **kw), fl),
    }
    rows_cols = [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 1), (128, 128, 8, 2),
                 (64, 128, 4, 2), (128, 32, 8, 3), (64, 32, 4, 3), (128, 64, 4, 2), (256, 64, 8, 2), (128, 64, 8, 1)]
    order = os.environ.get("SWEEP_KERNELS", "fwd,dq,dv,dk").split(",")
    for name in order:
        jit, fn, flops = kernels[name]
        for cfg in rows_cols:
            if time.time() - T0 > BUDGET:
                print("budget spent", flush=True)
                break
            before = set(compiled(jit))
            row = dict(kernel=name, config=cfg)
            try:
                fn(cfg)
                torch.cuda.synchronize()
                new = [kk for i, kk in compiled(jit).items() if i not in before]
                if new:
                    row.update(describe(new[-1]))
                ms = triton.testing.do_bench(lambda: fn(cfg), warmup=3, rep=20, return_mode="median")
                row.update(ms=round(ms, 4), tflops_f16=round(3 * flops / ms / 1e9, 1))
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            RES["rows"].append(row)
            print(json.dumps(row), flush=True)
            with open(os.path.join(OUT, "f16x3_sweep.json"), "w") as f:
                json.dump(RES, f, indent=1)


if __name__ == "__main__":
    main()
