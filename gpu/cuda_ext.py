"""GPU check of backend ``cuda`` (v5): build, seed speed, correctness in the harness bands.

    CUDA_BUDGET_S=120 OUT=dir python3 gpu/cuda_ext.py     (from the repository root)
    python3 gpu/cuda_ext.py --dry-run-cpu                  (the same logic on the CPU emulator)

Budget-aware: CUDA_BUDGET_S (default 120) is the wall time the whole script may take,
build included; each item below is skipped (and listed as skipped) when what is left of
the budget is less than its estimate, a watchdog writes the JSON and exits before the
budget runs out even if a kernel hangs, every item's exception is caught and logged, and
$OUT/cuda_ext.json is rewritten after every item. float32 is on by default since v4
(LINATTN_CUDA_FP32=0 turns it off; this script leaves it on). In order of importance:

1. build the extension for the GPU present (timed); meanwhile nvcc -Xptxas -v compiles the
   float32 and bfloat16 kernel files in the background, and their register / spill lines
   are printed once the build is done;
2. the seed's float32 example (B=16 H=12 N=1024 D=64, 0/1 mask [1,1,N,N]): fwd and fwd+bwd
   with CUDA events (median) and peak memory, cuda (v5) vs reference, plus v5 with rounded lo
   parts (LINATTN_CUDA_FP32_LOTRUNC=0), cuda with v4's tile schedule
   (LINATTN_CUDA_FP32_EARLYMASK=0) and with the v3 float32 kernel
   (LINATTN_CUDA_FP32_PRESPLIT=0: every warp splits b and c itself); v5 against v4's schedule
   bitwise on the seed problem (a race in the new schedule would show here); the per-kernel
   profiles (torch.profiler) of cuda (v5 and v4 schedule) and reference;
3. float32 correctness on the 15 problem kinds of CASES, in the harness bands
   (linattn.testing.bands: e <= 4 x the error of the plain formula in float32 + floor): o
   and every gradient, with the error, the formula's own error (e_ref) and the band fraction;
4. the two one-term fuzz failures (fuzz/failures/cuda-forward-658e448a67.json,
   cuda-backward-3a49fd36dc.json) replayed with the default engine choice (FFMA for short
   contractions) and with LINATTN_CUDA_FP32_FFMA=0 (3xTF32 everywhere, v3);
5. bfloat16 B=4 H=12 N=4096 D=64 (same mask kind): cuda, reference, triton_dense;
6. bfloat16 and float16 correctness on the same kinds as 3;
7. determinism (two backward runs bitwise equal);
8. float32 correctness again with rounded lo parts, LINATTN_CUDA_FP32_LOTRUNC=0 (rows marked
   variant "rna"); then, for tuning, the seed with FFMA forced, forced tile
   configurations and the bf16 profile if budget is left.
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
os.environ.setdefault("LINATTN_CUDA_FP32", "1")  # the default since v4; kept explicit for older checkouts
DEV = "cpu" if DRY else "cuda"
T0 = time.time()
try:
    BUDGET = float(os.environ.get("CUDA_BUDGET_S", "120"))
except ValueError:
    print(f"CUDA_BUDGET_S: expected seconds, got {os.environ.get('CUDA_BUDGET_S')!r}; using 120", flush=True)
    BUDGET = 120.0

import threading  # noqa: E402

import torch  # noqa: E402

RESULTS = {"device": None, "budget_s": BUDGET, "build": None, "ptxas": [], "correctness": [], "determinism": [],
           "timing": [], "replays": [], "skipped": [], "errors": []}
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # v1/v2's fixed check, kept for comparison
_SAVE_LOCK = threading.Lock()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def left():
    return BUDGET - (time.time() - T0)


def afford(item, estimate_s):
    """True when `estimate_s` seconds fit in what is left of the budget (else logged as skipped)."""
    if left() >= estimate_s:
        return True
    RESULTS["skipped"].append({"item": item, "estimate_s": estimate_s, "left_s": round(left(), 1)})
    log(f"skip {item}: needs ~{estimate_s:.0f}s, {left():.0f}s left")
    return False


def save():
    out = os.environ.get("OUT")
    if not out:
        return
    with _SAVE_LOCK:
        try:
            os.makedirs(out, exist_ok=True)
            tmp = os.path.join(out, "cuda_ext.json.tmp")
            with open(tmp, "w") as f:
                json.dump(RESULTS, f, indent=1, default=str)
            os.replace(tmp, os.path.join(out, "cuda_ext.json"))
        except Exception as e:  # never let reporting kill the run
            print(f"could not write JSON: {e}", flush=True)


def watchdog():
    """Write what we have and exit before the budget is gone, even if a kernel hangs."""
    def fire():
        RESULTS["errors"].append({"section": "watchdog", "item": "budget",
                                  "error": f"budget of {BUDGET:.0f}s reached; exiting"})
        log("WATCHDOG: budget reached, writing results and exiting")
        try:
            finish()
        finally:
            os._exit(3)
    t = threading.Timer(max(BUDGET - 3.0 - (time.time() - T0), 1.0), fire)
    t.daemon = True
    t.start()


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
            finally:
                save()
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


def harness_problem(case, dtype):
    """The case as a linattn.testing.Problem (its own seeded data: randn q, k, v; N(0,1) or 0/1 mask)."""
    from linattn.testing.problem import Problem

    name, (B, H, Hkv, N, M, D, E), mshape, causal, decay, state = case
    if mshape is None:
        kind, shape = ("decay" if decay else "causal" if causal else "none"), "BHNM"
    else:
        kind = "dense+decay" if decay else "dense+causal" if causal else "dense"
        if len(mshape) == 2:
            shape = "NM"
        else:
            shape = {(True, True): "11NM", (True, False): "1HNM", (False, True): "B1NM",
                     (False, False): "BHNM"}[(mshape[0] == 1, mshape[1] == 1)]
    grads = ("q", "k", "v") + (("mask",) if mshape is not None else ()) + (("slopes",) if decay else ()) \
        + (("initial_state",) if state else ())
    return Problem(B=B, H=H, Hkv=Hkv, N=N, M=M, D=D, E=E, dtype=str(dtype)[6:], device=DEV, mask_kind=kind,
                   mask_shape=shape, mask_values="binary" if name.startswith("seedlike") else "real", scale=0.7,
                   initial_state=state, final_state=state, grads=grads, seed=0)


def _cuda_fn(q, k, v, mask=None, **kw):
    import linattn

    return linattn.linear_attention(q, k, v, mask, backend="cuda", **kw)


def check_case(case, dtype, variant=None):
    """o and every gradient of backend cuda against float64, in the harness bands (variant: a
    label for rows measured under a non-default engine setting, e.g. "rna")."""
    from linattn.testing.bands import measure
    from linattn.testing.reference import evaluate

    name = case[0]
    t = time.time()
    problem = harness_problem(case, dtype)
    ev = evaluate(problem)
    out = problem.run(_cuda_fn)
    ms = [measure("backward", q, x, ev) for q, x in out.items() if q in ev.oracle]
    errs = {m.quantity: m.error for m in ms}
    ok = all(m.ok for m in ms)
    tol = TOL[dtype]
    rec = {"case": name, "dtype": str(dtype)[6:], "ok": ok, "problem": problem.describe(),
           "errors": errs, "e_ref": {m.quantity: m.e_ref for m in ms}, "band": {m.quantity: m.band for m in ms},
           "fraction": {m.quantity: m.fraction for m in ms},
           "worst": max(errs.values()), "worst_fraction": max(m.fraction for m in ms),
           "worst_ratio_to_naive": max((m.error / m.e_ref for m in ms if m.e_ref > 0), default=float("nan")),
           "tol_ok": all(e <= (20 * tol if k == "dslopes" else tol) for k, e in errs.items()),
           "seconds": time.time() - t}
    if variant:
        rec["variant"] = variant
    RESULTS["correctness"].append(rec)
    log(f"{'ok  ' if ok else 'BAD '} {name:22s} {str(dtype)[6:]:9s}{' [' + variant + ']' if variant else ''} worst {rec['worst_fraction']:.2f} of band, "
        f"x{rec['worst_ratio_to_naive']:.2f} of naive  "
        + " ".join(f"{m.quantity}={m.error:.1e}({m.fraction:.2f})" for m in ms))
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


def time_backend(backend, B, H, N, D, dtype, *, reps=10, host_tax=0):
    """fwd and fwd+bwd medians (CUDA events) and peak memory. host_tax: that many
    ``ninja --version`` subprocesses per forward, as the v3 loader ran (two a call)."""
    import linattn

    def tax():
        if host_tax:
            from torch.utils.cpp_extension import is_ninja_available

            for _ in range(host_tax):
                is_ninja_available()

    g = torch.Generator(device=DEV).manual_seed(0)
    q = torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype, requires_grad=True)
    k = torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype, requires_grad=True)
    v = torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype, requires_grad=True)
    M = torch.randint(0, 2, (1, 1, N, N), generator=g, device=DEV).to(dtype)
    do = torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype)

    def fwd():
        tax()
        with torch.no_grad():
            return linattn.linear_attention(q, k, v, M, backend=backend)

    def fwd_bwd():
        tax()
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


def profile_kernels(label, B, H, N, D, dtype, backend="cuda"):
    """GPU time per kernel name over 3 fwd+bwd steps of `backend` (torch.profiler); the sum of
    the kernel times beside the event-timed step tells how much of a step is host gaps."""
    import linattn
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator(device=DEV).manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype, requires_grad=True) for _ in range(3))
    M = torch.randint(0, 2, (1, 1, N, N), generator=g, device=DEV).to(dtype)
    do = torch.randn(B, H, N, D, generator=g, device=DEV, dtype=dtype)
    for _ in range(2):
        linattn.linear_attention(q, k, v, M, backend=backend).backward(do)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            linattn.linear_attention(q, k, v, M, backend=backend).backward(do)
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = getattr(ev, "cuda_time_total", 0.0)
        if t and t > 0:
            rows.append({"label": label, "backend": backend, "kernel": ev.key[:90], "calls": ev.count,
                         "total_ms": t / 1e3 / 3, "per_call_ms": t / 1e3 / max(ev.count, 1)})
    rows.sort(key=lambda r: -r["total_ms"])
    for r in rows[:8]:
        log(f"profile {label} {backend}: {r['total_ms']:8.3f} ms/step  {r['calls']:3d} calls  "
            f"{r['per_call_ms']:7.3f} ms/call  {r['kernel']}")
    log(f"profile {label} {backend}: all kernels {sum(r['total_ms'] for r in rows):.3f} ms/step")
    RESULTS.setdefault("profile", []).extend(rows[:12])


def start_ptxas():
    """nvcc -Xptxas -v of the float32 and bfloat16 kernel files, in the background (the build
    compiles the same files at the same time; the machine has cores to spare)."""
    import subprocess
    import tempfile

    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    from linattn.backends.cuda import loader

    _, gencode = loader.arch_flag(torch.device("cuda", 0))
    tmp = tempfile.mkdtemp()
    procs = []
    for src in ("kernels_f32.cu", "kernels_bf16.cu"):
        cmd = [loader.nvcc_path(), "-std=c++17", "-O3", gencode, "-Xptxas", "-v", *COMMON_NVCC_FLAGS,
               "-I", str(loader.CSRC), "-c", str(loader.CSRC / src), "-o", os.path.join(tmp, src + ".o")]
        procs.append((src, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    return procs


def collect_ptxas(procs, timeout):
    """Registers, spills and stack per kernel from the background nvcc runs (killed after timeout)."""
    import re
    import subprocess

    rows = []
    for src, pr in procs:
        try:
            out, _ = pr.communicate(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            pr.kill()
            pr.communicate()
            log(f"ptxas {src}: not done in time, killed")
            continue
        name = None
        for line in out.splitlines():
            m = re.search(r"Compiling entry function '([^']+)'", line)
            if m:
                name = m.group(1).replace("_ZN7linattn", "")[:80]
                rows.append({"file": src, "kernel": name, "line": ""})
            elif name and ("spill" in line or "registers" in line):
                rows[-1]["line"] += " " + line.split(":", 1)[-1].strip()
    for r in rows:
        log(f"ptxas {r['file']:16s} {r['kernel']:80s}{r['line']}")
    RESULTS["ptxas"] = rows


SMOKE = r"""
import torch, linattn
from linattn.backends.reference import reference_forward
g = torch.Generator(device="cuda").manual_seed(0)
B, H, N, D = 2, 3, 1024, 64
q, k, v = (torch.randn(B, H, N, D, generator=g, device="cuda") for _ in range(3))
M = torch.randint(0, 2, (1, 1, N, N), generator=g, device="cuda").float()
x = [t.clone().requires_grad_() for t in (q, k, v)]
o = linattn.linear_attention(*x, M, backend="cuda")
o.backward(torch.ones_like(o))
y = [t.double().requires_grad_() for t in (q, k, v)]
o64, _ = reference_forward(*y, M.double())
o64.backward(torch.ones_like(o64))
errs = [((a.double() - b).norm() / b.norm()).item() for a, b in zip([o] + [t.grad for t in x], [o64] + [t.grad for t in y])]
torch.cuda.synchronize()
print("SMOKE", "OK" if max(errs) < 2e-6 else "BAD", errs, flush=True)
"""


def smoke_child():
    """One float32 fwd+bwd (v4 engines) in a child process; on failure, LINATTN_CUDA_FP32_PRESPLIT=0 here."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        res = subprocess.run([sys.executable, "-c", SMOKE], cwd=root, capture_output=True, text=True,
                             timeout=max(5.0, min(60.0, left() - 20)))
        out = (res.stdout + res.stderr).strip()
        ok = res.returncode == 0 and "SMOKE OK" in res.stdout
    except subprocess.TimeoutExpired:
        out, ok = "timed out", False
    RESULTS["smoke"] = {"ok": ok, "output": out[-1500:]}
    log(f"smoke float32 v5 kernel in a child: {'ok' if ok else 'FAILED'}: {out[-300:]}")
    if ok:
        return
    # v5's schedule failed: try v4's (same engine, v4 schedule), else v3's kernel
    try:
        res = subprocess.run([sys.executable, "-c", SMOKE], cwd=root, capture_output=True, text=True,
                             timeout=max(5.0, min(60.0, left() - 20)),
                             env=dict(os.environ, LINATTN_CUDA_FP32_EARLYMASK="0"))
        out4 = (res.stdout + res.stderr).strip()
        ok4 = res.returncode == 0 and "SMOKE OK" in res.stdout
    except subprocess.TimeoutExpired:
        out4, ok4 = "timed out", False
    RESULTS["smoke"]["v4sched"] = {"ok": ok4, "output": out4[-1500:]}
    if ok4:
        os.environ["LINATTN_CUDA_FP32_EARLYMASK"] = "0"
        RESULTS["smoke"]["fallback"] = "LINATTN_CUDA_FP32_EARLYMASK=0 for the rest of this run"
    else:
        os.environ["LINATTN_CUDA_FP32_PRESPLIT"] = "0"
        RESULTS["smoke"]["fallback"] = "LINATTN_CUDA_FP32_PRESPLIT=0 for the rest of this run"
    log(f"smoke with v4's schedule: {'ok' if ok4 else 'FAILED'}; {RESULTS['smoke']['fallback']}: {out4[-300:]}")


