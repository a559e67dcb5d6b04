"""The float32 seed example through triton_dense, one variant of the float32 path at a time.

    python3 gpu/dense_fp32.py                 # on a GPU: ~75-90 s on an H100/H200, JSON to $OUT/dense_fp32.json
    TRITON_INTERPRET=1 python3 gpu/dense_fp32.py   # no GPU: the same logic at a tiny size (a dry run)

Problem (issue 4): float32 B16 H12 N1024 D64, 0/1 mask [1, 1, N, N], forward and
forward+backward with the gradients of q, k and v; target fwd+bwd >= 2x faster than
``reference`` (timed in this run, first) with float32 products at full precision.

Variants, most important first (each a set of environment knobs, so old and new run in one
process; every one autotunes on its first call, about 10-15 s of compiles): ``default``
(Triton's tf32x3, dk and dv as two programs for float32), ``maskT`` (the dk/dv walk reads a
column-major copy of the mask, LINATTN_TRITON_DENSE_MASKT=on), ``v3`` (one dk/dv program, run
7's default), ``tf32+maskT`` (single TF32 products, the opt-in, for scale), ``split+split``
(operands split once per tile; run 8 found it less accurate on the GPU).

Per variant: fwd and fwd+bwd ms (median, triton.testing.do_bench), GPU ms per kernel
(torch.profiler), the autotuner's picks, peak memory of fwd+bwd against the reference's,
and the max error of o, dq, dk, dv against float64 on a B2 H4 N1024 slice (relative to the
largest float64 magnitude; the float32 ``reference`` error on the same slice is the yardstick).

Budget: DENSE_FP32_BUDGET_S (default 75) seconds; a variant starts only when at least
DENSE_FP32_NEED_S (default 15) remain; a watchdog writes the JSON and exits at budget + 15 s (run_all: stage limit 100 s).
Every item catches and records its exception. The JSON is rewritten after every figure.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import _env  # noqa: E402  (gpu/, the script's own folder, is on sys.path)

T0 = time.time()
BUDGET_S = float(os.environ.get("DENSE_FP32_BUDGET_S", "75"))
NEED_S = float(os.environ.get("DENSE_FP32_NEED_S", "15"))
RES: dict = {"errors": [], "variants": {}, "budget_s": BUDGET_S}
_LOCK = threading.Lock()

KNOBS = ("LINATTN_TRITON_DENSE_TF32X3", "LINATTN_TRITON_DENSE_DKDV", "LINATTN_TRITON_FP32_DOT",
         "LINATTN_TRITON_AUTOTUNE", "LINATTN_TRITON_DENSE_BWD", "LINATTN_TRITON_DENSE_MASKT")
# Run 8 (H200) timed split+split 5.261, v3 5.535, tt+split 4.532 (now the default for float32),
# split+joint 6.882, tf32+split 2.507 ms; the split-once operands were 18x less accurate on the
# GPU (8e-6 against 4.5e-7) and stay opt-in. This run: the new default and the transposed-mask
# copy for the dk/dv walk.
VARIANTS = [
    ("default", dict()),
    ("maskT", dict(LINATTN_TRITON_DENSE_MASKT="on")),
    ("v3", dict(LINATTN_TRITON_DENSE_TF32X3="triton", LINATTN_TRITON_DENSE_DKDV="joint")),
    ("tf32+maskT", dict(LINATTN_TRITON_FP32_DOT="tf32", LINATTN_TRITON_DENSE_MASKT="on")),
    ("split+split", dict(LINATTN_TRITON_DENSE_TF32X3="split", LINATTN_TRITON_DENSE_DKDV="split")),
    # run 27: two float16 halves per operand, scaled by powers of two (common.split_f16);
    # the default from run 31 on (so "default" is f16x3 there, and this the old default)
    ("f16x3", dict(LINATTN_TRITON_FP32_DOT="f16x3")),
    ("tf32x3", dict(LINATTN_TRITON_FP32_DOT="tf32x3")),
]
#: DENSE_FP32_VARIANTS="default,f16x3" runs only those, in that order
if os.environ.get("DENSE_FP32_VARIANTS"):
    _want = os.environ["DENSE_FP32_VARIANTS"].split(",")
    VARIANTS = [next(v for v in VARIANTS if v[0] == w) for w in _want]


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save():
    out = os.environ.get("OUT")
    if not out:
        return
    with _LOCK:
        os.makedirs(out, exist_ok=True)
        tmp = os.path.join(out, ".dense_fp32.json.part")
        with open(tmp, "w") as f:
            json.dump(RES, f, indent=1, default=str)
        os.replace(tmp, os.path.join(out, "dense_fp32.json"))


def watchdog():
    """Never hang past the budget (+15 s): write what there is and leave."""
    def fire():
        RES["errors"].append({"item": "watchdog", "error": f"still running at {time.time() - T0:.0f} s; exiting"})
        try:
            save()
        finally:
            print("[watchdog] budget + 20 s passed: exiting", flush=True)
            os._exit(3)
    t = threading.Timer(BUDGET_S + 15, fire)
    t.daemon = True
    t.start()


class env(_env.env):
    """Set exactly these knobs (the others in KNOBS unset) for the duration."""

    def __enter__(self):
        for k in set(KNOBS) - set(self.kv):
            self.old[k] = os.environ.pop(k, None)
        super().__enter__()


def item(name, fn, need_s=0.0):
    left = BUDGET_S - (time.time() - T0)
    if left < need_s:
        log(f"skip {name}: {left:.0f} s left, needs {need_s:.0f}")
        RES["errors"].append({"item": name, "error": f"skipped: {left:.0f} s left of the budget"})
        save()
        return None
    t = time.time()
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - record and go on
        traceback.print_exc()
        RES["errors"].append({"item": name, "error": f"{type(e).__name__}: {str(e)[:400]}"})
        return None
    finally:
        log(f"  ({name}: {time.time() - t:.1f} s)")
        save()


def main():
    watchdog()
    from linattn.backends.triton import common
    gpu = torch.cuda.is_available() and not common.INTERPRET
    if not gpu and not common.INTERPRET:
        print("no CUDA device and TRITON_INTERPRET is not 1: nothing to do")
        return 0
    import linattn
    from linattn.backends.triton import dense_bwd, dense_fwd

    dev = "cuda" if gpu else "cpu"
    card = torch.cuda.get_device_name() if gpu else "cpu (TRITON_INTERPRET=1 dry run)"
    RES.update(card=card, torch=torch.__version__)
    try:
        import triton
        RES["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    log("card", card)
    f32, f64 = torch.float32, torch.float64
    B, H, N, D = (16, 12, 1024, 64) if gpu else (1, 2, 40, 16)
    SB, SH = (2, 4) if gpu else (1, 2)  # the accuracy slice (same N: the same autotuned kernels)
    RES["shape"] = f"float32 B{B} H{H} N{N} D=E={D}, 0/1 mask [1,1,N,N], grads of q, k, v"
    fl = 2 * B * H * N * N * 2 * D  # forward flops (two products); fwd+bwd = 3x (7 products counted as 6)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def bench(fn, rep=30):
        if not gpu:
            t = time.time()
            fn()
            return (time.time() - t) * 1e3
        import triton
        return triton.testing.do_bench(fn, warmup=3, rep=rep, return_mode="median")

    def kernels(fn, steps=3, top=8):
        if not gpu:
            return []
        from torch.profiler import ProfilerActivity, profile
        fn()
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                fn()
            sync()
        rows = []
        for e in prof.key_averages():
            t = getattr(e, "device_time_total", None)
            if t is None:
                t = getattr(e, "cuda_time_total", 0)
            if t > 0 and e.key:
                rows.append({"kernel": e.key[:90], "ms": round(t / 1e3 / steps, 4), "calls": e.count / steps})
        rows.sort(key=lambda r: -r["ms"])
        return rows[:top]

    def peak(fn):
        if not gpu:
            fn()
            return 0
        sync()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        r = fn()
        sync()
        pk = torch.cuda.max_memory_allocated() - base
        del r
        return pk

    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=f32, generator=g).requires_grad_() for _ in range(3))
    m = torch.randint(0, 2, (1, 1, N, N), device=dev, generator=g).to(f32)
    do = torch.randn(B, H, N, D, device=dev, dtype=f32, generator=g)
    scale = D ** -0.5

    def fwd(be):
        return lambda: linattn.linear_attention(q.detach(), k.detach(), v.detach(), m, scale=scale, backend=be)

    def fb(be):
        return lambda: torch.autograd.grad(linattn.linear_attention(q, k, v, m, scale=scale, backend=be), (q, k, v),
                                           grad_outputs=do)

    # the accuracy slice and its float64 answer
    sl = [t.detach()[:SB, :SH].contiguous() for t in (q, k, v, do)]

    def outputs(be, dtype):
        ls = [t.to(dtype).requires_grad_() for t in sl[:3]]
        o = linattn.linear_attention(*ls, m.to(dtype), scale=scale, backend=be)
        gs = torch.autograd.grad(o, ls, grad_outputs=sl[3].to(dtype))
        return [o.detach().to(f64)] + [x.to(f64) for x in gs]

    want = {}

    def errors(be):
        if not want:
            want["x"] = outputs("reference", f64)
        got = outputs(be, f32)
        return {n: (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)
                for n, a, b in zip(("o", "dq", "dk", "dv"), got, want["x"])}

    # -- 1. the reference (no compiles): the baseline of every ratio
    def ref():
        r = {"fwd_ms": bench(fwd("reference")), "fwdbwd_ms": bench(fb("reference"))}
        r["peak_bytes"] = peak(fb("reference"))
        r["kernels"] = kernels(fb("reference"))
        r["err_vs_f64"] = errors("reference")
        RES["reference"] = r
        log("reference", {a: b for a, b in r.items() if a != "kernels"})

    item("reference", ref)

    # -- 2. the variants, most important first
    def variant(name, knobs):
        def run():
            r = {"knobs": knobs}
            RES["variants"][name] = r
            with env(**knobs, LINATTN_TRITON_AUTOTUNE="1"):
                t = time.time()
                fb("triton_dense")()  # the first call autotunes every kernel (compiles)
                sync()
                r["first_call_s"] = round(time.time() - t, 1)
                save()
                r["fwd_ms"] = bench(fwd("triton_dense"))
                r["fwdbwd_ms"] = bench(fb("triton_dense"))
                ref_ms = RES.get("reference", {}).get("fwdbwd_ms")
                if ref_ms:
                    r["speedup_fwdbwd"] = ref_ms / r["fwdbwd_ms"]
                    r["speedup_fwd"] = RES["reference"]["fwd_ms"] / r["fwd_ms"]
                r["fwd_tflops"] = fl / r["fwd_ms"] / 1e9
                r["fwdbwd_tflops"] = 3 * fl / r["fwdbwd_ms"] / 1e9
                log(name, {a: (round(b, 3) if isinstance(b, float) else b) for a, b in r.items() if a != "knobs"})
                save()
                try:
                    r["kernels"] = kernels(fb("triton_dense"))
                    for kr in r["kernels"]:
                        log(f"    {kr['ms']:7.3f} ms x{kr['calls']:.0f} {kr['kernel']}")
                except Exception as e:  # noqa: BLE001
                    r["kernels_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                save()
                try:
                    r["picks"] = {n: {str(k_[:10] if isinstance(k_, tuple) else k_)[:160]: str(c_) for k_, c_ in getattr(t_, "cache", {}).items()} for n, t_ in (
                        ("fwd", dense_fwd._dense_fwd_tuned), ("dq", dense_bwd._dq_tuned_wide),
                        ("dkdv", dense_bwd._dkdv_tuned), ("dkdv_split", dense_bwd._dkdv_split_tuned))}
                except Exception as e:  # noqa: BLE001
                    r["picks"] = f"{type(e).__name__}: {e}"
                pk = peak(fb("triton_dense"))
                r["peak_bytes"] = pk
                rp = RES.get("reference", {}).get("peak_bytes")
                if rp:
                    r["peak_ratio"] = pk / rp
                save()
                r["err_vs_f64"] = errors("triton_dense")
                log(name, "peak", f"{pk / 2**20:.0f} MiB", "err", {a: f"{b:.2e}" for a, b in r["err_vs_f64"].items()})
        return run

    for name, knobs in VARIANTS:
        item(f"variant {name}", variant(name, knobs), need_s=NEED_S)

    # -- summary
    lines = []
    rr = RES.get("reference", {})
    if rr:
        lines.append(f"reference: fwd {rr.get('fwd_ms', 0):.3f} ms, fwd+bwd {rr.get('fwdbwd_ms', 0):.3f} ms, "
                     f"err o/dq/dk/dv {' '.join(f'{x:.1e}' for x in rr.get('err_vs_f64', {}).values())}")
    for name, r in RES["variants"].items():
        ks = " ".join(f"{kr['kernel'][:24]}={kr['ms']:.3f}" for kr in r.get("kernels", []) if "dense" in kr["kernel"])
        lines.append(f"{name:12s} fwd {r.get('fwd_ms', float('nan')):.3f} fwd+bwd {r.get('fwdbwd_ms', float('nan')):.3f} ms "
                     f"({r.get('speedup_fwdbwd', float('nan')):.2f}x ref; target 2x) peak {r.get('peak_ratio', float('nan')):.2f}x "
                     f"err {' '.join(f'{x:.1e}' for x in r.get('err_vs_f64', {}).values())} | {ks}")
    RES["summary"] = lines
    save()
    print(f"\n==== dense_fp32 summary on {card} ({time.time() - T0:.0f} s of {BUDGET_S:.0f}) ====", flush=True)
    for ln in lines:
        print(ln, flush=True)
    return 0 if not RES["errors"] else 1


if __name__ == "__main__":
    try:
        rc = main()
    except BaseException as e:  # noqa: BLE001 - never die without the JSON
        traceback.print_exc()
        RES["errors"].append({"item": "main", "error": f"{type(e).__name__}: {str(e)[:400]}"})
        save()
        rc = 2
    sys.exit(rc)
