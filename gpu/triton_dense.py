"""GPU check and timing of backend ``triton_dense`` (issue 4), v3, budget-aware.

    TRITON_DENSE_BUDGET_S=100 OUT=/some/dir python3 gpu/triton_dense.py     # H100/H200
    TRITON_INTERPRET=1 TRITON_DENSE_SMOKE=1 python3 gpu/triton_dense.py      # CPU, toy sizes

Items, most important first (each is skipped when too little of the budget is left, and
each catches its own failure; a watchdog ends the process 60 s after the budget):

1. Correctness on the GPU against the float64 reference, o and every gradient, of each path
   v3 changed: the fused causal/decay backward (bf16, odd N = 1000 and 8191, GQA, slopes
   gradient, dense x decay with the dM kernel), the float32 split backward, a dense mask in
   float32 and bf16 -- all through the new eager (autograd.Function) path.
   float32 within 1e-4 of max|x|; 16-bit within 4x the error of the same formula computed
   with plain torch ops in that dtype (+1e-6 max|x|).
2. bf16 B1 H8 N8192 D=E=64, causal and decay in-kernel against the same mask as a tensor
   ([1,1,N,N] causal, [1,H,N,N] decay) in the same run: fwd and fwd+bwd (q, k, v grads),
   median ms of triton.testing.do_bench through linattn.linear_attention ("wall": what a
   caller sees, host time included), and of the bare kernel calls replayed from a CUDA graph
   ("gpu": device time only). Paths: v3 default (eager op, fused backward, 64x32 tiles), the
   tensor mask (same kernels as v2), v2 exactly (custom-op host path, split backward, its
   64x64 dk/dv tiles), and v3 split (split kernels, dk/dv 64x32, eager op). Fixed tiles
   (LINATTN_TRITON_AUTOTUNE=0) on every side.
3. The seed example, float32 B16 H12 N1024 D64 0/1 mask [1,1,N,N], fwd+bwd (q, k, v grads),
   autotuned, the default float32 products (f16x3 since run 31; tf32x3 before): ms and peak memory against `reference`.
4. bf16 B4 H12 N4096 D64 mask [1,1,N,N], autotuned: fwd and fwd+bwd with the mask gradient
   against `reference`, extra memory.

Every figure carries the card's name; TFLOP/s are given against the bf16 8192^3 matmul rate
measured in the same run. $OUT/triton_dense.json is rewritten after every item.
"""
from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
import traceback

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from _env import env  # noqa: E402  (gpu/, the script's own folder, is on sys.path)

T0 = time.time()
BUDGET_S = float(os.environ.get("TRITON_DENSE_BUDGET_S", "100"))
SMOKE = os.environ.get("TRITON_DENSE_SMOKE") == "1"
OUT = os.environ.get("OUT")
RESULTS: dict = {"version": "v3", "budget_s": BUDGET_S, "card": None, "checks": [], "timings": {}, "errors": []}
SUMMARY: list = []
CARD = "?"

# never hang: dump every thread's stack and exit a minute after the budget
faulthandler.dump_traceback_later(BUDGET_S + 60, exit=True)


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def left():
    return BUDGET_S - (time.time() - T0)


def save():
    if not OUT:
        return
    try:
        os.makedirs(OUT, exist_ok=True)
        RESULTS["elapsed_s"] = round(time.time() - T0, 1)
        tmp = os.path.join(OUT, "triton_dense.json.tmp")
        with open(tmp, "w") as fh:
            json.dump(RESULTS, fh, indent=1, default=str)
        os.replace(tmp, os.path.join(OUT, "triton_dense.json"))
    except Exception as e:  # noqa: BLE001
        log(f"could not write JSON: {e}")


def item(name, fn, *, need_s=0.0):
    """Run one item unless fewer than ``need_s`` seconds of the budget are left; record
    any failure and go on."""
    if left() < need_s:
        log(f"SKIP {name}: {left():.0f} s left, needs ~{need_s:.0f}")
        RESULTS["errors"].append({"item": name, "error": "skipped: time budget"})
        SUMMARY.append((name, "skipped (time)"))
        save()
        return None
    t = time.time()
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {str(e)[:400]}"
        log(f"FAIL {name}: {msg}")
        traceback.print_exc(limit=4)
        RESULTS["errors"].append({"item": name, "error": msg})
        SUMMARY.append((name, "ERROR " + msg[:90]))
        return None
    finally:
        log(f"  ({name}: {time.time() - t:.1f} s)")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        save()