def schedule_bitwise(what="v5 schedule vs v4 schedule", knob="LINATTN_CUDA_FP32_EARLYMASK", flags=("1", "0"),
                     fixed=None):
    """v5's tile schedule (with rounded lo parts, LOTRUNC=0) against v4's on the seed-like problem (B2 H3 N1024 D64, 0/1 mask
    [1,1,N,N]) and a GQA causal+mask problem: o, dq, dk, dv must be bitwise equal (same products,
    same order); a race in the shorter schedule would break this. ``knob``/``flags``/``fixed``:
    another pair of float32 variants that must agree bitwise (v6's PONCE against v5)."""
    fixed = {"LINATTN_CUDA_FP32_LOTRUNC": "0"} if fixed is None else fixed
    out = []
    sizes = {"seedlike": (2, 3, 3, 1024, 64, False), "gqa-causal-mask": (2, 4, 2, 777, 48, True)}
    if DRY:  # the emulator: same kinds, small
        sizes = {"seedlike": (1, 2, 2, 97, 64, False), "gqa-causal-mask": (1, 4, 2, 70, 48, True)}
    for label, (B, H, Hkv, N, D, causal) in sizes.items():
        g = torch.Generator(device=DEV).manual_seed(11)
        q = torch.randn(B, H, N, D, generator=g, device=DEV)
        k, v = (torch.randn(B, Hkv, N, D, generator=g, device=DEV) for _ in range(2))
        mask = torch.randint(0, 2, (1, 1, N, N), generator=g, device=DEV).float()
        do = torch.randn(B, H, N, D, generator=g, device=DEV)
        res = []
        for flag in flags:
            saved = {key: os.environ.get(key) for key in [knob] + list(fixed)}
            os.environ[knob] = flag
            os.environ.update(fixed)  # v5 vs v4: v5's schedule with v4's rounding
            try:
                x = [t.clone().requires_grad_() for t in (q, k, v)]
                import linattn

                o = linattn.linear_attention(*x, mask, causal=causal, backend="cuda")
                o.backward(do)
                if not DRY:
                    torch.cuda.synchronize()
                res.append([o.detach()] + [t.grad for t in x])
            finally:
                restore_env(saved)
        eq = all(torch.equal(a, b) for a, b in zip(*res))
        out.append({"problem": label, "what": what, "bitwise_equal": eq})
        log(f"{what}, {label}: bitwise equal = {eq}")
    RESULTS.setdefault("schedule_bitwise", []).extend(out)
    save()


