"""Locate what goes wrong with LINATTN_TRITON_FP32_DOT=f16x3 in the dense forward on a GPU.

Each (shape, tile config, A/B mode) runs in its own process (an illegal address poisons the
CUDA context), several at a time; each prints one line: relative error against float64,
whether the output is finite, or the CUDA error. Then one failing case under compute-sanitizer
memcheck, its compiled kernel kept in $OUT.

Run 29 (docs/gpu-runs/run29-h200/hunt.log) ran this at commit bb327ca, where common.py also had
A/B modes (LINATTN_TRITON_F16X3_AB: "noscale", no power-of-two scaling; "tf32dot", the same
halves as TF32 products); they are gone, and since the fix (channel tiles >= 64 for f16x3,
dense_fwd.channel_tiles) the narrow-E problems below pass: this script now checks that.

    python gpu/f16x3_hunt.py            # the driver
    python gpu/f16x3_hunt.py worker '<json>'
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.environ.get("OUT", "/tmp/linattn-out")


def worker(spec):
    sys.path.insert(0, ROOT)
    import torch
    from linattn.backends.triton.dense_fwd import dense_forward
    from linattn.backends.triton import dense_bwd
    B, H, Hkv, N, D, E = spec["shape"]
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(B, H, N, D, generator=g, device="cuda", dtype=torch.float64)
    k = torch.randn(B, Hkv, N, D, generator=g, device="cuda", dtype=torch.float64)
    v = torch.randn(B, Hkv, N, E, generator=g, device="cuda", dtype=torch.float64)
    mask = torch.randn(1, H, N, N, generator=g, device="cuda", dtype=torch.float64) if spec.get("mask") else None
    causal = bool(spec.get("causal"))
    G = H // Hkv
    kk, vv = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    w = torch.ones(N, N, device="cuda", dtype=torch.float64)
    if causal:
        w = torch.tril(w)
    if mask is not None:
        w = w * mask
    want = ((q @ kk.transpose(-1, -2)) * w) @ vv
    cfg = tuple(spec["cfg"]) if spec.get("cfg") else None
    o = dense_forward(q.float(), k.float(), v.float(), None if mask is None else mask.float(), None, causal, 1.0,
                      config=cfg)
    torch.cuda.synchronize()
    o = o.double()
    d = (o - want).abs()
    bad = (d > 1e-3 * want.abs().max()).nonzero()
    where = sorted({tuple(x) for x in bad[:, 2:3].div(16, rounding_mode="floor").tolist()})[:6] if len(bad) else []
    print(json.dumps(dict(err=d.max().item() / want.abs().max().item(), finite=bool(torch.isfinite(o).all().item()),
                          bad=int(bad.shape[0]), rows16=where)))


def launch(spec, extra_env=None, prefix=()):
    env = dict(os.environ, LINATTN_TRITON_FP32_DOT=spec.get("prec", "f16x3"),
               LINATTN_TRITON_AUTOTUNE="0", CUDA_LAUNCH_BLOCKING="1", PYTHONWARNINGS="ignore")
    env.update(extra_env or {})
    r = subprocess.run([*prefix, sys.executable, __file__, "worker", json.dumps(spec)], env=env,
                       capture_output=True, text=True, timeout=240)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode == 0 and lines:
        res = json.loads(lines[-1])
        return f"err {res['err']:.2e} finite={res['finite']} bad={res['bad']} rows/16={res['rows16']}", r
    tail = (r.stderr or r.stdout).strip().splitlines()
    msg = next((ln for ln in tail if "Error" in ln or "error" in ln), tail[-1] if tail else "?")
    return f"rc={r.returncode} {msg[:160]}", r


def main():
    shapes = {
        "N255E16": dict(shape=(2, 4, 2, 255, 64, 16)),
        "N256E16": dict(shape=(2, 4, 2, 256, 64, 16)),
        "N256E32": dict(shape=(2, 4, 2, 256, 64, 32)),
        "N255E64": dict(shape=(2, 4, 2, 255, 64, 64)),
        "N256E64": dict(shape=(2, 4, 2, 256, 64, 64)),
        "N256E64c": dict(shape=(2, 4, 2, 256, 64, 64), causal=True, mask=True),
        "N256E32c": dict(shape=(2, 4, 2, 256, 64, 32), causal=True, mask=True),
    }
    cfgs = [(128, 64, 8, 3), (128, 64, 8, 1), (64, 64, 4, 3), (64, 64, 4, 1), (128, 64, 4, 3), (64, 32, 4, 2)]
    jobs = []
    for name, sp in shapes.items():
        for cfg in cfgs:
            jobs.append((name, dict(sp, cfg=cfg)))
    for name in ("N255E16", "N256E32c"):
        jobs.append((name, dict(shapes[name], cfg=cfgs[0], prec="tf32x3")))
    with ThreadPoolExecutor(6) as ex:
        futs = [(n, sp, ex.submit(launch, sp)) for n, sp in jobs]
        for n, sp, f in futs:
            try:
                line = f.result()[0]
            except Exception as e:  # noqa: BLE001
                line = f"driver error {e!r}"
            print(f"{n:9s} {sp.get('prec', 'f16x3'):6s} cfg={sp['cfg']}: {line}", flush=True)
    # the first failing case under memcheck, kernel kept
    for name in ("N255E16", "N256E32c"):
        cache = os.path.join(OUT, f"tcache_{name}")
        line, r = launch(dict(shapes[name], cfg=cfgs[0]), {"TRITON_CACHE_DIR": cache},
                         prefix=("compute-sanitizer", "--tool", "memcheck", "--print-limit", "6"))
        print(f"memcheck {name}: {line}")
        print((r.stdout + r.stderr)[-5000:], flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        worker(json.loads(sys.argv[2]))
    else:
        main()
