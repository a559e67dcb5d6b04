"""The property suites on a CUDA device for the kernel backends (triton, triton_dense, cuda):
every (backend, property, dtype) cell, in parallel worker processes, within one time budget.

    python3 gpu/harness_gpu.py        # or bash gpu/harness_gpu.sh; results in $OUT/harness_gpu.json

Why workers: Triton compiles a kernel per new set of constexprs (seconds each, CPU-bound),
so one process ran 6 of 11 properties of triton_dense in run 7. Here the cells are split
over ``HARNESS_WORKERS`` processes (default: cores - 1, at most 15), grouped by (backend,
dtype) so that a worker's cells share kernel specialisations; all share Triton's disk
cache. The cuda extension is built once by a separate process while the Triton workers
start; the cuda workers start when it is done. Correctness needs no idle GPU.

Each worker first covers each of its cells with one problem of a fixed shape per worker
(so kernels compiled for one cell serve the next), then the same shape at N = 4093/4095
per cell (no new compile), then random problems (block edges and primes for N up to 4096,
odd head dims, every mask kind and broadcast shape, GQA/MQA, state, varlen, gradients),
always giving the next problem to the cell that has used the least time. Before all that,
a cell runs its fixed problems (``REPROS``: the failures of earlier runs, plus those of
``HARNESS_REPROS_FROM``). A cell stops after ``HARNESS_MAX_FAILS`` failures (every one
recorded), so a fix is judged on more than one problem. A ``triton`` long-N worker runs one
problem at N >= 16384 per chunk property (the float64 oracle is then the O(N) ``chunked``
backend, verified against the reference in tests/); its float32 problems come last and use
the kernels the float32 workers compile for their first problems.

Workers are shared out by each family's first-pass cost (``FIRST_S``: seconds per cell of
a first problem in run 10, nearly all of it Triton compiling; triton float32 compiles ~10x
longer than float16), so that every cell gets its first problem early: in run 10 one
worker held all nine triton float32 cells and five of them never ran.

Problems are ``linattn.testing.Problem`` objects drawn from a seeded ``random.Random``
(no Hypothesis needed); every record carries the Problem repr, which reproduces it.

Never hangs: the parent kills a worker whose problem runs past ``HARNESS_PROBLEM_CAP_S``
(recorded as a timeout with its Problem) or that outlives the budget, and starts a
replacement for that worker's other cells while time remains; a worker whose CUDA
context broke exits and is replaced the same way. Workers append one JSON line per event
to ``$OUT/harness_parts/w*.jsonl``; the parent rewrites ``$OUT/harness_gpu.json`` every
few seconds, so a run cut off keeps what it has. SIGTERM (the stage's timeout) makes the
parent write the table and exit. A cuda build still running at the end gets SIGTERM, on
which it unwinds and releases torch's build lock (a killed build would leave the lock, and
every later load would wait on it).

    python3 gpu/harness_gpu.py --selftest   # no GPU: every cell's draws valid, the plan complete

Environment (defaults in brackets):
  HARNESS_BUDGET_S [140]       wall seconds for the whole script, startup to table
  HARNESS_WORKERS [cores-1]    worker processes, the long-N one included (max 15)
  HARNESS_BACKENDS [triton,triton_dense,cuda]
  HARNESS_LONG_N [1]           run the triton N >= 16384 problems
  HARNESS_PROBLEM_CAP_S [70]   one problem longer than this is killed (timeout)
  HARNESS_DEVICE [cuda]        "cpu": a logic test (TRITON_INTERPRET=1, LINATTN_CUDA_EMULATE=1)
  HARNESS_CELLS [all]          run only these cells: backend/property/dtype[/long], comma-separated
                               (e.g. triton/backward/float16,triton/state_split/float32/long)
  HARNESS_MAX_FAILS [5]        failures (errors included) after which a cell stops
  HARNESS_REPROS [1]           run REPROS (and HARNESS_REPROS_FROM's) first in their cells; 0: not
  HARNESS_REPROS_FROM []       a harness_gpu.json whose failures become fixed first problems too
  LINATTN_TRITON_AUTOTUNE [0], LINATTN_CUDA_FP32 [1]  set here unless given
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("LINATTN_TRITON_AUTOTUNE", "0")  # fixed tile configs: no benchmarking
os.environ.setdefault("LINATTN_CUDA_FP32", "1")  # float32 cells for cuda (opt-in on a GPU)

T_IMPORT = time.time()
BUDGET_S = float(os.environ.get("HARNESS_BUDGET_S", "140"))
DEVICE = os.environ.get("HARNESS_DEVICE", "cuda")
CPU = DEVICE != "cuda"
BACKENDS = [b for b in os.environ.get("HARNESS_BACKENDS", "triton,triton_dense,cuda").split(",") if b]
if os.environ.get("HARNESS_CELLS", "").strip():  # the selected cells' backends, in the usual order
    _named = {x.strip().split("/")[0] for x in os.environ["HARNESS_CELLS"].split(",")}
    BACKENDS = [b for b in ("triton", "triton_dense", "cuda") if b in _named] or BACKENDS
LONG_N = os.environ.get("HARNESS_LONG_N", "1") == "1"
PROBLEM_CAP_S = float(os.environ.get("HARNESS_PROBLEM_CAP_S", "70"))
OUT_DIR = os.environ.get("OUT") or "/tmp/harness_gpu_out"
MAX_FAILS = max(1, int(os.environ.get("HARNESS_MAX_FAILS", "5")))
USE_REPROS = os.environ.get("HARNESS_REPROS", "1") != "0"

# properties in an order that keeps kernel-sharing ones together (a worker takes a contiguous run)
PROPS = ["forward", "backward", "linearity_v", "batch_invariance", "gqa", "broadcast_mask", "linearity_mask",
         "causality", "state_split", "varlen", "recurrent_steps", "gradcheck"]
DTYPES = ["float16", "bfloat16", "float32", "float64"]
KINDS = ["none", "dense", "causal", "decay", "dense+causal", "dense+decay"]
CHUNK_KINDS = ["none", "causal", "decay"]  # what backend "triton" serves with its chunk kernels
DENSE_ONLY = {"broadcast_mask", "linearity_mask"}  # need a dense mask: triton routes them to triton_dense
MAX_N = 64 if CPU else 4096
BIG_NS = [61, 63] if CPU else [4093, 4095]  # phase 1: N at the top (same N % 16 class as 77: no new compile)
EDGES = sorted({1, 2, 3, 5, 7, 13, 31, 61, 67, 97, 127, 131, 251, 257, 509, 521, 1021, 1031, 2039, 2053, 4093}
               | {c + d for c in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096) for d in (-1, 0, 1)})
HEAD_DIMS = [1, 3, 16, 17, 32, 48, 60, 63, 64, 65, 96, 128, 256]
MAX_WORK = (1 << 21) if CPU else (1 << 34)  # B·H·N·M·(D+E): the float64 oracle's products
MAX_NM = (1 << 16) if CPU else (1 << 25)  # B·H·N·M: one float64 N×M tensor (256 MiB); 14 workers share the GPU
NARROW = {
    "forward": dict(grads=False),
    "backward": dict(grads=True),
    "causality": dict(kinds=["causal", "decay", "dense+causal", "dense+decay"], min_n=2),
    "state_split": dict(kinds=["causal", "decay"], state=True, varlen=False),
    "recurrent_steps": dict(kinds=["causal", "decay"], state=True, varlen=False, max_n=40, grads=False),
    "gqa": dict(gqa=True),
    "broadcast_mask": dict(kinds=["dense", "dense+causal", "dense+decay"], broadcast=True),
    "varlen": dict(kinds=["causal", "decay"], varlen=True),
    "batch_invariance": dict(min_b=2, varlen=False),
    "linearity_v": dict(no_s0=True),
    "linearity_mask": dict(kinds=["dense", "dense+causal", "dense+decay"]),
    "gradcheck": dict(grads=True, max_n=8, max_d=3, max_b=2, max_h=2),
}
# seconds of a cell's first problem (run 10, H200, 15 workers: mean over each family's cells,
# nearly all Triton compiling), for sharing out the workers; cuda compiles nothing once built
FIRST_S = {("triton", "float16"): 2.9, ("triton", "bfloat16"): 2.4, ("triton", "float32"): 30.6,
           ("triton", "float64"): 7.8, ("triton_dense", "float16"): 3.7, ("triton_dense", "bfloat16"): 3.3,
           ("triton_dense", "float32"): 9.9}


def cost(backend: str, dtype: str) -> float:
    """Relative weight of one cell of (backend, dtype) when the workers are shared out."""
    if backend == "cuda":
        return 1.0  # its random problems are cheap, but it should keep its own workers busy
    return FIRST_S.get((backend, dtype), 8.0)


# Failures of earlier runs: fixed first problems of their cells (run 10, H200). As reprs, so
# that a record reproduces them; on the CPU (a logic test) they are shrunk (shrink_for_cpu).
REPROS = {
    ("triton", "backward", "float16"): [  # dslopes 64x band
        "Problem(B=3, H=2, Hkv=2, N=7, M=7, D=17, E=60, dtype='float16', device='cuda', mask_kind='decay', "
        "mask_shape='BHNM', mask_values='binary', slopes='mixed', scale=2.0, initial_state=True, "
        "final_state=False, grads=('q', 'k', 'v', 'slopes', 'initial_state'), cu_seqlens=None, seed=150573592)"],
    ("triton", "linearity_v", "float16"): [  # run 11: dslopes = inf (dS/ds past float16's range)
        "Problem(B=1, H=2, Hkv=2, N=4095, M=4095, D=48, E=64, dtype='float16', device='cuda', mask_kind='decay', "
        "mask_shape='BHNM', mask_values='real', slopes='tnl', scale=0.5, initial_state=False, final_state=True, "
        "grads=('q', 'k', 'v', 'slopes'), cu_seqlens=None, seed=449940552)"],
    ("triton", "causality", "float16"): [  # run 18: dq ~1 relative error (E = 63 rows 2-byte aligned)
        "Problem(B=1, H=2, Hkv=1, N=257, M=257, D=3, E=63, dtype='float16', device='cuda', mask_kind='decay', "
        "mask_shape='NM', mask_values='real', slopes='zero', scale=0.125, initial_state=False, final_state=True, "
        "grads=('q', 'k', 'v', 'slopes'), cu_seqlens=(0, 142, 257), seed=49495136)"],
    ("triton", "batch_invariance", "float16"): [  # run 16: dq, dk ~1 relative error (4-warp miscompile)
        "Problem(B=2, H=6, Hkv=2, N=65, M=65, D=3, E=128, dtype='float16', device='cuda', mask_kind='causal', "
        "mask_shape='NM', mask_values='real', slopes='large', scale=0.5, initial_state=False, final_state=False, "
        "grads=('q', 'k', 'v'), cu_seqlens=None, seed=1755817294)"],
    ("triton", "causality", "bfloat16"): [  # o 47x band
        "Problem(B=2, H=2, Hkv=1, N=2039, M=2039, D=65, E=17, dtype='bfloat16', device='cuda', "
        "mask_kind='decay', mask_shape='11NM', mask_values='binary', slopes='mixed', scale=1.0, "
        "initial_state=False, final_state=False, grads=(), cu_seqlens=None, seed=1925797963)"],
    ("triton", "varlen", "float64"): [  # OutOfResources: shared memory 393216 > 232448
        "Problem(B=1, H=6, Hkv=3, N=131, M=131, D=256, E=256, dtype='float64', device='cuda', "
        "mask_kind='decay', mask_shape='HNM', mask_values='real', slopes='tiny', scale=0.5, "
        "initial_state=True, final_state=True, grads=('q', 'k', 'v', 'slopes', 'initial_state'), "
        "cu_seqlens=(0, 18, 33, 69, 93, 131), seed=772357610)"],
}


# ----------------------------------------------------------------------------------- drawing problems
def caps_of(backend) -> dict:
    """What the drawing needs to know of a backend, as plain data (the parent passes it on)."""
    import torch

    kinds = [k for k in KINDS if k in backend.mask_kinds]
    if backend.name == "triton":
        kinds = [k for k in kinds if k in CHUNK_KINDS]
    return dict(name=backend.name, kinds=kinds, gqa=bool(backend.gqa), state=bool(backend.state),
                mask_grad=bool(backend.mask_grad), slopes_grad=bool(backend.slopes_grad),
                n_ne_m=bool(backend.n_ne_m) and backend.name != "triton",
                max_head_dim=backend.max_head_dim or 256,
                dtypes=[d for d in DTYPES if getattr(torch, d) in backend.dtypes])


def _allowed_grads(caps, kind, s0):
    dense, decay = kind.startswith("dense"), kind.endswith("decay")
    return ["q", "k", "v"] + (["mask"] if dense and caps["mask_grad"] else []) + \
        (["slopes"] if decay and caps["slopes_grad"] else []) + (["initial_state"] if s0 else [])


def _shrink(B, H, N, M, D, E, causal):
    while (B * H * N * M * (D + E) > MAX_WORK or B * H * N * M > MAX_NM) and N > 1:
        N = max(1, N // 2)
        M = N if causal else max(1, M // 2)
    return N, M


def draw_problem(rng: random.Random, prop: str, caps: dict, dtype: str, phase: int):
    """A Problem for cell (backend, prop, dtype), or None when the cell admits none.

    phase 0: a fixed shape per worker (B2-H2/2-N77-D48-E64, kernels shared between cells);
    phase 1: the same at N = 4093 or 4095 (Triton specialises N only on N % 16: the same
    kernels); later: random (N up to 4096, any head dims, kinds, shapes)."""
    from linattn.testing import Problem

    narrow = NARROW.get(prop, {})
    kinds = [k for k in caps["kinds"] if k in narrow.get("kinds", caps["kinds"])]
    if not kinds or dtype not in caps["dtypes"]:
        return None
    if prop == "gradcheck":
        if dtype != "float64":
            return None
        kind = rng.choice(kinds)
        causal = kind not in ("none", "dense")
        N = rng.randint(1, 8)
        M = N if causal or not caps["n_ne_m"] else rng.randint(1, 8)
        H = rng.choice([1, 2])
        s0 = causal and not kind.startswith("dense") and caps["state"] and rng.random() < 0.5
        return Problem(B=rng.randint(1, 2), H=H, Hkv=rng.choice([1, H]) if caps["gqa"] else H, N=N, M=M,
                       D=rng.randint(1, 3), E=rng.randint(1, 3), dtype=dtype, device=DEVICE, mask_kind=kind,
                       mask_shape=rng.choice(["BHNM", "1HNM", "NM"]), slopes=rng.choice(["tnl", "tiny", "moderate", "large"]),
                       initial_state=s0, final_state=bool(s0) or (causal and not kind.startswith("dense")
                                                                  and caps["state"] and rng.random() < 0.5),
                       grads=tuple(_allowed_grads(caps, kind, s0)), seed=rng.randint(0, 2 ** 31 - 1))
    max_n = min(MAX_N, narrow.get("max_n", MAX_N))
    cap = caps["max_head_dim"]
    if phase == 1 and prop == "recurrent_steps":
        phase = 2  # one call per token: N stays <= 40
    if phase in (0, 1):
        kind = next(k for k in ["dense+decay", "decay", "dense+causal", "causal", "dense", "none"] if k in kinds)
        dense, causal, decay = kind.startswith("dense"), kind not in ("none", "dense"), kind.endswith("decay")
        N = next(n for n in (77, 45, 37, 13, 5) if n <= max_n)
        if phase == 1:
            N = rng.choice(BIG_NS)
        H, Hkv = 2, 2
        if narrow.get("gqa"):
            if not caps["gqa"]:
                return None
            Hkv = 1
        D, E = (48, 64) if not CPU else (5, 7)
        D, E = min(D, cap), min(E, cap)
        varlen = bool(narrow.get("varlen")) and causal and not dense
        B = 1 if varlen else 2
        if phase == 1:  # B·H·N·M within MAX_NM at N = 4095
            B, H, Hkv = (2, 1, 1) if narrow.get("min_b") else (1, H, Hkv)
        N, _ = _shrink(B, H, N, N, D, E, True)
        cu = (0, N * 3 // 10, N * 3 // 10, N * 7 // 10, N) if varlen else None
        s0 = sN = False
        if causal and not dense and caps["state"]:
            s0 = not narrow.get("no_s0", False)
            sN = True
        grads = () if narrow.get("grads") is False else tuple(_allowed_grads(caps, kind, s0))
        return Problem(B=B, H=H, Hkv=Hkv, N=N, M=N, D=D, E=E, dtype=dtype, device=DEVICE, mask_kind=kind,
                       mask_shape="HNM" if narrow.get("broadcast") else "BHNM", mask_values="real",
                       slopes="tnl", scale=0.5, initial_state=s0, final_state=sN, grads=grads, cu_seqlens=cu,
                       seed=rng.randint(0, 2 ** 31 - 1))
    kind = rng.choice(kinds)
    dense, causal, decay = kind.startswith("dense"), kind not in ("none", "dense"), kind.endswith("decay")
    big = phase == 1
    if big:
        N = rng.choice([n for n in BIG_NS if n <= max_n] or [max_n])
    else:
        N = rng.choice([n for n in EDGES if n <= max_n] + [rng.randint(1, max_n)])
    N = max(N, narrow.get("min_n", 1))
    M = N if (causal or not caps["n_ne_m"]) else rng.choice([N, rng.choice([n for n in EDGES if n <= max_n])])
    dims = [d for d in HEAD_DIMS if d <= cap] if not CPU else [1, 3, 5, 8, 16, 17]
    D = rng.choice(dims)
    E = D if rng.random() < 0.5 else rng.choice(dims)
    H = rng.choice([1, 2] if big else [1, 2, 4, 6, 8])
    if narrow.get("gqa"):
        if not caps["gqa"]:
            return None
        H = max(H, 2) if big else (H if H > 1 else 4)
    ratios = [H] + ([1] if H > 1 else []) + [d for d in range(2, H) if H % d == 0]
    if narrow.get("gqa"):
        Hkv = rng.choice(ratios[1:])
    else:
        Hkv = rng.choice(ratios) if caps["gqa"] else H
    want_varlen = narrow.get("varlen")
    varlen = causal and not dense and (want_varlen if want_varlen is not None else rng.random() < 0.2)
    B = 1 if (varlen or big) else rng.randint(narrow.get("min_b", 1), 3)
    B = max(B, narrow.get("min_b", 1))
    N, M = _shrink(B, H, N, M, D, E, causal)
    if N < narrow.get("min_n", 1):
        return None
    cu = None
    if varlen:
        cuts = sorted(rng.randint(0, N) for _ in range(rng.randint(0, 4)))
        cu = tuple([0] + cuts + [N])
    shapes = ["1HNM", "B1NM", "11NM", "NM", "HNM"] if narrow.get("broadcast") else \
        ["BHNM", "1HNM", "B1NM", "11NM", "NM", "HNM"]
    s0 = sN = False
    if causal and not dense and caps["state"]:
        s0 = narrow.get("state", rng.random() < 0.5) and not narrow.get("no_s0")
        sN = narrow.get("state", False) or rng.random() < 0.5
    want_grads = narrow.get("grads", rng.random() < 0.5)
    grads = ()
    if want_grads:
        allowed = _allowed_grads(caps, kind, s0)
        grads = tuple(allowed) if rng.random() < 0.5 else tuple(rng.sample(allowed, rng.randint(1, len(allowed))))
    return Problem(B=B, H=H, Hkv=Hkv, N=N, M=M, D=D, E=E, dtype=dtype, device=DEVICE,
                   mask_kind=kind, mask_shape=rng.choice(shapes), mask_values=rng.choice(["real", "binary"]),
                   slopes=rng.choice(["tnl", "zero", "tiny", "moderate", "large", "mixed"]),
                   scale=rng.choice([1.0, 0.5, 2.0, 0.125]), initial_state=bool(s0), final_state=bool(sN),
                   grads=grads, cu_seqlens=cu, seed=rng.randint(0, 2 ** 31 - 1))


def long_n_problems():
    """(property, Problem) for backend triton at N >= 16384, most important first; on the
    CPU (a logic test) the same settings at N ~ 100."""
    from linattn.testing import Problem

    def n(x):
        return x if not CPU else 96 + x % 7

    def cu(b):
        return b if not CPU else (0, 30, 30, 80, n(b[-1]))

    g, dh = ("q", "k", "v"), (128 if not CPU else 8)
    P = lambda **kw: Problem(device=DEVICE, **kw)  # noqa: E731
    first = [
        ("backward", P(B=1, H=2, Hkv=1, N=n(16385), M=n(16385), D=dh, E=dh, dtype="bfloat16", mask_kind="decay",
                       slopes="tnl", initial_state=True, final_state=True, grads=g + ("initial_state",), seed=31)),
        ("forward", P(B=1, H=2, Hkv=2, N=n(16384), M=n(16384), D=64, E=48, dtype="float16", mask_kind="causal",
                      final_state=True, seed=32)),
        ("state_split", P(B=1, H=2, Hkv=2, N=n(16389), M=n(16389), D=64, E=64, dtype="bfloat16", mask_kind="decay",
                          slopes="mixed", initial_state=True, final_state=True, grads=g + ("initial_state",), seed=33)),
        ("varlen", P(B=1, H=2, Hkv=1, N=n(16385), M=n(16385), D=64, E=64, dtype="float16", mask_kind="decay",
                     slopes="tnl", initial_state=True, final_state=True,
                     cu_seqlens=cu((0, 5000, 5000, 16000, 16385)), grads=g + ("initial_state",), seed=34)),
        ("causality", P(B=1, H=2, Hkv=2, N=n(16387), M=n(16387), D=64, E=64, dtype="bfloat16", mask_kind="decay",
                        slopes="moderate", grads=g, seed=35)),
        ("gqa", P(B=1, H=4, Hkv=1, N=n(16384), M=n(16384), D=64, E=64, dtype="float16", mask_kind="causal",
                  grads=g, seed=36)),
        ("batch_invariance", P(B=2, H=1, Hkv=1, N=n(16399), M=n(16399), D=64, E=32, dtype="bfloat16",
                               mask_kind="none", grads=g, seed=37)),
        ("linearity_v", P(B=1, H=2, Hkv=2, N=n(16384), M=n(16384), D=32, E=64, dtype="float16", mask_kind="decay",
                          slopes="tiny", final_state=True, grads=g, seed=38)),
    ]
    # float32 last, and near the specialisation of the float32 workers' first problems (decay,
    # state in and out, H2/Hkv2, D48/E64, N % 16 != 0; no dslopes: the chunked oracle has no
    # slopes gradient), so most of their kernels are in Triton's cache: run 10's float32
    # problems here compiled their own (70 s for backward; state_split was cut off after 32 s)
    g32 = g + ("initial_state",)
    d32, e32 = (48, 64) if not CPU else (5, 7)
    extra = [  # if time is left: the other dtypes, N = 32768
        ("backward", P(B=1, H=2, Hkv=1, N=n(32768), M=n(32768), D=dh, E=dh, dtype="bfloat16", mask_kind="decay",
                       slopes="tnl", initial_state=True, final_state=True, grads=g + ("initial_state",), seed=42)),
        ("forward", P(B=1, H=2, Hkv=1, N=n(16384), M=n(16384), D=64, E=64, dtype="float64", mask_kind="decay",
                      slopes="mixed", initial_state=True, final_state=True, seed=43)),
        ("state_split", P(B=1, H=2, Hkv=2, N=n(16403), M=n(16403), D=d32, E=e32, dtype="float32", mask_kind="decay",
                          slopes="moderate", initial_state=True, final_state=True, grads=g32, seed=44)),
        ("backward", P(B=1, H=2, Hkv=2, N=n(16385), M=n(16385), D=d32, E=e32, dtype="float32", mask_kind="decay",
                       slopes="tnl", initial_state=True, final_state=True, grads=g32, seed=41)),
    ]
    if CPU:  # the interpreter: small heads
        import dataclasses

        first, extra = ([(a, dataclasses.replace(p, D=min(p.D, 8), E=min(p.E, 6))) for a, p in x] for x in (first, extra))
    return first + extra


# ----------------------------------------------------------------------------------- cells, reprs
def parse_cells(text: str):
    """``HARNESS_CELLS`` -> (short cells, long cells) as sets of (backend, property, dtype);
    None for an empty text (every cell). ValueError naming what was expected."""
    if not text.strip():
        return None
    short, long = set(), set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split("/")
        is_long = len(parts) == 4 and parts[3] == "long"
        if len(parts) != 3 and not is_long:
            raise ValueError(f"HARNESS_CELLS: expected backend/property/dtype[/long], got {item!r}")
        b, prop, d = parts[:3]
        if b not in ("triton", "triton_dense", "cuda"):
            raise ValueError(f"HARNESS_CELLS: backend must be triton, triton_dense or cuda, got {b!r} in {item!r}")
        if prop not in PROPS:
            raise ValueError(f"HARNESS_CELLS: property must be one of {', '.join(PROPS)}, got {prop!r} in {item!r}")
        if d not in DTYPES:
            raise ValueError(f"HARNESS_CELLS: dtype must be one of {', '.join(DTYPES)}, got {d!r} in {item!r}")
        if is_long and b != "triton":
            raise ValueError(f"HARNESS_CELLS: only triton has long-N cells, got {item!r}")
        (long if is_long else short).add((b, prop, d))
    if not short and not long:
        raise ValueError(f"HARNESS_CELLS: no cell in {text!r}")
    return short, long


def parse_problem(text: str):
    """A ``Problem(...)`` repr (keyword literals only, no code) -> Problem; ValueError else."""
    import ast

    from linattn.testing import Problem

    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"expected a Problem(...) repr, got {text[:120]!r}: {e}") from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Problem"
            and not node.args):
        raise ValueError(f"expected Problem(field=literal, ...), got {text[:120]!r}")
    try:
        kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
        raise ValueError(f"expected literal field values in {text[:120]!r}") from None
    return Problem(**kw)


def for_this_device(p):
    """A repr's Problem on HARNESS_DEVICE; on the CPU (the interpreter) at most B 2, H 2, N 61
    (31 for float64, whose interpreted kernels are slowest), D/E 8."""
    if not CPU:
        return p.replace(device=DEVICE)
    N = min(p.N, 31 if p.dtype == "float64" else 61)
    M = N if (p.causal or p.M == p.N) else min(p.M, 61)
    cu = None
    if p.cu_seqlens is not None:  # the same cuts, scaled to N
        cu = tuple(sorted(c * N // p.N for c in p.cu_seqlens[:-1])) + (N,)
    H = min(p.H, 2)
    Hkv = p.Hkv if H == p.H else (H if p.Hkv == p.H else 1)
    return p.replace(device=DEVICE, B=min(p.B, 2) if cu is None else 1, H=H, Hkv=Hkv, N=N, M=M,
                     D=min(p.D, 8), E=min(p.E, 8), cu_seqlens=cu)


def load_repros(sel):
    """{(backend, prop, dtype): [repr]} and [(prop, repr)] for the long-N worker: REPROS and
    HARNESS_REPROS_FROM's failures (a harness_gpu.json), within the selection ``sel``."""
    short, long = {}, []
    if not USE_REPROS:
        return short, long
    items = [(c, r, False) for c, rs in REPROS.items() for r in rs]
    src = os.environ.get("HARNESS_REPROS_FROM")
    if src:
        try:
            d = json.load(open(src))
            for row in d["cells"]:
                for f in row.get("failures") or []:
                    items.append(((row["backend"], row["property"], row["dtype"]), f["problem"], bool(row["long_n"])))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"HARNESS_REPROS_FROM: expected a harness_gpu.json with cells[].failures[].problem, "
                             f"{src}: {type(e).__name__}: {e}") from None
    for c, r, is_long in items:
        p = parse_problem(r)  # ValueError names the text
        if p.dtype != c[2]:
            raise ValueError(f"repro for {'/'.join(c)} has dtype {p.dtype}: {r[:120]}")
        if sel is not None and c not in (sel[1] if is_long else sel[0]):
            continue
        if is_long:
            if (c[1], r) not in long:
                long.append((c[1], r))
        elif r not in short.setdefault(c, []):
            short[c].append(r)
    return short, long


