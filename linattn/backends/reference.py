"""The reference: the formula exactly as written, with the N×N scores materialised.

This is the oracle every other backend is checked against (in float64), and the first
file to read. It is also the seed's ``normal_linear_attention``: fastest on a CPU for
short sequences, but its memory grows as O(N·M) per head.

    A = q kᵀ                       scores, [B, H, N, M]
    W = mask ⊙ causal ⊙ decay      the effective mask, broadcast to A
    o = scale · (A ⊙ W) v          [B, H, N, E]

MQA/GQA: query head h reads k/v head g = h // (H // Hkv); we expand k and v to H heads
and let autograd sum the gradients of each group back.

State (causal/decay only): the recurrence S_t = λ S_{t-1} + k_tᵀ v_t with λ = exp(-s)
unrolls to two extra terms, both plain matrix products:

    o_i  += scale · λ^(i+1) q_i S_0                      (the initial state seen at i)
    S_N   = λ^N S_0 + Σ_j λ^(N-1-j) k_jᵀ v_j              (the final state)

Every gradient (q, k, v, mask, slopes, initial state) comes from autograd.
Float16/bfloat16 inputs are computed in float32 and rounded once at the end.
"""
from __future__ import annotations

import torch

from .._registry import Backend
from ._common import compute_dtype, effective_mask, expand_kv, state_dtype

__all__ = ["reference_forward", "BACKEND"]


def _decay_powers(decay, n: int, offset: int, dtype) -> torch.Tensor:
    """[1, H, n, 1] of λ^(t + offset) for t = 0..n-1, λ = exp(-s)."""
    t = torch.arange(n, device=decay.device, dtype=dtype) + offset
    return torch.exp(-decay.to(dtype)[None, :, None, None] * t[None, None, :, None])


def reference_forward(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
    initial_state=None, output_final_state=False,
):
    B, H, N, D = q.shape
    M = k.shape[2]
    out_dtype = q.dtype
    cdt = compute_dtype(q.dtype)
    qc, kc, vc = q.to(cdt), expand_kv(k, H).to(cdt), expand_kv(v, H).to(cdt)
    A = qc @ kc.transpose(-1, -2)  # (B, H, N, M)
    W = effective_mask(N, M, mask, causal, decay, cdt, q.device)
    P = A if W is None else A * W
    o = (P @ vc) * scale  # (B, H, N, E)

    final = None
    if initial_state is not None or output_final_state:
        sdt = state_dtype(q.dtype)
        if decay is not None:
            lam_q = _decay_powers(decay, N, 1, sdt)  # λ^(i+1)
            lam_k = _decay_powers(decay, M, 0, sdt).flip(2)  # λ^(N-1-j)
            lam_N = torch.exp(-decay.to(sdt) * N)[None, :, None, None]
        else:
            lam_q = lam_k = lam_N = None
        if initial_state is not None:
            qs = q.to(sdt) if lam_q is None else q.to(sdt) * lam_q
            o = o + (qs @ initial_state.to(sdt)).to(cdt) * scale
        if output_final_state:
            ks = kc.to(sdt) if lam_k is None else kc.to(sdt) * lam_k
            final = ks.transpose(-1, -2) @ vc.to(sdt)  # (B, H, D, E)
            if initial_state is not None:
                s0 = initial_state.to(sdt)
                final = final + (s0 if lam_N is None else lam_N * s0)
    return o.to(out_dtype), final


BACKEND = Backend(
    name="reference",
    fn=reference_forward,
    description="the formula with N×N scores materialised; the oracle (seed: normal)",
    double_backward=True,
    auto_rank={"cpu": 10, "cuda": 50},
)
