"""GPU check of backend ``cuda``: build, correctness, determinism, timings. One call, <= ~150 s.

    python3 gpu/cuda_ext.py            (from the repository root; OUT=dir for JSON details)

1. build the extension (timed) for the GPU present;
2. correctness against the float64 reference on the GPU: o and every gradient, every mask
   kind and broadcast shape, MQA/GQA, awkward N/M/D/E, float32/float16/bfloat16, state;
   the error is the normwise relative error, also shown as a ratio to what the reference
   formula makes in the same dtype (``naive``: its N x N products formed in that dtype);
3. determinism: two backward runs must be bitwise equal;
4. timings with CUDA events (median), forward+backward and peak memory:
   the seed's float32 example (B=16 H=12 N=1024 D=64, 0/1 mask [1,1,N,N]) vs reference;
   bfloat16 B=4 H=12 N=4096 D=64 (same mask kind) vs reference and triton (if importable);
5. for the next round of tuning: fwd+bwd under each forced tile configuration
   (LINATTN_CUDA_CONFIG = warps x buffers), per-kernel GPU times from torch.profiler, and
   ptxas -v (registers, spills, stack) of every kernel, compiled for the GPU present.
Each item is caught and reported on its own; the summary table is printed last.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DRY = "--dry-run-cpu" in sys.argv  # check this script's logic on a CPU through the kernel emulator
if DRY:
    os.environ["LINATTN_CUDA_EMULATE"] = "1"
DEV = "cpu" if DRY else "cuda"

import torch  # noqa: E402

T0 = time.time()
RESULTS = {"device": None, "build": None, "correctness": [], "determinism": [], "timing": [], "errors": []}
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def guarded(section, name):
    def deco(fn):
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except Exception as e:  # report and go on
                tb = traceback.format_exc(limit=4)
                RESULTS["errors"].append({"section": section, "item": name, "error": f"{type(e).__name__}: {e}"[:2000],
                                          "traceback": tb[-3000:]})
                log(f"FAILED {section}/{name}: {type(e).__name__}: {str(e)[:400]}")
                return None
        return run
    return deco


# -- problems ------------------------------------------------------------------------------------

def problem(B, H, Hkv, N, M, D, E, mask_shape=None, binary=False, decay=False, state=False, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=DEV, dtype=torch.float64)  # noqa: E731
    p = dict(q=r(B, H, N, D), k=r(B, Hkv, M, D), v=r(B, Hkv, M, E))
    if mask_shape is not None:
        m = r(*mask_shape)
        p["mask"] = (m > 0).double() if binary else m
    if decay:
        p["decay"] = torch.rand(H, generator=g, device=DEV, dtype=torch.float64) * 0.2 + 0.01
    if state:
        p["initial_state"] = r(B, H, D, E)
    return p


def run(backend, p, dtype, *, causal=False, scale=0.7, final=False, do=None, dfinal=None, grads=True):
    import linattn

    leaves = {}
    for n, t in p.items():
        dt = torch.float64 if dtype == torch.float64 else (torch.float32 if n == "decay" else dtype)
        leaves[n] = t.detach().to(dt).clone().requires_grad_(grads)
    out = linattn.linear_attention(leaves["q"], leaves["k"], leaves["v"], leaves.get("mask"), causal=causal,
                                   decay=leaves.get("decay"), scale=scale, initial_state=leaves.get("initial_state"),
                                   output_final_state=final, backend=backend)
    o, st = (out.o, out.final_state) if final else (out, None)
    if grads:
        loss = (o.double() * do).sum() + ((st.double() * dfinal).sum() if final else 0)
        loss.backward()
    return o, st, {n: t.grad for n, t in leaves.items()}


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


CASES = [
    # name, (B, H, Hkv, N, M, D, E), mask shape, causal, decay, state
    ("none-mqa-N1", (1, 2, 1, 1, 1, 1, 1), None, False, False, False),
    ("none-N!=M", (2, 4, 2, 2, 65, 48, 3), None, False, False, False),
    ("dense-NM-gqa", (2, 4, 2, 63, 130, 60, 65), (63, 130), False, False, False),
    ("dense-BHNM", (2, 3, 3, 65, 67, 5, 7), (2, 3, 65, 67), False, False, False),
    ("dense-B1NM-mqa", (2, 4, 1, 131, 131, 64, 64), (2, 1, 131, 131), False, False, False),
    ("dense-1HNM", (1, 4, 2, 31, 257, 16, 129), (1, 4, 31, 257), False, False, False),
    ("causal-gqa", (2, 4, 2, 257, 257, 48, 17), None, True, False, False),
    ("decay-mqa", (2, 8, 1, 193, 193, 60, 20), None, True, True, False),
    ("dense+causal", (1, 2, 1, 65, 65, 3, 64), (1, 1, 65, 65), True, False, False),
    ("dense+decay-BHNM", (2, 2, 1, 130, 130, 33, 5), (2, 2, 130, 130), True, True, False),
    ("D256-E256-dense", (1, 2, 2, 129, 129, 256, 256), (129, 129), False, False, False),
    ("decay-D256-causalmask", (1, 2, 1, 97, 97, 256, 200), (1, 1, 97, 97), True, True, False),
    ("state-causal", (2, 4, 2, 65, 65, 7, 5), None, True, False, True),
    ("state-decay", (2, 4, 2, 130, 130, 64, 64), None, True, True, True),
    ("seedlike-binary", (2, 12, 12, 1024, 1024, 64, 64), (1, 1, 1024, 1024), False, False, False),
]


def naive_errors(p, dtype, causal, final, do, dfinal, o64, st64, g64):
    """Error the reference formula makes in `dtype` (N x N products in that dtype), if available."""
    try:
        from linattn.testing.reference import naive_in_dtype  # noqa: F401
    except Exception:
        return {}
    try:
        fn = naive_in_dtype
        leaves = {n: t.detach().to(dtype if n != "decay" else torch.float32).clone().requires_grad_()
                  for n, t in p.items()}
        out = fn(leaves["q"], leaves["k"], leaves["v"], leaves.get("mask"), causal=causal, decay=leaves.get("decay"),
                 scale=0.7, initial_state=leaves.get("initial_state"), output_final_state=final)
        o, st = out if isinstance(out, tuple) else (out, None)
        loss = (o.double() * do).sum() + ((st.double() * dfinal).sum() if final and st is not None else 0)
        loss.backward()
        e = {"o": rel(o, o64)}
        for n, t in leaves.items():
            if t.grad is not None:
                e["d" + n] = rel(t.grad, g64[n])
        return e
    except Exception:
        return {}


def check_case(case, dtype):
    name, (B, H, Hkv, N, M, D, E), mshape, causal, decay, state = case
    p = problem(B, H, Hkv, N, M, D, E, mask_shape=mshape, binary=name.startswith("seedlike"), decay=decay, state=state)
    g = torch.Generator(device=DEV).manual_seed(1)
    do = torch.randn(B, H, N, E, generator=g, device=DEV, dtype=torch.float64)
    dfinal = torch.randn(B, H, D, E, generator=g, device=DEV, dtype=torch.float64) if state else None
    o, st, gr = run("cuda", p, dtype, causal=causal, final=state, do=do, dfinal=dfinal)
    o64, st64, g64 = run("reference", p, torch.float64, causal=causal, final=state, do=do, dfinal=dfinal)
    errs = {"o": rel(o, o64)}
    if state:
        errs["final"] = rel(st, st64)
    for n, t in gr.items():
        errs["d" + n] = rel(t, g64[n]) if t is not None else float("nan")
    naive = naive_errors(p, dtype, causal, state, do, dfinal, o64, st64, g64)
    tol = TOL[dtype]
    worst = max(errs.values())
    ok = all(e <= (20 * tol if k == "ddecay" else tol) for k, e in errs.items())
    ratio = max((errs[k] / naive[k] for k in errs if k in naive and naive[k] > 0), default=float("nan"))
    rec = {"case": name, "dtype": str(dtype)[6:], "ok": ok, "errors": errs, "naive": naive,
           "worst": worst, "worst_ratio_to_naive": ratio}
    RESULTS["correctness"].append(rec)
    log(f"{'ok  ' if ok else 'BAD '} {name:22s} {str(dtype)[6:]:9s} worst rel err {worst:.2e} "
        f"(x{ratio:.2f} of naive)  " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    return ok


def check_determinism(dtype):
    B, H, Hkv, N, D, E = (1, 2, 1, 70, 16, 8) if DRY else (2, 8, 2, 300, 64, 48)
    p = problem(B, H, Hkv, N, N, D, E, mask_shape=(1, H, N, N), decay=True, seed=5)
    g = torch.Generator(device=DEV).manual_seed(2)
    do = torch.randn(B, H, N, E, generator=g, device=DEV, dtype=torch.float64)
    runs = []
    for _ in range(2):
        o, _, gr = run("cuda", p, dtype, causal=True, do=do)
        runs.append([o] + [gr[n] for n in ("q", "k", "v", "mask", "decay")])
    same = all(torch.equal(a, b) for a, b in zip(*runs))
    RESULTS["determinism"].append({"dtype": str(dtype)[6:], "bitwise_equal": same})
    log(f"determinism {str(dtype)[6:]}: two backward runs bitwise equal = {same}")
    return same


# -- timing ---------------------------------------------------------------------------------------

def bench(fn, reps=10, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def time_backend(backend, B, H, N, D, dtype, *, reps=10):
    import linattn

    g = torch.Generator(device=DEV).manual_seed(0)
    q = torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype, requires_grad=True)
    k = torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype, requires_grad=True)
    v = torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype, requires_grad=True)
    M = torch.randint(0, 2, (1, 1, N, N), generator=g, device=DEV).to(dtype)
    do = torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype)

    def fwd():
        with torch.no_grad():
            return linattn.linear_attention(q, k, v, M, backend=backend)

    def fwd_bwd():
        o = linattn.linear_attention(q, k, v, M, backend=backend)
        q.grad = k.grad = v.grad = None
        o.backward(do)

    t_f = bench(fwd, reps=reps)
    t_fb = bench(fwd_bwd, reps=reps)
    q.grad = k.grad = v.grad = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwd_bwd()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    flops_f = 2.0 * B * H * N * N * (D + D)  # q kᵀ and P v
    return {"backend": backend, "B": B, "H": H, "N": N, "D": D, "dtype": str(dtype)[6:], "fwd_ms": t_f,
            "fwd_bwd_ms": t_fb, "peak_mem_MiB": peak / 2**20, "fwd_TFLOPs": flops_f / t_f / 1e9,
            "fwd_bwd_TFLOPs": 4.0 * flops_f / t_fb / 1e9}  # backward runs three products of forward's size


def config_sweep(label, B, H, N, D, dtype, reps):
    """fwd+bwd of backend cuda under each forced (warps x buffers) configuration of the product kernel."""
    rows = []
    for cfg in ("8x2", "4x2", "8x1", "4x1"):
        os.environ["LINATTN_CUDA_CONFIG"] = cfg
        try:
            r = guarded("config", f"{label}/{cfg}")(time_backend)("cuda", B, H, N, D, dtype, reps=reps)
        finally:
            os.environ.pop("LINATTN_CUDA_CONFIG", None)
        if r is not None:
            rows.append({"label": label, "config": cfg, "fwd_ms": r["fwd_ms"], "fwd_bwd_ms": r["fwd_bwd_ms"]})
            log(f"config {label:12s} {cfg}: fwd {r['fwd_ms']:.3f} ms, fwd+bwd {r['fwd_bwd_ms']:.3f} ms")
    RESULTS.setdefault("configs", []).extend(rows)


def profile_kernels(label, B, H, N, D, dtype):
    """GPU time per kernel name over 3 fwd+bwd steps of backend cuda (torch.profiler)."""
    import linattn
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator(device=DEV).manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype, requires_grad=True) for _ in range(3))
    M = torch.randint(0, 2, (1, 1, N, N), generator=g, device=DEV).to(dtype)
    do = torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype)
    for _ in range(2):
        linattn.linear_attention(q, k, v, M, backend="cuda").backward(do)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            linattn.linear_attention(q, k, v, M, backend="cuda").backward(do)
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = getattr(ev, "cuda_time_total", 0.0)
        if t and t > 0:
            rows.append({"label": label, "kernel": ev.key[:90], "calls": ev.count, "total_ms": t / 1e3 / 3,
                         "per_call_ms": t / 1e3 / max(ev.count, 1)})
    rows.sort(key=lambda r: -r["total_ms"])
    for r in rows[:8]:
        log(f"profile {label}: {r['total_ms']:8.3f} ms/step  {r['calls']:3d} calls  {r['kernel']}")
    RESULTS.setdefault("profile", []).extend(rows[:12])


def ptxas_stats():
    """Registers, spills and stack of every kernel, from nvcc -Xptxas -v for the GPU present."""
    import re
    import subprocess
    import tempfile

    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    from linattn.backends.cuda import loader

    _, gencode = loader.arch_flag(torch.device("cuda", 0))
    procs = []
    tmp = tempfile.mkdtemp()
    for src in ("kernels_f32.cu", "kernels_bf16.cu", "kernels_f16.cu"):
        cmd = [loader.nvcc_path(), "-std=c++17", "-O3", gencode, "-Xptxas", "-v", *COMMON_NVCC_FLAGS,
               "-I", str(loader.CSRC), "-c", str(loader.CSRC / src), "-o", os.path.join(tmp, src + ".o")]
        procs.append((src, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    rows = []
    for src, pr in procs:
        out, _ = pr.communicate(timeout=150)
        name = None
        for line in out.splitlines():
            m = re.search(r"Compiling entry function '([^']+)'", line)
            if m:
                name = m.group(1).replace("_ZN7linattn", "")[:70]
                rows.append({"file": src, "kernel": name, "line": ""})
            elif name and ("spill" in line or "registers" in line):
                rows[-1]["line"] += " " + line.split(":", 1)[-1].strip()
    for r in rows:
        log(f"ptxas {r['file']:16s} {r['kernel']:70s}{r['line']}")
    RESULTS["ptxas"] = rows


def timing(label, B, H, N, D, dtype, backends, reps):
    rows = []
    for be in backends:
        r = guarded("timing", f"{label}/{be}")(time_backend)(be, B, H, N, D, dtype, reps=reps)
        if r is None:
            continue
        r["label"] = label
        rows.append(r)
        log(f"{label:14s} {be:10s} fwd {r['fwd_ms']:8.3f} ms  fwd+bwd {r['fwd_bwd_ms']:8.3f} ms  "
            f"peak {r['peak_mem_MiB']:9.1f} MiB  ({r['fwd_TFLOPs']:.1f} / {r['fwd_bwd_TFLOPs']:.1f} TFLOP/s)")
        torch.cuda.empty_cache()
    ref = next((r for r in rows if r["backend"] == "reference"), None)
    for r in rows:
        if ref is not None:
            r["speedup_vs_reference"] = ref["fwd_bwd_ms"] / r["fwd_bwd_ms"]
            r["mem_vs_reference"] = r["peak_mem_MiB"] / ref["peak_mem_MiB"]
    RESULTS["timing"].extend(rows)


def main():
    if DRY:
        for dtype in (torch.float32, torch.bfloat16):
            for case in CASES:
                B, H, Hkv, N, M, D, E = case[1]
                if B * H * N * M * max(D, E) <= 2 * 4 * 130 * 130 * 64:
                    guarded("correctness", f"{case[0]}/{dtype}")(check_case)(case, dtype)
        guarded("determinism", "float32")(check_determinism)(torch.float32)
        finish()
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device; nothing to do", flush=True)
        return 1
    props = torch.cuda.get_device_properties(0)
    RESULTS["device"] = {"name": props.name, "cc": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
                         "torch": torch.__version__, "cuda": torch.version.cuda}
    log(f"device {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}")

    # 1. build
    from linattn.backends.cuda import loader

    t = time.time()
    try:
        loader.load(torch.device("cuda", 0), verbose=os.environ.get("LINATTN_CUDA_VERBOSE") == "1")
        RESULTS["build"] = {"ok": True, "seconds": time.time() - t}
        log(f"build ok in {time.time() - t:.1f}s")
    except Exception as e:
        RESULTS["build"] = {"ok": False, "seconds": time.time() - t, "error": f"{type(e).__name__}: {e}"[-4000:]}
        log(f"BUILD FAILED: {e}")
        cause = e.__cause__
        if cause is not None:
            print(str(cause)[-6000:], flush=True)
        finish()
        return 1

    # 2. correctness
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for case in CASES:
            if dtype != torch.float32 and case[0] in ("dense-BHNM", "none-N!=M"):
                continue
            guarded("correctness", f"{case[0]}/{dtype}")(check_case)(case, dtype)
    # 3. determinism
    for dtype in (torch.float32, torch.bfloat16):
        guarded("determinism", str(dtype))(check_determinism)(dtype)
    # 4. timing
    have_triton = False
    try:
        import triton  # noqa: F401
        import linattn

        have_triton = linattn.get_backend("triton").available() is None
    except Exception:
        pass
    timing("seed fp32", 16, 12, 1024, 64, torch.float32, ["cuda", "reference"], reps=10)
    timing("bf16 N=4096", 4, 12, 4096, 64, torch.bfloat16,
           ["cuda", "reference"] + (["triton"] if have_triton else []), reps=5)
    # 5. for the next round
    config_sweep("seed fp32", 16, 12, 1024, 64, torch.float32, reps=5)
    config_sweep("bf16 N=4096", 4, 12, 4096, 64, torch.bfloat16, reps=3)
    guarded("profile", "seed fp32")(profile_kernels)("seed fp32", 16, 12, 1024, 64, torch.float32)
    guarded("profile", "bf16 N=4096")(profile_kernels)("bf16 N=4096", 4, 12, 4096, 64, torch.bfloat16)
    if time.time() - T0 < 200:
        guarded("ptxas", "all")(ptxas_stats)()
    finish()
    return 0


def finish():
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "cuda_ext.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)
    corr = RESULTS["correctness"]
    print("\n==== cuda_ext summary ====", flush=True)
    b = RESULTS["build"] or {}
    print(f"device: {RESULTS['device']}")
    print(f"build: {'ok' if b.get('ok') else 'FAILED'} in {b.get('seconds', float('nan')):.1f}s")
    for dt in ("float32", "bfloat16", "float16"):
        rows = [r for r in corr if r["dtype"] == dt]
        if rows:
            bad = [r["case"] for r in rows if not r["ok"]]
            worst = max(rows, key=lambda r: r["worst"])
            ratios = [r["worst_ratio_to_naive"] for r in rows if not math.isnan(r["worst_ratio_to_naive"])]
            print(f"correctness {dt:9s}: {len(rows) - len(bad)}/{len(rows)} ok; worst rel err {worst['worst']:.2e} "
                  f"({worst['case']}); worst ratio to naive-in-dtype {max(ratios) if ratios else float('nan'):.2f}"
                  + (f"; FAILED: {bad}" if bad else ""))
    for d in RESULTS["determinism"]:
        print(f"determinism {d['dtype']:9s}: bitwise equal = {d['bitwise_equal']}")
    print(f"{'timing':14s} {'backend':10s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'peak MiB':>10s} {'speedup':>8s} {'mem':>6s}")
    for r in RESULTS["timing"]:
        print(f"{r['label']:14s} {r['backend']:10s} {r['fwd_ms']:9.3f} {r['fwd_bwd_ms']:11.3f} "
              f"{r['peak_mem_MiB']:10.1f} {r.get('speedup_vs_reference', float('nan')):7.2f}x "
              f"{r.get('mem_vs_reference', float('nan')):5.2f}x")
    for r in RESULTS.get("configs", []):
        print(f"config {r['label']:14s} {r['config']}: fwd {r['fwd_ms']:.3f} ms  fwd+bwd {r['fwd_bwd_ms']:.3f} ms")
    for r in RESULTS.get("ptxas", []):
        if "masked_product" in r["kernel"]:
            print(f"ptxas {r['kernel'][:60]:60s}{r['line']}")
    print(f"errors: {len(RESULTS['errors'])}" + "".join(f"\n  {e['section']}/{e['item']}: {e['error'][:300]}"
                                                         for e in RESULTS["errors"]))
    print(f"total {time.time() - T0:.0f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