REPLAYS = ("fuzz/failures/cuda-forward-658e448a67.json", "fuzz/failures/cuda-backward-3a49fd36dc.json")


def replay_one_term(path, ffma):
    """One recorded fuzz failure on this device; ffma: the LINATTN_CUDA_FP32_FFMA setting
    (None = default engine choice, "0" = 3xTF32 everywhere as in v3)."""
    import dataclasses

    import linattn
    from fuzz.campaign import CampaignFailure, check
    from fuzz.problems import rebuild

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    entry = json.load(open(os.path.join(root, path)))
    problem = dataclasses.replace(rebuild(entry["problem"]), device=DEV)
    old = os.environ.pop("LINATTN_CUDA_FP32_FFMA", None)
    if ffma is not None:
        os.environ["LINATTN_CUDA_FP32_FFMA"] = ffma
    try:
        res, _ = check(linattn.get_backend("cuda"), entry["property"], problem)
        rec = {"id": entry["id"], "ffma": ffma or "auto", "pass": True, "worst_fraction": res.worst_fraction}
    except CampaignFailure as e:
        rec = {"id": entry["id"], "ffma": ffma or "auto", "pass": False, "message": str(e)[:600]}
    finally:
        os.environ.pop("LINATTN_CUDA_FP32_FFMA", None)
        if old is not None:
            os.environ["LINATTN_CUDA_FP32_FFMA"] = old
    RESULTS["replays"].append(rec)
    detail = f"worst {rec['worst_fraction']:.3f} of band" if rec["pass"] else " | ".join(rec["message"].splitlines()[1:3])
    log(f"replay {rec['id']} ffma={rec['ffma']}: {'PASS' if rec['pass'] else 'FAIL'} {detail}")


