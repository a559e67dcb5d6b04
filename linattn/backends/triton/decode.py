r"""One decoding step of the recurrent form, state update and output fused in one kernel.

For a new token with query q, key k, value v (per head, kv head h // G) and λ = exp(-s):

    S' = λ S + kᵀ v               [D, E]   (an outer product: no matrix multiply)
    o  = scale · q S'             [E]

The step reads the state once and writes it once; everything else (q, k, v, o) is
smaller by a factor D. So its speed limit is the memory bandwidth spent on 2·B·H·D·E
state elements; a program handles all D rows of E-slice [BV] of one (batch, head), so
the reduction over D for o stays inside the program, and there are B·H·⌈E/BV⌉ programs.

``inplace=True`` updates ``state`` in place (no second state buffer: the usual choice
in a generation loop). The kernel has no backward; when a gradient is needed the same
two lines run as differentiable torch operations instead.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import common
from .common import HAVE_TRITON

__all__ = ["fused_decode_step", "decode_step_reference"]

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["scale"])
    def fused_decode_kernel(
        q, k, v, state, new_state, o, slopes, scale,
        H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, E: tl.constexpr,
        BD: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
    ):
        """new_state[b, h][:, slice] = λ S + kᵀ v; o[b, h, slice] = scale · q new_state."""
        tl.static_assert(BD >= D, "one program holds all D rows of the state")
        NV = tl.cdiv(E, BV)
        pid = tl.program_id(0).to(tl.int64)
        i_v, i_bh = pid % NV, pid // NV
        i_b, i_h = i_bh // H, i_bh % H
        i_kv = i_b * (H // G) + i_h // G
        o_d = tl.arange(0, BD)
        o_e = i_v * BV + tl.arange(0, BV)
        m_d = o_d < D
        m_e = o_e < E
        m_de = m_d[:, None] & m_e[None, :]
        o_s = (i_bh * D + o_d[:, None]) * E + o_e[None, :]  # [BD, BV] offsets in one state

        b_s = tl.load(state + o_s, mask=m_de, other=0.0)  # [BD, BV] S
        b_q = tl.load(q + i_bh * D + o_d, mask=m_d, other=0.0).to(b_s.dtype)  # [BD]
        b_k = tl.load(k + i_kv * D + o_d, mask=m_d, other=0.0).to(b_s.dtype)  # [BD]
        b_v = tl.load(v + i_kv * E + o_e, mask=m_e, other=0.0).to(b_s.dtype)  # [BV]
        if DECAY:
            b_s = b_s * tl.exp(-tl.load(slopes + i_h).to(b_s.dtype))
        b_s += b_k[:, None] * b_v[None, :]  # S' = λ S + kᵀ v
        b_o = tl.sum(b_q[:, None] * b_s, axis=0) * scale  # [BV] q S'
        tl.store(new_state + o_s, b_s, mask=m_de)
        tl.store(o + i_bh * E + o_e, b_o.to(o.dtype.element_ty), mask=m_e)


def decode_step_reference(q, k, v, state, *, decay=None, scale=1.0):
    """The same step in torch operations (differentiable); shapes as ``fused_decode_step``."""
    H, Hkv = q.shape[1], k.shape[1]
    sdt = state.dtype
    kk = k.to(sdt).repeat_interleave(H // Hkv, dim=1)  # (B, H, D)
    vv = v.to(sdt).repeat_interleave(H // Hkv, dim=1)  # (B, H, E)
    lam = 1.0 if decay is None else torch.exp(-decay.to(sdt))[None, :, None, None]
    new = lam * state + kk[..., :, None] * vv[..., None, :]  # (B, H, D, E)
    o = scale * torch.einsum("bhd,bhde->bhe", q.to(sdt), new)
    return o.to(q.dtype), new


def _check(q, k, v, state, decay):
    for name, t, rank in (("q", q, 3), ("k", k, 3), ("v", v, 3), ("state", state, 4)):
        if not isinstance(t, torch.Tensor) or t.dim() != rank:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a {rank}-D tensor, got {got}")
    B, H, D = q.shape
    Bk, Hkv, Dk = k.shape
    E = v.shape[2]
    if Bk != B or Dk != D or tuple(v.shape[:2]) != (B, Hkv) or Hkv == 0 or H % Hkv:
        raise ValueError(
            f"expected q [B, H, D], k [B, Hkv, D], v [B, Hkv, E] with Hkv dividing H, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if tuple(state.shape) != (B, H, D, E):
        raise ValueError(f"state must have shape [B, H, D, E] = {(B, H, D, E)}, got {tuple(state.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    want = torch.float64 if q.dtype == torch.float64 else torch.float32
    if state.dtype != want:
        raise TypeError(f"state must be {want} for {q.dtype} inputs, got {state.dtype}")
    if decay is not None and tuple(decay.shape) != (H,):
        raise ValueError(f"decay slopes must have shape [H]=[{H}], got {tuple(decay.shape)}")
    devs = {t.device for t in (q, k, v, state) + (() if decay is None else (decay,))}
    if len(devs) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(str(d) for d in devs)}")


def fused_decode_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    *,
    decay: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    inplace: bool = False,
):
    """One recurrent step for a single new token, in one kernel.

    Args:
        q (torch.Tensor): the token's queries `[B, H, D]`.
        k (torch.Tensor): its keys `[B, Hkv, D]` (`Hkv` divides `H`).
        v (torch.Tensor): its values `[B, Hkv, E]`.
        state (torch.Tensor): `[B, H, D, E]`, float32 (float64 for float64 inputs).
        decay (torch.Tensor, optional): slopes `[H]`; λ = exp(-decay). Default: `None` (λ = 1).
        scale (float): multiplies the output. Default: `1.0`.
        inplace (bool): write the new state into ``state``. Default: `False`.

    Returns:
        `(o [B, H, E] in q's dtype, new_state [B, H, D, E])`; ``new_state is state`` when
        ``inplace``.
    """
    _check(q, k, v, state, decay)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, state, decay)
    )
    if needs_grad or not HAVE_TRITON or common.unavailable() is not None or q.numel() == 0 or state.numel() == 0:
        if not needs_grad:
            common.require()
        o, new = decode_step_reference(q, k, v, state, decay=decay, scale=scale)
        if inplace and not needs_grad:
            state.copy_(new)
            new = state
        return o, new
    B, H, D = q.shape
    Hkv, E = k.shape[1], v.shape[2]
    if inplace and not state.is_contiguous():
        raise ValueError("inplace=True needs a contiguous state")
    st = state.contiguous()
    new = st if inplace else torch.empty_like(st)
    o = torch.empty(B, H, E, device=q.device, dtype=q.dtype)
    slopes = None if decay is None else decay.to(st.dtype).contiguous()
    BD = common.next_pow2_tile(D)
    BV = min(common.next_pow2_tile(E), max(16, 4096 // BD))  # a [BD, BV] tile of at most 4096
    fused_decode_kernel[(B * H * math.ceil(E / BV),)](
        q.contiguous(), k.contiguous(), v.contiguous(), st, new, o, slopes, float(scale),
        H=H, G=H // Hkv, D=D, E=E, BD=BD, BV=BV, DECAY=decay is not None,
        num_warps=4,
    )
    return o, new