# ----------------------------------------------------------------------------------- worker
class _Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, **rec):
        rec["t"] = round(time.time(), 3)
        self.f.write(json.dumps(rec, default=str) + "\n")
        self.f.flush()


def _fatal_cuda(e: BaseException) -> bool:
    s = str(e)
    return any(x in s for x in ("illegal memory access", "device-side assert", "unspecified launch failure",
                                "CUDA error: an illegal", "misaligned address", "CUDA_ERROR_"))


def _compact(res, p):
    ms = sorted(res.measurements, key=lambda m: -m.fraction)[:4]
    return [dict(q=m.quantity, err=m.error, band=m.band, frac=m.fraction) for m in ms]


def worker_main(spec_path: str) -> int:
    try:  # die with the parent
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
    except Exception:
        pass
    spec = json.load(open(spec_path))
    if spec.get("nice"):
        try:  # Triton compiles yield to the nvcc build, whose end the cuda workers wait for
            os.nice(spec["nice"])
        except OSError:
            pass
    log = _Log(spec["log"])
    deadline = spec["deadline"]
    log(ev="hello", pid=os.getpid(), import_s=round(time.time() - T_IMPORT, 2))
    try:
        import torch

        import linattn  # noqa: F401
        from linattn.testing import PROPERTIES, as_target, poisoned
        from linattn.testing.problem import Skip
        if spec.get("long"):
            import functools

            from linattn.testing import reference
            reference.oracle_fn = functools.partial(linattn.linear_attention, backend="chunked")
        if not CPU:
            torch.zeros(1, device="cuda")  # the context, before the clock of the first cell
    except Exception:
        log(ev="import_error", error=traceback.format_exc())
        return 2
    log(ev="ready", ready_s=round(time.time() - T_IMPORT, 2))
    targets = {}
    caps = spec["caps"]
    cells = [tuple(c) for c in spec["cells"]]  # (backend, prop, dtype)
    fails0 = spec.get("fails", {})  # failures this cell had in workers before this one
    st = {c: dict(n=0, skip=0, used=0.0, last=0.0, fails=fails0.get("/".join(c), 0), why="") for c in cells}
    for s_ in st.values():
        s_["done"] = s_["fails"] >= MAX_FAILS
    rng = {c: random.Random(f"{spec['seed']}/{'/'.join(c)}") for c in cells}

    # CPU logic test only: HARNESS_TEST_BREAK=backend/prop/dtype,... gives those cells an output 2% off
    broken_cells = {tuple(x.split("/")) for x in os.environ.get("HARNESS_TEST_BREAK", "").split(",") if x} \
        if CPU else set()

    def _broken(t):
        import dataclasses

        def fn(*a, **kw):
            out = t.fn(*a, **kw)
            return out * 1.02 if torch.is_tensor(out) else (out[0] * 1.02,) + tuple(out[1:])
        return dataclasses.replace(t, fn=fn)

    def run_one(c, p):
        b, prop, dtype = c
        if b not in targets:
            targets[b] = as_target(b)
        s = st[c]
        t0 = time.time()
        log(ev="start", cell=c, problem=repr(p), describe=p.describe())
        try:
            with poisoned():
                res = PROPERTIES[prop](_broken(targets[b]) if c in broken_cells else targets[b], p)
        except Skip as e:
            s["skip"] += 1
            s["used"] += time.time() - t0
            s["why"] = str(e)[:200]
            log(ev="skip", cell=c, describe=p.describe(), why=str(e)[:200], s=round(time.time() - t0, 2))
            return "skip"
        except Exception as e:
            dt = time.time() - t0
            s["used"] += dt
            s["n"] += 1
            oom = isinstance(e, torch.cuda.OutOfMemoryError) if hasattr(torch.cuda, "OutOfMemoryError") else False
            log(ev="oom" if oom else "error", cell=c, problem=repr(p), describe=p.describe(), s=round(dt, 2),
                error=f"{type(e).__name__}: {str(e)[:1500]}", tb=traceback.format_exc()[-4000:])
            if not oom:
                s["fails"] += 1
                s["done"] = s["fails"] >= MAX_FAILS  # record a few, so a fix is judged on more than one
            if not CPU:
                try:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                except Exception:
                    pass
            if _fatal_cuda(e):
                log(ev="cuda_broken", cell=c)
                sys.exit(4)
            return "error"
        dt = time.time() - t0
        s["used"] += dt
        s["last"] = dt
        s["n"] += 1
        w = res.worst
        rec = dict(ev="result", cell=c, problem=repr(p), describe=p.describe(), ok=res.ok, s=round(dt, 2),
                   N=p.N, worst=res.worst_fraction, worst_q=w.quantity if w else None, top=_compact(res, p))
        if not res.ok:
            rec["message"] = res.message()[:6000]
            s["fails"] += 1
            s["done"] = s["fails"] >= MAX_FAILS
        log(**rec)
        if not CPU and p.B * p.H * p.N * p.M > (1 << 22):
            torch.cuda.empty_cache()
        return "ok" if res.ok else "fail"

    def draw(c, phase):
        b, prop, dtype = c
        for tries in range(40):
            try:
                p = draw_problem(rng[c], prop, caps[b], dtype, phase if tries < 3 else 2)
            except Exception:
                log(ev="draw_error", cell=c, error=traceback.format_exc()[-2000:])
                return None
            if p is None:
                return None
            why = targets[b].unsupported(p) if b in targets else None
            if why is None:
                return p
            st[c]["skip"] += 1
            st[c]["why"] = why[:200]
        return None

    for b in {c[0] for c in cells}:
        try:
            targets[b] = as_target(b)
        except Exception as e:
            for c in cells:
                if c[0] == b:
                    st[c]["done"], st[c]["why"] = True, f"{type(e).__name__}: {e}"[:200]

    def fixed(c, text):
        """Run one given Problem repr in cell c (a repro); a parse error or a limit the
        backend declares is logged, not raised."""
        try:
            p = for_this_device(parse_problem(text))
        except Exception:
            log(ev="draw_error", cell=c, error=traceback.format_exc()[-2000:])
            return
        why = targets[c[0]].unsupported(p) if c[0] in targets else "no target"
        if why is not None:
            st[c]["skip"] += 1
            st[c]["why"] = why[:200]
            log(ev="skip", cell=c, describe=p.describe(), why=f"repro: {why}"[:200], s=0.0)
            return
        run_one(c, p)

    if spec.get("long"):
        skip = set(spec.get("skip_problems", []))  # tried by an earlier worker (timed out)
        for prop, text in spec.get("long_problems", []):  # repros first, then long_n_problems()
            if time.time() > deadline - 2:
                break
            try:
                p = for_this_device(parse_problem(text))
            except Exception:
                log(ev="draw_error", error=traceback.format_exc()[-2000:])
                continue
            if text in skip or repr(p) in skip:
                continue
            c = ("triton", prop, p.dtype)
            st.setdefault(c, dict(n=0, skip=0, used=0.0, last=0.0, fails=0, done=False, why=""))
            run_one(c, p)
        log(ev="bye")
        return 0

    # the cells' fixed problems (earlier failures) first, then phase 0 then 1: every cell
    # once, in order; then the cell with the least time used
    repros = spec.get("repros", {})
    for c in cells:
        for text in repros.get("/".join(c), []):
            if st[c]["done"] or time.time() > deadline - 1:
                break
            fixed(c, text)
    for phase in (0, 1):
        for c in cells:
            if st[c]["done"] or time.time() > deadline - 1:
                continue
            for _ in range(5):  # a skip (undeclared limit) gets another draw
                p = draw(c, phase)
                if p is None:
                    st[c]["done"] = True
                    break
                if run_one(c, p) != "skip":
                    break
    while True:
        now = time.time()
        live = [c for c in cells if not st[c]["done"] and now + max(0.5, 1.2 * st[c]["last"]) < deadline]
        if not live:
            break
        c = min(live, key=lambda c: st[c]["used"])
        p = draw(c, 2)
        if p is None:
            st[c]["done"] = True
            continue
        run_one(c, p)
    log(ev="bye", summary={"/".join(c): dict(n=s["n"], skip=s["skip"], used=round(s["used"], 1), why=s["why"])
                           for c, s in st.items()})
    return 0