def restore_env(saved):
    for key, val in saved.items():
        if val is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = val


#: timing variants of backend cuda: name -> (backend, environment, ninja subprocesses per call)
VARIANTS = {
    "cuda-v4sched": ("cuda", {"LINATTN_CUDA_FP32_EARLYMASK": "0"}, 0),  # float32: v4's tile schedule
    "cuda-rna": ("cuda", {"LINATTN_CUDA_FP32_LOTRUNC": "0"}, 0),  # float32: v5 with rounded lo (bitwise v4)
    "cuda-v3kernel": ("cuda", {"LINATTN_CUDA_FP32_PRESPLIT": "0"}, 0),  # float32: v3's per-warp splits
    "cuda-v3host": ("cuda", {}, 2),  # the v3 loader's two `ninja --version` per forward (what run 6 timed)
    "cuda-ffma": ("cuda", {"LINATTN_CUDA_FP32_FFMA": "1"}, 0),  # every float32 product on FFMA
    "cuda-ponce": ("cuda", {"LINATTN_CUDA_FP32_PONCE": "1"}, 0),  # float32 v6: P split once per tile
    "cuda-v5": ("cuda", {"LINATTN_CUDA_FP32_PONCE": "0"}, 0),  # float32 v5 (whatever the default)
}
#: the seed float32 timing's rows, in order (CUDA_SEED_ROWS="cuda,reference,..." overrides)
SEED_ROWS = [x for x in os.environ.get("CUDA_SEED_ROWS", "cuda,reference,cuda-rna,cuda-v4sched,cuda-v3kernel")
             .split(",") if x]


