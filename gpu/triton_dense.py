"""GPU check and timing of backend ``triton_dense`` (issue 4), in one run of at most ~200 s.

    python3 gpu/triton_dense.py            # on a machine with an H100/H200, no internet

In this order (items that would start too late for TRITON_DENSE_BUDGET_S, default 200,
are reported as skipped):

1. Correctness against the float64 reference on the GPU: o and every gradient (q, k, v,
   mask summed over its broadcast, slopes, initial state), with fixed tiles and the
   shared-memory fallbacks. First the two shapes that ran out of shared memory in run 1
   (bf16 D96 E160, fp16 D256 E256) and D = E = 256 in every dtype, forward and backward;
   then every mask kind, MQA/GQA, awkward sizes (N = 1, primes, N != M; D, E = 1, 48, 60).
   float32 (tf32x3 dots) must be within 1e-4 of max|x|; float16/bfloat16 within 4x the
   error of the same formula computed with plain torch ops in that dtype.
2. Timing (triton.testing.do_bench, median) with the baseline in the same run:
   - the bf16 8192^3 torch.matmul rate of this card (the roofline the figures are given against);
   - bf16 B=4 H=12 N=4096 D=E=64, mask [1,1,N,N], autotuned: forward, forward+backward with
     the mask gradient, extra memory beyond inputs/outputs/mask/dmask -- against `reference`;
   - causal and decay at N=8192 (B=1 H=8 D=64 bf16, TransNormer slopes) in-kernel against the
     same mask passed as a dense tensor, fixed tiles on both sides;
   - the seed's float32 example (B=16 H=12 N=1024 D=64, 0/1 mask [1,1,N,N]) fwd+bwd, autotuned
     with the default tf32x3 dots: time and peak memory against `reference`; then with fixed
     tiles each float32 dot precision (tf32x3, tf32, ieee) with its forward error vs float64.
3. The widest failing shape of run 1 again through the autotuner (pruned by the estimate).
Targets (issue 4): fwd >= 5x reference, fwd+bwd >= 3x, extra memory <= 10% of reference's;
seed example >= 2x faster at <= 0.3x peak memory; in-kernel causal/decay >= 1.5x faster.

Prints progress as it goes and a compact summary table last; writes every figure to
$OUT/triton_dense.json when OUT is set. Each item catches its own failure.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

T0 = time.time()
BUDGET_S = float(os.environ.get("TRITON_DENSE_BUDGET_S", "200"))
#: TRITON_DENSE_SMOKE=1 (with TRITON_INTERPRET=1): every item at toy sizes on the CPU, to
#: check the script itself before spending GPU time; its figures mean nothing.
SMOKE = os.environ.get("TRITON_DENSE_SMOKE") == "1"
RESULTS: dict = {"card": None, "checks": [], "timings": {}, "configs": {}, "errors": []}
SUMMARY: list = []


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def elapsed():
    return time.time() - T0


def item(name, fn, *, min_left=0.0):
    """Run one item; record failures instead of dying. Skip when the budget is nearly spent."""
    if BUDGET_S - elapsed() < min_left:
        log(f"SKIP {name}: {BUDGET_S - elapsed():.0f}s left of the {BUDGET_S:.0f}s budget")
        RESULTS["errors"].append({"item": name, "error": "skipped: time budget"})
        SUMMARY.append((name, "skipped (time)"))
        return None
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - report and go on
        msg = f"{type(e).__name__}: {str(e)[:400]}"
        log(f"FAIL {name}: {msg}")
        traceback.print_exc(limit=3)
        RESULTS["errors"].append({"item": name, "error": msg})
        SUMMARY.append((name, "ERROR " + msg[:80]))
        torch.cuda.empty_cache()
        return None


def main():
    if not torch.cuda.is_available() and not SMOKE:
        print("no CUDA device: nothing to do")
        return 1
    import triton
    import linattn
    from linattn.backends._common import effective_mask, expand_kv
    from linattn.backends.triton import dense_bwd, dense_fwd

    dev = "cpu" if SMOKE else "cuda"
    if SMOKE:
        RESULTS["card"] = {"name": "cpu (smoke test, interpreter)", "torch": torch.__version__, "triton": triton.__version__}
    else:
        props = torch.cuda.get_device_properties(0)
        RESULTS["card"] = {
            "name": torch.cuda.get_device_name(), "sms": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "torch": torch.__version__, "triton": triton.__version__,
        }
    # problem sizes: (B, H, N, D) of the timed shapes; toy ones in smoke mode
    SZ = dict(head=(4, 12, 4096, 64), seed=(16, 12, 1024, 64), long=(1, 8, 8192, 64), mm=8192)
    if SMOKE:
        SZ = dict(head=(1, 2, 40, 16), seed=(1, 2, 40, 16), long=(1, 2, 48, 16), mm=64)
    log("card:", RESULTS["card"])

    def bench(fn, rep=60):
        if SMOKE:
            t = time.time()
            fn()
            return (time.time() - t) * 1e3
        return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median")

    # ------------------------------------------------------------------ 1. correctness
    def problem(B, H, Hkv, N, M, D, E, ms, decay, state, seed=0):
        g = torch.Generator(device=dev).manual_seed(seed)
        if SMOKE:
            N, M = min(N, 40), min(M, 40)
            ms = (ms[0], ms[1], N, M) if ms else None
            if causal_needs_square[0]:
                M = N
        r = lambda *s: torch.randn(*s, generator=g, device=dev, dtype=torch.float64)  # noqa: E731
        return dict(
            q=r(B, H, N, D), k=r(B, Hkv, M, D), v=r(B, Hkv, M, E),
            mask=r(*ms) if ms else None,
            decay=(0.01 + 0.2 * torch.rand(H, generator=g, device=dev, dtype=torch.float64)) if decay else None,
            initial_state=r(B, H, D, E) if state else None,
            do=r(B, H, N, E), dS=r(B, H, D, E) if state else None,
        )

    def run(p, dtype, backend, causal, scale=0.5):
        leaves = {}
        for n in ("q", "k", "v", "mask", "decay", "initial_state"):
            if p[n] is None:
                continue
            want = dtype if n in ("q", "k", "v", "mask") else (torch.float64 if dtype == torch.float64 else torch.float32)
            leaves[n] = p[n].to(want).requires_grad_()
        st = p["initial_state"] is not None
        res = linattn.linear_attention(
            leaves["q"], leaves["k"], leaves["v"], leaves.get("mask"), causal=causal, decay=leaves.get("decay"),
            scale=scale, initial_state=leaves.get("initial_state"), output_final_state=st, backend=backend)
        o, S = (res.o, res.final_state) if st else (res, None)
        loss = (o.double() * p["do"]).sum() + ((S.double() * p["dS"]).sum() if S is not None else 0)
        gs = torch.autograd.grad(loss, list(leaves.values()))
        out = {"o": o, "S": S}
        out.update({f"d{n}": gx for n, gx in zip(leaves, gs)})
        return {n: (t.detach().double() if t is not None else None) for n, t in out.items()}

    def naive(p, dtype, causal, scale=0.5):
        names = ["q", "k", "v", "mask", "decay"]
        lv = [p[n].to(dtype if n != "decay" else torch.float32).requires_grad_() if p[n] is not None else None for n in names]
        q, k, v, m, s = lv
        H = q.shape[1]
        W = effective_mask(q.shape[2], k.shape[2], m, causal or s is not None, s, dtype, q.device)
        A = q @ expand_kv(k, H).transpose(-1, -2)
        o = ((A if W is None else A * W) @ expand_kv(v, H)) * scale
        used = [(n, t) for n, t in zip(names, lv) if t is not None]
        gs = torch.autograd.grad((o.double() * p["do"]).sum(), [t for _, t in used])
        out = {"o": o.detach().double()}
        out.update({f"d{n}": gx.double() for (n, _), gx in zip(used, gs)})
        return out

    def check(case):
        dtype, B, H, Hkv, N, M, D, E, ms, causal, decay, state = case
        causal_needs_square[0] = causal or decay
        name = (f"{str(dtype)[6:]} B{B} H{H} Hkv{Hkv} N{N} M{M} D{D} E{E} "
                f"mask{list(ms) if ms else '-'}{' causal' if causal else ''}{' decay' if decay else ''}"
                f"{' state' if state else ''}")
        t = time.time()
        p = problem(B, H, Hkv, N, M, D, E, ms, decay, state)
        got = run(p, dtype, "triton_dense", causal)
        want = run(p, torch.float64, "reference", causal)
        low = naive(p, dtype, causal) if dtype != torch.float32 else None
        worst, ok, errs = 0.0, True, {}
        for n, w in want.items():
            if w is None:
                continue
            scale_w = max(w.abs().max().item(), 1e-30)
            err = (got[n] - w).abs().max().item()
            if dtype == torch.float32:
                ratio = err / (1e-4 * scale_w)  # band: 1e-4 of max|x|
            else:
                ref_err = (low[n] - w).abs().max().item() if n in low else float("nan")
                ratio = err / (4 * ref_err + 1e-6 * scale_w) if n in low else err / (2e-2 * scale_w)
            errs[n] = {"rel_err": err / scale_w, "band_ratio": ratio}
            ok &= ratio <= 1.0
            worst = max(worst, ratio)
        RESULTS["checks"].append({"case": name, "pass": ok, "errors": errs, "s": round(time.time() - t, 1)})
        log(("PASS " if ok else "FAIL ") + name, f"worst band ratio {worst:.2f}",
            " ".join(f"{n}:{e['rel_err']:.1e}" for n, e in errs.items()))
        return ok

    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    causal_needs_square = [False]
    # dtype, B, H, Hkv, N, M, D, E, mask shape, causal, decay, state
    # first: the two shapes that ran out of shared memory in GPU run 1, and D = E = 256 in
    # every dtype, forward and backward (dq, dk/dv, and the dM kernel or the fused dM)
    wide_cases = [
        (bf16, 2, 6, 3, 333, 333, 96, 160, (1, 6, 333, 333), True, False, False),
        (f16, 1, 2, 1, 77, 77, 256, 256, (1, 1, 77, 77), False, True, False),
        (bf16, 1, 2, 1, 150, 150, 256, 256, (1, 2, 150, 150), True, False, False),
        (f32, 1, 2, 1, 90, 90, 256, 256, (1, 1, 90, 90), False, True, False),
        (f16, 1, 2, 2, 70, 70, 256, 256, None, False, True, True),
    ]
    core_cases = [
        (bf16, 2, 4, 2, 1000, 1000, 64, 64, (1, 1, 1000, 1000), False, False, False),
        (f16, 1, 4, 2, 257, 257, 64, 64, (1, 4, 257, 257), False, True, False),
        (f32, 2, 4, 1, 130, 97, 48, 60, (2, 1, 130, 97), False, False, False),
        (bf16, 1, 4, 4, 4096, 4096, 64, 64, None, False, True, False),
        (f32, 2, 4, 2, 211, 211, 64, 32, None, True, False, True),
        (bf16, 1, 2, 1, 129, 65, 60, 256, None, False, False, False),
        (f32, 1, 4, 2, 100, 100, 32, 32, None, False, True, True),
        (f32, 1, 2, 2, 1, 1, 1, 1, (1, 1, 1, 1), False, False, False),
        (f32, 1, 3, 1, 300, 300, 16, 16, (1, 1, 300, 300), False, True, False),
    ]
    os.environ["LINATTN_TRITON_AUTOTUNE"] = "0"  # correctness: fixed tile configs (and fallbacks), no tuning time
    for c in wide_cases:
        item(f"check {c[0]} N{c[4]} D{c[6]} E{c[7]}", lambda c=c: check(c), min_left=60)
    for c in core_cases:
        item(f"check {c[0]} N{c[4]} D{c[6]} E{c[7]}", lambda c=c: check(c), min_left=115)

    # ------------------------------------------------------------------ 2. timing
    os.environ["LINATTN_TRITON_AUTOTUNE"] = "1"
    T = RESULTS["timings"]

    def matmul_rate():
        n = SZ["mm"]
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        ms = bench(lambda: a @ b)
        T["matmul_bf16_8192"] = {"ms": ms, "tflops": 2 * n**3 / ms / 1e9}
        log(f"bf16 matmul 8192^3: {ms:.3f} ms = {T['matmul_bf16_8192']['tflops']:.0f} TFLOP/s")
        del a, b
        return T["matmul_bf16_8192"]["tflops"]

    peak = item("matmul rate", matmul_rate) or float("nan")

    def tf(flops, ms):
        return flops / ms / 1e9

    def mem_run(fn, out_bytes):
        """Extra memory of one call: peak minus what was allocated before, minus its outputs."""
        if SMOKE:
            fn()
            return 1, 1
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        res = fn()
        torch.cuda.synchronize()
        pk = torch.cuda.max_memory_allocated() - base
        del res
        return pk, pk - out_bytes

    def nbytes(*ts):
        return sum(t.numel() * t.element_size() for t in ts)

    def headline():
        B, H, N, D = SZ["head"]
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=bf16, generator=g) / 3 for _ in range(3))
        m = torch.randn(1, 1, N, N, device=dev, dtype=bf16, generator=g)
        do = torch.randn(B, H, N, D, device=dev, dtype=bf16, generator=g)
        fl_fwd = 2 * B * H * N * N * (D + D)  # A = q kᵀ and (A ⊙ W) v
        res = {"shape": f"bf16 B{B} H{H} N{N} D=E{D} mask[1,1,N,N]", "flops_fwd": fl_fwd}
        for be in ("triton_dense", "reference"):
            f = lambda be=be: linattn.linear_attention(q, k, v, m, backend=be)  # noqa: E731
            res[f"{be}_fwd_ms"] = bench(f)
            log(f"headline fwd {be}: {res[f'{be}_fwd_ms']:.3f} ms")
        leaves = [t.detach().requires_grad_() for t in (q, k, v, m)]

        def fb(be):
            o = linattn.linear_attention(*leaves, backend=be)
            return torch.autograd.grad(o, leaves, grad_outputs=do)

        for be in ("triton_dense", "reference"):
            res[f"{be}_fwdbwd_ms"] = bench(lambda be=be: fb(be), rep=100)
            log(f"headline fwd+bwd (mask grad) {be}: {res[f'{be}_fwdbwd_ms']:.3f} ms")
            outs = nbytes(q, k, v, m) + nbytes(q)  # dq dk dv dmask, and o
            pk, extra = mem_run(lambda be=be: fb(be), outs)
            res[f"{be}_fwdbwd_peak_bytes"], res[f"{be}_fwdbwd_extra_bytes"] = pk, extra
            pkf, extraf = mem_run(lambda be=be: linattn.linear_attention(q, k, v, m, backend=be), nbytes(q))
            res[f"{be}_fwd_extra_bytes"] = extraf
            log(f"  {be}: fwd+bwd extra {extra / 2**20:.1f} MiB (peak {pk / 2**20:.1f}), fwd extra {extraf / 2**20:.1f} MiB")
        res["fwd_speedup"] = res["reference_fwd_ms"] / res["triton_dense_fwd_ms"]
        res["fwdbwd_speedup"] = res["reference_fwdbwd_ms"] / res["triton_dense_fwdbwd_ms"]
        res["extra_mem_ratio"] = res["triton_dense_fwdbwd_extra_bytes"] / max(res["reference_fwdbwd_extra_bytes"], 1)
        res["fwd_tflops"] = tf(fl_fwd, res["triton_dense_fwd_ms"])
        # algorithmic fwd+bwd = 3x fwd (bwd: dP, dv, dq, dk); executed dots: fwd 2 + dq 3 + dkdv 4 + dmask 2
        res["fwdbwd_tflops_algorithmic"] = tf(3 * fl_fwd, res["triton_dense_fwdbwd_ms"])
        res["fwdbwd_tflops_executed"] = tf(11 / 2 * fl_fwd, res["triton_dense_fwdbwd_ms"])
        T["headline"] = res
        SUMMARY.append(("bf16 4x12x4096 D64 mask fwd", f"{res['triton_dense_fwd_ms']:.2f} ms vs ref {res['reference_fwd_ms']:.2f}: "
                        f"{res['fwd_speedup']:.1f}x (target 5x), {res['fwd_tflops']:.0f} TFLOP/s = "
                        f"{res['fwd_tflops'] / peak:.0%} of matmul"))
        SUMMARY.append(("bf16 4x12x4096 D64 mask fwd+bwd+dM", f"{res['triton_dense_fwdbwd_ms']:.2f} ms vs ref {res['reference_fwdbwd_ms']:.2f}: "
                        f"{res['fwdbwd_speedup']:.1f}x (target 3x), {res['fwdbwd_tflops_executed']:.0f} TFLOP/s executed"))
        SUMMARY.append(("bf16 headline extra memory", f"{res['triton_dense_fwdbwd_extra_bytes'] / 2**20:.0f} MiB vs ref "
                        f"{res['reference_fwdbwd_extra_bytes'] / 2**20:.0f} MiB = {res['extra_mem_ratio']:.1%} (target <=10%)"))
        return res

    item("headline bf16", headline, min_left=25)

    def configs_of(label):
        """The autotuner's own per-config timings (ms) for every key it tuned so far."""
        tuned = {"fwd": dense_fwd._dense_fwd_tuned, "dq": dense_bwd._dq_tuned,
                 "dkdv": dense_bwd._dkdv_tuned, "dmask": dense_bwd._dmask_tuned}
        out = {}
        for kname, t in tuned.items():
            timings = getattr(t, "configs_timings", None) or {}
            best = getattr(t, "best_config", None)
            out[kname] = {"best": str(best), "timings_ms": {str(c): (v[0] if isinstance(v, (list, tuple)) else v)
                                                            for c, v in timings.items()}}
        RESULTS["configs"][label] = out
        for kname, d in out.items():
            log(f"  autotune {label}/{kname}: best {d['best']}; " +
                ", ".join(f"{c.split(',')[0:2]}={v:.3f}" for c, v in list(d["timings_ms"].items())[:6]))

    item("autotune configs (headline)", lambda: configs_of("headline"))
    # from here on one fixed tile config per kernel: compiles cost seconds each, and the
    # in-kernel vs tensor comparisons are fairest with the same tiles on both sides
    os.environ["LINATTN_TRITON_AUTOTUNE"] = "0"

    def causal_decay_vs_tensor():
        B, H, N, D = SZ["long"]
        q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=bf16) / 3 for _ in range(3))
        s = linattn.tnl_slopes(H).to(dev) if hasattr(linattn, "tnl_slopes") else torch.full((H,), 0.01, device=dev)
        do = torch.randn(B, H, N, D, device=dev, dtype=bf16)
        i = torch.arange(N, device=dev)
        dist = (i[:, None] - i[None, :]).float()
        tril = (dist >= 0).to(bf16)[None, None]  # [1, 1, N, N]
        res = {}
        for kind in ("causal", "decay"):
            if kind == "causal":
                kw_in, mask_t = dict(causal=True), tril
            else:
                kw_in = dict(decay=s)
                mask_t = (torch.exp(-s.float()[:, None, None] * dist.clamp(min=0)) * (dist >= 0)).to(bf16)[None]  # [1, H, N, N]
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            f_in = lambda: linattn.linear_attention(q, k, v, backend="triton_dense", **kw_in)  # noqa: E731
            f_t = lambda: linattn.linear_attention(q, k, v, mask_t, backend="triton_dense")  # noqa: E731
            fb_in = lambda: torch.autograd.grad(linattn.linear_attention(*leaves, backend="triton_dense", **kw_in), leaves, do)  # noqa: E731
            fb_t = lambda: torch.autograd.grad(linattn.linear_attention(*leaves, mask_t, backend="triton_dense"), leaves, do)  # noqa: E731
            r = {"in_kernel_fwd_ms": bench(f_in), "tensor_fwd_ms": bench(f_t)}
            log(f"{kind} N={N}: fwd in-kernel {r['in_kernel_fwd_ms']:.3f} ms, as tensor {r['tensor_fwd_ms']:.3f} ms")
            if BUDGET_S - elapsed() > 25:
                r["in_kernel_fwdbwd_ms"] = bench(fb_in)
                r["tensor_fwdbwd_ms"] = bench(fb_t)
                log(f"{kind} N={N}: fwd+bwd in-kernel {r['in_kernel_fwdbwd_ms']:.3f} ms, as tensor {r['tensor_fwdbwd_ms']:.3f} ms")
            r["fwd_speedup"] = r["tensor_fwd_ms"] / r["in_kernel_fwd_ms"]
            fl = 2 * B * H * N * N * 2 * D / 2  # causal half of the dense flops
            r["in_kernel_fwd_tflops"] = tf(fl, r["in_kernel_fwd_ms"])
            res[kind] = r
            txt = f"fwd {r['in_kernel_fwd_ms']:.2f} vs tensor {r['tensor_fwd_ms']:.2f} ms: {r['fwd_speedup']:.2f}x"
            if "tensor_fwdbwd_ms" in r:
                r["fwdbwd_speedup"] = r["tensor_fwdbwd_ms"] / r["in_kernel_fwdbwd_ms"]
                txt += f"; fwd+bwd {r['in_kernel_fwdbwd_ms']:.2f} vs {r['tensor_fwdbwd_ms']:.2f}: {r['fwdbwd_speedup']:.2f}x"
            SUMMARY.append((f"{kind} N8192 H8 D64 bf16 (target 1.5x)", txt))
            del mask_t
        T["causal_decay_8192"] = res

    item("causal/decay vs tensor mask", causal_decay_vs_tensor, min_left=30)

    def seed_example():
        os.environ["LINATTN_TRITON_AUTOTUNE"] = "1"  # as a user gets it: float32 = tf32x3, tuned tiles
        B, H, N, D = SZ["seed"]
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=f32, generator=g).requires_grad_() for _ in range(3))
        m = torch.randint(0, 2, (1, 1, N, N), device=dev, generator=g).to(f32)
        do = torch.randn(B, H, N, D, device=dev, dtype=f32, generator=g)
        res = {"shape": "float32 B16 H12 N1024 D64 0/1 mask[1,1,N,N], fwd+bwd (q, k, v grads)"}

        def fb(be):
            o = linattn.linear_attention(q, k, v, m, backend=be)
            return torch.autograd.grad(o, (q, k, v), grad_outputs=do)

        for be in ("triton_dense", "reference"):
            res[f"{be}_ms"] = bench(lambda be=be: fb(be))
            if be == "triton_dense":
                configs_of("seed")
                os.environ["LINATTN_TRITON_AUTOTUNE"] = "0"
            pk, extra = mem_run(lambda be=be: fb(be), 4 * nbytes(q))
            res[f"{be}_peak_bytes"] = pk + nbytes(q, k, v, m, do)  # peak including the inputs
            log(f"seed fp32 {be}: {res[f'{be}_ms']:.3f} ms, peak {res[f'{be}_peak_bytes'] / 2**20:.0f} MiB")
        # float32 dot precision: time (fixed tiles, no tuning) and forward error against
        # float64 for tf32x3 (the default), tf32 (allow_tf32 opt-in) and ieee (slowest to compile)
        o64 = linattn.linear_attention(q.double(), k.double(), v.double(), m.double(), backend="reference")
        scale64 = o64.abs().max().item()
        with torch.no_grad():
            res["reference_fwd_rel_err"] = (linattn.linear_attention(q, k, v, m, backend="reference").double()
                                            - o64).abs().max().item() / scale64
        old_tf32 = torch.backends.cuda.matmul.allow_tf32
        prec = {}
        for p_name in ("tf32x3", "tf32", "ieee"):
            if BUDGET_S - elapsed() < (35 if p_name == "ieee" else 12):
                log(f"seed precision {p_name} skipped: time")
                continue
            os.environ["LINATTN_TRITON_FP32_DOT"] = p_name
            try:
                with torch.no_grad():
                    err = (linattn.linear_attention(q, k, v, m, backend="triton_dense").double()
                           - o64).abs().max().item() / scale64
                prec[p_name] = {"fwdbwd_ms_fixed_tiles": bench(lambda: fb("triton_dense")), "fwd_rel_err": err}
                log(f"seed fp32 dots={p_name}: {prec[p_name]['fwdbwd_ms_fixed_tiles']:.3f} ms (fixed tiles), o rel err {err:.2e}")
            except Exception as e:  # noqa: BLE001
                prec[p_name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                log(f"seed fp32 dots={p_name}: {prec[p_name]['error']}")
            finally:
                os.environ.pop("LINATTN_TRITON_FP32_DOT", None)
        try:
            if BUDGET_S - elapsed() > 10:
                torch.backends.cuda.matmul.allow_tf32 = True  # opt-in for the baseline too
                res["reference_tf32_ms"] = bench(lambda: fb("reference"))
                log(f"seed reference with allow_tf32: {res['reference_tf32_ms']:.3f} ms")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old_tf32
        res["precisions"] = prec
        del o64
        res["speedup"] = res["reference_ms"] / res["triton_dense_ms"]
        res["peak_ratio"] = res["triton_dense_peak_bytes"] / res["reference_peak_bytes"]
        T["seed_fp32"] = res
        SUMMARY.append(("seed fp32 16x12x1024 fwd+bwd", f"{res['triton_dense_ms']:.2f} vs ref {res['reference_ms']:.2f} ms: "
                        f"{res['speedup']:.2f}x (target 2x); peak {res['peak_ratio']:.2f}x of ref (target <=0.3x)"))
        SUMMARY.append(("seed fp32 dot precision (fixed tiles)", "; ".join(
            f"{k}: {v['fwdbwd_ms_fixed_tiles']:.2f} ms err {v['fwd_rel_err']:.1e}" if "error" not in v else f"{k}: {v['error'][:40]}"
            for k, v in prec.items()) + f"; ref err {res['reference_fwd_rel_err']:.1e}"
            + (f", ref+allow_tf32 {res['reference_tf32_ms']:.2f} ms" if "reference_tf32_ms" in res else "")))

    item("seed fp32 example", seed_example, min_left=20)

    # ------------------------------------------------------------------ 3. autotuned wide heads
    os.environ["LINATTN_TRITON_AUTOTUNE"] = "1"  # pruning by the estimate + OutOfResources inside the tuner
    item("check autotuned bf16 D96 E160", lambda: check(wide_cases[0]), min_left=25)

    # ------------------------------------------------------------------ summary
    n_pass = sum(1 for c in RESULTS["checks"] if c["pass"])
    SUMMARY.insert(0, ("correctness vs float64", f"{n_pass}/{len(RESULTS['checks'])} cases pass"
                       + ("" if n_pass == len(RESULTS["checks"]) else " -- FAILURES: " +
                          "; ".join(c["case"] for c in RESULTS["checks"] if not c["pass"]))))
    SUMMARY.insert(0, ("card", f"{RESULTS['card']['name']}, torch {RESULTS['card']['torch']}, triton {RESULTS['card']['triton']}, "
                       f"bf16 matmul {peak:.0f} TFLOP/s"))
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "triton_dense.json"), "w") as fh:
            json.dump(RESULTS, fh, indent=1, default=str)
    print("\n==== triton_dense summary (%.0f s) ====" % elapsed(), flush=True)
    w = max(len(a) for a, _ in SUMMARY)
    for a, b in SUMMARY:
        print(f"{a:<{w}}  {b}", flush=True)
    return 0 if n_pass == len(RESULTS["checks"]) and not RESULTS["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
