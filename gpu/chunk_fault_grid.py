"""Numerical checks of the float16 one-chunk fault (issue 5) across tile variants, in child processes.

    python3 gpu/chunk_fault_grid.py            # parent: one child per variant, in parallel
    python3 gpu/chunk_fault_grid.py --child V  # one variant (a LINATTN_CHUNK string)

Run 10/11 found backend ``triton`` float16 B3 H2 N7 D17 E60 (decay, slopes' gradient, initial
state) with dslopes 64x its band on the H200, and compute-sanitizer put an out-of-bounds
shared-memory read in the backward kernels; the same problem passes under the interpreter.
Each child runs the property ``backward`` on that problem and its neighbours (N = 7 .. 130,
D = 17 / 32, float16 and bfloat16) under one tile variant and prints one line per problem:
the worst band fraction and the quantity; a child that dies (a fault poisons its CUDA
context) is reported with its last lines. The parent prints a table: variant x problem.
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("LINATTN_TRITON_AUTOTUNE", "0")

VARIANTS = ["", "bwd_fuse=1", "bwd_fuse=-1", "bwd_bk=64", "bwd_bk=16", "bwd_stages=1", "bwd_warps=8",
            "bwd_fuse=1,bwd_bk=64"]


def problems():
    from linattn.testing import Problem

    base = Problem(B=3, H=2, Hkv=2, N=7, M=7, D=17, E=60, dtype='float16', device='cuda', mask_kind='decay',
                   mask_shape='BHNM', mask_values='binary', slopes='mixed', scale=2.0, initial_state=True,
                   final_state=False, grads=('q', 'k', 'v', 'slopes', 'initial_state'), cu_seqlens=None,
                   seed=150573592)
    out = [base]
    for dtype in ("float16", "bfloat16"):
        for N in (7, 40, 64, 65, 130):
            for D in (17, 32):
                for seed in (1, 2):
                    p = base.replace(dtype=dtype, N=N, M=N, D=D, seed=seed)
                    out.append(p)
    out.append(base.replace(initial_state=False, grads=('q', 'k', 'v', 'slopes')))
    out.append(base.replace(grads=('q', 'k', 'v', 'initial_state')))
    return out


def child(variant):
    os.environ["LINATTN_CHUNK"] = variant
    import torch

    from linattn.testing.properties import run_property

    for i, p in enumerate(problems()):
        t0 = time.time()
        try:
            r = run_property("backward", "triton", p)
            torch.cuda.synchronize()
            w = max(r.measurements, key=lambda m: m.fraction)
            rec = dict(i=i, ok=bool(r.ok), worst=w.quantity, fraction=w.fraction, s=round(time.time() - t0, 1))
        except Exception as e:  # noqa: BLE001
            rec = dict(i=i, ok=False, error=f"{type(e).__name__}: {str(e)[:200]}")
        rec["problem"] = p.describe()
        print("REC " + json.dumps(rec), flush=True)


def main():
    out = os.environ.get("OUT", "/tmp")
    procs = {}
    for v in VARIANTS:
        procs[v] = subprocess.Popen([sys.executable, __file__, "--child", v], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
    table = {}
    for v, pr in procs.items():
        try:
            text, _ = pr.communicate(timeout=float(os.environ.get("GRID_TIMEOUT_S", "240")))
        except subprocess.TimeoutExpired:
            pr.kill()
            text, _ = pr.communicate()
        recs = [json.loads(line[4:]) for line in text.splitlines() if line.startswith("REC ")]
        table[v] = dict(rc=pr.returncode, recs=recs, tail=text.splitlines()[-8:] if pr.returncode else [])
        bad = [r for r in recs if not r["ok"]]
        print(f"variant {v!r}: rc={pr.returncode} ran {len(recs)} problems, {len(bad)} failing", flush=True)
        for r in bad:
            print("   FAIL", r.get("problem"), r.get("worst"), r.get("fraction"), r.get("error", ""), flush=True)
        if pr.returncode:
            print("   tail:", *table[v]["tail"], sep="\n     ")
    with open(os.path.join(out, "chunk_fault_grid.json"), "w") as f:
        json.dump(table, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