def timing(label, B, H, N, D, dtype, backends, reps):
    """Each backend in turn; every row is recorded (and saved) as soon as it is measured."""
    rows = []
    for be in backends:
        if not afford(f"timing/{label}/{be}", 3):
            continue
        name, env, tax = VARIANTS.get(be, (be, {}, 0))
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            r = guarded("timing", f"{label}/{be}")(time_backend)(name, B, H, N, D, dtype, reps=reps, host_tax=tax)
        finally:
            restore_env(saved)
        if r is None:
            continue
        r["backend"] = be
        r["label"] = label
        rows.append(r)
        RESULTS["timing"].append(r)
        ref = next((x for x in rows if x["backend"] == "reference"), None)
        if ref is not None:
            for x in rows:
                x["speedup_vs_reference"] = ref["fwd_bwd_ms"] / x["fwd_bwd_ms"]
                x["mem_vs_reference"] = x["peak_mem_MiB"] / ref["peak_mem_MiB"]
        save()
        log(f"{label:14s} {be:12s} fwd {r['fwd_ms']:8.3f} ms  fwd+bwd {r['fwd_bwd_ms']:8.3f} ms  "
            f"peak {r['peak_mem_MiB']:9.1f} MiB  ({r['fwd_TFLOPs']:.1f} / {r['fwd_bwd_TFLOPs']:.1f} TFLOP/s)")
        torch.cuda.empty_cache()


