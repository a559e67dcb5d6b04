#!/usr/bin/env python3
"""GPU check and timing of the linear-time Triton kernels (issue 5), in one run.

    python3 gpu/triton_chunk.py          # details to $OUT/triton_chunk.json when OUT is set

What it does, most important first, inside a time budget (CHUNK_BUDGET_S, default 200 s;
items that would start after it are reported as skipped):

1. the card's copy bandwidth (a large device-to-device copy): the roofline every time is
   measured against;
2. correctness on the GPU against float64: the harness's ``backward`` property (o, final
   state and every gradient, inside the derived tolerance bands) for every mask kind,
   each dtype, GQA/MQA, awkward sizes, state and packed sequences; the forward at
   N = 32768 against linattn's chunked PyTorch backend in float64; agreement with fla's
   ``chunk_simple_gla(q, k, v, g_gamma=-slopes, scale=1.0)``;
3. timings (triton.testing.do_bench, median) in bfloat16 with the decay mask, forward and
   forward+backward, ours in several schedules against fla's chunk_simple_gla and
   lightning_attn's lightning_attn_func, on B8·H16·N2048·D128, B4·H16·N8192·D128,
   B1·H16·N32768·D128, B8·H32·N2048·D64 (D = E); every input tensor is > 50 MB, so
   nothing stays in L2 between runs;
4. the fused decode step (timed right after the correctness checks: it takes a second), B=64 H=16 D=E=128, float32 state, against the time to read and
   write the state once at the measured copy bandwidth.

Bytes counted (the floor: every tensor crosses HBM once, 2 bytes per bf16 element):
forward = q + k + v + o; forward+backward = forward + q + k + v + do + dq + dk + dv.
FLOPs counted for the chunked algorithm with chunk C = 64, per token and head: forward
2·C·D (q kᵀ) + 2·C·E (A v) + 4·D·E (q S, kᵀ v); the backward is counted as 2.5× the forward.
fla and lightning_attn take their own layouts ([B, T, H, D] and [B, H, N, D]); inputs are
prepared in each library's layout outside the timed region.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
import types

T_START = time.time()
BUDGET = float(os.environ.get("CHUNK_BUDGET_S", "200"))
# CHUNK_DRYRUN=1 (with TRITON_INTERPRET=1, on a CPU): tiny shapes, one call per timing; checks
# that the script itself runs before it goes to a GPU. Its figures mean nothing.
DRY = os.environ.get("CHUNK_DRYRUN") == "1"
DEV = "cpu" if DRY else "cuda"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

RESULTS = {"env": {}, "copy_bw_GBps": None, "correctness": [], "large_n": [], "vs_fla": [],
           "timings": [], "decode": [], "skipped": [], "errors": []}


def log(*a):
    print(*a, flush=True)


def elapsed() -> float:
    return time.time() - T_START


def item(name, fn, *args, reserve=0.0, **kw):
    """Run one item; record failures instead of dying; skip when the budget is spent."""
    if elapsed() + reserve > BUDGET:
        RESULTS["skipped"].append(name)
        log(f"-- skip {name} (budget: {elapsed():.0f}s of {BUDGET:.0f}s used)")
        return None
    t0 = time.time()
    try:
        out = fn(*args, **kw)
        log(f"-- {name}: done in {time.time() - t0:.1f}s (t={elapsed():.0f}s)")
        return out
    except Exception as e:  # noqa: BLE001 - report and go on
        msg = f"{type(e).__name__}: {str(e)[:400]}"
        RESULTS["errors"].append({"item": name, "error": msg, "trace": traceback.format_exc()[-2000:]})
        log(f"!! {name}: {msg}")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return None


def save():
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "triton_chunk.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


# -- baselines ----------------------------------------------------------------------------------------

def _import_fla():
    try:
        import einops  # noqa: F401
    except ImportError:  # fla imports einops at package level; chunk_simple_gla never calls it
        stub = types.ModuleType("einops")

        def _missing(*a, **k):
            raise RuntimeError("einops stub: not installed on this machine")

        stub.rearrange = stub.reduce = stub.repeat = stub.einsum = stub.pack = stub.unpack = _missing
        sys.modules["einops"] = stub
        RESULTS["env"]["einops"] = "stub (not installed)"
    from fla.ops.simple_gla import chunk_simple_gla

    return chunk_simple_gla


def _import_lightning():
    from lightning_attn.ops import lightning_attn_func

    return lightning_attn_func


FLA = LIGHTNING = None


def fla_fn(q, k, v, slopes, **kw):
    """fla in its own layout [B, T, H, D]; g_gamma is the log decay per step (= -s)."""
    o, ht = FLA(q, k, v, g_gamma=-slopes, scale=1.0, **kw)
    return o, ht


# -- environment and bandwidth ----------------------------------------------------------------------

def env():
    import triton

    e = RESULTS["env"]
    e.update(torch=torch.__version__, triton=triton.__version__)
    if not DRY:
        p = torch.cuda.get_device_properties(0)
        e.update(device=torch.cuda.get_device_name(), sms=p.multi_processor_count,
                 mem_GB=round(p.total_memory / 2**30, 1))
    log("env:", e)


def copy_bandwidth():
    import triton

    n = 1 << (20 if DRY else 30)  # 1 GiB
    x = torch.empty(n, dtype=torch.uint8, device=DEV).random_(0, 255)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x), rep=200)
    bw = 2 * n / (ms * 1e-3) / 1e9
    RESULTS["copy_bw_GBps"] = bw
    log(f"copy bandwidth: {bw:.0f} GB/s (1 GiB device-to-device, read + write)")
    del x, y


# -- correctness ----------------------------------------------------------------------------------------

def harness_problems():
    from linattn.testing.problem import Problem

    g = ("q", "k", "v")
    return [
        Problem(B=2, H=4, Hkv=2, N=1000, M=1000, D=128, E=128, dtype="bfloat16", mask_kind="decay", slopes="mixed",
                initial_state=True, final_state=True, grads=g + ("slopes", "initial_state"), seed=1),
        Problem(B=1, H=4, Hkv=1, N=4099, M=4099, D=64, E=64, dtype="float16", mask_kind="causal",
                final_state=True, grads=g, seed=2),
        Problem(B=2, H=4, Hkv=2, N=130, M=130, D=48, E=60, dtype="float32", mask_kind="none", grads=g, seed=3),
        Problem(B=1, H=2, Hkv=1, N=63, M=63, D=160, E=96, dtype="bfloat16", mask_kind="decay", slopes="tnl",
                initial_state=True, final_state=True, grads=g + ("slopes", "initial_state"), seed=4),
        Problem(B=3, H=2, Hkv=2, N=2, M=2, D=5, E=3, dtype="bfloat16", mask_kind="decay", slopes="large",
                grads=g + ("slopes",), seed=5),
        Problem(B=1, H=2, Hkv=1, N=1, M=1, D=1, E=1, dtype="float32", mask_kind="decay", slopes="mixed",
                final_state=True, grads=g + ("slopes",), seed=6),
        Problem(B=1, H=2, Hkv=2, N=65, M=65, D=256, E=256, dtype="float32", mask_kind="decay", slopes="large",
                initial_state=True, final_state=True, grads=g + ("slopes", "initial_state"), seed=7),
        Problem(B=1, H=2, Hkv=1, N=65, M=65, D=16, E=16, dtype="float64", mask_kind="decay", slopes="moderate",
                initial_state=True, final_state=True, grads=g + ("slopes", "initial_state"), seed=8),
        Problem(B=1, H=4, Hkv=2, N=1163, M=1163, D=128, E=128, dtype="bfloat16", mask_kind="decay", slopes="tnl",
                initial_state=True, final_state=True, cu_seqlens=(0, 100, 100, 1100, 1163),
                grads=g + ("slopes", "initial_state"), seed=9),
        Problem(B=2, H=8, Hkv=8, N=777, M=777, D=64, E=64, dtype="float16", mask_kind="none", grads=g, seed=10),
    ]


def check_harness(problem):
    import dataclasses

    from linattn.testing.properties import run_property

    p = dataclasses.replace(problem, device=DEV)
    res = run_property("backward", "triton", p)
    worst = res.worst
    row = dict(problem=p.describe(), ok=res.ok, worst_fraction=res.worst_fraction,
               worst_quantity=worst.quantity if worst else None,
               errors={m.quantity: m.error for m in res.measurements},
               bands={m.quantity: m.band for m in res.measurements}, failures=res.failures)
    RESULTS["correctness"].append(row)
    log(f"   {'ok ' if res.ok else 'BAD'} {p.describe()}  worst error/band {res.worst_fraction:.2f}"
        f" ({row['worst_quantity']})")
    if not res.ok:
        log(res.message()[:1500])


def rel(a, b):
    return (a.double() - b.double()).norm().item() / max(b.double().norm().item(), 1e-300)


def check_large_n(dtype, N=32768, H=2, D=128, E=128, split=None):
    """Forward at N = 32768 against the chunked PyTorch backend in float64 on the GPU."""
    import linattn
    from linattn.backends.triton.chunk import chunk_config

    g = torch.Generator(device=DEV).manual_seed(11)
    q = torch.randn(1, H, N, D, device=DEV, generator=g) / D ** 0.5
    k = torch.randn(1, H, N, D, device=DEV, generator=g) / D ** 0.5
    v = torch.randn(1, H, N, E, device=DEV, generator=g)
    s = torch.tensor([0.001, 0.05][:H], device=DEV)
    qx, kx, vx = q.to(dtype), k.to(dtype), v.to(dtype)
    want, Sw = linattn.linear_attention(qx.double(), kx.double(), vx.double(), decay=s.double(),
                                        output_final_state=True, backend="chunked")
    row = dict(dtype=str(dtype), N=N, H=H, D=D, E=E)
    for name, cfg in (("default", {}), ("fused", dict(split=-1)), ("split512", dict(split=512))):
        with chunk_config(**cfg):
            o, S = linattn.linear_attention(qx, kx, vx, decay=s, output_final_state=True, backend="triton")
        row[f"o_err_{name}"] = rel(o, want)
        row[f"S_err_{name}"] = rel(S, Sw)
    row["o_rounding_floor"] = rel(want.to(dtype), want)  # what rounding o to the dtype alone costs
    RESULTS["large_n"].append(row)
    log("  ", {k_: (f"{v_:.2e}" if isinstance(v_, float) else v_) for k_, v_ in row.items()})


def check_backward_long(dtype=torch.bfloat16, N=8192, H=2, D=64):
    """All gradients (slopes included) at N = 8192 against float64 (chunked backend)."""
    import linattn

    g = torch.Generator(device=DEV).manual_seed(12)
    mk = lambda *s: torch.randn(*s, device=DEV, generator=g)  # noqa: E731
    base = dict(q=mk(1, H, N, D) / D ** 0.5, k=mk(1, 1, N, D) / D ** 0.5, v=mk(1, 1, N, D),
                s=torch.tensor([0.002, 0.2][:H], device=DEV), h0=mk(1, H, D, D))
    do, dS = mk(1, H, N, D), mk(1, H, D, D)

    def grads(backend, dt):
        x = {n: (t.to(dt) if n in "qkv" else t.to(torch.float64 if dt == torch.float64 else torch.float32))
             .requires_grad_() for n, t in base.items()}
        o, S = linattn.linear_attention(x["q"], x["k"], x["v"], decay=x["s"], initial_state=x["h0"],
                                        output_final_state=True, backend=backend)
        gs = torch.autograd.grad((o.double() * do.double()).sum() + (S.double() * dS.double()).sum(),
                                 [x[n] for n in ("q", "k", "v", "s", "h0")])
        return dict(zip(("o", "dq", "dk", "dv", "ds", "dh0"), (o,) + gs))

    want = grads("chunked", torch.float64)
    got = grads("triton", dtype)
    row = dict(dtype=str(dtype), N=N, H=H, Hkv=1, D=D, **{f"{n}_err": rel(got[n], want[n]) for n in want})
    RESULTS["large_n"].append(row)
    log("  ", {k_: (f"{v_:.2e}" if isinstance(v_, float) else v_) for k_, v_ in row.items()})


def check_vs_fla(B=1, H=16, N=2048, D=128):  # H, D as the timing shapes: fla's autotune keys
    """Ours and fla's chunk_simple_gla against float64, and against each other."""
    import linattn
    from linattn.slopes import tnl_slopes

    g = torch.Generator(device=DEV).manual_seed(13)
    mk = lambda *s: torch.randn(*s, device=DEV, generator=g)  # noqa: E731
    q, k, v = (mk(B, H, N, D) / D ** 0.5).bfloat16(), (mk(B, H, N, D) / D ** 0.5).bfloat16(), mk(B, H, N, D).bfloat16()
    do = mk(B, H, N, D).bfloat16()
    s = tnl_slopes(H, layer=1, n_layers=8).float().to(DEV)
    res = {}
    for name in ("ref64", "ours", "fla"):
        if name == "ref64":
            x = [t.double().requires_grad_() for t in (q, k, v)]
            o, S = linattn.linear_attention(*x, decay=s.double(), output_final_state=True, backend="chunked")
        elif name == "ours":
            x = [t.clone().requires_grad_() for t in (q, k, v)]
            o, S = linattn.linear_attention(*x, decay=s, output_final_state=True, backend="triton")
        else:
            x = [t.transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v)]
            o, S = fla_fn(*x, s, output_final_state=True)
        gs = torch.autograd.grad((o.double() * (do if name != "fla" else do.transpose(1, 2)).double()).sum(), x)
        if name == "fla":
            o, gs = o.transpose(1, 2), [t.transpose(1, 2) for t in gs]
        res[name] = dict(o=o.detach(), S=S.detach(), dq=gs[0], dk=gs[1], dv=gs[2])
    row = dict(shape=f"B{B}-H{H}-N{N}-D{D}", dtype="bfloat16")
    for qn in ("o", "S", "dq", "dk", "dv"):
        row[f"{qn}: ours-ref"] = rel(res["ours"][qn], res["ref64"][qn])
        row[f"{qn}: fla-ref"] = rel(res["fla"][qn], res["ref64"][qn])
        row[f"{qn}: ours-fla"] = rel(res["ours"][qn], res["fla"][qn])
    RESULTS["vs_fla"].append(row)
    for qn in ("o", "S", "dq", "dk", "dv"):
        log(f"   {qn:3s} rel. error vs float64: ours {row[f'{qn}: ours-ref']:.2e}  fla {row[f'{qn}: fla-ref']:.2e}"
            f"   ours vs fla {row[f'{qn}: ours-fla']:.2e}")