def main():
    global CARD
    if not torch.cuda.is_available() and not SMOKE:
        print("no CUDA device: nothing to do (TRITON_INTERPRET=1 TRITON_DENSE_SMOKE=1 runs a CPU smoke test)")
        return 1
    import triton

    import linattn
    from linattn.backends._common import effective_mask, expand_kv
    from linattn.backends.triton import dense_bwd
    from linattn.backends.triton.dense_fwd import dense_forward

    dev = "cpu" if SMOKE else "cuda"
    if SMOKE:
        CARD = "cpu (smoke test, interpreter)"
        RESULTS["card"] = {"name": CARD, "torch": torch.__version__, "triton": triton.__version__}
    else:
        props = torch.cuda.get_device_properties(0)
        CARD = torch.cuda.get_device_name()
        RESULTS["card"] = {"name": CARD, "sms": props.multi_processor_count,
                           "memory_gib": round(props.total_memory / 2**30, 1),
                           "torch": torch.__version__, "triton": triton.__version__}
    log("card:", RESULTS["card"], f"budget {BUDGET_S:.0f} s")
    f32, bf16 = torch.float32, torch.bfloat16
    # (B, H, N, D) of the timed shapes; toy ones in smoke mode
    SZ = dict(long=(1, 8, 8192, 64), seed=(16, 12, 1024, 64), head=(4, 12, 4096, 64), mm=8192)
    if SMOKE:
        SZ = dict(long=(1, 2, 48, 16), seed=(1, 2, 40, 16), head=(1, 2, 40, 16), mm=64)

    def sync():
        if not SMOKE:
            torch.cuda.synchronize()

    def bench(fn, rep=40):
        """Median ms of ``fn`` (do_bench; host time included where the host is slower)."""
        if SMOKE:
            fn()
            t = time.time()
            fn()
            return (time.time() - t) * 1e3
        return triton.testing.do_bench(fn, warmup=5, rep=rep, return_mode="median")

    def bench_graph(fn, rep=40):
        """Median ms of ``fn`` replayed from a CUDA graph: device time, no host overhead."""
        if SMOKE:
            return bench(fn)
        fn()
        sync()
        return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median")

    def host_ms(fn, n=10):
        """Host time to issue one call (no synchronisation inside the loop)."""
        fn()
        sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        h = (time.perf_counter() - t) / n * 1e3
        sync()
        return h

    def tf(flops, ms):
        return flops / ms / 1e9

    peak = [float("nan")]

    # ------------------------------------------------------------------ 1. correctness
    def problem(B, H, Hkv, N, D, E, ms, decay, seed=0):
        g = torch.Generator(device=dev).manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, device=dev, dtype=torch.float64)  # noqa: E731
        return dict(q=r(B, H, N, D), k=r(B, Hkv, N, D), v=r(B, Hkv, N, E), mask=r(*ms) if ms else None,
                    decay=(0.005 + 0.3 * torch.rand(H, generator=g, device=dev, dtype=torch.float64)) if decay else None,
                    do=r(B, H, N, E))

    def run_api(p, dtype, backend, causal, scale=0.5):
        leaves = {}
        for n in ("q", "k", "v", "mask", "decay"):
            if p[n] is not None:
                want = dtype if n != "decay" else (torch.float64 if dtype == torch.float64 else torch.float32)
                leaves[n] = p[n].to(want).requires_grad_()
        o = linattn.linear_attention(leaves["q"], leaves["k"], leaves["v"], leaves.get("mask"), causal=causal,
                                     decay=leaves.get("decay"), scale=scale, backend=backend)
        gs = torch.autograd.grad((o.double() * p["do"]).sum(), list(leaves.values()))
        out = {"o": o.detach().double()}
        out.update({f"d{n}": g.detach().double() for n, g in zip(leaves, gs)})
        return out

    def naive(p, dtype, causal, scale=0.5):
        names = ["q", "k", "v", "mask", "decay"]
        lv = [p[n].to(dtype if n != "decay" else torch.float32).requires_grad_() if p[n] is not None else None
              for n in names]
        q, k, v, m, s = lv
        W = effective_mask(q.shape[2], k.shape[2], m, causal or s is not None, s, dtype, q.device)
        A = q @ expand_kv(k, q.shape[1]).transpose(-1, -2)
        o = ((A if W is None else A * W) @ expand_kv(v, q.shape[1])) * scale
        used = [(n, t) for n, t in zip(names, lv) if t is not None]
        gs = torch.autograd.grad((o.double() * p["do"]).sum(), [t for _, t in used])
        out = {"o": o.detach().double()}
        out.update({f"d{n}": g.double() for (n, _), g in zip(used, gs)})
        return out

    def check(case, mode="auto"):
        dtype, B, H, Hkv, N, D, E, ms, causal, decay = case
        if SMOKE:
            N = min(N, 40)
            ms = (ms[0], ms[1], N, N) if ms else None
        name = (f"{str(dtype)[6:]} B{B} H{H} Hkv{Hkv} N{N} D{D} E{E} mask{list(ms[:2]) if ms else '-'}"
                f"{' causal' if causal and not decay else ''}{' decay' if decay else ''} bwd={mode}")
        t = time.time()
        p = problem(B, H, Hkv, N, D, E, ms, decay)
        launched = []
        orig = dense_bwd.launch

        def spy(kernel, *a, **kw):
            launched.append(getattr(getattr(kernel, "fn", None), "__name__", str(kernel)))
            return orig(kernel, *a, **kw)

        dense_bwd.launch = spy
        try:
            with env(LINATTN_TRITON_DENSE_BWD=mode, LINATTN_TRITON_AUTOTUNE="0"):
                got = run_api(p, dtype, "triton_dense", causal)
        finally:
            dense_bwd.launch = orig
        want = run_api(p, torch.float64, "reference", causal)
        low = naive(p, dtype, causal) if dtype != f32 else None
        worst, ok, errs = 0.0, True, {}
        for n, w in want.items():
            sw = max(w.abs().max().item(), 1e-30)
            err = (got[n] - w).abs().max().item()
            if dtype == f32:
                ratio = err / (1e-4 * sw)
            else:
                ratio = err / (4 * (low[n] - w).abs().max().item() + 1e-6 * sw)
            errs[n] = {"rel_err": err / sw, "band_ratio": ratio}
            ok &= bool(ratio <= 1.0)
            worst = max(worst, ratio)
        RESULTS["checks"].append({"case": name, "pass": ok, "kernels": launched, "errors": errs, "card": CARD,
                                  "s": round(time.time() - t, 1)})
        log(("PASS " if ok else "FAIL ") + name, f"worst band ratio {worst:.2f}", launched,
            " ".join(f"{n}:{e['rel_err']:.1e}" for n, e in errs.items()))
        del p, got, want, low
        return ok

    # dtype, B, H, Hkv, N, D, E, mask shape, causal, decay
    cases = [
        ((bf16, 1, 4, 2, 1000, 64, 64, None, True, False), "auto"),  # fused, causal, GQA, odd N
        ((bf16, 1, 4, 4, 8191, 64, 64, None, True, True), "auto"),  # fused, decay + slopes grad, N = 8191
        ((f32, 2, 4, 2, 1000, 64, 64, None, True, True), "auto"),  # float32: split kernels (v2), eager op
        ((bf16, 1, 4, 2, 1000, 64, 64, (1, 1, 1000, 1000), True, True), "auto"),  # fused + dM kernel
        ((f32, 1, 4, 2, 1000, 64, 64, (1, 1, 1000, 1000), False, False), "auto"),  # dense mask, float32
        ((bf16, 2, 4, 4, 1000, 64, 64, (1, 1, 1000, 1000), False, False), "auto"),  # dense mask, bf16
        ((f32, 1, 4, 2, 8191, 64, 64, None, True, False), "auto"),  # float32 causal at N = 8191
        ((f32, 1, 2, 1, 1000, 64, 64, None, True, True), "fused"),  # the fused program in float32 (not default)
    ]
    for i, (c, mode) in enumerate(cases):
        # the first three always (budget permitting), the rest only while the run is early
        item(f"check {i}", lambda c=c, mode=mode: check(c, mode), need_s=(8 if i < 3 else (0.55 if i < 6 else 0.75) * BUDGET_S))

    # ------------------------------------------------------------------ matmul rate
    def matmul_rate():
        n = SZ["mm"]
        a = torch.randn(n, n, device=dev, dtype=bf16)
        b = torch.randn(n, n, device=dev, dtype=bf16)
        ms = bench(lambda: a @ b)
        peak[0] = 2 * n**3 / ms / 1e9
        RESULTS["timings"]["matmul_bf16_8192"] = {"ms": ms, "tflops": peak[0], "card": CARD}
        log(f"bf16 matmul {n}^3: {ms:.3f} ms = {peak[0]:.0f} TFLOP/s")

    item("matmul rate", matmul_rate, need_s=3)

    # ------------------------------------------------------------------ 2. causal / decay at N = 8192
    def long_inputs():
        B, H, N, D = SZ["long"]
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=bf16, generator=g) / 3 for _ in range(3))
        do = torch.randn(B, H, N, D, device=dev, dtype=bf16, generator=g)
        s = linattn.tnl_slopes(H).to(dev).float() if hasattr(linattn, "tnl_slopes") else torch.full((H,), 0.05, device=dev)
        return B, H, N, D, q, k, v, do, s

    def time_kind(kind):
        B, H, N, D, q, k, v, do, s = long_inputs()
        i = torch.arange(N, device=dev)
        dist = (i[:, None] - i[None, :]).float()
        if kind == "causal":
            kw_in, mask_t, slopes = dict(causal=True), (dist >= 0).to(bf16)[None, None], None
        else:
            kw_in, slopes = dict(decay=s), s
            mask_t = (torch.exp(-s[:, None, None] * dist.clamp(min=0)) * (dist >= 0)).to(bf16)[None]  # [1, H, N, N]
        del dist, i
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        fl = 2 * B * H * N * N * 2 * D / 2  # causal half of q kᵀ and (A ⊙ W) v
        res = {"shape": f"bf16 B{B} H{H} N{N} D=E={D} {kind}", "card": CARD, "flops_fwd": fl,
               "note": "wall = do_bench through linear_attention; gpu = bare kernels replayed from a CUDA graph"}
        T = RESULTS["timings"].setdefault(f"{kind}_8192", res)

        def api(mask, kw):
            return lambda: linattn.linear_attention(q, k, v, mask, backend="triton_dense", **kw)

        def api_fb(mask, kw):
            return lambda: torch.autograd.grad(
                linattn.linear_attention(*leaves, mask, backend="triton_dense", **kw), leaves, do)

        def bare(mask, sl, causal, bwd=True):
            def f():
                o = dense_forward(q, k, v, mask, sl, causal, 1.0)
                if bwd:
                    dense_bwd.dense_backward(do, q, k, v, mask, sl, causal, 1.0, need_dq=True,
                                             need_dkv=(True, True), need_dmask=False, need_dslopes=False)
                return o
            return f

        v2_dkdv = (64, 64, 4, 3)  # v2's fixed dk/dv tiles (serialised wgmma for causal/decay)
        paths = [  # label, env, mask, kwargs for the API, (mask, slopes, causal) for the bare calls, v2 tiles
            ("in_kernel_v3", dict(LINATTN_TRITON_DENSE_BWD="auto"), None, kw_in, (None, slopes, True), False),
            ("tensor", dict(LINATTN_TRITON_DENSE_BWD="auto"), mask_t, {}, (mask_t, None, False), False),
            ("in_kernel_v2", dict(LINATTN_TRITON_DENSE_BWD="split", LINATTN_TRITON_DENSE_OP="custom_op"),
             None, kw_in, (None, slopes, True), True),
            ("in_kernel_split", dict(LINATTN_TRITON_DENSE_BWD="split"), None, kw_in, (None, slopes, True), False),
        ]
        for label, ev, mask, kw, bare_args, v2_tiles in paths:
            if left() < 6:
                log(f"{kind} {label}: skipped (time)")
                continue
            saved = dense_bwd.DKDV_CAUSAL_FIXED_GPU
            with env(LINATTN_TRITON_AUTOTUNE="0", **ev):
                r = {}
                try:
                    if v2_tiles:
                        dense_bwd.DKDV_CAUSAL_FIXED_GPU = v2_dkdv
                    r["fwd_ms"] = bench(api(mask, kw))
                    r["fwdbwd_ms"] = bench(api_fb(mask, kw))
                    r["host_fwdbwd_ms"] = host_ms(api_fb(mask, kw))
                    r["gpu_fwd_ms"] = bench_graph(bare(*bare_args, bwd=False))
                    r["gpu_fwdbwd_ms"] = bench_graph(bare(*bare_args))
                except Exception as e:  # noqa: BLE001
                    r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    log(f"{kind} {label}: {r['error']}")
                finally:
                    dense_bwd.DKDV_CAUSAL_FIXED_GPU = saved
                T[label] = r
                log(f"{kind} {label}: " + ", ".join(f"{n} {x:.3f}" for n, x in r.items() if isinstance(x, float)))
                save()
        base, new = T.get("tensor", {}), T.get("in_kernel_v3", {})
        for key in ("fwd_ms", "fwdbwd_ms", "gpu_fwd_ms", "gpu_fwdbwd_ms"):
            if key in base and key in new:
                T[f"speedup_{key}"] = base[key] / new[key]
        if "gpu_fwd_ms" in new:
            T["in_kernel_v3_gpu_fwd_tflops"] = tf(fl, new["gpu_fwd_ms"])
        if "gpu_fwdbwd_ms" in new:
            T["in_kernel_v3_gpu_fwdbwd_tflops"] = tf(3 * fl, new["gpu_fwdbwd_ms"])  # bwd = 2x fwd algorithmically
        txt = "; ".join(f"{k[8:]} {T[k]:.2f}x" for k in T if k.startswith("speedup_"))
        for other in ("in_kernel_v2", "in_kernel_split"):
            o2 = T.get(other, {})
            for key in ("fwdbwd_ms", "gpu_fwdbwd_ms"):
                if key in o2 and key in new:
                    txt += f"; {key} v3 {new[key]:.3f} vs {other[10:]} {o2[key]:.3f}"
        SUMMARY.append((f"{kind} N8192 H8 D64 bf16 vs tensor (target 1.5x)", txt or "no figures"))
        del mask_t

    item("causal N8192", lambda: time_kind("causal"), need_s=15)
    item("decay N8192", lambda: time_kind("decay"), need_s=15)

    # ------------------------------------------------------------------ 3. seed fp32
    def mem_peak(fn):
        if SMOKE:
            fn()
            return 0
        sync()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        res = fn()
        sync()
        pk = torch.cuda.max_memory_allocated() - base
        del res
        return pk

    def nbytes(*ts):
        return sum(t.numel() * t.element_size() for t in ts)

    def seed():
        B, H, N, D = SZ["seed"]
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=f32, generator=g).requires_grad_() for _ in range(3))
        m = torch.randint(0, 2, (1, 1, N, N), device=dev, generator=g).to(f32)
        do = torch.randn(B, H, N, D, device=dev, dtype=f32, generator=g)
        from linattn.backends.triton.dense_fwd import dot_precision
        res = {"shape": f"float32 B{B} H{H} N{N} D{D} 0/1 mask[1,1,N,N] fwd+bwd (q, k, v grads), autotuned, "
                        f"float32 products {dot_precision(torch.float32)}",
               "card": CARD}
        RESULTS["timings"]["seed_fp32"] = res

        def fb(be):
            o = linattn.linear_attention(q, k, v, m, backend=be)
            return torch.autograd.grad(o, (q, k, v), grad_outputs=do)

        with env(LINATTN_TRITON_AUTOTUNE="1"):
            for be in ("triton_dense", "reference"):
                res[f"{be}_ms"] = bench(lambda be=be: fb(be))
                res[f"{be}_peak_bytes"] = mem_peak(lambda be=be: fb(be)) + nbytes(q, k, v, m, do)
                log(f"seed fp32 {be}: {res[f'{be}_ms']:.3f} ms, peak {res[f'{be}_peak_bytes'] / 2**20:.0f} MiB")
                save()
        res["speedup"] = res["reference_ms"] / res["triton_dense_ms"]
        res["peak_ratio"] = res["triton_dense_peak_bytes"] / max(res["reference_peak_bytes"], 1)
        res["triton_dense_tflops"] = tf(3 * 2 * B * H * N * N * 2 * D, res["triton_dense_ms"])
        SUMMARY.append(("seed fp32 16x12x1024 fwd+bwd", f"{res['triton_dense_ms']:.3f} vs ref {res['reference_ms']:.3f} ms: "
                        f"{res['speedup']:.2f}x (target 2x); peak {res['peak_ratio']:.2f}x of ref (target <=0.3x)"))

    item("seed fp32", seed, need_s=15)

    # ------------------------------------------------------------------ 4. bf16 headline
    def headline():
        B, H, N, D = SZ["head"]
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=bf16, generator=g) / 3 for _ in range(3))
        m = torch.randn(1, 1, N, N, device=dev, dtype=bf16, generator=g)
        do = torch.randn(B, H, N, D, device=dev, dtype=bf16, generator=g)
        fl = 2 * B * H * N * N * 2 * D
        res = {"shape": f"bf16 B{B} H{H} N{N} D=E={D} mask[1,1,N,N], autotuned", "card": CARD, "flops_fwd": fl}
        RESULTS["timings"]["headline"] = res
        leaves = [t.detach().requires_grad_() for t in (q, k, v, m)]

        def fb(be):
            return torch.autograd.grad(linattn.linear_attention(*leaves, backend=be), leaves, grad_outputs=do)

        with env(LINATTN_TRITON_AUTOTUNE="1"):
            for be in ("triton_dense", "reference"):
                res[f"{be}_fwd_ms"] = bench(lambda be=be: linattn.linear_attention(q, k, v, m, backend=be))
                res[f"{be}_fwdbwd_ms"] = bench(lambda be=be: fb(be))
                pk = mem_peak(lambda be=be: fb(be))
                res[f"{be}_fwdbwd_extra_bytes"] = pk - nbytes(q, k, v, m, q)  # minus dq dk dv dM and o
                log(f"headline {be}: fwd {res[f'{be}_fwd_ms']:.3f} ms, fwd+bwd(dM) {res[f'{be}_fwdbwd_ms']:.3f} ms, "
                    f"extra {res[f'{be}_fwdbwd_extra_bytes'] / 2**20:.0f} MiB")
                save()
        res["fwd_speedup"] = res["reference_fwd_ms"] / res["triton_dense_fwd_ms"]
        res["fwdbwd_speedup"] = res["reference_fwdbwd_ms"] / res["triton_dense_fwdbwd_ms"]
        res["fwd_tflops"] = tf(fl, res["triton_dense_fwd_ms"])
        res["fwdbwd_tflops_algorithmic"] = tf(3 * fl, res["triton_dense_fwdbwd_ms"])
        res["extra_mem_ratio"] = max(res["triton_dense_fwdbwd_extra_bytes"], 0) / max(res["reference_fwdbwd_extra_bytes"], 1)
        SUMMARY.append(("bf16 4x12x4096 mask fwd", f"{res['triton_dense_fwd_ms']:.3f} vs ref {res['reference_fwd_ms']:.3f} ms: "
                        f"{res['fwd_speedup']:.1f}x (target 5x), {res['fwd_tflops']:.0f} TFLOP/s = "
                        f"{res['fwd_tflops'] / peak[0]:.0%} of matmul"))
        SUMMARY.append(("bf16 4x12x4096 mask fwd+bwd(dM)", f"{res['triton_dense_fwdbwd_ms']:.3f} vs ref "
                        f"{res['reference_fwdbwd_ms']:.3f} ms: {res['fwdbwd_speedup']:.1f}x (target 3x); extra memory "
                        f"{res['extra_mem_ratio']:.1%} of ref (target <=10%)"))

    item("headline bf16", headline, need_s=10)

    # ------------------------------------------------------------------ summary
    n_pass = sum(1 for c in RESULTS["checks"] if c["pass"])
    SUMMARY.insert(0, ("correctness vs float64", f"{n_pass}/{len(RESULTS['checks'])} cases pass" + (
        "" if n_pass == len(RESULTS["checks"]) else " -- FAILURES: " +
        "; ".join(c["case"] for c in RESULTS["checks"] if not c["pass"]))))
    SUMMARY.insert(0, ("card", f"{CARD}, torch {torch.__version__}, triton {triton.__version__}, "
                       f"bf16 matmul {peak[0]:.0f} TFLOP/s"))
    RESULTS["summary"] = SUMMARY
    save()
    print(f"\n==== triton_dense v3 summary ({time.time() - T0:.0f} s of {BUDGET_S:.0f}) ====", flush=True)
    w = max(len(a) for a, _ in SUMMARY)
    for a, b in SUMMARY:
        print(f"{a:<{w}}  {b}", flush=True)
    return 0 if n_pass == len(RESULTS["checks"]) and not RESULTS["errors"] else 1


if __name__ == "__main__":
    try:
        rc = main()
    except BaseException as e:  # noqa: BLE001 - never die without the JSON
        traceback.print_exc()
        RESULTS["errors"].append({"item": "main", "error": f"{type(e).__name__}: {str(e)[:400]}"})
        save()
        rc = 2
    sys.exit(rc)
