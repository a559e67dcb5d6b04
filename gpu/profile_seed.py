"""Where the time goes in the float32 seed example and the bf16 headline (triton_dense, cuda).

    python3 gpu/profile_seed.py        # ~60-90 s on an H100/H200; JSON to $OUT/profile_seed.json

For the seed problem (float32 B16 H12 N1024 D64, 0/1 mask [1,1,N,N], gradients of q, k, v)
it times forward and forward+backward of ``triton_dense`` under each float32 product mode
(tf32x3 = the default, tf32, ieee) and of ``reference``, the matmul rates of the card in
float32 (CUDA cores), TF32 and bf16 at 8192³, and the GPU time per kernel (torch.profiler)
of one forward+backward step of each. Then the bf16 headline (B4 H12 N4096 D64, mask
[1,1,N,N] with its gradient), which run 6 had no time left for. Each record names the card.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from _env import env  # noqa: E402  (gpu/, the script's own folder, is on sys.path)

T0 = time.time()
BUDGET_S = float(os.environ.get("PROFILE_BUDGET_S", "80"))
RES: dict = {"errors": [], "rows": []}


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save():
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "profile_seed.json"), "w") as f:
            json.dump(RES, f, indent=1, default=str)


def bench(fn, rep=30):
    import triton
    return triton.testing.do_bench(fn, warmup=3, rep=rep, return_mode="median")


def kernels(fn, steps=3, top=10):
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = getattr(e, "cuda_time_total", 0)
        if t > 0 and e.key and not e.key.startswith("ProfilerStep"):
            rows.append({"kernel": e.key[:110], "ms_per_step": t / 1e3 / steps, "calls_per_step": e.count / steps})
    rows.sort(key=lambda r: -r["ms_per_step"])
    return rows[:top]


def item(name, fn):
    if time.time() - T0 > BUDGET_S:
        log(f"skip {name} (budget)")
        return
    t = time.time()
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        RES["errors"].append({"item": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    log(f"  ({name}: {time.time() - t:.1f} s)")
    save()


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to do")
        return 0
    import linattn
    card = torch.cuda.get_device_name()
    RES["card"] = card
    log("card", card)
    dev, f32, bf16 = "cuda", torch.float32, torch.bfloat16

    def rates():
        n = 8192
        a = torch.randn(n, n, device=dev)
        b = torch.randn(n, n, device=dev)
        for label, dt, tf in (("fp32 cuda cores", f32, False), ("tf32", f32, True), ("bf16", bf16, False)):
            old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf
            try:
                x, y = a.to(dt), b.to(dt)
                ms = bench(lambda: x @ y, rep=20)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = old
            r = {"what": f"matmul {label} 8192^3", "ms": ms, "tflops": 2 * n ** 3 / ms / 1e9, "card": card}
            RES["rows"].append(r)
            log(r)

    only = [w for w in os.environ.get("PROFILE_ITEMS", "").split(",") if w]  # e.g. "headline"
    if not only or "rates" in only:
        item("rates", rates)

    B, H, N, D = 16, 12, 1024, 64
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=f32, generator=g).requires_grad_() for _ in range(3))
    m = torch.randint(0, 2, (1, 1, N, N), device=dev, generator=g).to(f32)
    do = torch.randn(B, H, N, D, device=dev, dtype=f32, generator=g)
    fl = 2 * B * H * N * N * 2 * D  # forward flops; fwd+bwd counted as 3x

    def fwd(be):
        return lambda: linattn.linear_attention(q.detach(), k.detach(), v.detach(), m, backend=be)

    def fb(be):
        return lambda: torch.autograd.grad(linattn.linear_attention(q, k, v, m, backend=be), (q, k, v), grad_outputs=do)

    def seed_mode(mode):
        def run():
            with env(LINATTN_TRITON_FP32_DOT=mode, LINATTN_TRITON_AUTOTUNE="1"):
                r = {"what": f"seed fp32 triton_dense {mode}", "card": card,
                     "fwd_ms": bench(fwd("triton_dense")), "fwdbwd_ms": bench(fb("triton_dense"))}
                r["fwd_tflops"] = fl / r["fwd_ms"] / 1e9
                r["fwdbwd_tflops"] = 3 * fl / r["fwdbwd_ms"] / 1e9
                r["kernels"] = kernels(fb("triton_dense"))
            RES["rows"].append(r)
            log({k_: v_ for k_, v_ in r.items() if k_ != "kernels"})
            for kr in r["kernels"]:
                log("    ", f"{kr['ms_per_step']:7.3f} ms x{kr['calls_per_step']:.0f}", kr["kernel"])
        return run

    def seed_ref():
        r = {"what": "seed fp32 reference", "card": card, "fwd_ms": bench(fwd("reference")),
             "fwdbwd_ms": bench(fb("reference")), "kernels": kernels(fb("reference"))}
        RES["rows"].append(r)
        log({k_: v_ for k_, v_ in r.items() if k_ != "kernels"})
        for kr in r["kernels"]:
            log("    ", f"{kr['ms_per_step']:7.3f} ms x{kr['calls_per_step']:.0f}", kr["kernel"])

    if not only or "seed" in only:
        item("seed reference", seed_ref)
        for mode in ("tf32x3", "tf32", "ieee"):
            item(f"seed {mode}", seed_mode(mode))

    def headline():
        B, H, N, D = 4, 12, 4096, 64
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=bf16, generator=g) / 3 for _ in range(3))
        mk = torch.randn(1, 1, N, N, device=dev, dtype=bf16, generator=g)
        do = torch.randn(B, H, N, D, device=dev, dtype=bf16, generator=g)
        leaves = [t.detach().requires_grad_() for t in (q, k, v, mk)]
        for be, maskt in (("triton_dense", "off"), ("triton_dense", "on"), ("reference", "off")):
            with env(LINATTN_TRITON_AUTOTUNE="1", LINATTN_TRITON_DENSE_MASKT=maskt):
                r = {"what": f"headline bf16 B4 H12 N4096 D64 mask[1,1,N,N] {be} maskT={maskt}", "card": card,
                     "fwd_ms": bench(lambda: linattn.linear_attention(q, k, v, mk, backend=be)),
                     "fwdbwd_dm_ms": bench(lambda: torch.autograd.grad(
                         linattn.linear_attention(*leaves, backend=be), leaves, grad_outputs=do))}
            RES["rows"].append(r)
            log(r)

    if not only or "headline" in only:
        item("headline", headline)
    save()
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    except Exception as e:  # noqa: BLE001 - never die without the JSON
        traceback.print_exc()
        RES["errors"].append({"item": "main", "error": str(e)[:300]})
        save()
        rc = 2
    sys.exit(rc)