# -- timings --------------------------------------------------------------------------------------------

SHAPES = [  # (name, B, H, N, D) with E = D, Hkv = H
    ("B4-H16-N8192-D128", 4, 16, 8192, 128),
    ("B1-H16-N32768-D128", 1, 16, 32768, 128),
    ("B8-H16-N2048-D128", 8, 16, 2048, 128),
    ("B8-H32-N2048-D64", 8, 32, 2048, 64),
]
# schedules of ours to time (chunk_config overrides); the first is the default heuristic
VARIANTS = {
    "default": {},
    "fused": dict(split=-1, bwd_split=-1),
    "split1024": dict(split=1024, bwd_split=1024),
    "chunk128": dict(chunk=128, fwd_warps=8, bwd_warps=8),
    "stages3": dict(fwd_stages=3, bwd_stages=3),
    "bwd-w8": dict(bwd_warps=8),
}
# Dropped after H200 run 2 (v1 kernels, B4·H16·N8192 fwd / fwd+bwd ms): fused-bv32
# 0.574/1.690, fused-w8 0.549/1.660, split-fla-like (64) 1.794/2.780, bwd-bk32 0.484/1.756.
SHORT = ("default", "fused", "split1024")  # variants for the shapes after the first two
if DRY:
    SHAPES = [(f"dry-{n}", 1, 2, 40, 16) for n, *_ in SHAPES]
    VARIANTS = {k: {**v, **({"split": 16, "bwd_split": 16} if "split" in v and v["split"] > 0 else {})}
                for k, v in VARIANTS.items()}
    VARIANTS["split1024"]["chunk"] = 16
    VARIANTS["chunk128"]["chunk"] = 32


