r"""One decoding step of causal / decay linear attention: the recurrence, one token at a time.

With a [D, E] state per query head, generating token t costs O(D·E) whatever t is:

    S_t = exp(-s) S_{t-1} + k_tᵀ v_t          o_t = scale · q_t S_t

Running :func:`decode_step` over a sequence token by token, starting from a zero state
(or an ``initial_state``), gives exactly ``linear_attention(q, k, v, decay=s)`` (or
``causal=True`` when ``decay`` is None) and its final state; ``linattn.backends.recurrent``
is that loop.

``backend="torch"`` is the PyTorch path below; ``backend="triton"`` is a fused kernel
(``linattn.backends.triton.decode.fused_decode_step``) with the same semantics;
``"auto"`` takes the kernel for CUDA tensors when Triton can run, else PyTorch.
"""
from __future__ import annotations

import importlib
import math
import numbers
import warnings
from typing import NamedTuple, Optional

import torch

from ._api import check_slope_values
from .backends._common import compute_dtype

__all__ = ["decode_step", "DecodeOutput", "torch_decode_step", "advance_state"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_STATE_FLOATS = (torch.float32, torch.float64)
_BACKENDS = ("auto", "torch", "triton")


class DecodeOutput(NamedTuple):
    """``(o, new_state)`` returned by :func:`decode_step`."""

    o: torch.Tensor
    new_state: torch.Tensor


def advance_state(k, v, state, lam: Optional[torch.Tensor]):
    """S_t = λ S_{t-1} + k_tᵀ v_t on validated tensors in the state dtype; differentiable.

        k [B, Hkv, D]   v [B, Hkv, E]   state [B, H, D, E]   lam [H, 1, 1] = exp(-s) or None

    GQA: the outer product kᵀv is formed once per k/v head and added to the G = H/Hkv
    query heads of its group by broadcasting; k and v are never expanded.
    """
    B, H, D, E = state.shape
    Hkv = k.shape[1]
    kv = k[..., :, None] * v[..., None, :]  # [B, Hkv, D, E]
    decayed = state if lam is None else state * lam  # [B, H, D, E]
    return (decayed.reshape(B, Hkv, H // max(Hkv, 1), D, E) + kv[:, :, None]).reshape(B, H, D, E)


def torch_decode_step(q, k, v, state, lam: Optional[torch.Tensor], scale: float):
    """One step: ``new = advance_state(k, v, state, lam)``, ``o = scale · q new``.

        q [B, H, D] -> o [B, H, E], new_state [B, H, D, E]
    """
    new = advance_state(k, v, state, lam)
    o = (q[:, :, None, :] @ new)[:, :, 0] * scale  # [B, H, E]
    return o, new


def _check_fp16_output(o, q, k, v, state, decay) -> None:
    """float16 o holding inf/NaN from finite inputs: warn with advice, as linear_attention
    does (same switch, ``LINATTN_FP16_CHECK=0``; float16 calls only: one ``isfinite`` pass
    over the [B, H, E] output and one device-to-host sync per step)."""
    from ._api import _FP16_ADVICE, Float16OverflowWarning, _all_finite, _fp16_check_wanted

    if not _fp16_check_wanted(q) or o.numel() == 0 or _all_finite(o):
        return
    if not _all_finite(q, k, v, state, decay):
        return  # an inf/NaN input explains it: propagated, not an overflow
    bad = int((~torch.isfinite(o)).sum())
    warnings.warn(
        f"float16 overflow in decode_step: {bad} of {o.numel()} entries of o are inf/NaN although "
        f"q, k, v, the state and the slopes are all finite. {_FP16_ADVICE}",
        Float16OverflowWarning,
        stacklevel=3,
    )


def _token(name: str, t, rank3: str) -> torch.Tensor:
    """Accept [B, X, F] or [B, X, 1, F]; return the rank-3 view."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 4:
        if t.shape[2] != 1:
            raise ValueError(
                f"{name} must hold one token, {rank3} or with a length-1 axis, got shape {tuple(t.shape)}"
            )
        return t[:, :, 0]
    if t.dim() != 3:
        raise ValueError(f"{name} must be {rank3} (or rank 4 with one token), got shape {tuple(t.shape)}")
    return t


def _triton_step():
    """The fused kernel, or None when its module is not there (not written, no Triton)."""
    try:
        mod = importlib.import_module("linattn.backends.triton.decode")
    except ImportError:
        return None
    return getattr(mod, "fused_decode_step", None)


def decode_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    *,
    decay: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    backend: str = "auto",
    inplace: bool = False,
) -> DecodeOutput:
    r"""Advance the linear-attention state by one token and read it.

        new_state = exp(-decay) · state + kᵀ v          o = scale · q · new_state

    Args:
        q (torch.Tensor): the new token's queries `[B, H, D]` (or `[B, H, 1, D]`).
        k (torch.Tensor): its keys `[B, Hkv, D]` (or `[B, Hkv, 1, D]`), `Hkv` dividing `H`.
        v (torch.Tensor): its values `[B, Hkv, E]` (or `[B, Hkv, 1, E]`).
        state (torch.Tensor): `[B, H, D, E]`, float32 or float64 (what
            ``linear_attention(..., output_final_state=True)`` returns; zeros to start).
        decay (torch.Tensor, optional): slopes `[H]` >= 0; None means plain causal
            (no decay). Default: `None`.
        scale (float): multiplies o. Default: `1.0`.
        backend (str): ``"torch"``, ``"triton"`` or ``"auto"`` (Triton for CUDA tensors
            when it can run). Default: `"auto"`.
        inplace (bool): write the new state into ``state`` and return it. Default: `False`.

    Returns:
        ``DecodeOutput(o, new_state)``: o `[B, H, E]` (`[B, H, 1, E]` when q was rank 4) in
        q's dtype; new_state `[B, H, D, E]` in the state's dtype. The arithmetic runs in the
        wider of the state's dtype and float32 (float64 for float64 inputs).
    """
    q_rank4 = isinstance(q, torch.Tensor) and q.dim() == 4
    q3 = _token("q", q, "[B, H, D]")
    k3 = _token("k", k, "[B, Hkv, D]")
    v3 = _token("v", v, "[B, Hkv, E]")
    for name, t in (("q", q3), ("k", k3), ("v", v3)):
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if not (q3.dtype == k3.dtype == v3.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q3.dtype}, {k3.dtype}, {v3.dtype}")
    B, H, D = q3.shape
    Bk, Hkv, Dk = k3.shape
    Bv, Hv, E = v3.shape
    if Bk != B or Bv != B:
        raise ValueError(
            f"batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if Dk != D:
        raise ValueError(f"q and k must share the last dim D: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if Hv != Hkv:
        raise ValueError(f"k and v must share heads: k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Hkv == 0 and H != 0 or (Hkv != 0 and H % Hkv != 0):  # H = Hkv = 0: empty, as in linear_attention
        raise ValueError(
            f"the number of k/v heads must divide the number of q heads, got H={H} and Hkv={Hkv}"
        )
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"state must be a torch.Tensor, got {type(state).__name__}")
    if tuple(state.shape) != (B, H, D, E):
        raise ValueError(f"state must have shape [B, H, D, E] = {(B, H, D, E)}, got {tuple(state.shape)}")
    if state.dtype not in _STATE_FLOATS:
        raise TypeError(f"state must be float32 or float64, got {state.dtype}")
    for name, t in (("k", k3), ("v", v3), ("state", state)):
        if t.device != q3.device:
            raise ValueError(f"{name} must be on {q3.device} like q, got {t.device}")
    if decay is not None:
        if not isinstance(decay, torch.Tensor):
            raise TypeError(f"decay must be a torch.Tensor of slopes [H] or None, got {type(decay).__name__}")
        if decay.dtype not in _FLOATS:
            raise TypeError(f"decay slopes must be a floating tensor, got {decay.dtype}")
        if tuple(decay.shape) != (H,):
            raise ValueError(f"decay slopes must have shape [H]=[{H}], got {tuple(decay.shape)}")
        if decay.device != q3.device:
            raise ValueError(f"decay slopes must be on {q3.device}, got {decay.device}")
        # the same value check as linear_attention: NaN passes `< 0`, and +Inf would make
        # exp(-inf) = 0 drop the past silently. Skipped while tracing and on meta (no values).
        if not torch.compiler.is_compiling() and decay.device.type != "meta":
            check_slope_values(decay, "lambda = exp(-s) per step")  # once per tensor and version
    if isinstance(scale, torch.Tensor) or not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    if inplace and state.requires_grad and state.is_leaf and torch.is_grad_enabled():
        raise ValueError("inplace=True cannot overwrite a leaf state that requires grad")

    step = None
    if backend == "triton" or (backend == "auto" and q3.device.type == "cuda"):
        from .backends.triton import common

        why = common.unavailable()
        step = _triton_step() if why is None else None
        if backend == "triton" and step is None:
            from ._registry import BackendUnavailable

            raise BackendUnavailable(
                f"decode_step(backend='triton'): {why or 'linattn.backends.triton.decode is not available'}"
            )

    if step is not None and H > 0:  # no heads: nothing to launch, the torch path returns the empties
        o, new = step(q3, k3, v3, state, decay=decay, scale=scale)
    else:
        cdt = torch.float64 if torch.float64 in (state.dtype, q3.dtype) else compute_dtype(q3.dtype)
        lam = None if decay is None else torch.exp(-decay.to(cdt))[:, None, None]  # [H, 1, 1]
        o, new = torch_decode_step(
            q3.to(cdt), k3.to(cdt), v3.to(cdt), state.to(cdt), lam, scale
        )
        o, new = o.to(q3.dtype), new.to(state.dtype)
    _check_fp16_output(o, q3, k3, v3, state, decay)
    if inplace:
        state.copy_(new)  # autograd records the copy when q, k, v or decay need grad
        new = state
    if q_rank4:
        o = o[:, :, None]  # [B, H, 1, E]
    return DecodeOutput(o, new)

