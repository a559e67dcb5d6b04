r"""Backend ``chunked``: the linear-time form of causal and decay linear attention.

From the reference to chunks
----------------------------
The reference computes, for one (batch, head) with slope s and λ = exp(-s),

    o_i = scale · Σ_{j<=i} λ^(i-j) (q_i · k_j) v_j              (causal: s = 0, λ = 1)

materialising the N×N matrix of λ^(i-j) q_i·k_j. Because λ^(i-j) = λ^(i-t)·λ^(t-j) for any
t between j and i, the sum over the past can be carried in a [D, E] state

    S_i = Σ_{j<=i} λ^(i-j) k_jᵀ v_j = λ S_{i-1} + k_iᵀ v_i,      o_i = scale · q_i S_i,

which is ``recurrent.py``: O(N·D·E) work, but N sequential small steps. The chunked form
sits between the two. Cut the sequence into chunks of C tokens (the last one may be
shorter; call a chunk's length L). Inside chunk t, with local positions a, b in [0, L)
and S_{t-1} the state after the previous chunk, split the past of query a into "earlier
chunks" and "this chunk":

    o_t[a] = scale · ( λ^(a+1) q_t[a] S_{t-1}  +  Σ_{b<=a} λ^(a-b) (q_t[a]·k_t[b]) v_t[b] )
                       └── inter-chunk ──┘        └──────── intra-chunk ────────┘

(from the start of the chunk, a query at local position a is a+1 steps after the last
token of the previous chunk). In matrices, with Dm[a,b] = λ^(a-b) for b <= a and 0
above the diagonal:

    o_t = scale · ( (q_t ⊙ λ^(a+1)) S_{t-1} + ((q_t k_tᵀ) ⊙ Dm) v_t )            [L, E]
    S_t = λ^L S_{t-1} + (k_t ⊙ λ^(L-1-b))ᵀ v_t                                  [D, E]

The intra-chunk part is a small reference (L×L scores) and is computed for all chunks
at once; the inter-chunk part is one [L, D]·[D, E] product per chunk, also batched;
only the state update runs as a loop over the N/C chunks. To batch, the code pads the
last chunk with zero rows up to C: zero keys and values add nothing, the padded outputs
are dropped, and the exponents use the chunk's true length L, so the state stays exact. Cost O(N·C·D + N·D·E)
instead of O(N²·D); memory O(N·C + (N/C)·D·E) instead of O(N²).

Numerics: every power of λ written above has an exponent >= 0 (a+1, a-b for b <= a,
L-1-b, L), so each factor lies in [0, 1]. We never form λ^(-x) (the tempting
"q λ^a, k λ^(-b)" factorisation overflows as soon as s·C exceeds ~88 in float32); with
large slopes the factors underflow to 0 and the output is exactly the diagonal term, never
inf·0 = NaN. Half-precision inputs are computed in float32; the state is float32
(float64 for float64 inputs).

The backward pass, by hand
--------------------------
Autograd would keep every chunk's scores and every intermediate; instead a
``torch.autograd.Function`` saves q, k, v, the slopes, the initial state and the state
entering each chunk (N/C states), and recomputes the rest chunk by chunk. With
dO = scale·do, Q̃ = q ⊙ λ^(a+1), K̃ = k ⊙ λ^(L-1-b), A = q kᵀ and P = A ⊙ Dm:

    intra:  dv  += Pᵀ dO          dP = dO vᵀ       dA = dP ⊙ Dm
            dq  += dA k           dk += dAᵀ q
    inter:  dQ̃   = dO S_{t-1}ᵀ    dq += dQ̃ ⊙ λ^(a+1)
    state:  G_t  = ∂L/∂S_t, found by a reverse recurrence over chunks, starting from the
            gradient of the final state (zero if it was not used):
                G_{t-1} = Q̃_tᵀ dO_t + λ^(L_t) G_t          (G_0 is the initial state's grad)
            dK̃ = v G_tᵀ          dk += dK̃ ⊙ λ^(L-1-b)      dv += K̃ G_t

The slopes' gradient. Each factor f = λ^x = exp(-s·x) has df/ds = -x·f, so every factor
contributes -x · f · ∂L/∂f, summed over the positions where it appears:

    ds = - Σ (a+1) (dQ̃ ⊙ Q̃)          (inter-chunk queries; sum over a and the D channels)
         - Σ (a-b) (dP ⊙ P)            (intra-chunk mask: ∂L/∂Dm = dP ⊙ A, times Dm is dP ⊙ P)
         - Σ (L-1-b) (dK̃ ⊙ K̃)          (keys entering the state)
         - Σ_t L_t λ^(L_t) ⟨G_t, S_{t-1}⟩  (the state carried across a chunk)

summed over chunks and batch; one slope per query head, so no head sum. These are the
four places λ appears, so this is the whole derivative (the reference's
ds = -Σ (i-j) dW ⊙ W, regrouped by chunk). For ``causal`` the same code runs with s = 0.

MQA/GQA: k and v are expanded to H heads with ``expand_kv`` inside the forward and the
backward (temporary copies, never saved; the decay weights differ per query head, so
k ⊙ λ_h^(L-1-b) is [B, H, N, D] whatever we do), and dk, dv are summed back over each
group. The "none" mask (non-causal) needs no chunks at all: o = scale · q (kᵀ v),
computed per k/v head without expansion, with autograd (it keeps only q, k, v, kᵀv).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._registry import Backend
from ._common import compute_dtype, expand_kv, group_sum, state_dtype

__all__ = ["chunked_linear_attention", "chunked_forward", "DEFAULT_CHUNK_SIZE", "BACKEND"]

#: Chosen by measuring forward+backward on a CPU (decay, float32, B=1 H=4 N=8192 D=E=64,
#: one thread): C = 16 / 32 / 64 / 128 / 256 took 0.29 / 0.23 / 0.19 / 0.27 / 0.54 s
#: (best of 5). Matrix products are ~2/3 of the time at C = 64.
DEFAULT_CHUNK_SIZE = 64


# -- decay factors ----------------------------------------------------------------------


def _pow(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """λ^x = exp(-s·x) for exponents x >= 0, broadcasting s [H, 1, ...] against x.

    x == 0 gives exactly 1 even for s = inf (where -s·x would be NaN).
    """
    return torch.where(x == 0, 1.0, torch.exp(-(s * x)))


class _Factors:
    """The powers of λ a chunked pass needs, for T chunks of C with the last of length L_T.

    Exponents (all >= 0, so every factor lies in [0, 1]):
        xq [C]        a + 1          query a sees the previous chunk's state
        xd [C, C]     a - b, b <= a  the intra-chunk decay mask (0 and masked above)
        xk [T, C]     L_t - 1 - b    key b's weight in the state its chunk hands on
        xL [T]        L_t            the decay of a state carried across chunk t
    """

    def __init__(self, s: torch.Tensor, N: int, C: int, T: int):
        dev, dt = s.device, s.dtype
        a = torch.arange(C, device=dev)
        L = torch.full((T,), C, device=dev)
        L[-1] = N - (T - 1) * C
        self.xq = (a + 1).to(dt)  # [C]
        diff = a[:, None] - a[None, :]  # [C, C]
        self.causal = diff >= 0
        self.xd = diff.clamp(min=0).to(dt)
        xk = L[:, None] - 1 - a[None, :]  # [T, C]; negative on the last chunk's padding
        self.key_valid = xk >= 0
        self.xk = xk.clamp(min=0).to(dt)
        self.xL = L.to(dt)  # [T]

        sh = s[:, None]  # [H, 1]
        self.lam_q = _pow(sh, self.xq)[:, None, :, None]  # [H, 1, C, 1]
        self.Dm = _pow(sh[:, :, None], self.xd) * self.causal  # [H, C, C]
        self.Dm = self.Dm[:, None]  # [H, 1, C, C]
        self.lam_k = (_pow(sh[:, :, None], self.xk) * self.key_valid)[..., None]  # [H, T, C, 1]
        self.lam_L = _pow(sh, self.xL)[..., None, None]  # [H, T, 1, 1]


def _chunks(x: torch.Tensor, C: int, T: int) -> torch.Tensor:
    """[B, H, N, X] -> [B, H, T, C, X], the last chunk zero-padded to C rows."""
    B, H, N, X = x.shape
    if T * C != N:
        x = F.pad(x, (0, 0, 0, T * C - N))
    return x.reshape(B, H, T, C, X)


def _unchunk(x: torch.Tensor, N: int) -> torch.Tensor:
    """[B, H, T, C, X] -> [B, H, N, X], dropping the padding."""
    B, H, T, C, X = x.shape
    x = x.reshape(B, H, T * C, X)
    return x if T * C == N else x[:, :, :N].contiguous()


# -- causal / decay: the chunked recurrence with a hand-written backward ------------------


class _ChunkedDecay(torch.autograd.Function):
    """(q, k, v, s, S0) -> (o, S_N) for the causal (s = 0) and decay masks."""

    @staticmethod
    def forward(ctx, q, k, v, s, S0, scale: float, C: int):
        B, H, N, D = q.shape
        E = v.shape[-1]
        cdt = compute_dtype(q.dtype)  # == the state dtype
        T = math.ceil(N / C)
        f = _Factors(s.to(cdt), N, C, T)
        qc = _chunks(q.to(cdt), C, T)  # [B, H, T, C, D]
        kc = _chunks(expand_kv(k, H).to(cdt), C, T)  # [B, H, T, C, D]
        vc = _chunks(expand_kv(v, H).to(cdt), C, T)  # [B, H, T, C, E]

        # -- intra-chunk: a small masked reference inside every chunk at once
        P = (qc @ kc.transpose(-1, -2)) * f.Dm  # [B, H, T, C, C]
        o = P @ vc  # [B, H, T, C, E]
        del P

        # -- what each chunk adds to the state: (k ⊙ λ^(L-1-b))ᵀ v
        states = (kc * f.lam_k).transpose(-1, -2) @ vc  # [B, H, T, D, E]
        del kc, vc
        # -- scan over chunks; slot t is overwritten with S_{t-1}, the state chunk t reads
        S = S0.to(cdt) if S0 is not None else q.new_zeros((B, H, D, E), dtype=cdt)
        for t in range(T):
            S_next = f.lam_L[:, t] * S + states[:, :, t]  # [B, H, D, E]
            states[:, :, t] = S
            S = S_next

        # -- inter-chunk: (q ⊙ λ^(a+1)) S_{t-1}
        o += (qc * f.lam_q) @ states  # [B, H, T, C, E]
        o *= scale

        ctx.save_for_backward(q, k, v, s, S0, states)
        ctx.scale, ctx.C = scale, C
        ctx.set_materialize_grads(False)
        return _unchunk(o, N).to(q.dtype), S

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dS_final):
        q, k, v, s, S0, states = ctx.saved_tensors
        C, scale = ctx.C, ctx.scale
        B, H, N, D = q.shape
        Hkv, E = k.shape[1], v.shape[-1]
        cdt = states.dtype
        T = states.shape[2]
        need_q, need_k, need_v, need_s, need_S0 = ctx.needs_input_grad[:5]
        need_S0 = need_S0 and S0 is not None

        if do is None:
            do = q.new_zeros((B, H, N, E), dtype=cdt)
        f = _Factors(s.to(cdt), N, C, T)
        dO = _chunks(do.to(cdt) * scale, C, T)  # [B, H, T, C, E]
        qc = _chunks(q.to(cdt), C, T)  # [B, H, T, C, D]
        kc = _chunks(expand_kv(k, H).to(cdt), C, T)  # [B, H, T, C, D]
        vc = _chunks(expand_kv(v, H).to(cdt), C, T)  # [B, H, T, C, E]
        ds = torch.zeros(H, dtype=cdt, device=q.device) if need_s else None

        # -- intra-chunk: recompute P, then the dense-form gradients of DESIGN.md per chunk
        A = qc @ kc.transpose(-1, -2)  # [B, H, T, C, C]
        P = A * f.Dm
        del A
        dv = P.transpose(-1, -2) @ dO  # [B, H, T, C, E]
        dP = dO @ vc.transpose(-1, -2)  # [B, H, T, C, C]
        if need_s:
            ds -= ((dP * P).sum((0, 2)) * f.xd).sum((-1, -2))
        del P
        dA = dP * f.Dm
        del dP
        dq = dA @ kc  # [B, H, T, C, D]
        dk = dA.transpose(-1, -2) @ qc  # [B, H, T, C, D]
        del dA

        # -- inter-chunk queries: o += (q ⊙ λ^(a+1)) S_{t-1}
        qt = qc * f.lam_q  # [B, H, T, C, D]
        dqt = dO @ states.transpose(-1, -2)  # [B, H, T, C, D]
        dq += dqt * f.lam_q
        if need_s:
            ds -= ((dqt * qt).sum((0, 2, 4)) * f.xq).sum(-1)
        del dqt
        # dL/dS_{t-1} from chunk t's own outputs
        G = qt.transpose(-1, -2) @ dO  # [B, H, T, D, E]
        del qt, dO

        # -- reverse scan: G_{t-1} = (that) + λ^(L_t) G_t; slot t is overwritten with G_t
        g = dS_final.to(cdt) if dS_final is not None else torch.zeros_like(states[:, :, 0])
        for t in reversed(range(T)):
            g_prev = G[:, :, t] + f.lam_L[:, t] * g  # [B, H, D, E]
            G[:, :, t] = g
            g = g_prev
        dS0 = g  # [B, H, D, E]
        if need_s:
            carried = (G * states).sum((0, 3, 4))  # [H, T]  <G_t, S_{t-1}>
            ds -= (carried * f.xL * f.lam_L[..., 0, 0]).sum(-1)

        # -- keys entering the state: S_t += (k ⊙ λ^(L-1-b))ᵀ v
        kt = kc * f.lam_k  # [B, H, T, C, D]
        dv += kt @ G  # [B, H, T, C, E]
        dkt = vc @ G.transpose(-1, -2)  # [B, H, T, C, D]
        dk += dkt * f.lam_k
        if need_s:
            ds -= ((dkt * kt).sum((0, 4)) * f.xk).sum((-1, -2))
        del dkt, kt, G

        dq = _unchunk(dq, N).to(q.dtype) if need_q else None
        dk = group_sum(_unchunk(dk, N), Hkv).to(k.dtype) if need_k else None
        dv = group_sum(_unchunk(dv, N), Hkv).to(v.dtype) if need_v else None
        ds = ds.to(s.dtype) if need_s else None
        dS0 = dS0.to(S0.dtype) if need_S0 else None
        return dq, dk, dv, ds, dS0, None, None


# -- the public function and the backend ----------------------------------------------


def _none_mask(q, k, v, scale):
    """o = scale · q (kᵀ v), per k/v head: [B, Hkv, D, E] is all the memory it needs."""
    B, H, N, D = q.shape
    Hkv, E = k.shape[1], v.shape[-1]
    cdt = compute_dtype(q.dtype)
    kv = k.to(cdt).transpose(-1, -2) @ v.to(cdt)  # [B, Hkv, D, E]
    qg = q.to(cdt).reshape(B, Hkv, H // Hkv, N, D)  # [B, Hkv, G, N, D]
    o = (qg @ kv[:, :, None]) * scale  # [B, Hkv, G, N, E]
    return o.reshape(B, H, N, E).to(q.dtype)


def chunked_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    decay: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: Optional[int] = None,
):
    """Linear attention without a dense mask, in O(N) time and memory.

    Inputs are taken as validated by :func:`linattn.linear_attention` (call that for
    checks); ``chunk_size`` is the one option this function adds.

    Args:
        q (torch.Tensor): `[B, H, N, D]`.
        k (torch.Tensor): `[B, Hkv, M, D]`, `Hkv` dividing `H`; `M == N` when causal.
        v (torch.Tensor): `[B, Hkv, M, E]`.
        causal (bool): lower-triangular mask. Default: `False` (o = scale · q (kᵀ v)).
        decay (torch.Tensor, optional): slopes `[H]` >= 0; implies causal. Default: `None`.
        scale (float): multiplies the output. Default: `1.0`.
        initial_state (torch.Tensor, optional): `[B, H, D, E]`, causal/decay only.
        output_final_state (bool): also return the state `[B, H, D, E]` after the last token.
        chunk_size (int, optional): tokens per chunk C (the last chunk may be shorter).
            Default: `DEFAULT_CHUNK_SIZE` (64), or N when N is smaller.

    Returns:
        ``(o, final_state)``: o `[B, H, N, E]` in q's dtype; final_state `[B, H, D, E]` in
        float32 (float64 for float64 inputs), or None unless requested.
    """
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_SIZE
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    causal = causal or decay is not None
    if not causal:
        if initial_state is not None or output_final_state:
            raise ValueError("initial_state / output_final_state need a causal or decay mask")
        return _none_mask(q, k, v, scale), None

    B, H, N, D = q.shape
    if k.shape[2] != N:
        raise ValueError(
            f"causal and decay masks need as many queries as keys, got N={N} (q {tuple(q.shape)}) "
            f"and M={k.shape[2]} (k {tuple(k.shape)})"
        )
    C = max(1, min(chunk_size, N))
    s = decay if decay is not None else q.new_zeros(H, dtype=state_dtype(q.dtype))
    o, S = _ChunkedDecay.apply(q, k, v, s, initial_state, float(scale), C)
    return o, (S if output_final_state else None)


def chunked_forward(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
    initial_state=None, output_final_state=False,
):
    """The registry contract (see ``linattn._registry``); ``mask`` is always None here."""
    if mask is not None:
        raise ValueError(f"the chunked backend takes no dense mask, got one of shape {tuple(mask.shape)}")
    return chunked_linear_attention(
        q, k, v, causal=causal, decay=decay, scale=scale,
        initial_state=initial_state, output_final_state=output_final_state,
    )


BACKEND = Backend(
    name="chunked",
    fn=chunked_forward,
    description="linear-time chunked form for none/causal/decay; hand-written O(N) backward",
    mask_kinds=frozenset({"none", "causal", "decay"}),
    linear_time=True,
    auto_rank={"cpu": 0, "cuda": 40},
)