def counts(B, H, N, D, E):
    el = B * H * N
    fwd_bytes = 2 * el * (D + D + E + E)
    bwd_bytes = 2 * el * (D + D + E + E + D + D + E)
    C = 64
    fwd_flops = el * (2 * C * D + 2 * C * E + 4 * D * E)
    return fwd_bytes, fwd_bytes + bwd_bytes, fwd_flops, 3.5 * fwd_flops


def bench(fn, grad_to_none=None, rep=60):
    """Median milliseconds of ``fn`` (triton.testing.do_bench); one timed call in a dry run."""
    if DRY:
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def time_shape(name, B, H, N, D, variants, baselines=True):
    import linattn
    from linattn.backends.triton.chunk import chunk_config
    from linattn.slopes import tnl_slopes

    E = D
    g = torch.Generator(device=DEV).manual_seed(14)
    mk = lambda *s: torch.randn(*s, device=DEV, generator=g, dtype=torch.bfloat16)  # noqa: E731
    q, k, v, do = mk(B, H, N, D) * D ** -0.5, mk(B, H, N, D) * D ** -0.5, mk(B, H, N, E), mk(B, H, N, E)
    s = tnl_slopes(H, layer=1, n_layers=8).float().to(DEV)
    fb, fbb, ff, fbf = counts(B, H, N, D, E)
    bw = RESULTS["copy_bw_GBps"] or float("nan")

    def record(impl, mode, ms):
        by = fb if mode == "fwd" else fbb
        fl = ff if mode == "fwd" else fbf
        row = dict(shape=name, impl=impl, mode=mode, ms=ms, bytes=by, GBps=by / ms / 1e6,
                   frac_copy_bw=by / ms / 1e6 / bw, TFLOPs=fl / ms / 1e9)
        RESULTS["timings"].append(row)
        log(f"   {name:20s} {impl:24s} {mode:7s} {ms:8.3f} ms  {row['GBps']:6.0f} GB/s"
            f" ({100 * row['frac_copy_bw']:3.0f}% of copy)  {row['TFLOPs']:5.1f} TFLOP/s")

    def ours(cfg):
        def fwd():
            with chunk_config(**cfg):
                linattn.linear_attention(q, k, v, decay=s, backend="triton")
        xs = [t.clone().requires_grad_() for t in (q, k, v)]

        def fwdbwd():
            with chunk_config(**cfg):
                o = linattn.linear_attention(*xs, decay=s, backend="triton")
                o.backward(do)
        return fwd, fwdbwd, xs

    for vname in variants:
        if elapsed() > BUDGET:
            RESULTS["skipped"].append(f"{name}/{vname}")
            continue
        try:
            fwd, fwdbwd, xs = ours(VARIANTS[vname])
            record(f"ours[{vname}]", "fwd", bench(fwd))
            record(f"ours[{vname}]", "fwd+bwd", bench(fwdbwd, xs))
        except Exception as e:  # noqa: BLE001
            RESULTS["errors"].append({"item": f"time {name} ours[{vname}]", "error": f"{type(e).__name__}: {str(e)[:300]}"})
            log(f"!! {name} ours[{vname}]: {type(e).__name__}: {str(e)[:300]}")
    if not baselines:
        return
    if LIGHTNING is not None and elapsed() < BUDGET:
        try:
            s3 = s.reshape(H, 1, 1).contiguous()
            record("lightning_attn", "fwd", bench(lambda: LIGHTNING(q, k, v, s3)))
            xs = [t.clone().requires_grad_() for t in (q, k, v)]
            record("lightning_attn", "fwd+bwd", bench(lambda: LIGHTNING(*xs, s3).backward(do), xs))
        except Exception as e:  # noqa: BLE001
            RESULTS["errors"].append({"item": f"time {name} lightning", "error": f"{type(e).__name__}: {str(e)[:300]}"})
            log(f"!! {name} lightning_attn: {type(e).__name__}: {str(e)[:300]}")
    if FLA is not None and elapsed() < BUDGET:
        try:
            qt, kt, vt, dot = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
            record("fla.chunk_simple_gla", "fwd", bench(lambda: fla_fn(qt, kt, vt, s)))
            xs = [t.clone().requires_grad_() for t in (qt, kt, vt)]
            record("fla.chunk_simple_gla", "fwd+bwd", bench(lambda: fla_fn(*xs, s)[0].backward(dot), xs))
        except Exception as e:  # noqa: BLE001
            RESULTS["errors"].append({"item": f"time {name} fla", "error": f"{type(e).__name__}: {str(e)[:300]}"})
            log(f"!! {name} fla: {type(e).__name__}: {str(e)[:300]}")


