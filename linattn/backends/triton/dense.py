"""Backend ``triton_dense``: the general operator in Triton, flash-style, for every mask kind.

    o = scale · (q kᵀ ⊙ W) v,      W = M ⊙ C     (M dense, C causal/decay; either optional)

The kernels (``dense_fwd.py``, ``dense_bwd.py``) tile the N×M scores and never store them,
so the extra memory is O(1) per program instead of the reference's O(B·H·N·M). Gradients
for q, k, v, the dense mask (summed over its broadcast dimensions, no per-head buffer) and
the decay slopes; each is computed only when an input needs it.

The layers, bottom up:

* kernels and their launchers (autotuned on a GPU, fixed tiles under the interpreter);
* ``linattn::dense_fwd`` / ``linattn::dense_bwd`` — ``torch.library.custom_op``s with
  fake (meta) implementations and ``register_autograd``, so ``torch.compile`` can trace
  through the operator without graph breaks;
* :func:`dense_linear_attention` — the backend function (internal contract of
  ``linattn._registry``), which adds the recurrent-state terms for causal/decay without a
  dense mask. With λ = exp(-s) (λ = 1 for plain causal) the recurrence unrolls to

      o_i += scale · λ^(i+1) q_i S_0                 (initial state seen from row i)
      S_N  = λ^N S_0 + Σ_j λ^(N-1-j) k_jᵀ v_j          (final state)

  two O(N·D·E) products done with differentiable torch ops in the state dtype.

The ``triton`` backend routes dense-mask requests here; ``triton_dense`` alone also runs
causal/decay quadratically, to compare in-kernel masks with the same mask as a tensor.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..._registry import Backend, MASK_KINDS
from .._common import expand_kv, state_dtype
from . import common
from .dense_bwd import dense_backward
from .dense_fwd import dense_forward

__all__ = ["dense_linear_attention", "DENSE_BACKEND"]

_FLOAT_KERNEL_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})


# -- custom ops: the quadratic part -----------------------------------------------------------

@torch.library.custom_op("linattn::dense_fwd", mutates_args=())
def _dense_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
    slopes: Optional[torch.Tensor], causal: bool, scale: float,
) -> torch.Tensor:
    """o [B, H, N, E] = scale · (q kᵀ ⊙ W) v in q's dtype."""
    common.require()
    return dense_forward(q, k, v, mask, slopes, causal, scale)


@_dense_fwd_op.register_fake
def _(q, k, v, mask, slopes, causal, scale):
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


@torch.library.custom_op("linattn::dense_bwd", mutates_args=())
def _dense_bwd_op(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
    slopes: Optional[torch.Tensor], causal: bool, scale: float,
    need_dq: bool, need_dk: bool, need_dv: bool, need_dmask: bool, need_dslopes: bool,
) -> list[torch.Tensor]:
    """[dq, dk, dv, dmask, dslopes]; a gradient not asked for is an empty tensor."""
    common.require()
    grads = dense_backward(
        do, q, k, v, mask, slopes, causal, scale,
        need_dq=need_dq, need_dkv=(need_dk, need_dv), need_dmask=need_dmask, need_dslopes=need_dslopes,
    )
    return [g if g is not None else q.new_empty(0) for g in grads]


@_dense_bwd_op.register_fake
def _(do, q, k, v, mask, slopes, causal, scale, need_dq, need_dk, need_dv, need_dmask, need_dslopes):
    def like(t, need):
        return t.new_empty(t.shape) if need and t is not None else q.new_empty(0)

    return [like(q, need_dq), like(k, need_dk), like(v, need_dv), like(mask, need_dmask), like(slopes, need_dslopes)]


def _setup_context(ctx, inputs, output):
    q, k, v, mask, slopes, causal, scale = inputs
    ctx.save_for_backward(q, k, v, mask, slopes)
    ctx.causal, ctx.scale = causal, scale


def _gradients(ctx, do, bwd):
    """The backward rule of both paths: which gradients are wanted, then
    ``bwd(do, q, k, v, mask, slopes, causal, scale, need_dq, need_dk, need_dv, need_dmask,
    need_dslopes)`` (the custom op, or the launchers directly)."""
    q, k, v, mask, slopes = ctx.saved_tensors
    need = ctx.needs_input_grad  # (q, k, v, mask, slopes, causal, scale)
    need_dmask = bool(need[3]) and mask is not None
    need_dslopes = bool(need[4]) and slopes is not None
    if not (need[0] or need[1] or need[2] or need_dmask or need_dslopes):
        return None, None, None, None, None, None, None
    dq, dk, dv, dm, ds = bwd(
        do, q, k, v, mask, slopes, ctx.causal, ctx.scale,
        bool(need[0]), bool(need[1]), bool(need[2]), need_dmask, need_dslopes,
    )
    return (
        dq if need[0] else None,
        dk if need[1] else None,
        dv if need[2] else None,
        dm if need_dmask else None,
        ds if need_dslopes else None,
        None,
        None,
    )


def _backward(ctx, do):
    return _gradients(ctx, do, _dense_bwd_op)


_dense_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# -- the eager path: the same kernels without the custom-op dispatch -------------------------
#
# A ``torch.library.custom_op`` call with ``register_autograd`` costs a few hundred
# microseconds of host time per direction (dispatcher, schema checks, the generated autograd
# Function); on a GPU whose kernels take ~0.1-0.5 ms (causal/decay at N = 8192) that host
# time, not the kernels, set the measured forward+backward. Eager calls on plain tensors go
# through this ``autograd.Function`` instead; ``torch.compile``, fake/meta tensors and tensor
# subclasses keep the custom ops (``LINATTN_TRITON_DENSE_OP=custom_op`` forces them, to time
# the two paths against each other).

