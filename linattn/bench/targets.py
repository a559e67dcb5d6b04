"""What gets timed: every registered linattn backend, and the baselines that are installed.

A :class:`Target` turns a :class:`~linattn.bench.shapes.Shape` into a closure to time,
or says why it cannot (``why_not``), so the suites stay generic: backends land in the
registry and appear in the next run with no edit here.

* ``linattn:<name>`` — each backend of :func:`linattn.list_backends`, called through its
  internal contract (``Backend.fn``) on inputs validated once, so the time is the
  backend's and not the validation's (``linear_attention`` checks ``slopes >= 0`` with
  one device sync per call). Requests a backend cannot serve are skipped with
  ``Backend.unsupported``'s reason.
* ``decode_step:<torch|triton>`` — :func:`linattn.decode_step`, the public one-token
  step (validation included), for decode shapes.
* ``fla:chunk_simple_gla`` — fla's chunked simple-GLA in its own layout ``[B, T, H, D]``
  with ``g_gamma = -slopes`` (decode: ``fused_recurrent_simple_gla``).
* ``lightning_attn:lightning_attn2`` — Lightning Attention-2's Triton kernels, layout
  ``[B, H, N, D]``, slopes ``[H, 1, 1]``.
* ``torch:sdpa`` — ``F.scaled_dot_product_attention``, the softmax yardstick (same FLOPs
  as the quadratic form; causal for causal/decay shapes, the 0/1 mask as a bool mask).

Layout changes a baseline needs happen once, outside the timed closure.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._registry import LINEAR_KINDS, Backend, list_backends
from .shapes import Inputs, Shape

__all__ = [
    "Target",
    "linattn_targets",
    "decode_step_targets",
    "baseline_targets",
    "all_targets",
    "PYTHON_LOOP_LIMITS",
]

#: Backends that loop over tokens or blocks in Python, and the longest N timed for each
#: (CPU, GPU): past these one call takes seconds and the point says nothing new.
PYTHON_LOOP_LIMITS = {"recurrent": (512, 2048), "blocked": (1024, 8192)}


@dataclass
class Target:
    name: str  # "linattn:reference", "fla:chunk_simple_gla", ...
    kind: str  # "linattn" | "baseline"
    form_of: Callable[[Shape], str]
    why_not: Callable[[Shape, str, str], Optional[str]]  # (shape, device, pass) -> reason or None
    build: Callable[[Shape, Inputs, str], Callable[[], object]]  # -> closure returning o [B, H, N, E]
    materializes: bool = False  # holds N×N scores (memory guard)

    @property
    def short(self) -> str:
        return self.name.split(":", 1)[1]


# ----------------------------------------------------------------------------- linattn backends


def _backward(o: torch.Tensor, inputs: Inputs):
    leaves = inputs.grad_leaves()
    return torch.autograd.grad(o, leaves, inputs.do)


def _linattn_target(b: Backend) -> Target:
    def form_of(shape: Shape) -> str:
        if shape.decode or "recurrent" in b.name:
            return "recurrent"
        return "chunked" if b.linear_time and shape.mask in LINEAR_KINDS else "quadratic"

    def why_not(shape: Shape, device: str, pass_: str) -> Optional[str]:
        why = b.unsupported(shape.request(device))
        if why is not None:
            return f"{b.name}: {why}"
        if device == "cpu" and b.name.startswith("triton"):
            return f"{b.name}: runs under the Triton interpreter on the CPU, which is a correctness tool, not a timing"
        for prefix, limits in PYTHON_LOOP_LIMITS.items():
            limit = limits[0] if device == "cpu" else limits[1]
            if b.name.startswith(prefix) and shape.N > limit:
                return f"{b.name}: loops in Python; N={shape.N} > {limit} takes seconds per call"
        return None

    def build(shape: Shape, x: Inputs, pass_: str):
        kw = dict(
            causal=x.causal, decay=x.slopes, scale=1.0,
            initial_state=x.state, output_final_state=shape.decode,
        )

        def fwd():
            o, _ = b.fn(x.q, x.k, x.v, x.mask, **kw)
            return o

        if pass_ == "fwd":
            return fwd

        def fwd_bwd():
            o = fwd()
            _backward(o, x)
            return o

        return fwd_bwd

    materializes = not b.linear_time and not b.name.startswith(("triton", "cuda"))
    return Target(f"linattn:{b.name}", "linattn", form_of, why_not, build, materializes)


def linattn_targets(names=None) -> list[Target]:
    """A target per registered backend (``names``: only these backend names)."""
    backends = list_backends()
    if names:
        known = {b.name for b in backends}
        unknown = set(names) - known
        if unknown:
            raise ValueError(f"unknown backends {sorted(unknown)}; registered: {sorted(known)}")
        backends = [b for b in backends if b.name in set(names)]
    return [_linattn_target(b) for b in backends]


def _decode_step_target(which: str) -> Target:
    def why_not(shape: Shape, device: str, pass_: str) -> Optional[str]:
        try:
            from .. import decode_step  # noqa: F401
        except ImportError:
            return "linattn.decode_step is not available"
        if not shape.decode:
            return "decode_step times decode shapes only"
        if pass_ != "fwd":
            return "decode is timed forward only"
        if which == "triton":
            from ..backends.triton import common

            why = common.unavailable()
            if why is not None:
                return f"decode_step(backend='triton'): {why}"
            if device == "cpu":
                return "decode_step(backend='triton') on the CPU runs the Triton interpreter, not a timing"
        return None

    def build(shape: Shape, x: Inputs, pass_: str):
        from .. import decode_step

        def step():
            o, _ = decode_step(x.q, x.k, x.v, x.state, decay=x.slopes, scale=1.0, backend=which)
            return o  # [B, H, 1, E] for rank-4 q

        return step

    return Target(f"linattn:decode_step_{which}", "linattn", lambda s: "recurrent", why_not, build)


def decode_step_targets() -> list[Target]:
    """:func:`linattn.decode_step` with each of its backends."""
    return [_decode_step_target("torch"), _decode_step_target("triton")]


# ----------------------------------------------------------------------------- baselines


def _importable(module: str) -> Optional[str]:
    try:
        importlib.import_module(module)
        return None
    except Exception as e:  # ImportError, or a broken install (wrong triton)
        return f"{module} is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def _needs_cuda(device: str, name: str) -> Optional[str]:
    return None if device == "cuda" else f"{name} runs Triton kernels on CUDA only"


def _fla_target() -> Target:
    def why_not(shape, device, pass_):
        return (
            _needs_cuda(device, "fla")
            or _importable("fla.ops.simple_gla")
            or (None if shape.mask in ("causal", "decay") else f"fla simple GLA has no {shape.mask!r} mask")
            or (None if shape.kv_heads == shape.H else "fla simple GLA: no GQA/MQA")
            or (None if pass_ == "fwd" or not shape.decode else "decode is forward only")
        )

    def build(shape, x, pass_):
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

        def to_bthd(t):  # [B, H, N, X] -> [B, N, H, X]
            return t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad)

        q, k, v = to_bthd(x.q), to_bthd(x.k), to_bthd(x.v)
        do = x.do.transpose(1, 2).contiguous()
        g_gamma = -x.slopes.float() if x.slopes is not None else None
        if shape.decode:
            def step():
                o, _ = fused_recurrent_simple_gla(
                    q, k, v, g_gamma=g_gamma, scale=1.0, initial_state=x.state, output_final_state=True
                )
                return o.transpose(1, 2)
            return step

        def fwd():
            o, _ = chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0)
            return o

        if pass_ == "fwd":
            return lambda: fwd().transpose(1, 2)

        def fwd_bwd():
            o = fwd()
            torch.autograd.grad(o, (q, k, v), do)
            return o.transpose(1, 2)

        return fwd_bwd

    return Target("fla:chunk_simple_gla", "baseline", lambda s: "recurrent" if s.decode else "chunked", why_not, build)


def _lightning_target() -> Target:
    ok_dims = (16, 32, 64, 128)

    def why_not(shape, device, pass_):
        return (
            _needs_cuda(device, "lightning_attn")
            or _importable("lightning_attn.ops.triton")
            or (None if shape.mask in ("causal", "decay") else f"lightning_attn has no {shape.mask!r} mask")
            or (None if not shape.decode else "lightning_attn has no decode step")
            or (None if shape.kv_heads == shape.H else "lightning_attn: no GQA/MQA")
            or (None if shape.D in ok_dims and shape.E in ok_dims else f"lightning_attn needs D, E in {ok_dims}, got {shape.D}, {shape.E}")
        )

    def build(shape, x, pass_):
        from lightning_attn.ops.triton import lightning_attn2, lightning_attn2_no_decay

        if x.slopes is not None:
            s = x.slopes.float().reshape(-1, 1, 1).contiguous()  # (H, 1, 1)
            call = lambda: lightning_attn2(x.q, x.k, x.v, s)  # noqa: E731
        else:
            call = lambda: lightning_attn2_no_decay(x.q, x.k, x.v)  # noqa: E731
        if pass_ == "fwd":
            return call

        def fwd_bwd():
            o = call()
            torch.autograd.grad(o, (x.q, x.k, x.v), x.do)
            return o

        return fwd_bwd

    return Target("lightning_attn:lightning_attn2", "baseline", lambda s: "chunked", why_not, build)


def _sdpa_target() -> Target:
    def why_not(shape, device, pass_):
        if shape.decode:
            return "softmax attention decodes against a KV cache, not a state: no like-for-like step"
        if shape.mask.startswith("dense") and shape.mask != "dense":
            return "the yardstick takes either a dense mask or causal, not both"
        return None

    def build(shape, x, pass_):
        import torch.nn.functional as F

        gqa = shape.kv_heads != shape.H
        mask = x.mask.bool() if x.mask is not None else None  # (1, 1, N, N): True = attend
        if mask is not None:
            mask[..., 0] = True  # a query that attends to nothing gives NaN in softmax

        def fwd():
            return F.scaled_dot_product_attention(
                x.q, x.k, x.v, attn_mask=mask, is_causal=x.causal, scale=1.0, enable_gqa=gqa
            )

        if pass_ == "fwd":
            return fwd

        def fwd_bwd():
            o = fwd()
            _backward(o, x)
            return o

        return fwd_bwd

    return Target("torch:sdpa", "baseline", lambda s: "quadratic", why_not, build, materializes=False)


def baseline_targets() -> list[Target]:
    return [_fla_target(), _lightning_target(), _sdpa_target()]


def all_targets(backends=None, *, baselines: bool = True) -> list[Target]:
    return linattn_targets(backends) + (baseline_targets() if baselines else [])