def time_decode(B=64, H=16, D=128, E=128):
    from linattn.backends.triton.decode import fused_decode_step

    g = torch.Generator(device=DEV).manual_seed(15)
    q = torch.randn(B, H, D, device=DEV, generator=g, dtype=torch.bfloat16)
    k = torch.randn(B, H, D, device=DEV, generator=g, dtype=torch.bfloat16)
    v = torch.randn(B, H, E, device=DEV, generator=g, dtype=torch.bfloat16)
    s = torch.rand(H, device=DEV, generator=g)
    states = [torch.randn(B, H, D, E, device=DEV, generator=g) for _ in range(3)]  # rotate: > L2
    outs = [torch.empty_like(states[0]) for _ in range(3)]
    state_bytes = states[0].numel() * 4
    floor_ms = 2 * state_bytes / (RESULTS["copy_bw_GBps"] * 1e9) * 1e3
    # correctness first
    from linattn.backends.triton.decode import decode_step_reference

    o, new = fused_decode_step(q, k, v, states[0], decay=s, scale=0.5)
    o_r, new_r = decode_step_reference(q, k, v, states[0], decay=s, scale=0.5)
    err = (rel(new, new_r), rel(o.float(), o_r.float()))
    it = [0]

    def step():
        i = it[0] = (it[0] + 1) % 3
        fused_decode_step(q, k, v, states[i], decay=s, scale=0.5)

    def step_inplace():
        i = it[0] = (it[0] + 1) % 3
        fused_decode_step(q, k, v, states[i], decay=s, scale=0.5, inplace=True)

    for name, fn in (("fused_decode_step", step), ("fused_decode_step[inplace]", step_inplace)):
        ms = bench(fn)
        row = dict(impl=name, B=B, H=H, D=D, E=E, ms=ms, state_rw_floor_ms=floor_ms, ratio_to_floor=ms / floor_ms,
                   state_err=err[0], o_err=err[1])
        RESULTS["decode"].append(row)
        log(f"   {name:28s} {ms * 1e3:7.1f} us   floor (state read+write at copy bw) {floor_ms * 1e3:6.1f} us"
            f"   ratio {ms / floor_ms:.2f}   errors state {err[0]:.1e} o {err[1]:.1e}")