# ----------------------------------------------------------------------------------- parent
def _applicability(backend, caps, prop, dtype, PROPERTIES, as_target):
    """None when the cell is to be run, else why it is n/a."""
    if dtype not in caps["dtypes"]:
        return f"{caps['name']} takes no {dtype}"
    if caps["name"] == "triton" and prop in DENSE_ONLY:
        return "dense masks route to triton_dense"
    if prop == "gradcheck" and dtype != "float64":
        return "gradcheck is float64 only"
    why = PROPERTIES[prop].applies(as_target(backend))
    if why:
        return why
    kinds = NARROW.get(prop, {}).get("kinds", caps["kinds"])
    if not [k for k in caps["kinds"] if k in kinds]:
        return "no mask kind the property needs"
    return None


def plan(families: dict, n_workers: int) -> list:
    """Share ``n_workers`` among families {key: (cost per cell, [cells])}; split each family's
    cells into contiguous runs. Returns [(family key, [cells])]."""
    keys = [k for k, (_, cells) in families.items() if cells]
    if not keys:
        return []
    weight = {k: families[k][0] * len(families[k][1]) for k in keys}
    if n_workers < len(keys):  # fewer workers than families: each further one joins the lightest list
        keys.sort(key=lambda k: -weight[k])
        out = [(k, list(families[k][1])) for k in keys[:n_workers]]
        load = [weight[k] for k in keys[:n_workers]]
        for k in keys[n_workers:]:
            i = min(range(n_workers), key=lambda i: load[i])
            out[i][1].extend(families[k][1])
            load[i] += weight[k]
        return out
    share = {k: 1 for k in keys}
    for _ in range(n_workers - len(keys)):
        k = max(keys, key=lambda k: (weight[k] / share[k], len(families[k][1]) > share[k]))
        if len(families[k][1]) <= share[k]:
            break
        share[k] += 1
    out = []
    for k in keys:
        cells = families[k][1]
        n = share[k]
        for i in range(n):
            part = cells[len(cells) * i // n: len(cells) * (i + 1) // n]
            if part:
                out.append((k, part))
    return out


class Parent:
    def __init__(self):
        self.t0 = T_IMPORT
        self.deadline = self.t0 + BUDGET_S - 6  # the table and JSON need a few seconds
        self.parts = os.path.join(OUT_DIR, "harness_parts")
        os.makedirs(self.parts, exist_ok=True)
        self.workers = []  # dicts: id, key, cells, proc, log, offset, current, started, rc
        self.events = []
        self.na = {}
        self.caps = {}
        self.status_lines = []
        self.stop = False
        self.build = None
        self.pending_cuda = []
        self.timeouts = {}  # cell -> [problem reprs]
        self.dead_cells = set()
        self.meta = {}
        self.n_spawned = 0
        self.spawns = {}  # family key -> workers started for it (at most 4: no respawn loops)
        self.long_ids = set()
        self.long_list = []  # (property, Problem repr) for the long-N worker, in order
        self.long_cells = set()  # (backend, prop, dtype) of long_list
        self.selected = None  # HARNESS_CELLS: (short cells, long cells), None for all
        self.repros = {}  # cell -> [Problem repr]: fixed first problems

    def log(self, *a):
        print(f"[{time.time() - self.t0:6.1f}s]", *a, flush=True)

    def spawn(self, key, cells, long=False, skip_problems=()):
        wid = self.n_spawned
        self.n_spawned += 1
        self.spawns[key] = self.spawns.get(key, 0) + 1
        logp = os.path.join(self.parts, f"w{wid:02d}.jsonl")
        tried = {e.get("problem") for e in self.events}
        spec = dict(cells=[list(c) for c in cells], caps=self.caps, deadline=self.deadline - 2, log=logp,
                    seed=f"{key}/{self.spawns[key]}", long=long, skip_problems=list(skip_problems),
                    long_problems=self.long_list if long else [],
                    repros={"/".join(c): [r for r in self.repros.get(c, []) if r not in tried] for c in cells
                            if self.repros.get(c)},
                    fails={"/".join(c): self.fails(c) for c in cells if self.fails(c)},
                    nice=0 if key.startswith("cuda") else 3)
        sp = os.path.join(self.parts, f"w{wid:02d}.spec.json")
        json.dump(spec, open(sp, "w"))
        errf = open(os.path.join(self.parts, f"w{wid:02d}.stderr"), "w")
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", sp],
                                stdout=errf, stderr=subprocess.STDOUT, cwd=ROOT)
        w = dict(id=wid, key=key, cells=[tuple(c) for c in cells], proc=proc, log=logp, offset=0, current=None,
                 started=time.time(), rc=None, long=long)
        self.workers.append(w)
        self.log(f"worker {wid} ({key}{', long N' if long else ''}): {len(cells)} cells, pid {proc.pid}")
        return w

    def read(self, w):
        try:
            with open(w["log"]) as f:
                f.seek(w["offset"])
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        end = data.rfind("\n")
        if end < 0:
            return
        w["offset"] += len(data[:end + 1].encode())
        for line in data[:end + 1].splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            r["w"] = w["id"]
            if r["ev"] == "start":
                w["current"] = r
            elif r["ev"] in ("result", "skip", "error", "oom"):
                w["current"] = None
            if r["ev"] in ("result", "error", "oom", "skip", "import_error", "cuda_broken", "draw_error",
                           "timeout", "killed"):
                if "cell" in r:
                    r["cell"] = tuple(r["cell"])
                self.events.append(r)
                if r["ev"] == "result" and not r["ok"]:
                    self.log(f"FAIL {'/'.join(r['cell'])}: {r['describe']} worst {r['worst']:.3g} ({r['worst_q']})")
                if r["ev"] in ("error", "oom"):
                    self.log(f"{r['ev'].upper()} {'/'.join(r['cell'])}: {r['describe']}: {r['error'][:200]}")

    def kill(self, w, why):
        p = w["proc"]
        if p.poll() is None:
            try:
                p.kill()
            except Exception:
                pass
            try:
                p.wait(5)
            except Exception:
                pass
        self.read(w)
        cur = w["current"]
        if cur is not None:
            c = tuple(cur["cell"])
            ev = dict(ev=why, cell=c, problem=cur["problem"], describe=cur["describe"], w=w["id"],
                      s=round(time.time() - cur["t"], 1))
            self.events.append(ev)
            self.log(f"{why.upper()} {'/'.join(c)}: {cur['describe']} after {ev['s']}s (worker {w['id']} killed)")
            if why == "timeout" and not w["long"]:
                self.dead_cells.add(c)
            w["current"] = None

    def fails(self, c):
        """Failures (failed results and errors) recorded for cell c so far."""
        return sum(1 for e in self.events if e.get("cell") == c and e.get("w") not in self.long_ids
                   and (e["ev"] == "error" or (e["ev"] == "result" and not e["ok"])))

    def covered(self, c):
        return any(e.get("cell") == c and e["ev"] in ("result", "error") for e in self.events)

    def respawn(self, w):
        left = [c for c in w["cells"] if c not in self.dead_cells and self.fails(c) < MAX_FAILS]
        if self.deadline - time.time() < 20 or self.spawns.get(w["key"], 0) >= 4:
            return
        if w["long"]:  # the fixed list, less the problems already tried
            tried = {e["problem"] for e in self.events if e.get("w") in self.long_ids and "problem" in e}
            nw = self.spawn(w["key"], [], long=True, skip_problems=sorted(tried))
            self.long_ids.add(nw["id"])
            return
        if not left:
            return
        left.sort(key=lambda c: self.covered(c))  # uncovered cells first
        self.spawn(w["key"], left)

    def monitor(self):
        last_dump = 0.0
        while not self.stop:
            now = time.time()
            if now > self.deadline:
                break
            if self.build is not None and self.build.poll() is not None:
                rc = self.build.returncode
                self.meta["cuda_build"] = dict(rc=rc, seconds=round(now - self.meta["cuda_build_t0"], 1))
                self.log(f"cuda build: rc={rc} in {self.meta['cuda_build']['seconds']}s")
                self.build = None
                if rc == 0:
                    for key, cells in self.pending_cuda:
                        self.spawn(key, cells)
                else:
                    self.meta["cuda_not_run"] = "the extension did not build (harness_parts/cuda_build.log)"
                self.pending_cuda = []
            running = 0
            for w in list(self.workers):
                if w["rc"] is not None:
                    continue
                self.read(w)
                cur = w["current"]
                if cur is not None and now - cur["t"] > PROBLEM_CAP_S * (1.5 if w["long"] else 1.0):
                    self.kill(w, "timeout")
                    w["rc"] = w["proc"].returncode
                    self.respawn(w)
                    continue
                rc = w["proc"].poll()
                if rc is not None:
                    self.read(w)
                    w["rc"] = rc
                    if w["current"] is not None:
                        self.kill(w, "crash")
                    self.log(f"worker {w['id']} exited rc={rc} after {now - w['started']:.0f}s")
                    if rc != 0:
                        self.respawn(w)
                    continue
                running += 1
            if running == 0 and self.build is None and not self.pending_cuda:
                break
            if now - last_dump > 5:
                self.dump(final=False)
                last_dump = now
            time.sleep(0.25)
        for w in self.workers:
            if w["rc"] is None:
                self.kill(w, "stopped")
                w["rc"] = w["proc"].returncode
        if self.build is not None and self.build.poll() is None:
            self.log("cuda build still running: SIGTERM (it releases torch's build lock)")
            self.build.terminate()
            try:
                self.build.wait(10)
            except Exception:
                self.build.kill()

    def table(self):
        rows = []
        cells = sorted(set(self.all_cells) | {e["cell"] for e in self.events if "cell" in e},
                       key=lambda c: (BACKENDS.index(c[0]) if c[0] in BACKENDS else 99, PROPS.index(c[1]),
                                      DTYPES.index(c[2])))
        long_cells = {(c[1], c[2]) for c in self.long_cells}
        all_cells = set(self.all_cells)
        for c in cells:
            evs = [e for e in self.events if e.get("cell") == c]
            for long in (False, True):
                sel = [e for e in evs if (e.get("w") in self.long_ids) == long]
                if not long and not sel and c not in all_cells:  # a long-N worker's cell only
                    continue
                if long and not sel and not (c[0] == "triton" and (c[1], c[2]) in long_cells):
                    continue
                if not long and c in self.na:
                    rows.append(dict(backend=c[0], property=c[1], dtype=c[2], long_n=False, status="n/a",
                                     why=self.na[c]))
                    continue
                rr = [e for e in sel if e["ev"] == "result"]
                ff = [e for e in rr if not e["ok"]]
                ee = [e for e in sel if e["ev"] == "error"]
                tt = [e for e in sel if e["ev"] in ("timeout", "crash")]
                sk = [e for e in sel if e["ev"] == "skip"]
                oo = [e for e in sel if e["ev"] == "oom"]
                status = "FAIL" if (ff or ee) else "pass" if rr else "timeout" if tt else "not run"
                why = ""
                if status == "not run":
                    why = ("skipped: " + sk[-1]["why"]) if sk else \
                        self.meta.get("cuda_not_run", "no time") if c[0] == "cuda" else "no time"
                worst = max(rr, key=lambda e: e["worst"], default=None)
                rows.append(dict(
                    backend=c[0], property=c[1], dtype=c[2], long_n=long, status=status, run=len(rr) + len(ee),
                    fails=len(ff) + len(ee),
                    repros_failed=sum(1 for e in ff + ee if e.get("problem") in set(self.repros.get(c, []))),
                    skip=len(sk), oom=len(oo), max_n=max([e["N"] for e in rr], default=None),
                    worst=worst["worst"] if worst else None, worst_q=worst["worst_q"] if worst else None,
                    worst_problem=worst["describe"] if worst else None,
                    seconds=round(sum(e.get("s", 0) for e in rr + ee), 1), why=why,
                    failures=[dict(problem=e["problem"], message=e.get("message") or e.get("error"),
                                   tb=e.get("tb")) for e in ff + ee],
                    timeouts=[dict(problem=e["problem"], ev=e["ev"], s=e["s"]) for e in tt]))
        return rows

    def dump(self, final):
        rows = self.table()
        d = dict(device=self.meta.get("device"), torch=self.meta.get("torch"), triton=self.meta.get("triton"),
                 budget_s=BUDGET_S, seconds=round(time.time() - self.t0, 1), final=final, backends=BACKENDS,
                 env={k: os.environ.get(k) for k in ("LINATTN_TRITON_AUTOTUNE", "LINATTN_CUDA_FP32",
                                                     "HARNESS_WORKERS", "HARNESS_PROBLEM_CAP_S", "TRITON_INTERPRET")},
                 meta=self.meta, cells=rows,
                 workers=[dict(id=w["id"], key=w["key"], cells=["/".join(c) for c in w["cells"]], rc=w["rc"],
                               long=w["long"], seconds=round(time.time() - w["started"], 1)) for w in self.workers],
                 problems_run=sum(1 for e in self.events if e["ev"] == "result"),
                 oom=[dict(cell="/".join(e["cell"]), problem=e["problem"]) for e in self.events if e["ev"] == "oom"])
        path = os.path.join(OUT_DIR, "harness_gpu.json")
        try:
            with open(path + ".part", "w") as f:
                json.dump(d, f, indent=1, default=str)
            os.replace(path + ".part", path)
        except Exception as e:
            self.log(f"cannot write {path}: {e}")
        return rows

    def print_table(self, rows):
        fails = [r for r in rows if r["status"] in ("FAIL", "timeout")]
        for r in fails:
            name = f"{r['backend']}/{r['property']}/{r['dtype']}{' N>=16384' if r['long_n'] else ''}"
            for i, f in enumerate(r.get("failures", [])):
                msg = f["message"] or ""
                if i:  # the first in full; the others: the table line of their worst quantity
                    msg = " | ".join(x.strip() for x in msg.splitlines()[:4] if x.strip())[:400]
                print(f"\n--- FAIL {i + 1}/{len(r['failures'])} {name}: {msg[:1500]}\n"
                      f"problem = {f['problem']}", flush=True)
            for t in r.get("timeouts", []):
                print(f"\n--- {t['ev'].upper()} {r['backend']}/{r['property']}/{r['dtype']} after {t['s']}s:"
                      f" problem = {t['problem']}", flush=True)
        print(f"\nharness_gpu on {self.meta.get('device')} (torch {self.meta.get('torch')}, triton "
              f"{self.meta.get('triton')}), {time.time() - self.t0:.0f}s of {BUDGET_S:.0f}s, "
              f"{self.n_spawned} worker processes, {sum(1 for e in self.events if e['ev'] == 'result')} problems")
        print("cell: status runs worst-error/band (pass/FAIL/timeout/not run/n-a; FAILk/n: k of n failed); "
              "long N rows: triton at N >= 16384")
        short = {"pass": "pass", "FAIL": "FAIL", "timeout": "TIME", "not run": "-", "n/a": "n/a"}
        by = {}
        for r in rows:
            by[(r["backend"], r["property"], r["long_n"])] = by.get((r["backend"], r["property"], r["long_n"]), {})
            by[(r["backend"], r["property"], r["long_n"])][r["dtype"]] = r
        print(f"{'backend':13s} {'property':20s} " + " ".join(f"{d:>17s}" for d in DTYPES))
        omitted = 0
        for (b, p, long), dd in by.items():
            if all(r["status"] == "n/a" for r in dd.values()):
                omitted += 1
                continue
            cols = []
            for d in DTYPES:
                r = dd.get(d)
                if r is None:
                    cols.append(f"{'':>17s}" if long or self.selected is not None else f"{'n/a':>17s}")
                    continue
                s = short[r["status"]]
                if r["status"] in ("pass", "FAIL"):
                    w = "-" if r.get("worst") is None else f"{r['worst']:.2f}"
                    s = f"{s} {r['run']:3d} {w:>5s}" if r["status"] == "pass" else \
                        f"{s}{len(r['failures'])}/{r['run']:<3d} {w:>5s}"
                cols.append(f"{s:>17s}")
            name = p + (" N>=16384" if long else "")
            print(f"{b:13s} {name:20s} " + " ".join(cols))
        counts = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        print("cells:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
              f"({omitted} rows all n/a not shown; every cell in harness_gpu.json)")
        maxn = {}
        for r in rows:
            if r.get("max_n"):
                k = r["backend"] + (" N>=16384" if r["long_n"] else "")
                maxn[k] = max(maxn.get(k, 0), r["max_n"])
        print("largest N run:", ", ".join(f"{k} {v}" for k, v in maxn.items()))
        bad = [f"{r['backend']}/{r['property']}/{r['dtype']}{'/long' if r['long_n'] else ''}" for r in rows
               if r["status"] in ("FAIL", "timeout")]
        if bad:
            print("FAIL/timeout cells:", " ".join(bad))
        nr = [f"{r['backend']}/{r['property']}/{r['dtype']}{'/long' if r['long_n'] else ''}" for r in rows
              if r["status"] == "not run"]
        if nr:
            print(f"not run ({len(nr)}):", " ".join(nr[:30]) + (f" ... and {len(nr) - 30} more" if len(nr) > 30 else ""))
        sys.stdout.flush()

    def main(self) -> int:
        signal.signal(signal.SIGTERM, self._sigterm)
        try:
            import torch

            import linattn
            from linattn.testing import PROPERTIES, as_target
        except Exception:
            print("harness_gpu: cannot import linattn.testing:\n" + traceback.format_exc())
            return 1
        self.meta["torch"] = torch.__version__
        try:
            import triton

            self.meta["triton"] = triton.__version__
        except Exception:
            self.meta["triton"] = None
        if not CPU and not torch.cuda.is_available():
            print("harness_gpu: no CUDA device; nothing to do")
            return 0
        self.meta["device"] = "cpu (logic test)" if CPU else torch.cuda.get_device_name()
        try:  # bad input: a clear error before any worker starts
            self.selected = sel = parse_cells(os.environ.get("HARNESS_CELLS", ""))
            repros, long_repros = load_repros(sel)
            norm = lambda r: repr(for_this_device(parse_problem(r)))  # noqa: E731  (as the worker runs it)
            self.repros = {c: [norm(r) for r in rs] for c, rs in repros.items()}
            long_repros = [(prop, norm(r)) for prop, r in long_repros]
        except ValueError as e:
            print(f"harness_gpu: {e}", flush=True)
            return 2
        if sel is not None:
            self.meta["selected"] = sorted("/".join(c) for c in sel[0]) + sorted("/".join(c) + "/long" for c in sel[1])
            self.log(f"HARNESS_CELLS: {len(sel[0])} cells, {len(sel[1])} long-N cells")
        if self.repros or long_repros:
            self.meta["repros"] = {"/".join(c): rs for c, rs in self.repros.items()}
            self.meta["long_repros"] = long_repros
            self.log(f"fixed first problems (repros): {sum(len(r) for r in self.repros.values())} in "
                     f"{len(self.repros)} cells, {len(long_repros)} long-N")
        self.all_cells = []
        families = {}
        for name in BACKENDS:
            try:
                b = linattn.get_backend(name)
            except ValueError as e:
                self.log(f"{name}: absent ({e})")
                continue
            why = b.available()
            if why is not None or DEVICE not in b.devices:
                self.log(f"{name}: unavailable ({why or 'not on ' + DEVICE})")
                for p in PROPS:
                    for d in DTYPES:
                        if sel is not None and (name, p, d) not in sel[0]:
                            continue
                        self.na[(name, p, d)] = f"unavailable: {why or 'not on ' + DEVICE}"
                        self.all_cells.append((name, p, d))
                continue
            caps = self.caps[name] = caps_of(b)
            for d in DTYPES:
                for p in PROPS:
                    c = (name, p, d)
                    if sel is not None and c not in sel[0]:
                        continue
                    self.all_cells.append(c)
                    why = _applicability(name, caps, p, d, PROPERTIES, as_target)
                    if why:
                        self.na[c] = why
                        continue
                    # a family shares kernels (a Triton backend in one dtype); cuda compiles nothing
                    key = "cuda:all" if name == "cuda" else f"{name}:{d}"
                    families.setdefault(key, (cost(name, d), []))[1].append(c)
        cores = os.cpu_count() or 2
        n_workers = int(os.environ.get("HARNESS_WORKERS", str(max(2, min(15, cores - 1)))))  # + parent, build
        long = LONG_N and "triton" in self.caps and "float16" in self.caps["triton"]["dtypes"]
        if long:  # repros first, then the fixed list; only the selected cells' problems
            self.long_list = long_repros + [(prop, repr(for_this_device(p))) for prop, p in long_n_problems()
                                            if sel is None or ("triton", prop, p.dtype) in sel[1]]
            self.long_cells = {("triton", prop, parse_problem(r).dtype) for prop, r in self.long_list}
            long = bool(self.long_list)
        n_long = 1 if long else 0
        parts = plan(families, max(1, n_workers - n_long))
        self.log(f"{len(self.all_cells)} cells, {sum(len(c) for _, c in parts)} to run, {len(self.na)} n/a; "
                 f"{len(parts)} workers + {n_long} long-N; budget {BUDGET_S:.0f}s, {cores} cores")
        self.meta["plan"] = [dict(key=k, cells=["/".join(c) for c in cells]) for k, cells in parts]
        cuda_parts = [(k, cells) for k, cells in parts if k.startswith("cuda:")]
        test_build = os.environ.get("HARNESS_TEST_BUILD")  # CPU logic test of the build wait: ok | fail
        if cuda_parts and (not CPU or test_build):
            from linattn.backends.cuda import emulator

            if not emulator.ENABLED or test_build:
                self.meta["cuda_build_t0"] = time.time()
                blog = open(os.path.join(self.parts, "cuda_build.log"), "w")
                self.build = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--build"],
                                              stdout=blog, stderr=subprocess.STDOUT, cwd=ROOT)
                self.pending_cuda = cuda_parts
                self.log(f"cuda build started (pid {self.build.pid}); {len(cuda_parts)} cuda workers wait for it")
        if long:
            w = self.spawn("triton:long", [], long=True)
            self.long_ids.add(w["id"])
        for k, cells in parts:
            if self.pending_cuda and (k, cells) in self.pending_cuda:
                continue
            self.spawn(k, cells)
        try:
            self.monitor()
        finally:
            for w in self.workers:
                if w["rc"] is None and w["proc"].poll() is None:
                    self.kill(w, "stopped")
                self.read(w)
        for w in self.workers:
            if w["long"]:
                self.long_ids.add(w["id"])
        rows = self.dump(final=True)
        self.print_table(rows)
        return 1 if any(r["status"] in ("FAIL", "timeout") for r in rows) else 0

    def _sigterm(self, *_):
        self.log("SIGTERM: stopping the workers, writing the table")
        self.stop = True
        self.deadline = min(self.deadline, time.time())


