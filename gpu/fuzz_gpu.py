#!/usr/bin/env python3
"""GPU fuzz checks: compute-sanitizer on awkward shapes, and 64-bit offsets. One call, ~150 s.

    python3 gpu/fuzz_gpu.py                 (repository root; OUT=dir gets fuzz_gpu.json + logs)
    FUZZ_GPU_BUDGET_S=140 python3 gpu/fuzz_gpu.py     (the budget; default 140 s)
    python3 gpu/fuzz_gpu.py --dry-run-cpu   (this script's logic on a CPU: Triton interpreter,
                                             the CUDA kernels through their emulator, no
                                             sanitizer, the "big" problems shrunk)

Everything runs side by side inside one budget, so nothing important waits for something
slow: the sanitizer runs are child processes (mostly CPU-bound: JIT compilation and the
sanitizer's host side; 16 cores) started at once, while this process runs the 64-bit
offset problems on the GPU. Each child runs under ``timeout`` and is killed at the deadline;
a watchdog thread writes the JSON and exits if anything blocks; ``fuzz_gpu.json`` is
rewritten after every finished item, so a kill still leaves the figures.

1. Sanitizer (children, this file with ``--driver BACKEND``, PyTorch's caching allocator off
   with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` so every tensor is its own allocation and an
   out-of-bounds access is seen; ``PYTORCH_CUDA_ALLOC_CONF`` dropped, since expandable
   segments give false "Invalid __global__ write" reports; Triton autotuning off, so the
   budget goes to the problems): forward + backward of awkward problems — N = 1, 63, 65,
   100, 130, 131; D, E = 1, 5, 17, 48, 60, 65; MQA/GQA; N != M; every mask kind; packed
   sequences with an empty one; float16/bfloat16/float32 — each also checked against the
   float64 reference on the CPU (a loose per-dtype bound: this is a memory check, the
   bands live in the property suites).
     memcheck: ``triton``, ``triton_dense``, ``cuda``;   racecheck: ``cuda``
     (gpu/cuda_sanitize_driver.py: shared-memory hazards of the hand-written kernels).
2. 64-bit offsets, in this process. Problems whose tensors pass 2^31 elements, so any
   int32 offset product (row * D, head * N * D, row * M for the mask) wraps:
     A  triton (chunked), causal, bf16, B=2 H=16 N=2^20+37 D=E=64 (q: 2^31 + 75776 elements),
        forward + backward; o, dq, dk, dv rows of the first and the last head at rows 0, 1,
        2^19, N-2, N-1 against float64 prefix / suffix sums (~35 GB; with less than 46 GiB
        free, E = 16: q, k, dq, dk still past 2^31, ~22 GB);
     B  triton_dense, dense [N, M] mask, bf16, B=H=1, N=M=46400 (mask: 2^31 + 5.5M elements),
        forward + backward; o, dq and dmask rows 0, 46283 (first row past 2^31 / M), N-1;
     C  cuda on problem B, once its extension is built;
     D  triton_dense, causal, bf16, B=1024 H=128 N=257 D=E=64 (q: 2^31 + 8.4M elements),
        forward; rows of the first and the last (b, h) against float64.
Each item is caught and reported on its own; the summary table is printed last.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DRY = "--dry-run-cpu" in sys.argv
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("LINATTN_CUDA_EMULATE", "1")
# Autotuning benchmarks every tile config: under a sanitizer, or on a 2^31-element problem,
# that is most of the budget. The fixed configs are the measured winners (dense_fwd.py).
os.environ.setdefault("LINATTN_TRITON_AUTOTUNE", "0")

import torch  # noqa: E402

T0 = time.time()
BUDGET = float(os.environ.get("FUZZ_GPU_BUDGET_S", "140"))
DEV = "cpu" if DRY else "cuda"
OUT = os.environ.get("OUT")
ROWS = []  # summary rows: (item, status, detail)
DETAILS = {"memcheck": {}, "offsets": [], "errors": [], "replays": []}
TOL = {torch.float32: 5e-3, torch.float16: 3e-2, torch.bfloat16: 6e-2}


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def left() -> float:
    return BUDGET - (time.time() - T0)


# -- the driver: awkward problems, forward + backward, one backend ----------------------------

CASES = [
    # name, B, H, Hkv, N, M, D, E, kind, dtype, extra
    ("N1-causal-state", 1, 1, 1, 1, 1, 1, 1, "causal", torch.bfloat16, {"state": True}),
    ("gqa-N63-D48-E60-decay-state", 2, 4, 2, 63, 63, 48, 60, "decay", torch.bfloat16, {"state": True}),
    ("mqa-N130-D17-E5-dense+decay", 1, 3, 1, 130, 130, 17, 5, "dense+decay", torch.bfloat16, {"mask": "NM"}),
    ("N65-M37-D60-E48-dense", 2, 2, 1, 65, 37, 60, 48, "dense", torch.float16, {"mask": "1HNM"}),
    ("N131-D65-E1-causal-f32", 1, 2, 2, 131, 131, 65, 1, "causal", torch.float32, {}),
    ("N64-none-f16", 2, 2, 2, 64, 64, 16, 16, "none", torch.float16, {}),
    ("varlen-empty-seq", 1, 2, 1, 100, 100, 32, 24, "decay", torch.bfloat16, {"cu": [0, 1, 37, 37, 100], "state": True}),
]


def _problem(B, H, Hkv, N, M, D, E, kind, dtype, extra, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    t = dict(q=r(B, H, N, D) * D ** -0.25, k=r(B, Hkv, M, D) * D ** -0.25, v=r(B, Hkv, M, E))
    kw = {}
    if kind.startswith("dense"):
        shape = {"NM": (N, M), "1HNM": (1, H, N, M)}[extra.get("mask", "NM")]
        t["mask"] = r(*shape)
    if kind.endswith("causal"):
        kw["causal"] = True
    if kind.endswith("decay"):
        t["decay"] = torch.linspace(0.01, 2.0, H, dtype=torch.float64)
    S = len(extra["cu"]) - 1 if "cu" in extra else B
    if extra.get("state"):
        t["initial_state"] = r(S, H, D, E)
        kw["output_final_state"] = True
    if "cu" in extra:
        kw["cu_seqlens"] = torch.tensor(extra["cu"], dtype=torch.int64)
    return t, kw


def _run(linattn, backend, t, kw, dtype, dev):
    """Forward + backward; returns {name: tensor} (o, final_state, d<input>) on the CPU in float64."""
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = {}
    for n, x in t.items():
        x = x.to(sdt if n in ("decay", "initial_state") else dtype).to(dev).requires_grad_()
        leaves[n] = x
    kw = {n: (v.to(dev) if isinstance(v, torch.Tensor) else v) for n, v in kw.items()}
    out = linattn.linear_attention(leaves["q"], leaves["k"], leaves["v"], leaves.get("mask"), decay=leaves.get("decay"),
                                   initial_state=leaves.get("initial_state"), backend=backend, **kw)
    o, st = (out.o, out.final_state) if kw.get("output_final_state") else (out, None)
    g = torch.Generator().manual_seed(99)
    # upstream gradients rounded to the result dtypes, so the float64 run sees the same ones
    do = torch.randn(o.shape, generator=g, dtype=torch.float64).to(dtype).double()
    loss = (o.double() * do.to(dev)).sum()
    if st is not None:
        dS = torch.randn(st.shape, generator=g, dtype=torch.float64).to(sdt).double()
        loss = loss + (st.double() * dS.to(dev)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    res = {"o": o.detach().double().cpu()}
    if st is not None:
        res["final_state"] = st.detach().double().cpu()
    for n, gx in zip(leaves, grads):
        res["d" + n] = gx.double().cpu()
    return res


def driver(backend: str) -> int:
    import linattn

    b = linattn.get_backend(backend)
    why = b.available()
    if why is not None:
        print(f"DRIVER {backend} unavailable: {why}", flush=True)
        return 0
    bad = 0
    for name, B, H, Hkv, N, M, D, E, kind, dtype, extra in CASES:
        t, kw = _problem(B, H, Hkv, N, M, D, E, kind, dtype, extra)
        try:
            got = _run(linattn, backend, t, kw, dtype, DEV)
            if DEV == "cuda":
                torch.cuda.synchronize()
        except linattn.UnsupportedRequest as e:
            print(f"CASE {name} skip: {str(e).splitlines()[0][:160]}", flush=True)
            continue
        except Exception as e:  # noqa: BLE001
            bad += 1
            print(f"CASE {name} ERROR {type(e).__name__}: {str(e)[:300]}", flush=True)
            traceback.print_exc(limit=-4)
            continue
        # float64 reference on the CPU, from the same rounded inputs
        t64 = {n: x.to(torch.float32 if n in ("decay", "initial_state") else dtype).double() for n, x in t.items()}
        ref = _run(linattn, "reference", t64, kw, torch.float64, "cpu")
        # the plain formula in the same dtype: a quantity that cancels (the slope gradient)
        # is inaccurate in bfloat16 whoever computes it; the bound is max(TOL, 4 x its error)
        refx = _run(linattn, "reference", t64, kw, dtype, "cpu") if dtype != torch.float64 else ref
        worst, where, bound_at = 0.0, "", TOL[dtype]
        for q, x in got.items():
            r = ref[q]
            den = r.norm().clamp_min(1e-300)
            err = float((x - r).norm() / den)
            e_ref = float((refx[q] - r).norm() / den)
            bound = max(TOL[dtype], 4.0 * e_ref) if math.isfinite(e_ref) else TOL[dtype]
            frac = err / bound if math.isfinite(err) else math.inf
            if frac > worst:
                worst, where, bound_at = frac, f"{q}: {err:.2e}", bound
        ok = worst <= 1.0
        bad += not ok
        print(f"CASE {name} {'ok' if ok else 'FAIL'} worst rel err {where or '0'} = {worst:.2f} x bound "
              f"{bound_at:.1e} (max(tol, 4 x e_ref in {str(dtype)[6:]}))", flush=True)
    return 1 if bad else 0


def replay_cuda_failures() -> int:
    """Re-run the cuda failures the emulator campaign recorded (fuzz/failures/cuda-*.json,
    status open) on this device: on a GPU they say whether the kernels or the emulator's
    tensor-core model is at fault (float32 needs LINATTN_CUDA_FP32=1, set by the parent)."""
    import dataclasses
    import glob

    import linattn
    from fuzz.campaign import CampaignFailure, Skip, check
    from fuzz.problems import rebuild

    b = linattn.get_backend("cuda")
    why = b.available()
    if why is not None:
        print(f"DRIVER cuda unavailable: {why}", flush=True)
        return 0
    bad = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "fuzz", "failures", "cuda-*.json"))):
        entry = json.load(open(path))
        if entry.get("status") == "fixed":
            continue
        fid = entry["id"]
        try:
            problem = rebuild(entry["problem"])
            problem = dataclasses.replace(problem, device=DEV)
            res, note = check(b, entry["property"], problem)
            print(f"REPLAY {fid} PASS worst error/band {res.worst_fraction:.3g} {note}", flush=True)
        except Skip as e:
            print(f"REPLAY {fid} SKIP {str(e)[:120]}", flush=True)
        except CampaignFailure as e:
            bad += 1
            lines = str(e).splitlines()
            print(f"REPLAY {fid} FAIL " + " | ".join(lines[1:4])[:300], flush=True)
        except Exception as e:  # noqa: BLE001
            bad += 1
            print(f"REPLAY {fid} ERROR {type(e).__name__}: {str(e)[:200]}", flush=True)
    return 1 if bad else 0


# -- bookkeeping: incremental JSON, the watchdog -------------------------------------------------

_STATE = {"children": {}, "done": False}


def save() -> None:
    """Rewrite fuzz_gpu.json (atomically): called after every finished item."""
    if not OUT:
        return
    try:
        dev = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)"
    except Exception:  # noqa: BLE001
        dev = "?"
    data = dict(rows=ROWS, details=DETAILS, seconds=round(time.time() - T0, 1), budget_s=BUDGET,
                finished=_STATE["done"], device=dev, torch=torch.__version__)
    tmp = os.path.join(OUT, ".fuzz_gpu.json.part")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, os.path.join(OUT, "fuzz_gpu.json"))


def row(item, status, detail) -> None:
    ROWS.append((item, status, detail))
    log(f"{item}: {status} {detail}")
    try:
        save()
    except Exception as e:  # noqa: BLE001
        log(f"could not write the JSON: {e}")


def _kill(p) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)  # the child and its sanitizer / python grandchildren
    except Exception:  # noqa: BLE001
        pass


def watchdog() -> None:
    """If this process blocks (a hung kernel, a stuck sync), still leave the figures: at the
    budget plus a grace period, kill the children, write the JSON and exit."""
    time.sleep(max(BUDGET + 8 - (time.time() - T0), 1))
    if _STATE["done"]:
        return
    for ch in list(_STATE["children"].values()):
        _kill(ch["proc"])
    ROWS.append(("watchdog", "FAIL", f"still running at {time.time() - T0:.0f}s: stopped (see the log)"))
    try:
        save()
    finally:
        print("\n[watchdog] budget exceeded; rows so far:", flush=True)
        for r in ROWS:
            print(f"  {r[0]}  {r[1]}  {r[2]}", flush=True)
        os._exit(3)


# -- 1. sanitizer children ------------------------------------------------------------------


def _sanitizer():
    for c in (shutil.which("compute-sanitizer"), "/usr/local/cuda/bin/compute-sanitizer",
              os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "compute-sanitizer")):
        if c and os.path.exists(c):
            return c
    return None


def start_child(name: str, tool: str, backend: str, limit: float) -> None:
    """Start ``tool`` (memcheck / racecheck) on ``backend``'s driver as a child, in its own
    process group, under ``timeout``; its output goes to OUT/fuzz_<name>.log."""
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1", PYTHONUNBUFFERED="1")
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    if tool == "racecheck":
        cmd = [sys.executable, os.path.join(ROOT, "gpu", "cuda_sanitize_driver.py"), "racecheck"]
    elif tool == "replay":
        cmd = [sys.executable, os.path.abspath(__file__), "--replay-cuda"]
        env["LINATTN_CUDA_FP32"] = "1"  # the recorded problems are mostly float32
        env.pop("PYTORCH_NO_CUDA_MEMORY_CACHING", None)
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--driver", backend]
    if DRY:
        cmd += ["--dry-run-cpu"]
    elif tool != "replay":
        san = _sanitizer()
        if san is None:
            row(name, "SKIP", "compute-sanitizer not found")
            return
        extra = (["--leak-check", "no", "--report-api-errors", "no"] if tool == "memcheck"
                 else ["--racecheck-report", "all"])
        cmd = [san, "--tool", tool, "--print-limit", "20", "--error-exitcode", "97"] + extra + cmd
    limit = max(int(limit), 5)
    cmd = ["timeout", "-k", "5", str(limit)] + cmd
    logf = os.path.join(OUT or "/tmp", f"fuzz_{name.replace(' ', '_')}.log")
    fh = open(logf, "w")
    p = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    _STATE["children"][name] = dict(proc=p, log=logf, fh=fh, t=time.time(), tool=tool, backend=backend, limit=limit)
    log(f"started {name}: {' '.join(os.path.basename(c) for c in cmd[3:6])} ... (limit {limit}s)")


def finish_child(name: str, ch: dict, killed: bool) -> None:
    ch["fh"].close()
    secs = time.time() - ch["t"]
    rc = ch["proc"].returncode
    out = open(ch["log"], errors="replace").read()
    timed_out = killed or rc in (124, 137, -9)
    if ch["tool"] == "replay":
        reps = re.findall(r"^REPLAY (\S+) (PASS|FAIL|SKIP|ERROR)(.*)$", out, flags=re.M)
        DETAILS["replays"] = [dict(id=r[0], status=r[1], detail=r[2].strip()) for r in reps]
        n_pass = sum(r[1] == "PASS" for r in reps)
        n_fail = sum(r[1] in ("FAIL", "ERROR") for r in reps)
        unavailable = re.search(r"^DRIVER \S+ unavailable: (.*)$", out, flags=re.M)
        if unavailable:
            row(name, "SKIP", unavailable.group(1)[:80])
            return
        # informative either way: PASS on the GPU = the emulator model is at fault
        row(name, "INFO" if reps else ("PARTIAL" if timed_out else "FAIL"),
            f"{n_pass} pass, {n_fail} fail of {len(reps)} on {DEV} ({'kernels fine, emulator model at fault' if reps and not n_fail else 'see details'}); {secs:.0f}s"
            + ("; timed out" if timed_out else ""))
        return
    if ch["tool"] == "racecheck":
        n_run = re.search(r"driver cases run: (\d+)", out)
        m = re.search(r"RACECHECK SUMMARY: (\d+) hazard", out)
        errors = int(m.group(1)) if m else None
        skips = re.findall(r"^SKIP (.*)$", out, flags=re.M)
        first = [ln for ln in out.splitlines() if ln.startswith("=========") and ("hazard" in ln or "Race" in ln)][:3]
        DETAILS["memcheck"][name] = dict(rc=rc, seconds=round(secs, 1), timed_out=timed_out, hazards=errors,
                                         cases_run=int(n_run.group(1)) if n_run else 0, skipped=skips,
                                         first_errors=first, tail=out[-3000:])
        ran = int(n_run.group(1)) if n_run else 0
        ok = rc == 0 and ran > 0 and (errors in (0, None) if DRY else errors == 0)
        status = "PASS" if ok else ("PARTIAL" if timed_out and not errors else "FAIL")
        row(name, status, f"{ran} cases fwd+bwd; hazards {errors}; {secs:.0f}s" + ("; timed out" if timed_out else "")
            + (f"; {first[0][:60]}" if first else ""))
        return
    cases = re.findall(r"^CASE (\S+) (ok|FAIL|skip|ERROR)", out, flags=re.M)
    m = re.search(r"ERROR SUMMARY: (\d+) error", out)
    errors = int(m.group(1)) if m else None
    unavailable = re.search(r"^DRIVER \S+ unavailable: (.*)$", out, flags=re.M)
    first = [ln for ln in out.splitlines() if ln.startswith("=========") and ("Invalid" in ln or "Error" in ln)][:3]
    DETAILS["memcheck"][name] = dict(rc=rc, seconds=round(secs, 1), timed_out=timed_out, sanitizer_errors=errors,
                                     cases=cases, first_errors=first, tail=out[-3000:])
    if unavailable:
        row(name, "SKIP", unavailable.group(1)[:80])
        return
    n_ok = sum(c[1] == "ok" for c in cases)
    n_bad = sum(c[1] in ("FAIL", "ERROR") for c in cases)
    n_skip = sum(c[1] == "skip" for c in cases)
    clean = (errors in (0, None)) if DRY else (errors == 0)
    status = "PASS" if (n_bad == 0 and not timed_out and clean and cases and rc == 0) else "FAIL"
    if timed_out and not n_bad and not errors:
        status = "PARTIAL"
    row(name, status, f"{n_ok} ok, {n_bad} bad, {n_skip} skip of {len(CASES)}; sanitizer errors {errors}; rc {rc}; "
        f"{secs:.0f}s" + ("; timed out" if timed_out else "") + (f"; {first[0][:60]}" if first else ""))


def poll_children(final: bool = False) -> None:
    """Collect finished children; at the deadline (``final``) kill the rest."""
    for name, ch in list(_STATE["children"].items()):
        if ch["proc"].poll() is not None:
            finish_child(name, ch, killed=False)
            del _STATE["children"][name]
        elif final:
            _kill(ch["proc"])
            ch["proc"].wait()
            finish_child(name, ch, killed=True)
            del _STATE["children"][name]


# -- 2. 64-bit offsets --------------------------------------------------------------------------


def _free():
    if DEV == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _free_gib() -> float:
    if DEV != "cuda":
        return 1e9
    return torch.cuda.mem_get_info()[0] / 2 ** 30


def _randn(shape, dtype, seed, std=1.0):
    """Normal entries drawn in ``dtype`` itself (no float32 copy of a 2^31-element tensor)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    return torch.empty(shape, device=DEV, dtype=dtype).normal_(0.0, std, generator=g)


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def offsets_chunk(size):
    """A: triton chunked, causal, forward + backward; rows via float64 prefix/suffix sums."""
    import linattn

    B, H, N, D, E = size
    q = _randn((B, H, N, D), torch.bfloat16, 1, D ** -0.5).requires_grad_()
    k = _randn((B, H, N, D), torch.bfloat16, 2, D ** -0.5).requires_grad_()
    v = _randn((B, H, N, E), torch.bfloat16, 3).requires_grad_()
    log(f"A: q has {q.numel()} elements (2^31 = {2 ** 31}), v {v.numel()}; forward")
    o = linattn.linear_attention(q, k, v, causal=True, backend="triton")
    do = _randn((B, H, N, E), torch.bfloat16, 4)
    log("A: backward")
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    worst = 0.0
    rows = sorted({0, 1, N // 2, N - 2, N - 1})
    for b, h in ((0, 0), (B - 1, H - 1)):
        q64, k64, v64, do64 = (x[b, h].detach().double() for x in (q, k, v, do))
        for i in rows:
            S = k64[: i + 1].T @ v64[: i + 1]  # [D, E] prefix
            worst = max(worst, _rel(o[b, h, i], q64[i] @ S))
            Sd = v64[: i + 1].T @ k64[: i + 1]  # [E, D]: dq_i = do_i Σ_{j<=i} v_jᵀ k_j
            worst = max(worst, _rel(dq[b, h, i], do64[i] @ Sd))
            G = do64[i:].T @ q64[i:]  # [E, D]: dk_i = v_i Σ_{t>=i} do_tᵀ q_t
            worst = max(worst, _rel(dk[b, h, i], v64[i] @ G))
            dv_ref = k64[i] @ (q64[i:].T @ do64[i:])  # dv_i = k_i Σ_{t>=i} q_tᵀ do_t
            worst = max(worst, _rel(dv[b, h, i], dv_ref))
        del q64, k64, v64, do64
    return q.numel(), worst, f"D={D} E={E}; rows {rows} of heads (0,0) and ({B - 1},{H - 1}); o, dq, dk, dv"


def offsets_dense_mask(size, backend):
    """B/C: a dense [N, M] mask past 2^31 elements, forward + backward; o, dq and dmask rows
    past 2^31 / M checked against float64."""
    import linattn

    N, D = size
    M, E = N, D
    q = _randn((1, 1, N, D), torch.bfloat16, 5, D ** -0.5).requires_grad_()
    k = _randn((1, 1, M, D), torch.bfloat16, 6, D ** -0.5).requires_grad_()
    v = _randn((1, 1, M, E), torch.bfloat16, 7).requires_grad_()
    mask = torch.empty((N, M), device=DEV, dtype=torch.bfloat16)
    mask.uniform_(0.0, 1.0, generator=torch.Generator(device=DEV).manual_seed(8))
    mask.requires_grad_()
    log(f"{backend}: mask has {mask.numel()} elements; forward")
    o = linattn.linear_attention(q, k, v, mask, backend=backend)
    do = _randn((1, 1, N, E), torch.bfloat16, 12)
    log(f"{backend}: backward")
    dq, dmask = torch.autograd.grad(o, (q, mask), do)
    first_past = (2 ** 31) // M + 1
    rows = sorted({0, min(first_past, N - 1), N - 1})
    worst = 0.0
    q64, k64, v64, do64 = (x[0, 0].detach().double() for x in (q, k, v, do))
    for i in rows:
        m = mask[i].detach().double()
        s = k64 @ q64[i]  # q_i·k_j
        worst = max(worst, _rel(o[0, 0, i], (s * m) @ v64))  # Σ_j (q_i·k_j) m_ij v_j
        g = v64 @ do64[i]  # do_i·v_j
        worst = max(worst, _rel(dq[0, 0, i], (g * m) @ k64))  # Σ_j m_ij (do_i·v_j) k_j
        worst = max(worst, _rel(dmask[i], s * g))  # dm_ij = (q_i·k_j)(do_i·v_j)
    del q64, k64, v64, do64
    return mask.numel(), worst, f"rows {rows}; o, dq, dmask"


def offsets_heads(size):
    """D: triton_dense, causal, many heads: head offsets past 2^31."""
    import linattn

    B, H, N, D = size
    q = _randn((B, H, N, D), torch.bfloat16, 9, D ** -0.5)
    k = _randn((B, H, N, D), torch.bfloat16, 10, D ** -0.5)
    v = _randn((B, H, N, D), torch.bfloat16, 11)
    log(f"D: q has {q.numel()} elements; forward")
    o = linattn.linear_attention(q, k, v, causal=True, backend="triton_dense")
    worst = 0.0
    for b, h in ((0, 0), (B - 1, H - 1)):
        q64, k64, v64 = q[b, h].double(), k[b, h].double(), v[b, h].double()
        A = torch.tril(q64 @ k64.T)
        ref = A @ v64
        for i in (0, N // 2, N - 1):
            worst = max(worst, _rel(o[b, h, i], ref[i]))
    return q.numel(), worst, "rows 0, N/2, N-1 of heads (0,0) and the last"


def offsets_item(name, fn, *args, need_s=15, need_gib=0.0):
    if left() < need_s:
        row(name, "SKIP", f"out of time ({left():.0f}s left)")
        return
    free = _free_gib()
    if free < need_gib:
        row(name, "SKIP", f"needs ~{need_gib:.0f} GiB of GPU memory, {free:.0f} GiB free")
        return
    t = time.time()
    try:
        n, worst, what = fn(*args)
        ok = worst <= 3e-2
        row(name, "PASS" if ok else "FAIL",
            f"{n} elements ({n / 2 ** 31:.3f}x2^31); worst row rel err {worst:.2e}; {what}; {time.time() - t:.0f}s")
        DETAILS["offsets"].append(dict(item=name, elements=n, worst=worst, rows=what, seconds=round(time.time() - t, 1)))
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {str(e)[:240]}"
        if "unavailable" in str(e).lower() or "cannot serve" in str(e):
            row(name, "SKIP", msg[:140])
        else:
            DETAILS["errors"].append(dict(item=name, error=msg, tb=traceback.format_exc()))
            row(name, "FAIL", msg[:200])
    finally:
        try:
            _free()
        except Exception as e:  # noqa: BLE001  (a sticky CUDA error: the later items will say so)
            log(f"cleanup after {name}: {type(e).__name__}: {e}")


# -- the CUDA extension: built in a child under a time limit --------------------------------------


def start_build(limit: float):
    code = ("import torch, linattn; b = linattn.get_backend('cuda'); why = b.available(); "
            "print('UNAVAILABLE', why) if why else None; "
            "from linattn.backends.cuda import get_ops; "
            "get_ops(torch.device('cuda' if torch.cuda.is_available() else 'cpu')) if not why else None; "
            "print('READY' if not why else '')")
    logf = os.path.join(OUT or "/tmp", "fuzz_cuda_build.log")
    fh = open(logf, "w")
    cmd = ["timeout", "-k", "5", str(max(int(limit), 5)), sys.executable, "-c", code]
    p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                         env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    return dict(proc=p, fh=fh, log=logf, t=time.time())


def build_result(b) -> tuple:
    """(state, detail): state is 'running', 'ready' or 'failed'."""
    if b["proc"].poll() is None:
        return "running", ""
    b["fh"].close()
    out = open(b["log"], errors="replace").read()
    secs = time.time() - b["t"]
    if "READY" in out and b["proc"].returncode == 0:
        return "ready", f"{secs:.0f}s"
    why = re.search(r"UNAVAILABLE (.*)", out)
    return "failed", (why.group(1) if why else f"rc {b['proc'].returncode} after {secs:.0f}s: {out[-300:]}")


def main() -> int:
    if OUT:
        os.makedirs(OUT, exist_ok=True)
    if DEV == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to do (use --dry-run-cpu to check the script on a CPU)")
        return 1
    threading.Thread(target=watchdog, daemon=True).start()
    if DEV == "cuda":
        log(f"{torch.cuda.get_device_name()} torch {torch.__version__}; budget {BUDGET:.0f}s; "
            f"{_free_gib():.0f} GiB free")
    deadline = lambda: left() - 6  # noqa: E731  (children end before the summary is written)

    # 1. the Triton sanitizer runs start at once; the CUDA extension builds meanwhile
    start_child("memcheck triton", "memcheck", "triton", deadline())
    start_child("memcheck triton_dense", "memcheck", "triton_dense", deadline())
    build = start_build(min(deadline(), 90))
    cuda_state = "running"

    def cuda_progress():
        nonlocal cuda_state
        if cuda_state != "running":
            return
        cuda_state, detail = build_result(build)
        if cuda_state == "ready" and deadline() < 20:
            for n in ("memcheck cuda", "racecheck cuda", "replay cuda fuzz failures"):
                row(n, "SKIP", f"out of time once the extension was ready ({detail}; {left():.0f}s left)")
        elif cuda_state == "ready":
            log(f"cuda extension ready ({detail})")
            start_child("memcheck cuda", "memcheck", "cuda", deadline())
            start_child("racecheck cuda", "racecheck", "cuda", deadline())
            start_child("replay cuda fuzz failures", "replay", "cuda", min(deadline(), 60))
        elif cuda_state == "failed":
            for n in ("memcheck cuda", "racecheck cuda", "replay cuda fuzz failures", "offsets C cuda mask fwd+bwd"):
                row(n, "SKIP", f"cuda extension: {detail[:160]}")

    # 2. 64-bit offsets in this process, most telling first; the chunk problem shrinks E when
    #    another stage holds GPU memory.
    small = DRY
    if small:
        a_size, a_gib = (2, 2, 300, 8, 8), 0
    elif _free_gib() >= 46:  # q, k, v, do, o, dq, dk, dv: 8 x 4.3 GB, the split states are small
        a_size, a_gib = (2, 16, 2 ** 20 + 37, 64, 64), 40
    else:  # E = 16: v, o, do, dv a quarter of that
        a_size, a_gib = (2, 16, 2 ** 20 + 37, 64, 16), 24
    offsets_item("offsets A triton chunk fwd+bwd", offsets_chunk, a_size, need_gib=a_gib)
    cuda_progress()
    bsize = (150, 8) if small else (46400, 16)
    offsets_item("offsets B triton_dense mask fwd+bwd", offsets_dense_mask, bsize, "triton_dense", need_gib=0 if small else 16)
    cuda_progress()
    offsets_item("offsets D triton_dense heads", offsets_heads, (4, 4, 33, 8) if small else (1024, 128, 257, 64),
                 need_gib=0 if small else 19)
    while cuda_state == "running" and deadline() > 20:
        cuda_progress()
        poll_children()
        time.sleep(1)
    cuda_progress()
    if cuda_state == "ready":
        offsets_item("offsets C cuda mask fwd+bwd", offsets_dense_mask, bsize, "cuda", need_gib=0 if small else 16)
    elif cuda_state == "running":
        _kill(build["proc"])
        for n in ("memcheck cuda", "racecheck cuda", "replay cuda fuzz failures", "offsets C cuda mask fwd+bwd"):
            row(n, "SKIP", f"cuda extension still building at {time.time() - T0:.0f}s")

    # 3. wait for the sanitizer runs until the deadline
    while _STATE["children"] and deadline() > 0:
        poll_children()
        time.sleep(0.5)
    poll_children(final=True)

    _STATE["done"] = True
    save()
    print("\n== fuzz_gpu summary ==")
    w = max(len(r[0]) for r in ROWS) if ROWS else 10
    for item, status, detail in ROWS:
        print(f"{item:{w}s}  {status:7s}  {detail}")
    print(f"total {time.time() - T0:.0f}s")
    return 0 if all(r[1] in ("PASS", "SKIP", "PARTIAL", "INFO") for r in ROWS) else 1


if __name__ == "__main__":
    if "--replay-cuda" in sys.argv:
        sys.exit(replay_cuda_failures())
    if "--driver" in sys.argv:
        sys.exit(driver(sys.argv[sys.argv.index("--driver") + 1]))
    sys.exit(main())
