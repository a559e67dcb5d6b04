"""One benchmark case from start to finish: skip or build, check the answer, time, record.

:func:`run_case` is what every ``benchmarks/bench_*.py`` test calls with pytest-benchmark's
``benchmark`` fixture. In order:

1. ``Target.why_not`` and a memory guard decide whether the case runs here at all;
2. the closure runs once and its output is compared with the float64 reference (when
   that is affordable) — a fast wrong answer is not a result;
3. one more call measures how long a call takes, which sets the number of rounds;
4. one call under :func:`~linattn.bench.timing.peak_memory`;
5. ``benchmark.pedantic`` times the synchronised closure (warm-up rounds first);
6. FLOPs, bytes, the roofline fraction and the peak memory go into ``extra_info``.

A case that cannot run raises :class:`Skip` (the pytest glue turns it into a skip).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from .counts import count
from .roofline import Roofline
from .shapes import Shape, make_inputs
from .targets import Target
from .timing import choose_rounds, peak_memory, synchronize, synchronized

__all__ = ["Skip", "Settings", "run_case", "check_output", "TOLERANCE"]


class Skip(Exception):
    """The case cannot run here; the message says why."""


@dataclass
class Settings:
    device: str
    roofline: Optional[Roofline]
    budget_s: float = 1.0  # time the timed rounds may take, per case
    min_rounds: int = 3
    max_rounds: int = 20
    warmup_rounds: int = 1
    rounds: Optional[int] = None  # fixed rounds, overriding the budget
    check: bool = True
    memory_limit: Optional[int] = None  # bytes an N×N-materialising case may need
    deadline: Optional[float] = None  # time.monotonic() after which cases are skipped


#: Relative Frobenius error ||o - ref|| / ||ref|| accepted by the benchmark's sanity check.
#: Loose on purpose: the property suites hold the derived bands; this only stops a broken
#: kernel from being timed. float32 allows TF32 tensor-core products.
TOLERANCE = {"float64": 1e-9, "float32": 5e-3, "float16": 2e-2, "bfloat16": 6e-2}
_CHECK_MAX_ELEMS = 2 ** 27  # reference's N×N scores in float64 above this: check finiteness only


def _quadratic_bytes(shape: Shape, pass_: str) -> int:
    """Rough memory of a backend that materialises the N×N scores (A, W, A ⊙ W, grads)."""
    cdt = 8 if shape.dtype == "float64" else 4
    per = shape.B * shape.H * shape.N * shape.N * cdt
    return per * (4 if pass_ == "fwd" else 8)


_REF_CACHE: dict = {}  # (shape id, device) -> float64 reference output; inputs are seeded


def _reference(shape: Shape, inputs) -> torch.Tensor:
    key = (shape.id, str(inputs.q.device))
    if key in _REF_CACHE:
        return _REF_CACHE[key]
    from ..backends.reference import reference_forward

    d = torch.float64
    ref, _ = reference_forward(
        inputs.q.detach().to(d), inputs.k.detach().to(d), inputs.v.detach().to(d),
        None if inputs.mask is None else inputs.mask.to(d),
        causal=inputs.causal, decay=None if inputs.slopes is None else inputs.slopes.to(d),
        scale=1.0, initial_state=None if inputs.state is None else inputs.state.to(d),
        output_final_state=False,
    )
    _REF_CACHE.clear()  # keep one: the suites run all targets of a shape in a row
    _REF_CACHE[key] = ref
    return ref


def check_output(shape: Shape, o: torch.Tensor, inputs) -> str:
    """Compare ``o`` with the float64 reference; return a short description, raise on mismatch."""
    if tuple(o.shape) != (shape.B, shape.H, shape.N, shape.E):
        raise AssertionError(f"output shape: expected {(shape.B, shape.H, shape.N, shape.E)}, got {tuple(o.shape)}")
    if not bool(torch.isfinite(o).all()):
        raise AssertionError(f"output has {int((~torch.isfinite(o)).sum())} non-finite values")
    if shape.B * shape.H * shape.N * shape.N > _CHECK_MAX_ELEMS:
        return "finite (too large for the float64 reference)"
    ref = _reference(shape, inputs)
    o = o.detach().to(ref.dtype).reshape(ref.shape)
    err = float((o - ref).norm() / ref.norm().clamp_min(1e-300))
    tol = TOLERANCE[shape.dtype]
    if not err <= tol:
        raise AssertionError(f"relative error {err:.3g} against the float64 reference exceeds {tol:g} ({shape.dtype})")
    return f"rel err {err:.2e}"


_INPUT_CACHE: dict = {}  # (shape id, device, grad) -> Inputs; targets never modify them


def _inputs(shape: Shape, device: str, grad: bool):
    key = (shape.id, device, grad)
    if key not in _INPUT_CACHE:
        for k in [k for k in _INPUT_CACHE if k[0] != shape.id]:
            del _INPUT_CACHE[k]  # the suites run every target of a shape in a row
        _INPUT_CACHE[key] = make_inputs(shape, device, requires_grad=grad)
    return _INPUT_CACHE[key]


def _call_once(fn, device) -> float:
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def run_case(benchmark, target: Target, shape: Shape, pass_: str, settings: Settings) -> dict:
    """Time ``target`` on ``shape`` for ``pass_`` ("fwd" or "fwd+bwd"); return extra_info."""
    dev = settings.device
    if settings.deadline is not None and time.monotonic() > settings.deadline:
        raise Skip("time budget of this run is spent (--linattn-deadline)")
    why = target.why_not(shape, dev, pass_)
    if why:
        raise Skip(why)
    if target.materializes and settings.memory_limit is not None:
        need = _quadratic_bytes(shape, pass_)
        if need > settings.memory_limit:
            raise Skip(f"{target.short} holds N×N scores: ~{need / 2**30:.1f} GiB > limit {settings.memory_limit / 2**30:.1f} GiB")

    try:
        inputs = _inputs(shape, dev, pass_ == "fwd+bwd")
        fn = target.build(shape, inputs, pass_)
        t0 = time.perf_counter()
        o = fn()  # first call: compiles kernels, checks the answer
        synchronize(dev)
        first = time.perf_counter() - t0
        checked = "skipped (not the same operator)"
        if settings.check and target.name != "torch:sdpa":
            checked = check_output(shape, o, inputs)
        del o
        timed = synchronized(fn, dev)
        # a second call times one call without compilation (Triton JIT, cuBLAS heuristics);
        # on the CPU nothing compiles, so a first call longer than the budget is the estimate
        recheck = first <= settings.budget_s or (dev == "cuda" and first < 2.0)
        once = _call_once(timed, dev) if recheck else first
        peak, how = peak_memory(timed, dev)
    except torch.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        raise Skip(f"out of memory: {str(e).splitlines()[0]}") from None

    rounds = settings.rounds or choose_rounds(
        once, budget_s=settings.budget_s, min_rounds=settings.min_rounds, max_rounds=settings.max_rounds
    )
    benchmark.group = f"{shape.id} {pass_}"
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=settings.warmup_rounds)

    form = target.form_of(shape)
    c = count(shape, form=form, pass_=pass_)
    info = {
        "target": target.name, "kind": target.kind, "backend": target.short,
        "family": shape.name, "shape": shape.id, "pass": pass_,
        "B": shape.B, "H": shape.H, "Hkv": shape.kv_heads, "N": shape.N, "D": shape.D, "E": shape.E,
        "mask": shape.mask, "dtype": shape.dtype, "decode": shape.decode, "device": dev,
        "form": form, "flops": c.flops, "bytes": c.bytes, "intensity": c.intensity,
        "peak_mem_bytes": peak, "peak_mem_method": how, "check": checked,
    }
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    median = getattr(stats, "median", None)
    if median:
        info["median_s"] = median
        info["tflops"] = c.flops / median / 1e12
        info["gbps"] = c.bytes / median / 1e9
    rl = settings.roofline
    if rl is not None:
        t_roof, bound = rl.bound(c.flops, c.bytes, shape.dtype)
        info.update({
            "roofline_card": rl.card,
            "roofline_source": {
                "flops": rl.flops_source.get(shape.dtype, "none"), "bandwidth": rl.bandwidth_source,
            },
            "peak_flops": rl.flops.get(shape.dtype), "peak_bandwidth": rl.bandwidth,
            "roofline_bound": bound, "roofline_s": t_roof,
            "roofline_fraction": (t_roof / median) if (t_roof and median) else None,
        })
    benchmark.extra_info.update(info)
    return info
