r"""Backend ``recurrent``: one token at a time with a [D, E] state — the readable recurrence.

Start from the reference for one (batch, head), slope s, λ = exp(-s):

    o_i = scale · Σ_{j<=i} λ^(i-j) (q_i · k_j) v_j

Move the sum inside the product with q_i: o_i = scale · q_i S_i, where

    S_i = Σ_{j<=i} λ^(i-j) k_jᵀ v_j                                     [D, E]

and since each term of S_i is λ times the same term of S_{i-1}, plus one new term,

    S_i = λ S_{i-1} + k_iᵀ v_i          (S_{-1} = initial state, or zero)

That is the whole algorithm: N steps of :func:`linattn._decode.torch_decode_step`, the
same step :func:`linattn.decode_step` takes when generating text. The causal mask is
λ = 1; an initial state is just where the loop starts, and the final state is where it
ends. Without any mask (non-causal) every query sees every key, so the queries all read
the state after the last key: o = scale · q S_M (and N may differ from M).

Cost: O(N·D·E) work, O(D·E) state per head — but N sequential steps, each too small to
keep a machine busy, which is what ``chunked.py`` fixes. Gradients come from autograd,
which keeps the state of every step for the backward: O(N·D·E) memory per head (for
D = E = 64, 16 KiB of float32 per token and head). That is linear in N, but for long
training sequences use ``chunked``, which keeps one state per chunk.

MQA/GQA: each step forms kᵀv once per k/v head and adds it to the states of the query
heads of its group by broadcasting; k and v are never expanded. Half-precision inputs are
computed in float32; the state is float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch

from .._decode import advance_state, torch_decode_step
from .._registry import Backend
from ._common import state_dtype

__all__ = ["recurrent_forward", "BACKEND"]


def recurrent_forward(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
    initial_state=None, output_final_state=False,
):
    """The registry contract (see ``linattn._registry``); ``mask`` is always None here.

    q `[B, H, N, D]`, k `[B, Hkv, M, D]`, v `[B, Hkv, M, E]` -> (o `[B, H, N, E]`,
    final state `[B, H, D, E]` or None).
    """
    if mask is not None:
        raise ValueError(f"the recurrent backend takes no dense mask, got one of shape {tuple(mask.shape)}")
    B, H, N, D = q.shape
    M, E = k.shape[2], v.shape[-1]
    sdt = state_dtype(q.dtype)  # also the compute dtype
    qc, kc, vc = q.to(sdt), k.to(sdt), v.to(sdt)
    lam = None if decay is None else torch.exp(-decay.to(sdt))[:, None, None]  # [H, 1, 1]
    S = initial_state.to(sdt) if initial_state is not None else q.new_zeros((B, H, D, E), dtype=sdt)

    if not (causal or decay is not None):
        # no mask: every query reads the state after the last key
        for j in range(M):
            S = advance_state(kc[:, :, j], vc[:, :, j], S, None)  # [B, H, D, E]
        o = (qc @ S) * scale  # [B, H, N, E]
        return o.to(q.dtype), None

    outs = []
    for t in range(N):
        o_t, S = torch_decode_step(qc[:, :, t], kc[:, :, t], vc[:, :, t], S, lam, scale)  # [B, H, E]
        outs.append(o_t)
    o = torch.stack(outs, dim=2)  # [B, H, N, E]
    return o.to(q.dtype), (S if output_final_state else None)


BACKEND = Backend(
    name="recurrent",
    fn=recurrent_forward,
    description="token by token with a [D, E] state; the decoding path (autograd backward)",
    mask_kinds=frozenset({"none", "causal", "decay"}),
    linear_time=True,
    double_backward=True,
    auto_rank={},
)
