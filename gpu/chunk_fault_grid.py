"""The chunk backward's GPU-only faults (issue 5) across variants: one process per check.

    python3 gpu/chunk_fault_grid.py            # parent: every (variant, problem, property), 8 at a time
    GRID_VARIANTS="+bwd_stages=2" python3 gpu/chunk_fault_grid.py   # variants joined by "+"
    python3 gpu/chunk_fault_grid.py --child V I PROP

Run 16 (an earlier version of this grid, one child per variant) showed that a fault poisons
the CUDA context, so every later problem of that child fails too: here every check runs in
its own process (Triton's disk cache makes the repeats cheap). A variant is a LINATTN_CHUNK
string, optionally followed by ``|NAME=value`` environment settings.

Problems: run 10's float16 N = 7 one-chunk problem (slopes' gradient, initial state) and
neighbours, and run 16's float16 D = 3, E = 128 causal problem whose dq and dk came out
wrong (batch_invariance) on the GPU while the interpreter passes it.
"""
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("LINATTN_TRITON_AUTOTUNE", "0")

VARIANTS = [x for x in os.environ.get("GRID_VARIANTS", "+bwd_stages=2,fwd_stages=2,state_stages=2").split("+")]


def problems():
    from linattn.testing import Problem

    n7 = Problem(B=3, H=2, Hkv=2, N=7, M=7, D=17, E=60, dtype='float16', device='cuda', mask_kind='decay',
                 mask_shape='BHNM', mask_values='binary', slopes='mixed', scale=2.0, initial_state=True,
                 final_state=False, grads=('q', 'k', 'v', 'slopes', 'initial_state'), cu_seqlens=None,
                 seed=150573592)
    d3 = Problem(B=2, H=6, Hkv=2, N=65, M=65, D=3, E=128, dtype='float16', device='cuda', mask_kind='causal',
                 mask_shape='NM', mask_values='real', slopes='large', scale=0.5, initial_state=False,
                 final_state=False, grads=('q', 'k', 'v'), cu_seqlens=None, seed=1755817294)
    return [
        (n7, "backward"),
        (n7.replace(dtype="bfloat16"), "backward"),
        (n7.replace(N=40, M=40, seed=1), "backward"),
        (n7.replace(N=64, M=64, D=32, seed=2), "backward"),
        (n7.replace(N=130, M=130, D=48, E=64, seed=3, dtype="bfloat16"), "backward"),
        (d3, "batch_invariance"),
        (d3, "backward"),
        (d3.replace(dtype="bfloat16"), "batch_invariance"),
        (d3.replace(D=16, seed=4), "backward"),
        (Problem(B=1, H=2, Hkv=1, N=257, M=257, D=3, E=63, dtype='float16', device='cuda', mask_kind='decay',
                 mask_shape='NM', mask_values='real', slopes='zero', scale=0.125, initial_state=False,
                 final_state=True, grads=('q', 'k', 'v', 'slopes'), cu_seqlens=(0, 142, 257), seed=49495136),
         "causality"),
        (d3.replace(D=65, E=17, N=300, M=300, dtype="bfloat16", mask_kind="decay", seed=6), "backward"),
    ]


def child(variant, i, prop):
    cfg, _, envs = variant.partition("|")
    os.environ["LINATTN_CHUNK"] = cfg
    for kv in filter(None, envs.split(",")):
        k, _, v = kv.partition("=")
        os.environ[k] = v
    import torch

    from linattn.testing.properties import run_property

    p = problems()[i][0]
    try:
        r = run_property(prop, "triton", p)
        torch.cuda.synchronize()
        w = max(r.measurements, key=lambda m: m.fraction)
        rec = dict(ok=bool(r.ok), worst=w.quantity, fraction=round(w.fraction, 3))
    except Exception as e:  # noqa: BLE001
        rec = dict(ok=False, error=f"{type(e).__name__}: {str(e)[:120]}")
    print("REC " + json.dumps(rec), flush=True)


def run_one(args):
    v, i, prop = args
    t0 = time.time()
    try:
        pr = subprocess.run([sys.executable, __file__, "--child", v, str(i), prop], capture_output=True, text=True,
                            timeout=float(os.environ.get("GRID_CHECK_TIMEOUT_S", "120")))
        recs = [json.loads(x[4:]) for x in pr.stdout.splitlines() if x.startswith("REC ")]
        rec = recs[0] if recs else dict(ok=False, error="no record: " + (pr.stderr or "")[-300:])
    except subprocess.TimeoutExpired:
        rec = dict(ok=False, error="timeout")
    rec.update(variant=v, i=i, prop=prop, s=round(time.time() - t0, 1))
    return rec


def main():
    out = os.environ.get("OUT", "/tmp")
    probs = problems()
    jobs = [(v, i, prop) for i, (_, prop) in enumerate(probs) for v in VARIANTS]
    with ThreadPoolExecutor(int(os.environ.get("GRID_PARALLEL", "8"))) as ex:
        recs = list(ex.map(run_one, jobs))
    for i, (p, prop) in enumerate(probs):
        print(f"[{i}] {prop} {p.describe()}")
        for r in (r for r in recs if r["i"] == i):
            res = f"ok {r['worst']} {r['fraction']}" if r["ok"] else \
                (f"FAIL {r['worst']} {r['fraction']}" if "worst" in r else "FAIL " + r.get("error", ""))
            print(f"    {r['variant'] or '(defaults)':45s} {res}  ({r['s']} s)", flush=True)
    with open(os.path.join(out, "chunk_fault_grid.json"), "w") as f:
        json.dump(recs, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