# -- summary ---------------------------------------------------------------------------------------------

def summary():
    log("\n==== summary (bf16, decay; ms median; % of measured copy bandwidth; speed-up = fla / ours) ====")
    log(f"device: {RESULTS['env'].get('device')}  copy bw: {RESULTS['copy_bw_GBps'] or float('nan'):.0f} GB/s"
        f"  elapsed {elapsed():.0f}s")
    rows = RESULTS["timings"]
    for shape, *_ in SHAPES:
        for mode in ("fwd", "fwd+bwd"):
            mine = [r for r in rows if r["shape"] == shape and r["mode"] == mode and r["impl"].startswith("ours")]
            if not mine:
                continue
            best = min(mine, key=lambda r: r["ms"])
            dflt = next((r for r in mine if r["impl"] == "ours[default]"), best)
            fla = next((r for r in rows if r["shape"] == shape and r["mode"] == mode and r["impl"].startswith("fla")), None)
            la = next((r for r in rows if r["shape"] == shape and r["mode"] == mode and r["impl"].startswith("light")), None)
            f = lambda r: f"{r['ms']:7.3f} ({100 * r['frac_copy_bw']:3.0f}%)" if r else "      -      "  # noqa: E731
            sp = lambda r: f"{r['ms'] / best['ms']:.2f}x" if r else "-"  # noqa: E731
            log(f"{shape:20s} {mode:7s} default {f(dflt)}  best {best['impl'][5:-1]:14s} {f(best)}  "
                f"fla {f(fla)} [{sp(fla)}]  lightning {f(la)} [{sp(la)}]")
    for r in RESULTS["decode"]:
        log(f"decode {r['impl']:28s} {r['ms'] * 1e3:7.1f} us = {r['ratio_to_floor']:.2f}x the state read+write floor")
    ok = sum(r["ok"] for r in RESULTS["correctness"])
    log(f"correctness (harness bands): {ok}/{len(RESULTS['correctness'])} ok;"
        f" worst error/band {max([r['worst_fraction'] for r in RESULTS['correctness']] or [0]):.2f}")
    for r in RESULTS["large_n"]:
        log("large N:", {k: (f"{v:.1e}" if isinstance(v, float) else v) for k, v in r.items()})
    for r in RESULTS["vs_fla"]:
        log("vs fla:", {k: f"{v:.1e}" for k, v in r.items() if k.endswith("ours-fla")})
    log(f"errors: {len(RESULTS['errors'])}  skipped: {RESULTS['skipped']}")
    for e in RESULTS["errors"]:
        log(f"  error in {e['item']}: {e['error'][:200]}")


