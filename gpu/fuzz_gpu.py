#!/usr/bin/env python3
"""GPU fuzz checks: memcheck on awkward shapes, and 64-bit offsets. One call, <= ~120 s.

    python3 gpu/fuzz_gpu.py                 (repository root; OUT=dir gets fuzz_gpu.json + logs)
    python3 gpu/fuzz_gpu.py --dry-run-cpu   (this script's logic on a CPU: Triton interpreter,
                                             no sanitizer, the "big" problems shrunk)

1. memcheck. For each GPU backend (``triton``, ``triton_dense``, then ``cuda``) a child
   process (this file with ``--driver BACKEND``) runs forward + backward of awkward problems
   — N = 1, 63, 65, 130, 131; D, E = 1, 17, 48, 60, 65; MQA/GQA; N != M; every mask kind;
   packed sequences with an empty one; float16/bfloat16/float32 — under
   ``compute-sanitizer --tool memcheck`` with PyTorch's caching allocator off (so an
   out-of-bounds access leaves its allocation and is seen). Each case is also checked
   against the float64 reference on the CPU (normwise relative error of o and every
   gradient under a loose per-dtype bound: this is a memory check, the bands live in the
   property suites).
2. 64-bit offsets. Problems whose tensors pass 2^31 elements, so any int32 offset product
   (row * D, head * N * D, row * M for the mask) wraps:
     A  triton (chunked), causal, bf16, B=2 H=16 N=2^20+37 D=E=64 (q: 2^31 + 75776 elements),
        forward + backward; o, dq, dk rows of the first and the last head at rows 0, 1,
        2^19, N-2, N-1 against float64 prefix / suffix sums of those rows;
     B  triton_dense, dense [N, M] mask, bf16, B=H=1, N=M=46400 (mask: 2^31 + 5.5M elements),
        forward; rows 0, 46283 (first row past 2^31 / M), N-1 against float64;
     C  cuda on problem B, when the extension loads;
     D  triton_dense, causal, bf16, B=1024 H=128 N=257 D=E=64 (q: 2^31 + 8.4M elements),
        forward; rows of the last (b, h) against float64.
Each item is caught and reported on its own; the summary table is printed last.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DRY = "--dry-run-cpu" in sys.argv
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

T0 = time.time()
BUDGET = float(os.environ.get("FUZZ_GPU_BUDGET_S", "115"))
DEV = "cpu" if DRY else "cuda"
OUT = os.environ.get("OUT")
ROWS = []  # summary rows: (item, status, detail)
DETAILS = {"memcheck": {}, "offsets": [], "errors": []}
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
            continue
        # float64 reference on the CPU, from the same rounded inputs
        t64 = {n: x.to(torch.float32 if n in ("decay", "initial_state") else dtype).double() for n, x in t.items()}
        ref = _run(linattn, "reference", t64, kw, torch.float64, "cpu")
        worst, where = 0.0, ""
        for q, x in got.items():
            r = ref[q]
            err = float((x - r).norm() / r.norm().clamp_min(1e-300))
            if not math.isfinite(err) or err > worst:
                worst, where = (math.inf if not math.isfinite(err) else err), q
        ok = worst <= TOL[dtype]
        bad += not ok
        print(f"CASE {name} {'ok' if ok else 'FAIL'} worst rel err {worst:.2e} ({where}) tol {TOL[dtype]:.0e}", flush=True)
    return 1 if bad else 0


# -- 1. memcheck ------------------------------------------------------------------------------


def _sanitizer():
    for c in (shutil.which("compute-sanitizer"), "/usr/local/cuda/bin/compute-sanitizer",
              os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "compute-sanitizer")):
        if c and os.path.exists(c):
            return c
    return None


def memcheck(backend: str, limit: float) -> None:
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--driver", backend]
    san = None if DRY else _sanitizer()
    if not DRY:
        if san is None:
            ROWS.append((f"memcheck {backend}", "SKIP", "compute-sanitizer not found"))
            return
        cmd = [san, "--tool", "memcheck", "--leak-check", "no", "--report-api-errors", "no",
               "--print-limit", "20", "--error-exitcode", "97"] + cmd
    if DRY:
        cmd += ["--dry-run-cpu"]
    log(f"memcheck {backend}: {' '.join(os.path.basename(c) for c in cmd[:2])} ... (limit {limit:.0f}s)")
    t = time.time()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit, cwd=ROOT)
        out, rc, timed_out = p.stdout + p.stderr, p.returncode, False
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc, timed_out = None, True
    secs = time.time() - t
    if OUT:
        with open(os.path.join(OUT, f"fuzz_memcheck_{backend}.log"), "w") as f:
            f.write(out)
    cases = re.findall(r"^CASE (\S+) (ok|FAIL|skip|ERROR)", out, flags=re.M)
    m = re.search(r"ERROR SUMMARY: (\d+) error", out)
    errors = int(m.group(1)) if m else None
    unavailable = re.search(r"^DRIVER \S+ unavailable: (.*)$", out, flags=re.M)
    first = [ln for ln in out.splitlines() if ln.startswith("=========") and ("Invalid" in ln or "Error" in ln)][:3]
    DETAILS["memcheck"][backend] = dict(rc=rc, seconds=round(secs, 1), timed_out=timed_out, sanitizer_errors=errors,
                                        cases=cases, first_errors=first, tail=out[-3000:])
    n_ok = sum(c[1] == "ok" for c in cases)
    n_bad = sum(c[1] in ("FAIL", "ERROR") for c in cases)
    n_skip = sum(c[1] == "skip" for c in cases)
    if unavailable:
        ROWS.append((f"memcheck {backend}", "SKIP", unavailable.group(1)[:80]))
        return
    status = "PASS" if (n_bad == 0 and not timed_out and (errors in (0, None) if DRY else errors == 0) and cases) else "FAIL"
    if timed_out and not n_bad and not errors:
        status = "PARTIAL"
    ROWS.append((f"memcheck {backend}", status,
                 f"{n_ok} ok, {n_bad} bad, {n_skip} skip of {len(CASES)}; sanitizer errors {errors}; {secs:.0f}s"
                 + ("; timed out" if timed_out else "") + (f"; {first[0][:60]}" if first else "")))


# -- 2. 64-bit offsets ------------------------------------------------------------------------


def _free():
    if DEV == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _randn(shape, dtype, seed, std=1.0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return (torch.randn(shape, generator=g, device=DEV, dtype=torch.float32) * std).to(dtype)


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def offsets_chunk(size):
    """A: triton chunked, causal, forward + backward; rows via float64 prefix/suffix sums."""
    import linattn

    B, H, N, D = size
    E = D
    q = _randn((B, H, N, D), torch.bfloat16, 1, D ** -0.5).requires_grad_()
    k = _randn((B, H, N, D), torch.bfloat16, 2, D ** -0.5).requires_grad_()
    v = _randn((B, H, N, E), torch.bfloat16, 3).requires_grad_()
    log(f"A: q has {q.numel()} elements (2^31 = {2 ** 31}); forward")
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
    return q.numel(), worst, f"rows {rows} of heads (0,0) and ({B - 1},{H - 1}); o, dq, dk, dv"


def offsets_dense_mask(size, backend):
    """B/C: a dense [N, M] mask past 2^31 elements; rows past 2^31 / M checked."""
    import linattn

    N, D = size
    M, E = N, D
    q = _randn((1, 1, N, D), torch.bfloat16, 5, D ** -0.5)
    k = _randn((1, 1, M, D), torch.bfloat16, 6, D ** -0.5)
    v = _randn((1, 1, M, E), torch.bfloat16, 7)
    mask = torch.rand((N, M), generator=torch.Generator(device=DEV).manual_seed(8), device=DEV,
                      dtype=torch.float32).to(torch.bfloat16)
    log(f"{backend}: mask has {mask.numel()} elements; forward")
    o = linattn.linear_attention(q, k, v, mask, backend=backend)
    first_past = (2 ** 31) // M + 1
    rows = sorted({0, min(first_past, N - 1), N - 1})
    worst = 0.0
    q64, k64, v64 = q[0, 0].double(), k[0, 0].double(), v[0, 0].double()
    for i in rows:
        ref = ((k64 @ q64[i]) * mask[i].double()) @ v64  # Σ_j (q_i·k_j) m_ij v_j
        worst = max(worst, _rel(o[0, 0, i], ref))
    return mask.numel(), worst, f"rows {rows}"


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


def offsets_item(name, fn, *args, need_s=20):
    if left() < need_s:
        ROWS.append((name, "SKIP", f"out of time ({left():.0f}s left)"))
        return
    t = time.time()
    try:
        n, worst, what = fn(*args)
        ok = worst <= 3e-2
        ROWS.append((name, "PASS" if ok else "FAIL",
                     f"{n} elements ({n / 2 ** 31:.3f}x2^31); worst row rel err {worst:.2e}; {what}; {time.time() - t:.0f}s"))
        DETAILS["offsets"].append(dict(item=name, elements=n, worst=worst, rows=what, seconds=round(time.time() - t, 1)))
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {str(e)[:240]}"
        if "unavailable" in str(e).lower() or "cannot serve" in str(e):
            ROWS.append((name, "SKIP", msg[:140]))
        else:
            ROWS.append((name, "FAIL", msg[:200]))
            DETAILS["errors"].append(dict(item=name, error=msg, tb=traceback.format_exc()))
    finally:
        _free()


def main() -> int:
    if OUT:
        os.makedirs(OUT, exist_ok=True)
    if DEV == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to do (use --dry-run-cpu to check the script on a CPU)")
        return 1
    if DEV == "cuda":
        log(f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    import linattn

    # Build / load the CUDA extension once outside the sanitizer (cached for the child).
    cuda_ok = False
    try:
        cuda_ok = linattn.get_backend("cuda").available() is None
        if cuda_ok and DEV == "cuda":
            t = time.time()
            from linattn.backends.cuda import get_ops

            get_ops(torch.device("cuda"))
            log(f"cuda extension loaded in {time.time() - t:.0f}s")
    except Exception as e:  # noqa: BLE001
        cuda_ok = False
        ROWS.append(("cuda extension", "FAIL", f"{type(e).__name__}: {str(e)[:160]}"))

    # 64-bit offsets first (they need no sanitizer and are the cheaper half), then memcheck.
    small = DRY
    offsets_item("offsets A triton chunk fwd+bwd", offsets_chunk, (2, 2, 300, 8) if small else (2, 16, 2 ** 20 + 37, 64))
    offsets_item("offsets B triton_dense mask", offsets_dense_mask, (150, 8) if small else (46400, 16), "triton_dense")
    if cuda_ok:
        offsets_item("offsets C cuda mask", offsets_dense_mask, (150, 8) if small else (46400, 16), "cuda")
    else:
        ROWS.append(("offsets C cuda mask", "SKIP", "cuda backend unavailable"))
    offsets_item("offsets D triton_dense heads", offsets_heads, (4, 4, 33, 8) if small else (1024, 128, 257, 64))

    backends = ["triton", "triton_dense"] + (["cuda"] if cuda_ok else [])
    for i, b in enumerate(backends):
        share = left() / (len(backends) - i) - 2
        if share < 15:
            ROWS.append((f"memcheck {b}", "SKIP", f"out of time ({left():.0f}s left)"))
            continue
        try:
            memcheck(b, share)
        except Exception as e:  # noqa: BLE001
            ROWS.append((f"memcheck {b}", "FAIL", f"{type(e).__name__}: {str(e)[:160]}"))

    if OUT:
        with open(os.path.join(OUT, "fuzz_gpu.json"), "w") as f:
            json.dump(dict(rows=ROWS, details=DETAILS, seconds=round(time.time() - T0, 1),
                           device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)",
                           torch=torch.__version__), f, indent=2, default=str)
    print("\n== fuzz_gpu summary ==")
    w = max(len(r[0]) for r in ROWS) if ROWS else 10
    for item, status, detail in ROWS:
        print(f"{item:{w}s}  {status:7s}  {detail}")
    print(f"total {time.time() - T0:.0f}s")
    return 0 if all(r[1] in ("PASS", "SKIP", "PARTIAL") for r in ROWS) else 1


if __name__ == "__main__":
    if "--driver" in sys.argv:
        sys.exit(driver(sys.argv[sys.argv.index("--driver") + 1]))
    sys.exit(main())