def correctness(dtypes, max_size=None, est=None, variant=None, env=None):
    """The CASES in each dtype, budget permitting (estimates: seconds per case on an H100);
    env: settings for this pass (restored after each case), variant: its label in the rows."""
    for dtype in dtypes:
        for case in CASES:
            B, H, Hkv, N, M, D, E = case[1]
            if max_size is not None and B * H * N * M * max(D, E) > max_size:
                continue
            if dtype != torch.float32 and case[0] in ("dense-BHNM", "none-N!=M"):
                continue
            item = f"correctness/{case[0]}/{str(dtype)[6:]}" + (f"/{variant}" if variant else "")
            if afford(item, (est or {}).get(case[0], 1.0)):
                saved = {key: os.environ.get(key) for key in (env or {})}
                os.environ.update(env or {})
                try:
                    guarded("correctness", item)(check_case)(case, dtype, variant)
                finally:
                    restore_env(saved)


def main():
    watchdog()
    if DRY:
        log(f"dry run on the CPU emulator (LINATTN_CUDA_EMU_MMA={os.environ.get('LINATTN_CUDA_EMU_MMA', 'rz')}), "
            f"budget {BUDGET:.0f}s")
        correctness((torch.float32, torch.bfloat16), max_size=2 * 4 * 131 * 131 * 64, est={})
        for ffma in (None, "0"):
            for path in REPLAYS:
                if afford(f"replay/{path}/{ffma}", 5):
                    guarded("replay", f"{path}/{ffma}")(replay_one_term)(path, ffma)
        if afford("determinism/float32", 20):
            guarded("determinism", "float32")(check_determinism)(torch.float32)
        if afford("schedule_bitwise", 30):
            guarded("schedule_bitwise", "v5 vs v4")(schedule_bitwise)()
        correctness((torch.float32,), max_size=2 * 4 * 131 * 131 * 64, est={}, variant="rna",
                    env={"LINATTN_CUDA_FP32_LOTRUNC": "0"})
        finish()
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device; nothing to do", flush=True)
        finish()
        return 1
    props = torch.cuda.get_device_properties(0)
    RESULTS["device"] = {"name": props.name, "cc": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
                         "torch": torch.__version__, "cuda": torch.version.cuda}
    log(f"device {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, budget {BUDGET:.0f}s")
    save()

    # 1. build, ptxas in the background
    from linattn.backends.cuda import loader

    procs = guarded("ptxas", "start")(start_ptxas)() or []
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
        guarded("ptxas", "collect")(collect_ptxas)(procs, min(20.0, left() - 5))
        finish()
        return 1
    save()
    guarded("ptxas", "collect")(collect_ptxas)(procs, min(30.0, left() - 40))
    save()

    # the v4 float32 kernel first in a child process: an illegal address there would poison this
    # process's CUDA context for every later item; if the child fails, v3's kernel is used here
    if afford("smoke/float32 v4 kernel", 15):
        guarded("smoke", "float32 v4 kernel")(smoke_child)()

    # 2. the seed's float32 speed (the open target of issue 6), its kernels, the v3 host path
    if afford("timing/seed fp32", 8):
        timing("seed fp32", 16, 12, 1024, 64, torch.float32, SEED_ROWS, reps=10)
    if afford("ponce_bitwise", 4):
        guarded("schedule_bitwise", "v6 vs v5")(schedule_bitwise)(
            "v6 (P split once) vs v5", "LINATTN_CUDA_FP32_PONCE", ("1", "0"), {})
    if afford("schedule_bitwise", 4):
        guarded("schedule_bitwise", "v5 vs v4")(schedule_bitwise)()
    if afford("profile/seed fp32", 5):
        guarded("profile", "seed fp32/cuda")(profile_kernels)("seed fp32", 16, 12, 1024, 64, torch.float32)
    if afford("profile/seed fp32/v4sched", 5):
        saved = {"LINATTN_CUDA_FP32_EARLYMASK": os.environ.get("LINATTN_CUDA_FP32_EARLYMASK")}
        os.environ["LINATTN_CUDA_FP32_EARLYMASK"] = "0"
        try:
            guarded("profile", "seed fp32/cuda-v4sched")(profile_kernels)("seed fp32 v4sched", 16, 12, 1024, 64,
                                                                         torch.float32)
        finally:
            restore_env(saved)
    if afford("profile/seed fp32/reference", 5):
        guarded("profile", "seed fp32/reference")(profile_kernels)("seed fp32", 16, 12, 1024, 64, torch.float32,
                                                                    "reference")

    # 3-4. float32 correctness (on by default since v4), the one-term fuzz failures
    est = {"seedlike-binary": 3.0, "D256-E256-dense": 2.0, "decay-D256-causalmask": 2.0}
    correctness((torch.float32,), est=est)
    for ffma in (None, "0"):
        for path in REPLAYS:
            if afford(f"replay/{path}/{ffma}", 2):
                guarded("replay", f"{path}/{ffma}")(replay_one_term)(path, ffma)

    # 5. bfloat16 N = 4096 beside reference and triton_dense
    if afford("timing/bf16 N=4096", 10):
        import linattn

        extra = []
        for name in ("triton_dense",):
            try:
                if linattn.get_backend(name).available() is None:
                    extra.append(name)
            except Exception as e:
                log(f"backend {name} not usable: {e}")
        timing("bf16 N=4096", 4, 12, 4096, 64, torch.bfloat16, ["cuda", "reference"] + extra, reps=5)

    # 6. the halves' correctness
    correctness((torch.bfloat16, torch.float16), est=est)

    # 7. determinism, then tuning aids
    for dtype in (torch.float32, torch.bfloat16):
        if afford(f"determinism/{dtype}", 3):
            guarded("determinism", str(dtype))(check_determinism)(dtype)
    # 8. float32 with rounded lo parts (LINATTN_CUDA_FP32_LOTRUNC=0, bitwise v4) in the bands,
    # beside the default's rows above
    correctness((torch.float32,), est=est, variant="rna", env={"LINATTN_CUDA_FP32_LOTRUNC": "0"})
    if afford("timing/seed fp32 ffma", 6):
        timing("seed fp32", 16, 12, 1024, 64, torch.float32, ["cuda-ffma"], reps=3)
    if afford("configs/seed fp32", 10):
        config_sweep("seed fp32", 16, 12, 1024, 64, torch.float32, reps=5)
    if afford("profile/bf16 N=4096", 6):
        guarded("profile", "bf16 N=4096")(profile_kernels)("bf16 N=4096", 4, 12, 4096, 64, torch.bfloat16)
    if afford("configs/bf16 N=4096", 8):
        config_sweep("bf16 N=4096", 4, 12, 4096, 64, torch.bfloat16, reps=3)
    finish()
    return 0