def build_main() -> int:
    # SIGTERM (the stage's timeout) must unwind: torch's build holds a lock file that a killed
    # build leaves behind, and every later load of the extension would wait on it forever
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("LINATTN_CUDA_VERBOSE", "1")
    if CPU:  # HARNESS_TEST_BUILD: pretend
        time.sleep(3)
        print("pretend build:", os.environ.get("HARNESS_TEST_BUILD"))
        return 0 if os.environ.get("HARNESS_TEST_BUILD") == "ok" else 1
    import torch

    from linattn.backends.cuda import loader

    t0 = time.time()
    try:
        loader.load(torch.device("cuda"))
    except Exception:
        traceback.print_exc()
        return 1
    print(f"cuda extension built/loaded in {time.time() - t0:.1f}s", flush=True)
    return 0


def selftest() -> int:
    """No GPU needed: every cell's draws (all phases) are valid Problems its backend declares
    it serves, at the sizes the GPU run uses; the plan covers every cell once."""
    import dataclasses

    import torch

    import linattn
    from linattn.testing import PROPERTIES, as_target

    bad, n, fam = [], 0, {}
    for name in ("triton", "triton_dense", "cuda"):
        b = dataclasses.replace(linattn.get_backend(name), available=lambda: None, devices=frozenset({DEVICE}))
        caps = caps_of(b)
        if name == "cuda":  # as under LINATTN_CUDA_FP32=1 on a GPU
            caps["dtypes"] = ["float16", "bfloat16", "float32"]
            b = dataclasses.replace(b, dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}))
        for d in DTYPES:
            for prop in PROPS:
                if _applicability(name, caps, prop, d, PROPERTIES, as_target):
                    continue
                fam.setdefault("cuda:all" if name == "cuda" else f"{name}:{d}", (cost(name, d), []))[1].append(
                    (name, prop, d))
                rng = random.Random(f"selftest/{name}/{prop}/{d}")
                for phase in [0, 1] + [2] * 40:
                    try:
                        p = draw_problem(rng, prop, caps, d, phase)
                    except Exception as e:
                        bad.append(f"{name}/{prop}/{d} phase {phase}: {type(e).__name__}: {e}")
                        continue
                    if p is None:
                        bad.append(f"{name}/{prop}/{d} phase {phase}: no problem")
                        continue
                    n += 1
                    why = b.unsupported(p.request())
                    if why:
                        bad.append(f"{name}/{prop}/{d}: unsupported {why}: {p.describe()}")
                    if p.B * p.H * p.N * p.M > MAX_NM or p.dtype != d:
                        bad.append(f"{name}/{prop}/{d}: too big or wrong dtype: {p.describe()}")
    for w in (14, 5, 2):
        got = sorted(c for _, cells in plan(fam, w) for c in cells)
        want = sorted(c for _, cells in fam.values() for c in cells)
        if got != want:
            bad.append(f"plan({w}) does not cover every cell exactly once")
    long_list = long_n_problems()
    for prop, p in long_list:
        if not CPU and p.N < 16384:
            bad.append(f"long-N problem below 16384: {p.describe()}")
    dts = [p.dtype for _, p in long_list]
    if "float32" in dts and any(d != "float32" for d in dts[dts.index("float32"):]):
        bad.append(f"long-N float32 problems are not last: {dts}")
    # every cell gets a first problem early: no worker holds more than ~70 s of first problems
    for w in (14,):
        for k, cells in plan(fam, w):
            first = sum(FIRST_S.get((c[0], c[2]), 0.0) for c in cells)
            if first > 70:
                bad.append(f"plan({w}): worker {k} holds {len(cells)} cells, {first:.0f}s of first problems")
    # the repros: parse, their cell's dtype, served by their backend, valid on this device
    backends = {name: dataclasses.replace(linattn.get_backend(name), available=lambda: None,
                                          devices=frozenset({DEVICE})) for name in ("triton", "triton_dense")}
    for c, rs in REPROS.items():
        for r in rs:
            try:
                p = for_this_device(parse_problem(r))
            except Exception as e:
                bad.append(f"repro {'/'.join(c)}: {type(e).__name__}: {e}")
                continue
            if repr(parse_problem(repr(p))) != repr(p) or repr(for_this_device(p)) != repr(p):
                bad.append(f"repro {'/'.join(c)}: repr does not round-trip: {p!r}")
            if p.dtype != c[2] or (not CPU and repr(p) != r):
                bad.append(f"repro {'/'.join(c)}: dtype or text changed: {p!r}")
            why = backends[c[0]].unsupported(p.request())
            if why:
                bad.append(f"repro {'/'.join(c)}: unsupported {why}")
    for text, want in [("triton/backward/float16,triton/state_split/float32/long",
                        ({("triton", "backward", "float16")}, {("triton", "state_split", "float32")})),
                       ("", None)]:
        if parse_cells(text) != want:
            bad.append(f"parse_cells({text!r}) = {parse_cells(text)}")
    for text in ("triton/backward", "tritn/backward/float16", "triton/backwards/float16", "triton/backward/fp16",
                 "cuda/forward/float16/long", ","):
        try:
            parse_cells(text)
            bad.append(f"parse_cells({text!r}) accepted")
        except ValueError:
            pass
    for text in ("Problem(B=__import__('os').getpid())", "Problem(1, 2)", "os.system('x')", "Problem(B=1"):
        try:
            parse_problem(text)
            bad.append(f"parse_problem({text!r}) accepted")
        except ValueError:
            pass
    print(f"selftest: {n} problems drawn for {sum(len(c) for _, c in fam.values())} cells; {len(bad)} problems")
    for x in bad[:40]:
        print("  ", x)
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--selftest":
        sys.exit(selftest())
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "--build":
        sys.exit(build_main())
    sys.exit(Parent().main())
