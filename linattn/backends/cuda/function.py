"""The autograd layer over the CUDA kernels, and the state terms.

    linear_attention(..., backend="cuda")
      -> cuda_forward                      (this file: state terms, dtype of o)
        -> MaskedLinearAttention.apply     (this file: which kernels backward runs)
          -> ops.masked_product / ops.mask_slopes_grad   (csrc/binding.cpp, or the CPU emulator)

Forward is one masked product ``o = scale * ((q kᵀ) ⊙ W) v``. Backward runs only the kernels
whose gradients are needed (``ctx.needs_input_grad``):

    dq = masked_product(dO, v,  k,  row mode)       dk = masked_product(v, dO, q, col mode)
    dv = masked_product(k,  q,  dO, col mode)       dmask, dslopes = mask_slopes_grad(...)

Each output element is written by exactly one thread and summed in a fixed order, so two
backward runs give bitwise equal gradients.

State (causal/decay without a dense mask) adds two rank-D terms that are plain batched
matrix products, so they are computed here with torch ops and differentiated by autograd:

    o_i += scale * λ^(i+1) q_i S_0              S_N = λ^N S_0 + Σ_j λ^(N-1-j) k_jᵀ v_j

in float32 (the state dtype); with an initial state the kernel writes o in float32 so that
half-precision outputs are rounded once.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

__all__ = ["MaskedLinearAttention", "cuda_forward", "state_terms"]


class MaskedLinearAttention(torch.autograd.Function):
    """``o = scale * ((q kᵀ) ⊙ W) v`` by the CUDA kernels; W from mask, causal, slopes."""

    @staticmethod
    def forward(ctx, q, k, v, mask, slopes, scale: float, causal: bool, out_f32: bool, ops):
        o = ops.masked_product(q, k, v, mask, slopes, scale, causal, False, out_f32)
        ctx.save_for_backward(q, k, v, mask, slopes)
        ctx.scale, ctx.causal, ctx.ops = scale, causal, ops
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q, k, v, mask, slopes = ctx.saved_tensors
        ops, scale, causal = ctx.ops, ctx.scale, ctx.causal
        need_q, need_k, need_v, need_mask, need_slopes = ctx.needs_input_grad[:5]
        do = do.to(q.dtype).contiguous()
        dq = dk = dv = dmask = dslopes = None
        if need_q:
            dq = ops.masked_product(do, v, k, mask, slopes, scale, causal, False, False)
        if need_k:
            dk = ops.masked_product(v, do, q, mask, slopes, scale, causal, True, False)
        if need_v:
            dv = ops.masked_product(k, q, do, mask, slopes, scale, causal, True, False)
        if (need_mask and mask is not None) or (need_slopes and slopes is not None):
            dmask, dslopes = ops.mask_slopes_grad(
                q, k, v, do, mask, slopes, scale, causal,
                bool(need_mask and mask is not None), bool(need_slopes and slopes is not None),
            )
        return dq, dk, dv, dmask, dslopes, None, None, None, None


def state_terms(o, q, k, v, slopes: Optional[torch.Tensor], scale: float,
                initial_state: Optional[torch.Tensor], output_final_state: bool):
    """Add the initial state's contribution to ``o`` and compute the final state.

    o [B, H, N, E] (float32), q [B, H, N, D], k [B, Hkv, M, D], v [B, Hkv, M, E],
    slopes [H] float32 or None, initial_state [B, H, D, E] or None. Returns
    ``(o [B, H, N, E] float32, final [B, H, D, E] float32 or None)``.
    """
    B, H, N, D = q.shape
    Hkv, M, E = k.shape[1], k.shape[2], v.shape[3]
    G = H // Hkv
    sdt = torch.float32
    if initial_state is not None:
        qs = q.to(sdt)  # (B, H, N, D)
        if slopes is not None:
            t = torch.arange(1, N + 1, device=q.device, dtype=sdt)
            qs = qs * torch.exp(-slopes[:, None] * t)[None, :, :, None]  # λ^(i+1)
        o = o.to(sdt) + (qs @ initial_state.to(sdt)) * scale  # (B, H, N, E)
    final = None
    if output_final_state:
        kf, vf = k.to(sdt), v.to(sdt)
        if slopes is None:
            final = kf.transpose(-1, -2) @ vf  # (B, Hkv, D, E)
            if G > 1:
                final = final.repeat_interleave(G, dim=1)  # (B, H, D, E)
        else:
            t = torch.arange(M - 1, -1, -1, device=q.device, dtype=sdt)  # N-1-j
            lam = torch.exp(-slopes[:, None] * t)  # (H, M)
            kw = kf.unsqueeze(2) * lam.view(1, Hkv, G, M, 1)  # (B, Hkv, G, M, D)
            final = (kw.transpose(-1, -2) @ vf.unsqueeze(2)).reshape(B, H, D, E)
        if initial_state is not None:
            s0 = initial_state.to(sdt)
            if slopes is not None:
                s0 = torch.exp(-slopes * N)[None, :, None, None] * s0
            final = final + s0
    return o, final


def cuda_forward(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
    initial_state=None, output_final_state=False, ops=None,
):
    """The backend function (internal contract of ``linattn._registry``)."""
    if ops is None:
        from . import get_ops

        ops = get_ops(q.device)
    slopes = None if decay is None else decay.to(torch.float32).contiguous()
    causal = bool(causal) or decay is not None
    out_f32 = initial_state is not None and q.dtype != torch.float32
    o = MaskedLinearAttention.apply(q, k, v, mask, slopes, float(scale), causal, out_f32, ops)
    final = None
    if initial_state is not None or output_final_state:
        o, final = state_terms(o, q, k, v, slopes, float(scale), initial_state, bool(output_final_state))
    return o.to(q.dtype), final