def main():
    global FLA, LIGHTNING
    if not DRY and not torch.cuda.is_available():
        log("no CUDA device: nothing to do (CHUNK_DRYRUN=1 TRITON_INTERPRET=1 checks the script on a CPU)")
        return
    item("env", env)
    if not DRY:
        FLA = item("import fla", _import_fla)
        LIGHTNING = item("import lightning_attn", _import_lightning)
    RESULTS["env"]["fla"] = FLA is not None
    RESULTS["env"]["lightning_attn"] = LIGHTNING is not None
    item("copy bandwidth", copy_bandwidth)
    probs = item("harness problems", harness_problems) or []
    if DRY:
        probs = [p for p in probs if p.N * p.D * p.E <= 130 * 48 * 60][:4]
    for p in probs:
        item(f"correct {p.describe()}", check_harness, p, reserve=5)
    save()
    item("decode", time_decode, *((2, 2, 16, 16) if DRY else ()))
    item(f"time {SHAPES[0][0]}", time_shape, *SHAPES[0], list(VARIANTS))
    save()
    item(f"time {SHAPES[1][0]}", time_shape, *SHAPES[1], list(VARIANTS))
    save()
    if FLA is not None:
        item("vs fla", check_vs_fla, reserve=5)
    big = dict(N=70, D=16, E=16) if DRY else {}
    item("large N bf16", check_large_n, torch.bfloat16, reserve=5, **big)
    item("large N fp32", check_large_n, torch.float32, reserve=5, **big)
    item("backward N8192 bf16", check_backward_long, reserve=5, **(dict(N=70, D=16) if DRY else {}))
    for shape in SHAPES[2:]:
        item(f"time {shape[0]}", time_shape, *shape, list(SHORT), reserve=10)
    save()
    summary()
    save()


if __name__ == "__main__":
    main()