def finish():
    save()
    corr = RESULTS["correctness"]
    print("\n==== cuda_ext summary ====", flush=True)
    b = RESULTS["build"] or {}
    print(f"device: {RESULTS['device']}  budget {BUDGET:.0f}s")
    print(f"build: {'ok' if b.get('ok') else 'FAILED or not run'} in {b.get('seconds', float('nan')):.1f}s")
    for r in RESULTS.get("ptxas", []):
        if "masked_product" in r["kernel"]:
            print(f"ptxas {r['kernel'][:60]:60s}{r['line']}")
    for dt, var in (("float32", None), ("bfloat16", None), ("float16", None), ("float32", "rna")):
        rows = [r for r in corr if r["dtype"] == dt and r.get("variant") == var]
        if var:
            dt = f"{dt}[{var}]"
        if rows:
            bad = [r["case"] for r in rows if not r["ok"]]
            worst = max(rows, key=lambda r: r["worst_fraction"])
            ratios = [r["worst_ratio_to_naive"] for r in rows if not math.isnan(r["worst_ratio_to_naive"])]
            print(f"correctness {dt:9s}: {len(rows) - len(bad)}/{len(rows)} in the bands; worst {worst['worst_fraction']:.2f} "
                  f"of its band ({worst['case']}); worst ratio to the formula in {dt} "
                  f"{max(ratios) if ratios else float('nan'):.2f}; fixed-tol check "
                  f"{sum(r['tol_ok'] for r in rows)}/{len(rows)}" + (f"; FAILED: {bad}" if bad else ""))
    for r in RESULTS["replays"]:
        print(f"replay {r['id']:28s} ffma={r['ffma']:4s}: " + ("PASS" if r["pass"] else "FAIL")
              + (f" ({r['worst_fraction']:.3f} of band)" if r["pass"] else ""))
    for d in RESULTS.get("schedule_bitwise", []):
        print(f"{d.get('what', 'v5 vs v4 schedule')} {d['problem']:16s}: bitwise equal = {d['bitwise_equal']}")
    for d in RESULTS["determinism"]:
        print(f"determinism {d['dtype']:9s}: bitwise equal = {d['bitwise_equal']}")
    print(f"{'timing':14s} {'backend':12s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'peak MiB':>10s} {'speedup':>8s} {'mem':>6s}")
    for r in RESULTS["timing"]:
        print(f"{r['label']:14s} {r['backend']:12s} {r['fwd_ms']:9.3f} {r['fwd_bwd_ms']:11.3f} "
              f"{r['peak_mem_MiB']:10.1f} {r.get('speedup_vs_reference', float('nan')):7.2f}x "
              f"{r.get('mem_vs_reference', float('nan')):5.2f}x")
    for r in RESULTS.get("configs", []):
        print(f"config {r['label']:14s} {r['config']}: fwd {r['fwd_ms']:.3f} ms  fwd+bwd {r['fwd_bwd_ms']:.3f} ms")
    if RESULTS["skipped"]:
        print("skipped (budget): " + ", ".join(x["item"] for x in RESULTS["skipped"]))
    print(f"errors: {len(RESULTS['errors'])}" + "".join(f"\n  {e['section']}/{e['item']}: {e['error'][:300]}"
                                                         for e in RESULTS["errors"]))
    print(f"total {time.time() - T0:.0f}s", flush=True)


if __name__ == "__main__":
    try:
        rc = main()
    except BaseException as e:  # noqa: BLE001 - report anything, then exit
        RESULTS["errors"].append({"section": "main", "item": "main", "error": f"{type(e).__name__}: {e}"[:2000],
                                  "traceback": traceback.format_exc(limit=6)[-3000:]})
        finish()
        rc = 2
    sys.stdout.flush()
    os._exit(rc)  # do not wait for background threads or child processes