def _launch_backward(do, q, k, v, mask, slopes, causal, scale, need_dq, need_dk, need_dv, need_dmask,
                     need_dslopes):
    return dense_backward(do, q, k, v, mask, slopes, causal, scale, need_dq=need_dq,
                          need_dkv=(need_dk, need_dv), need_dmask=need_dmask, need_dslopes=need_dslopes)


class _DenseFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, slopes, causal, scale):
        common.require()
        ctx.save_for_backward(q, k, v, mask, slopes)
        ctx.causal, ctx.scale = causal, scale
        return dense_forward(q, k, v, mask, slopes, causal, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        return _gradients(ctx, do, _launch_backward)


def _eager_ok(*ts) -> bool:
    """Whether the direct autograd.Function path applies (plain tensors, not compiling)."""
    if os.environ.get("LINATTN_TRITON_DENSE_OP", "") == "custom_op" or torch.compiler.is_compiling():
        return False
    return all(t is None or type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in ts) and (
        ts[0].device.type != "meta")


def _dense_quadratic(q, k, v, mask, slopes, causal: bool, scale: float) -> torch.Tensor:
    """o = scale · (q kᵀ ⊙ W) v through the eager Function or the custom op."""
    if _eager_ok(q, k, v, mask, slopes):
        return _DenseFn.apply(q, k, v, mask, slopes, causal, scale)
    return _dense_fwd_op(q, k, v, mask, slopes, causal, scale)


# -- the backend function -----------------------------------------------------------------

def _decay_powers(slopes: Optional[torch.Tensor], n: int, offset: int, dtype) -> Optional[torch.Tensor]:
    """[1, H, n, 1] of λ^(t + offset), t = 0..n-1, λ = exp(-s); None for plain causal."""
    if slopes is None:
        return None
    t = torch.arange(n, device=slopes.device, dtype=dtype) + offset
    return torch.exp(-slopes.to(dtype)[None, :, None, None] * t[None, None, :, None])


def dense_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    causal: bool = False,
    decay: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
):
    """The general operator through the flash-style Triton kernels.

    Args:
        q (torch.Tensor): `[B, H, N, D]`, float16/bfloat16/float32, D <= 256.
        k (torch.Tensor): `[B, Hkv, M, D]`, Hkv divides H.
        v (torch.Tensor): `[B, Hkv, M, E]`, E <= 256.
        mask (torch.Tensor, optional): `[B|1, H|1, N, M]` in q's dtype. Default: `None`.
        causal (bool): `W[i, j] = 0` for `j > i` (N == M). Default: `False`.
        decay (torch.Tensor, optional): slopes `[H]`, implies causal. Default: `None`.
        scale (float): multiplies o. Default: `1.0`.
        initial_state (torch.Tensor, optional): `[B, H, D, E]` (causal/decay, no mask).
        output_final_state (bool): also return `S_N` `[B, H, D, E]`. Default: `False`.

    Returns:
        `(o [B, H, N, E] in q's dtype, final_state [B, H, D, E] or None)`.
    """
    if q.dtype not in _FLOAT_KERNEL_DTYPES:
        raise TypeError(f"triton_dense computes float16, bfloat16 or float32, got {q.dtype}")
    D, E = q.shape[-1], v.shape[-1]
    if max(D, E) > 256:
        raise ValueError(f"triton_dense supports head dims up to 256, got D={D}, E={E}")
    causal = bool(causal or decay is not None)
    o = _dense_quadratic(q, k, v, mask, decay, causal, float(scale))
    if initial_state is None and not output_final_state:
        return o, None

    # -- recurrent-state terms (causal/decay without a dense mask; see the module docstring)
    B, H, N, _ = q.shape
    sdt = state_dtype(q.dtype)
    final = None
    if initial_state is not None:
        lam_q = _decay_powers(decay, N, 1, sdt)  # [1, H, N, 1]  λ^(i+1)
        qs = q.to(sdt) if lam_q is None else q.to(sdt) * lam_q
        o = (o.to(sdt) + scale * (qs @ initial_state.to(sdt))).to(q.dtype)  # [B, H, N, E]
    if output_final_state:
        lam_k = _decay_powers(decay, N, 0, sdt)  # λ^j, flipped below to λ^(N-1-j)
        ke = expand_kv(k, H).to(sdt)  # [B, H, N, D]
        if lam_k is not None:
            ke = ke * lam_k.flip(2)
        final = ke.transpose(-1, -2) @ expand_kv(v, H).to(sdt)  # [B, H, D, E]
        if initial_state is not None:
            s0 = initial_state.to(sdt)
            final = final + (s0 if decay is None else torch.exp(-decay.to(sdt) * N)[None, :, None, None] * s0)
    return o, final


DENSE_BACKEND = Backend(
    name="triton_dense",
    fn=dense_linear_attention,
    description="Triton flash-style kernels for the general operator (any mask kind, quadratic)",
    devices=common.devices(),
    dtypes=_FLOAT_KERNEL_DTYPES,
    mask_kinds=frozenset(MASK_KINDS),
    max_head_dim=256,
    auto_rank={},
    available=common.unavailable,
)
