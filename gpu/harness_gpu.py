"""The property suites on a CUDA device, for the kernel backends (triton, triton_dense, cuda).

    python3 gpu/harness_gpu.py            # ~90 s; details in $OUT/harness_gpu.json if OUT is set

Problems are drawn like linattn.testing.problems does (sizes at block edges and primes,
N up to 4096, every dtype, every mask kind and broadcast shape, GQA/MQA, state, varlen,
gradients), but from a seeded ``random.Random`` so that the script needs no Hypothesis
(the GPU machine may not have it); each problem is a ``linattn.testing.Problem`` whose
repr reproduces it exactly. Every (backend, property) pair gets a slice of the time
budget; the float64 oracle runs on the GPU. Each failure is caught and reported with
its reproduction; the summary table is printed last.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

BUDGET_S = float(os.environ.get("HARNESS_BUDGET_S", "85"))
DEVICE = os.environ.get("HARNESS_DEVICE", "cuda")  # "cpu" for a smoke test of the script itself
BACKENDS = [b for b in os.environ.get("HARNESS_BACKENDS", "triton,triton_dense,cuda").split(",") if b]
PROPS = ["forward", "backward", "causality", "state_split", "gqa", "broadcast_mask", "varlen",
         "batch_invariance", "linearity_v", "linearity_mask", "recurrent_steps"]
DTYPES = ["float16", "bfloat16", "float32", "float64"]
KINDS = ["none", "dense", "causal", "decay", "dense+causal", "dense+decay"]
EDGES = sorted({1, 2, 3, 5, 7, 13, 31, 61, 67, 97, 127, 131, 251, 257, 509, 521, 1021, 1031, 2039, 2053, 4093}
               | {c + d for c in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096) for d in (-1, 0, 1)})
HEAD_DIMS = [1, 3, 16, 17, 32, 48, 60, 63, 64, 65, 96, 128, 256]
MAX_WORK = (1 << 31) if DEVICE == "cuda" else (1 << 21)  # B·H·N·M·(D+E) for the float64 oracle


def draw_problem(rng: random.Random, prop: str, backend, i: int = 0):
    """The i-th problem of a (backend, property) slot; dtypes taken in turn, so every dtype is covered."""
    from linattn.testing import Problem

    kinds = [k for k in KINDS if k in backend.mask_kinds]
    dtypes = [d for d in DTYPES if getattr(torch, d) in backend.dtypes]
    narrow = {
        "causality": dict(kinds=["causal", "decay", "dense+causal", "dense+decay"]),
        "state_split": dict(kinds=["causal", "decay"], state=True, varlen=False),
        "recurrent_steps": dict(kinds=["causal", "decay"], state=True, varlen=False, max_n=40, grads=False),
        "gqa": dict(gqa=True),
        "broadcast_mask": dict(kinds=["dense", "dense+causal", "dense+decay"], broadcast=True),
        "varlen": dict(kinds=["causal", "decay"], varlen=True),
        "batch_invariance": dict(min_b=2, varlen=False),
        "linearity_v": dict(no_s0=True),
        "linearity_mask": dict(kinds=["dense", "dense+causal", "dense+decay"]),
        "forward": dict(grads=False),
        "backward": dict(grads=True),
    }.get(prop, {})
    kinds = [k for k in kinds if k in narrow.get("kinds", kinds)]
    if not kinds or not dtypes:
        return None
    kind = rng.choice(kinds)
    dense, causal, decay = kind.startswith("dense"), kind != "none" and kind != "dense", kind.endswith("decay")
    max_n = narrow.get("max_n", 4096 if DEVICE == "cuda" else 64)
    N = rng.choice([n for n in EDGES if n <= max_n] + [rng.randint(1, max_n)])
    M = N if causal else rng.choice([N, rng.choice([n for n in EDGES if n <= max_n])])
    cap = backend.max_head_dim or 256
    D = rng.choice([d for d in HEAD_DIMS if d <= cap])
    E = D if rng.random() < 0.5 else rng.choice([d for d in HEAD_DIMS if d <= cap])
    H = rng.choice([1, 2, 4, 6, 8])
    if narrow.get("gqa") and H == 1:
        H = 4
    ratios = [H] + ([1] if H > 1 else []) + [d for d in range(2, H) if H % d == 0]
    Hkv = ratios[-1] if narrow.get("gqa") and len(ratios) > 1 else rng.choice(ratios) if backend.gqa else H
    if narrow.get("gqa") and Hkv == H:
        Hkv = 1
    want_varlen = narrow.get("varlen")
    varlen = causal and not dense and (want_varlen if want_varlen is not None else rng.random() < 0.2)
    B = 1 if varlen else rng.randint(narrow.get("min_b", 1), 3)
    while B * H * N * M * (D + E) > MAX_WORK and N > 1:
        N = max(1, N // 2)
        M = N if causal else max(1, M // 2)
    cu = None
    if varlen:
        cuts = sorted(rng.randint(0, N) for _ in range(rng.randint(0, 4)))
        cu = tuple([0] + cuts + [N])
    shapes = ["1HNM", "B1NM", "11NM", "NM", "HNM"] if narrow.get("broadcast") else \
        ["BHNM", "1HNM", "B1NM", "11NM", "NM", "HNM"]
    s0 = sN = False
    if causal and not dense and backend.state:
        s0 = narrow.get("state", rng.random() < 0.5) and not narrow.get("no_s0")
        sN = narrow.get("state", False) or rng.random() < 0.5
    want_grads = narrow.get("grads", rng.random() < 0.5)
    grads = ()
    if want_grads:
        allowed = ["q", "k", "v"] + (["mask"] if dense and backend.mask_grad else []) + \
                  (["slopes"] if decay and backend.slopes_grad else []) + (["initial_state"] if s0 else [])
        grads = tuple(allowed) if rng.random() < 0.5 else tuple(rng.sample(allowed, rng.randint(1, len(allowed))))
    return Problem(B=B, H=H, Hkv=Hkv, N=N, M=M, D=D, E=E, dtype=dtypes[i % len(dtypes)], device=DEVICE,
                   mask_kind=kind, mask_shape=rng.choice(shapes), mask_values=rng.choice(["real", "binary"]),
                   slopes=rng.choice(["tnl", "zero", "tiny", "moderate", "large", "mixed"]),
                   scale=rng.choice([1.0, 0.5, 2.0, 0.125]), initial_state=bool(s0), final_state=bool(sN),
                   grads=grads, cu_seqlens=cu, seed=rng.randint(0, 2 ** 31 - 1))


def _device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"


def _dump(out_dir, rows, details, elapsed):
    if not out_dir:
        return
    os.makedirs(out_dir, exist_ok=True)
    name = os.environ.get("HARNESS_JSON", "harness_gpu.json")
    with open(os.path.join(out_dir, name + ".part"), "w") as f:
        json.dump(dict(device=_device_name(), torch=torch.__version__, seconds=elapsed, backends=BACKENDS,
                       rows=rows, details=details), f, indent=1, default=str)
    os.replace(os.path.join(out_dir, name + ".part"), os.path.join(out_dir, name))


def main() -> int:
    out_dir = os.environ.get("OUT")
    rows, details = [], []
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("harness_gpu: no CUDA device; nothing to do")
        return 0
    try:
        import linattn
        from linattn.testing import PROPERTIES, as_target, poisoned
        from linattn.testing.problem import Skip
    except Exception:
        print("harness_gpu: cannot import linattn.testing:\n" + traceback.format_exc())
        return 1
    targets = []
    for name in BACKENDS:
        try:
            b = linattn.get_backend(name)
        except ValueError as e:
            rows.append((name, "-", "absent", 0, 0, None, str(e)[:60]))
            continue
        why = b.available()
        if why is not None or DEVICE not in b.devices:
            rows.append((name, "-", "unavailable", 0, 0, None, (why or f"not on {DEVICE}")[:60]))
            continue
        targets.append(as_target(name))
    t_start = time.perf_counter()
    weight = {"forward": 3.0, "backward": 3.0}  # agreement with float64 gets the most time
    total_w = max(1.0, len(targets) * sum(weight.get(p, 1.0) for p in PROPS))
    for i_t, t in enumerate(targets):
        # each backend owns an equal share of the budget (run 6: triton_dense's first compiles
        # overran their slots and left nothing for cuda); within it, the slots as before
        t_end = t_start + BUDGET_S * (i_t + 1) / len(targets)
        for prop in PROPS:
            slot = BUDGET_S * weight.get(prop, 1.0) / total_w
            rng = random.Random(f"{t.name}/{prop}")
            t0 = time.perf_counter()
            n_run = n_skip = 0
            worst, worst_desc, status, msg = None, "", "pass", ""
            while time.perf_counter() - t0 < slot and time.perf_counter() < t_end:
                p = draw_problem(rng, prop, t.backend, n_run + n_skip)
                if p is None:
                    break
                try:
                    with poisoned():
                        res = PROPERTIES[prop](t, p)
                except Skip:
                    n_skip += 1
                    if n_skip > 50 and n_run == 0:
                        break
                    continue
                except Exception as e:  # a crash is a failure, reported with the problem
                    n_run += 1
                    status, msg = "FAIL", f"{type(e).__name__}: {str(e)[:300]}"
                    details.append(dict(backend=t.name, property=prop, problem=repr(p), error=traceback.format_exc()))
                    torch.cuda.empty_cache()
                    break
                n_run += 1
                if worst is None or res.worst_fraction > worst:
                    worst, worst_desc = res.worst_fraction, (res.worst.quantity + " " + p.describe()) if res.worst else ""
                details.append(dict(backend=t.name, property=prop, problem=repr(p), ok=res.ok,
                                    measurements=[m.as_dict() for m in res.measurements]))
                if not res.ok:
                    status, msg = "FAIL", res.message()
                    break
            if n_run == 0:
                status = "skip"
            rows.append((t.name, prop, status, n_run, n_skip, worst, worst_desc if status != "FAIL" else msg))
            print(f"{t.name} / {prop}: {status}, {n_run} run, worst/band {worst}", flush=True)
            if status == "FAIL":
                print(f"--- {t.name} / {prop} FAILED:\n{msg}\n", flush=True)
            _dump(out_dir, rows, details, time.perf_counter() - t_start)  # a cut-off run keeps what it has
    elapsed = time.perf_counter() - t_start
    _dump(out_dir, rows, details, elapsed)
    print(f"\nharness_gpu on {_device_name()} (torch {torch.__version__}), {elapsed:.0f}s")
    print(f"{'backend':13s} {'property':16s} {'status':11s} {'run':>4s} {'skip':>4s} {'worst/band':>10s}  note")
    for name, prop, status, n, sk, w, note in rows:
        ws = "-" if w is None else f"{w:.3g}"
        print(f"{name:13s} {prop:16s} {status:11s} {n:4d} {sk:4d} {ws:>10s}  {note.splitlines()[0][:90] if note else ''}")
    return 1 if any(r[2] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
