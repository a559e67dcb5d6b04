"""The public entry point: validate once, describe the call, dispatch to a backend."""
from __future__ import annotations

import math
import numbers
import os
import warnings
import weakref
from typing import NamedTuple, Optional, Union

import torch

from ._registry import Request, select_backend

__all__ = [
    "linear_attention",
    "normal_linear_attention",
    "flash_linear_attention",
    "LinearAttentionOutput",
    "validate",
    "state_dtype",
    "Float16OverflowWarning",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class LinearAttentionOutput(NamedTuple):
    """``(o, final_state)``, returned when ``output_final_state=True``."""

    o: torch.Tensor
    final_state: torch.Tensor


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrent state is kept in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def _check_tensor(name: str, t, ranks=(4,)) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{name} must have rank {want}, got shape {_shape(t)} (rank {t.dim()})")


# Slopes already found finite and >= 0: id -> (weak reference, version counter). Reading the
# values back costs a device sync, once per call; a model passes the same slopes tensor (a buffer
# or a parameter) layer after layer, so it is checked again only when it was modified in place
# (its version counter moved) or is a different tensor.
_CHECKED_SLOPES: "dict[int, tuple[weakref.ref, int]]" = {}


def check_slope_values(decay: torch.Tensor, meaning: str) -> None:
    """Raise ValueError naming the heads whose slopes are NaN, infinite or negative."""
    if not decay.numel():
        return
    seen = _CHECKED_SLOPES.get(id(decay))
    if seen is not None and seen[0]() is decay and seen[1] == decay._version:
        return
    ok = torch.isfinite(decay) & (decay >= 0)
    if not bool(ok.all()):
        bad = [(h, s) for h, s in enumerate(decay.tolist()) if not ok[h]]
        raise ValueError(
            f"decay slopes must be finite and >= 0 ({meaning}), got "
            f"{', '.join(f's[{h}]={s:g}' for h, s in bad[:8])}{' ...' if len(bad) > 8 else ''}"
        )
    if len(_CHECKED_SLOPES) > 256:  # drop entries whose tensors are gone
        for key in [k for k, (ref, _) in _CHECKED_SLOPES.items() if ref() is None]:
            del _CHECKED_SLOPES[key]
    try:
        _CHECKED_SLOPES[id(decay)] = (weakref.ref(decay), decay._version)
    except TypeError:  # a tensor type without weak references: simply check it every time
        pass


def validate(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
    initial_state=None, output_final_state=False, cu_seqlens=None,
):
    """Check every input; return ``(q, k, v, mask4d, causal, decay, scale, state0, cu_seqlens, Request)``.

    Raises TypeError for wrong types/dtypes and ValueError for wrong shapes, devices or
    combinations, each message naming what was expected and what arrived.
    """
    _check_tensor("q", q)
    _check_tensor("k", k)
    _check_tensor("v", v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _FLOATS:
            raise TypeError(
                f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, H, N, D = q.shape
    Bk, Hkv, M, Dk = k.shape
    Bv, Hv, Mv, E = v.shape
    if Bk != B or Bv != B:
        raise ValueError(
            f"batch sizes differ: q {_shape(q)}, k {_shape(k)}, v {_shape(v)} (expected q [B, H, N, D], "
            f"k [B, Hkv, M, D], v [B, Hkv, M, E])"
        )
    if Dk != D:
        raise ValueError(f"q and k must share the last dim D: q {_shape(q)}, k {_shape(k)}")
    if Hv != Hkv or Mv != M:
        raise ValueError(
            f"k and v must share heads and length: k {_shape(k)} [B, Hkv, M, D], v {_shape(v)} [B, Hkv, M, E]"
        )
    if Hkv == 0 and H != 0 or (Hkv != 0 and H % Hkv != 0):
        raise ValueError(
            f"the number of k/v heads must divide the number of q heads (MQA/GQA), "
            f"got H={H} (q {_shape(q)}) and Hkv={Hkv} (k {_shape(k)})"
        )

    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be a bool, got {type(output_final_state).__name__}")
    # Value checks need values: skipped while tracing and on the meta device (shapes only).
    check_values = not torch.compiler.is_compiling() and q.device.type != "meta"
    if isinstance(scale, torch.Tensor) or not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")

    # -- decay slopes
    if decay is not None:
        _check_tensor("decay", decay, ranks=(1,))
        if decay.dtype not in _FLOATS:
            raise TypeError(f"decay slopes must be a floating tensor, got {decay.dtype}")
        if decay.shape[0] != H:
            raise ValueError(f"decay slopes must have shape [H]=[{H}], got {_shape(decay)}")
        if decay.device != q.device:
            raise ValueError(f"decay slopes must be on {q.device}, got {decay.device}")
        if check_values:
            check_slope_values(decay, "W[i,j] = exp(-s*(i-j))")
        causal = True

    # -- dense mask
    mask4 = None
    if mask is not None:
        _check_tensor("mask", mask, ranks=(2, 3, 4))
        if mask.device != q.device:
            raise ValueError(f"mask must be on {q.device}, got {mask.device}")
        if mask.dtype == torch.bool:
            mask = mask.to(q.dtype)
        elif mask.dtype != q.dtype:
            raise TypeError(
                f"mask must be bool or have q's dtype {q.dtype}, got {mask.dtype}"
            )
        mask4 = mask.reshape((1,) * (4 - mask.dim()) + _shape(mask))
        want = (B, H, N, M)
        for axis, (got, full) in enumerate(zip(mask4.shape, want)):
            if got != full and not (got == 1 and axis < 2):
                raise ValueError(
                    f"mask of shape {_shape(mask)} does not broadcast to [B|1, H|1, N, M] = "
                    f"[{B}|1, {H}|1, {N}, {M}]"
                )

    if causal and N != M:
        raise ValueError(
            f"causal and decay masks need as many queries as keys, got N={N} (q {_shape(q)}) "
            f"and M={M} (k {_shape(k)})"
        )

    # -- packed variable-length sequences
    n_seq = B
    if cu_seqlens is not None:
        _check_tensor("cu_seqlens", cu_seqlens, ranks=(1,))
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
        if cu_seqlens.device != q.device:
            raise ValueError(f"cu_seqlens must be on {q.device}, got {cu_seqlens.device}")
        if B != 1:
            raise ValueError(f"with cu_seqlens the sequences are packed along N and B must be 1, got q {_shape(q)}")
        if not causal or mask4 is not None:
            raise ValueError("cu_seqlens needs a causal or decay mask and no dense mask")
        if cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must hold at least [0, N], got {cu_seqlens.tolist()}")
        if cu_seqlens.device.type == "meta":
            raise ValueError("cu_seqlens must hold values (they split the packed sequences), got a meta tensor")
        if not torch.compiler.is_compiling():
            cu = cu_seqlens.tolist()
            if cu[0] != 0 or cu[-1] != N or any(a > b for a, b in zip(cu, cu[1:])):
                raise ValueError(
                    f"cu_seqlens must be non-decreasing from 0 to N={N}, got {cu if len(cu) <= 16 else cu[:8] + ['...'] + cu[-4:]}"
                )
        cu_seqlens = cu_seqlens.to(torch.int64)
        n_seq = cu_seqlens.numel() - 1

    # -- recurrent state
    wants_state = initial_state is not None or bool(output_final_state)
    if wants_state and (not causal or mask4 is not None):
        raise ValueError(
            "initial_state / output_final_state need a causal or decay mask and no dense mask "
            f"(got causal={causal}, decay={'given' if decay is not None else None}, "
            f"mask={'given' if mask4 is not None else None})"
        )
    sdt = state_dtype(q.dtype)
    if initial_state is not None:
        _check_tensor("initial_state", initial_state)
        if initial_state.dtype not in _FLOATS:
            raise TypeError(f"initial_state must be floating, got {initial_state.dtype}")
        if _shape(initial_state) != (n_seq, H, D, E):
            what = "[S, H, D, E] (S sequences in cu_seqlens)" if cu_seqlens is not None else "[B, H, D, E]"
            raise ValueError(
                f"initial_state must have shape {what} = {(n_seq, H, D, E)}, got {_shape(initial_state)}"
            )
        if initial_state.device != q.device:
            raise ValueError(f"initial_state must be on {q.device}, got {initial_state.device}")
        initial_state = initial_state.to(sdt)

    if mask4 is None:
        kind = "decay" if decay is not None else ("causal" if causal else "none")
    else:
        kind = "dense+decay" if decay is not None else ("dense+causal" if causal else "dense")
    req = Request(
        device=q.device.type,
        dtype=q.dtype,
        B=B, H=H, Hkv=Hkv, N=N, M=M, D=D, E=E,
        mask_kind=kind,
        mask_shape=_shape(mask4) if mask4 is not None else None,
        state=wants_state,
        grad_mask=mask4 is not None and mask4.requires_grad and torch.is_grad_enabled(),
        grad_slopes=decay is not None and decay.requires_grad and torch.is_grad_enabled(),
        varlen=cu_seqlens is not None,
    )
    return q, k, v, mask4, causal, decay, scale, initial_state, cu_seqlens, req


class Float16OverflowWarning(RuntimeWarning):
    """A float16 result holds inf/NaN although every input was finite."""


#: Float16 overflow check. Costs, float16 calls only: forward, one ``isfinite`` pass over
#: ``o`` and one device-to-host sync; backward (when q, k, v or the mask require grad), one
#: pass over ``do`` and one over ``dq, dk, dv, dmask``, each with a sync. Skipped while compiling or capturing
#: a CUDA graph. Turn off with ``LINATTN_FP16_CHECK=0`` or by setting this to False.
CHECK_FLOAT16_OVERFLOW = os.environ.get("LINATTN_FP16_CHECK", "1") != "0"

_FP16_ADVICE = (
    "linear attention has no softmax to bound the scores q.k, so float16 (largest finite "
    "value 65504) overflows easily. Normalise q and k per row (q = q / q.norm(dim=-1, "
    "keepdim=True), the same for k), lower `scale`, or compute in bfloat16 or float32."
)


def _fp16_check_wanted(q: torch.Tensor) -> bool:
    return (
        CHECK_FLOAT16_OVERFLOW
        and q.dtype == torch.float16
        and q.device.type != "meta"
        and not torch.compiler.is_compiling()
        and not (q.is_cuda and torch.cuda.is_current_stream_capturing())
    )


def _all_finite(*tensors) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def _warn_fp16(what: str, bad: int, total: int, inputs: str, stacklevel: int = 1) -> None:
    warnings.warn(
        f"float16 overflow in linear_attention: {bad} of {total} entries of {what} are inf/NaN "
        f"although {inputs} are all finite. {_FP16_ADVICE}",
        Float16OverflowWarning,
        stacklevel=stacklevel,
    )


class _Fp16GradWatch:
    """Shared by the two identity nodes below: the forward's inputs, whether its output and
    the incoming gradient were finite."""

    def __init__(self, inputs):
        self.inputs = inputs
        self.o_finite = True
        self.do_finite = True


class _WatchOutputGrad(torch.autograd.Function):
    """Identity on ``o``; its backward notes whether ``do`` is finite."""

    @staticmethod
    def forward(ctx, o, watch):
        ctx.watch = watch
        return o.view_as(o)

    @staticmethod
    def backward(ctx, do):
        ctx.watch.do_finite = _all_finite(do)
        return do, None


class _WatchInputGrads(torch.autograd.Function):
    """Identity on ``q, k, v, mask``; its backward warns when dq, dk, dv or dmask overflow
    float16 (the slopes and state gradients are float32)."""

    @staticmethod
    def forward(ctx, watch, q, k, v, mask):
        ctx.watch = watch
        return q.view_as(q), k.view_as(k), v.view_as(v), (None if mask is None else mask.view_as(mask))

    @staticmethod
    def backward(ctx, dq, dk, dv, dmask):
        grads = [g for g in (dq, dk, dv, dmask) if g is not None]
        w = ctx.watch
        if w.o_finite and w.do_finite and not _all_finite(*grads) and _all_finite(*w.inputs):
            bad = sum(int((~torch.isfinite(g)).sum()) for g in grads)
            _warn_fp16("the gradients dq, dk, dv, dmask", bad, sum(g.numel() for g in grads),
                       "the inputs, the output o and the incoming gradient do")
        return None, dq, dk, dv, dmask


def _is_empty(req: Request) -> bool:
    return 0 in (req.B, req.H, req.N, req.M, req.D, req.E)


def linear_attention(
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
    cu_seqlens: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> Union[torch.Tensor, LinearAttentionOutput]:
    r"""Masked linear attention.

    ``o[b,h,i] = scale * sum_j (q[b,h,i] . k[b,g,j]) * W[b,h,i,j] * v[b,g,j]`` with
    ``g = h // (H // Hkv)`` and ``W`` the product of the dense ``mask``, the causal mask
    and the decay mask ``exp(-decay[h] * (i - j))`` for ``j <= i``.

    Args:
        q (torch.Tensor): queries of shape `[B, H, N, D]`.
        k (torch.Tensor): keys of shape `[B, Hkv, M, D]`; `Hkv` divides `H` (MQA: 1).
        v (torch.Tensor): values of shape `[B, Hkv, M, E]`.
        mask (torch.Tensor, optional): dense mask broadcastable to `[B|1, H|1, N, M]`, any
            real values (bool is taken as 0/1); may require grad. Default: `None`.
        causal (bool): zero out `j > i`; needs `N == M`. Default: `False`.
        decay (torch.Tensor, optional): per-head slopes `[H]`, `>= 0`; implies causal; may
            require grad. See :func:`linattn.tnl_slopes`. Default: `None`.
        scale (float): multiplies the output. Default: `1.0` (TransNormerLLM uses none).
        initial_state (torch.Tensor, optional): `[B, H, D, E]` state the recurrence starts
            from (causal/decay only). Default: `None`.
        output_final_state (bool): also return the state `[B, H, D, E]` after the last
            token, in float32 (float64 for float64 inputs). Default: `False`.
        cu_seqlens (torch.Tensor, optional): int32/int64 `[S+1]` offsets of S sequences
            packed along N (B must be 1), as in FlashAttention's varlen API; the state
            restarts at each sequence, and `initial_state`/final state are `[S, H, D, E]`.
            Causal/decay only. Default: `None`.
        backend (str): a registered backend name or `"auto"`. Default: `"auto"`.

    Returns:
        `o` of shape `[B, H, N, E]` in q's dtype, or ``LinearAttentionOutput(o, final_state)``.
    """
    q, k, v, mask4, causal, decay, scale, s0, cu, req = validate(
        q, k, v, mask, causal=causal, decay=decay, scale=scale,
        initial_state=initial_state, output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
    )
    if _is_empty(req):
        # Zero-size problems take the reference's plain torch ops, which handle them
        # exactly (empty outputs, or zeros when the sum over keys or channels is empty).
        from .backends.reference import reference_forward as fn
        chosen = None
    else:
        chosen = select_backend(req, backend)
        fn = chosen.fn
    q_in, k_in, v_in = q, k, v
    check16 = not _is_empty(req) and _fp16_check_wanted(q)
    watch = None
    if check16 and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, mask4)
    ):
        watch = _Fp16GradWatch((q, k, v, mask4, s0))
        q, k, v, mask4 = _WatchInputGrads.apply(watch, q, k, v, mask4)
    kw = dict(causal=causal, decay=decay, scale=scale, output_final_state=output_final_state)
    if cu is None:
        o, st = fn(q, k, v, mask4, initial_state=s0, **kw)
    elif chosen is not None and chosen.varlen:
        o, st = fn(q, k, v, mask4, initial_state=s0, cu_seqlens=cu, **kw)
    else:
        o, st = _varlen_loop(fn, q, k, v, cu, s0, kw)
    if check16:
        if not _all_finite(o):
            if watch is not None:
                watch.o_finite = False
            if _all_finite(q_in, k_in, v_in, mask4, s0):
                _warn_fp16("o", int((~torch.isfinite(o)).sum()), o.numel(),
                           "q, k, v" + (", mask" if mask4 is not None else "")
                           + (", initial_state" if s0 is not None else ""), stacklevel=3)
        if watch is not None and o.requires_grad:
            o = _WatchOutputGrad.apply(o, watch)
    if output_final_state:
        return LinearAttentionOutput(o, st)
    return o


def _varlen_loop(fn, q, k, v, cu, s0, kw):
    """Packed sequences for a backend without native varlen: one call per sequence."""
    from .backends.reference import reference_forward

    outs, states = [], []
    bounds = cu.tolist()
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        f = fn if b > a else reference_forward  # empty sequence: state passes through
        o_i, st_i = f(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None,
            initial_state=None if s0 is None else s0[i : i + 1], **kw,
        )
        outs.append(o_i)
        states.append(st_i)
    o = torch.cat(outs, dim=2)
    st = torch.cat(states, dim=0) if kw["output_final_state"] else None
    return o, st


def normal_linear_attention(Q, K, V, M=None):
    """The seed's ``normal_linear_attention(Q, K, V, M)``: ``(Q Kᵀ ⊙ M) V`` materialised."""
    return linear_attention(Q, K, V, M, backend="reference")


def flash_linear_attention(Q, K, V, M=None):
    """The seed's ``flash_linear_attention(Q, K, V, M)``: the ``torch.split`` tiled form."""
    return linear_attention(Q, K, V, M, backend="blocked")
