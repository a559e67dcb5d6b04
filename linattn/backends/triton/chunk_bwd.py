r"""Backward kernels of the chunked form: dq with a forward pass, dk and dv with a reverse one.

Notation as in ``chunk_fwd.py``: one (sequence, head), λ = exp(-s), chunk t with L valid
tokens and local positions a, b; dO = do; S_{t-1} the state entering chunk t. Let

    G_t = ∂L/∂S_t      (the gradient flowing into the state after chunk t)

It obeys the reverse recurrence (from the gradient of the final state, or 0):

    G_{t-1} = λ^L G_t + scale · (λ^(a+1) ⊙ q_t)ᵀ do_t                        [D, E]

and the gradient of the initial state is G just before the first token. Then, per chunk,
with dP = do vᵀ, A = q kᵀ (both [L, L]) and Dm the intra-chunk decay mask:

    dq_t = scale · ( λ^(a+1) ⊙ (do_t S_{t-1}ᵀ) + (dP ⊙ Dm) k_t )              [L, D]
    dk_t = λ^(L-1-b) ⊙ (v_t G_tᵀ) + scale · (dP ⊙ Dm)ᵀ q_t                     [L, D]
    dv_t = λ^(L-1-b) ⊙ (k_t G_t)  + scale · (A ⊙ Dm)ᵀ do_t                     [L, E]

dq needs S, which runs forward; dk and dv need G, which runs backward. So there are
three kernels, each carrying its state slice in registers from chunk to chunk:

* ``chunk_bwd_kernel_dq``: channels [BK] of D, holds S [BK, E], walks forward;
* ``chunk_bwd_kernel_dkv``, dk programs: channels [BK] of D, hold G [BK, E], walk backward;
* ``chunk_bwd_kernel_dkv``, dv programs: channels [BV] of E, hold G [D, BV], walk backward.

dk and dv share one launch (and their reads of q and do, through L2); dq runs apart.
``chunk_bwd_kernel_fused`` runs all three kinds of program in one launch (``bwd_fuse=1``:
measured no faster, so opt-in; chunk.py's ChunkConfig).

As in the forward, a sequence may be cut into splits that run in parallel, each starting
from a boundary state found by ``chunk_state_kernel`` + ``chunk_scan_kernel`` (S at the
split's start going forward; G at its end going in REVERSE).

The slopes' gradient
--------------------
Each factor λ^x = exp(-s·x) has d/ds λ^x = -x·λ^x. Differentiate the chunk recurrence
forward in s (forward-mode through the state): let Ṫ_t = dS_t/ds. From
S_t = λ^L S_{t-1} + kᵀ(λ^(L-1-b) ⊙ v):

    Ṫ_t = λ^L (Ṫ_{t-1} - L·S_{t-1}) - kᵀ((L-1-b) λ^(L-1-b) ⊙ v)               [D, E]

and from o_t = scale·(λ^(a+1) ⊙ (q S_{t-1}) + (A ⊙ Dm) v) with ∂Dm/∂s = -(a-b) Dm:

    ds = Σ_t Σ_a ⟨do_a, ∂o_a/∂s⟩ + ⟨∂L/∂S_N, Ṫ_N⟩
       = scale · Σ_t [ - Σ_{a,b} (a-b) (dP ⊙ Dm ⊙ A)[a,b]                 (intra-chunk mask)
                       - Σ_a (a+1) λ^(a+1) q_a·(do_a S_{t-1}ᵀ)             (queries reading S)
                       + Σ_a λ^(a+1) q_a·(do_a Ṫ_{t-1}ᵀ) ]                (S itself moved)
         + ⟨∂L/∂S_N, Ṫ_N⟩

Every term is a sum over tokens of quantities the dq kernel already has (do Sᵀ is its
inter-chunk product), plus two products for Ṫ, so it lives there, as partial sums over
its D channels (both A = q kᵀ and q·(·) are sums over D, and the sum over slices is the
whole). The weights are bounded by the chunk length, never by the position in the
sequence, so nothing large cancels. With splits, Ṫ restarts at 0 in each split and the
last line uses G at the split's end instead of ∂L/∂S_N (the chain rule through the
boundary state: ds = Σ_σ [local terms + ⟨G_{end σ}, Ṫ_{end σ}⟩]). Regrouped, this is the
dense form ds = -Σ_{i>=j} (i-j) dW[i,j] W[i,j] of DESIGN.md; the slope is per query head,
so the partial sums are added over batch, splits and channel slices only.

GQA: dk and dv are computed per query head (into float32 buffers when a group has more
than one head) and summed over each group afterwards in a fixed order: deterministic.
"""
from __future__ import annotations

from .common import HAVE_TRITON

__all__ = ["chunk_bwd_kernel_dq", "chunk_bwd_kernel_dkv", "chunk_bwd_kernel_fused"]

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .chunk_fwd import (
        chunk_span, intra_decay, key_decay, locate, pow_decay, query_decay, zeros_acc,
    )
    from .common import dot, dot_state, to_operand

    @triton.jit
    def bwd_dq_program(
        i_k, i_split, i_h, i_ds, q, k, v, do, dq, slopes, h_init, dh_end, ds_part,
        split_index, cu_seqlens, scale, N, NCS, NS,
        H: tl.constexpr, G: tl.constexpr, HDIV: tl.constexpr,
        D: tl.constexpr, E: tl.constexpr,
        BT: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr,
        CAUSAL: tl.constexpr, DECAY: tl.constexpr, USE_INIT: tl.constexpr, USE_DH: tl.constexpr,
        SLOPE_GRAD: tl.constexpr, FINE: tl.constexpr, IS_VARLEN: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr, F64: tl.constexpr,
    ):
        """dq[:, slice i_k] for one split; with SLOPE_GRAD also this program's share of ds
        (stored at ds_part[i_ds]).

        FINE (16-bit inputs with SLOPE_GRAD): the state-side operands of the products that
        feed ds (S and Ṫ read by do, the weighted v entering S and Ṫ) are split into two
        16-bit parts. The ds terms are long sums over those states; a single rounding of
        S to 16 bits made ds ~20× less accurate than the same formula in that dtype (fuzz
        finding triton-backward-e62d3fff65, float16 with packed sequences)."""
        tl.static_assert(BE >= E, "one program holds all E channels of do and v")
        i_b, i_n, i_s, bos, T = locate(i_split, split_index, cu_seqlens, N, NS, IS_VARLEN)
        t0, t1 = chunk_span(i_s, T, BT, NCS)
        HKV = H // G
        i_q = (i_b * H + i_h) * N + bos
        i_kv = (i_b * HKV + i_h // G) * N + bos
        o_a = tl.arange(0, BT)
        o_k = i_k * BK + tl.arange(0, BK)
        o_e = tl.arange(0, BE)
        m_k = o_k < D
        m_e = o_e < E
        m_ke = m_k[:, None] & m_e[None, :]

        # S [BK, BE]: the forward state entering this split
        b_h = zeros_acc(BK, BE, F64)
        if CAUSAL:
            i_state = i_split * H + i_h
        else:
            i_state = i_n * (H // HDIV) + i_h // HDIV
        if USE_INIT:
            b_h += tl.load(h_init + (i_state * D + o_k[:, None]) * E + o_e[None, :], mask=m_ke, other=0.0)
        if DECAY:
            b_s = tl.load(slopes + i_h)
            b_wq = query_decay(b_s, BT)  # [BT] λ^(a+1)
            b_dm = intra_decay(b_s, BT, True, False)  # [BT, BT]
        elif CAUSAL:
            b_dm = intra_decay(0.0, BT, False, False)
        if SLOPE_GRAD:
            b_tan = zeros_acc(BK, BE, F64)  # [BK, BE] Ṫ = dS/ds since the split began
            b_ds = zeros_acc(1, BT, F64)  # [1, BT] per-row partial sums of ds / scale
            b_dist = (o_a[:, None] - o_a[None, :]).to(b_ds.dtype)  # [BT, BT] a - b

        for i_t in range(t0, t1):
            o_t = i_t * BT + o_a
            m_t = o_t < T
            b_do = tl.load(do + (i_q + o_t[:, None]) * E + o_e[None, :], mask=m_t[:, None] & m_e[None, :], other=0.0)
            # -- inter-chunk: do Sᵀ
            b_dqi = dot_state(b_do, tl.trans(b_h), b_do, PRECISION, UPCAST, FINE)  # [BT, BK]
            b_dq = b_dqi
            if CAUSAL:
                b_k = tl.load(k + (i_kv + o_t[:, None]) * D + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
                b_v = tl.load(v + (i_kv + o_t[:, None]) * E + o_e[None, :], mask=m_t[:, None] & m_e[None, :], other=0.0)
                # -- intra-chunk: (dP ⊙ Dm) k
                b_dP = dot(b_do, tl.trans(b_v), PRECISION, UPCAST) * b_dm  # [BT, BT]
                if DECAY:
                    L = tl.minimum(BT, T - i_t * BT)
                    b_lam = pow_decay(b_s, L)  # λ^L
                    b_wk = key_decay(b_s, L, BT)  # [BT] λ^(L-1-b)
                    b_dq = b_dqi * b_wq[:, None]
                b_dq += dot(to_operand(b_dP, b_k, UPCAST), b_k, PRECISION, UPCAST)
                if SLOPE_GRAD:
                    b_q = tl.load(q + (i_q + o_t[:, None]) * D + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
                    b_A = dot(b_q, tl.trans(b_k), PRECISION, UPCAST)  # [BT, BT] this slice's share of q kᵀ
                    b_dqt = dot_state(b_do, tl.trans(b_tan), b_do, PRECISION, UPCAST, FINE)  # [BT, BK] do Ṫᵀ
                    b_qf = b_q.to(b_dqi.dtype)
                    b_row = (
                        -tl.sum(b_dist * b_dP * b_A, axis=1)
                        - (o_a + 1) * b_wq * tl.sum(b_qf * b_dqi, axis=1)
                        + b_wq * tl.sum(b_qf * b_dqt, axis=1)
                    )  # [BT]
                    b_ds += b_row[None, :]
                    # Ṫ ← λ^L (Ṫ - L·S) - kᵀ((L-1-b) λ^(L-1-b) ⊙ v)
                    b_vx = b_v * ((L - 1 - o_a) * b_wk)[:, None]  # [BT, BE]
                    b_tan = (b_tan - L * b_h) * b_lam - dot_state(tl.trans(b_k), b_vx, b_v, PRECISION, UPCAST, FINE)
                # -- S ← λ^L S + kᵀ (λ^(L-1-b) ⊙ v)
                if DECAY:
                    b_h = b_h * b_lam
                    b_h += dot_state(tl.trans(b_k), b_v * b_wk[:, None], b_v, PRECISION, UPCAST, FINE)
                else:
                    b_h += dot(tl.trans(b_k), b_v, PRECISION, UPCAST)
            p_dq = dq + (i_q + o_t[:, None]) * D + o_k[None, :]
            tl.store(p_dq, (b_dq * scale).to(p_dq.dtype.element_ty), mask=m_t[:, None] & m_k[None, :])

        if SLOPE_GRAD:
            b_total = tl.sum(b_ds, axis=1) * scale  # [1]
            if USE_DH:  # ⟨G at the split's end, Ṫ⟩
                p_g = dh_end + ((i_split * H + i_h) * D + o_k[:, None]) * E + o_e[None, :]
                b_g = tl.load(p_g, mask=m_ke, other=0.0).to(b_tan.dtype)
                b_total += tl.sum(tl.sum(b_g * b_tan, axis=1)[None, :], axis=1)
            tl.store(ds_part + i_ds + tl.arange(0, 1), b_total.to(ds_part.dtype.element_ty))

    @triton.jit
    def bwd_dk_program(
        i_k, i_split, i_h, q, v, do, dk, slopes, dh_end, dh0,
        split_index, cu_seqlens, scale, N, NCS, NS,
        H: tl.constexpr, G: tl.constexpr,
        D: tl.constexpr, E: tl.constexpr,
        BT: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr,
        CAUSAL: tl.constexpr, DECAY: tl.constexpr, USE_DH: tl.constexpr, STORE_DH0: tl.constexpr,
        IS_VARLEN: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr, F64: tl.constexpr,
    ):
        """dk[:, slice i_k] (per query head) for one split, walking its chunks backward; the
        first split also stores the initial state's gradient. Without CAUSAL, dh_end is the
        whole scale·qᵀdo and dk = v Gᵀ."""
        tl.static_assert(BE >= E, "one program holds all E channels of do and v")
        i_b, i_n, i_s, bos, T = locate(i_split, split_index, cu_seqlens, N, NS, IS_VARLEN)
        t0, t1 = chunk_span(i_s, T, BT, NCS)
        HKV = H // G
        i_q = (i_b * H + i_h) * N + bos
        i_kv = (i_b * HKV + i_h // G) * N + bos
        o_a = tl.arange(0, BT)
        o_k = i_k * BK + tl.arange(0, BK)
        o_e = tl.arange(0, BE)
        m_k = o_k < D
        m_e = o_e < E
        m_ke = m_k[:, None] & m_e[None, :]

        # G [BK, BE]: the gradient flowing into the state at the split's end
        b_g = zeros_acc(BK, BE, F64)
        if CAUSAL:
            i_state = i_split * H + i_h
        else:
            i_state = i_n * H + i_h
        if USE_DH:
            b_g += tl.load(dh_end + (i_state * D + o_k[:, None]) * E + o_e[None, :], mask=m_ke, other=0.0)
        if DECAY:
            b_s = tl.load(slopes + i_h)
            b_wq = query_decay(b_s, BT)  # [BT] λ^(a+1)
            b_dmt = intra_decay(b_s, BT, True, True)  # [BT, BT] Dmᵀ
        elif CAUSAL:
            b_dmt = intra_decay(0.0, BT, False, True)

        for j in range(t1 - t0):
            i_t = t1 - 1 - j
            o_t = i_t * BT + o_a
            m_t = o_t < T
            b_v = tl.load(v + (i_kv + o_t[:, None]) * E + o_e[None, :], mask=m_t[:, None] & m_e[None, :], other=0.0)
            # -- inter-chunk: v Gᵀ, weighted by how much of each key reaches the state
            b_dk = dot_state(b_v, tl.trans(b_g), b_v, PRECISION, UPCAST, False)  # [BT, BK]
            if CAUSAL:
                b_q = tl.load(q + (i_q + o_t[:, None]) * D + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
                b_do = tl.load(do + (i_q + o_t[:, None]) * E + o_e[None, :], mask=m_t[:, None] & m_e[None, :], other=0.0)
                if DECAY:
                    L = tl.minimum(BT, T - i_t * BT)
                    b_dk = b_dk * key_decay(b_s, L, BT)[:, None]
                # -- intra-chunk: (dP ⊙ Dm)ᵀ q
                b_dPt = dot(b_v, tl.trans(b_do), PRECISION, UPCAST) * b_dmt  # [BT, BT] rows b, columns a
                b_dk += dot(to_operand(b_dPt, b_q, UPCAST), b_q, PRECISION, UPCAST) * scale
                # -- G ← λ^L G + scale·(λ^(a+1) ⊙ q)ᵀ do
                if DECAY:
                    b_g = b_g * pow_decay(b_s, L)
                    b_qw = to_operand(b_q * b_wq[:, None], b_q, UPCAST)
                else:
                    b_qw = b_q
                b_g += dot(tl.trans(b_qw), b_do, PRECISION, UPCAST) * scale
            p_dk = dk + (i_q + o_t[:, None]) * D + o_k[None, :]
            tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), mask=m_t[:, None] & m_k[None, :])

        if STORE_DH0:
            if i_s == 0:
                p_dh0 = dh0 + ((i_n * H + i_h) * D + o_k[:, None]) * E + o_e[None, :]
                tl.store(p_dh0, b_g.to(p_dh0.dtype.element_ty), mask=m_ke)

    @triton.jit
    def bwd_dv_program(
        i_v, i_split, i_h, q, k, do, dv, slopes, dh_end,
        split_index, cu_seqlens, scale, N, NCS, NS,
        H: tl.constexpr, G: tl.constexpr,
        D: tl.constexpr, E: tl.constexpr,
        BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        CAUSAL: tl.constexpr, DECAY: tl.constexpr, USE_DH: tl.constexpr,
        IS_VARLEN: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr, F64: tl.constexpr,
    ):
        """dv[:, slice i_v] (per query head) for one split, walking its chunks backward."""
        tl.static_assert(BK >= D, "one program holds all D channels of q and k")
        i_b, i_n, i_s, bos, T = locate(i_split, split_index, cu_seqlens, N, NS, IS_VARLEN)
        t0, t1 = chunk_span(i_s, T, BT, NCS)
        HKV = H // G
        i_q = (i_b * H + i_h) * N + bos
        i_kv = (i_b * HKV + i_h // G) * N + bos
        o_a = tl.arange(0, BT)
        o_d = tl.arange(0, BK)
        o_v = i_v * BV + tl.arange(0, BV)
        m_d = o_d < D
        m_v = o_v < E
        m_dv = m_d[:, None] & m_v[None, :]

        # G [BK, BV]: the gradient flowing into the state at the split's end
        b_g = zeros_acc(BK, BV, F64)
        if CAUSAL:
            i_state = i_split * H + i_h
        else:
            i_state = i_n * H + i_h
        if USE_DH:
            b_g += tl.load(dh_end + (i_state * D + o_d[:, None]) * E + o_v[None, :], mask=m_dv, other=0.0)
        if DECAY:
            b_s = tl.load(slopes + i_h)
            b_wq = query_decay(b_s, BT)  # [BT] λ^(a+1)
            b_dmt = intra_decay(b_s, BT, True, True)  # [BT, BT] Dmᵀ
        elif CAUSAL:
            b_dmt = intra_decay(0.0, BT, False, True)

        for j in range(t1 - t0):
            i_t = t1 - 1 - j
            o_t = i_t * BT + o_a
            m_t = o_t < T
            b_k = tl.load(k + (i_kv + o_t[:, None]) * D + o_d[None, :], mask=m_t[:, None] & m_d[None, :], other=0.0)
            # -- inter-chunk: k G, weighted by how much of each key reaches the state
            b_dv = dot_state(b_k, b_g, b_k, PRECISION, UPCAST, False)  # [BT, BV]
            if CAUSAL:
                b_q = tl.load(q + (i_q + o_t[:, None]) * D + o_d[None, :], mask=m_t[:, None] & m_d[None, :], other=0.0)
                b_do = tl.load(do + (i_q + o_t[:, None]) * E + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
                if DECAY:
                    L = tl.minimum(BT, T - i_t * BT)
                    b_dv = b_dv * key_decay(b_s, L, BT)[:, None]
                # -- intra-chunk: (A ⊙ Dm)ᵀ do
                b_At = dot(b_k, tl.trans(b_q), PRECISION, UPCAST) * b_dmt  # [BT, BT] rows b, columns a
                b_dv += dot(to_operand(b_At, b_do, UPCAST), b_do, PRECISION, UPCAST) * scale
                # -- G ← λ^L G + scale·(λ^(a+1) ⊙ q)ᵀ do
                if DECAY:
                    b_g = b_g * pow_decay(b_s, L)
                    b_qw = to_operand(b_q * b_wq[:, None], b_q, UPCAST)
                else:
                    b_qw = b_q
                b_g += dot(tl.trans(b_qw), b_do, PRECISION, UPCAST) * scale
            p_dv = dv + (i_q + o_t[:, None]) * E + o_v[None, :]
            tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])

    @triton.jit(do_not_specialize=["N", "scale", "NCS", "NS"])
    def chunk_bwd_kernel_dkv(
        q, k, v, do, dk, dv, slopes, dh_end, dh0,
        split_index, cu_seqlens, scale, N, NCS, NS,
        H: tl.constexpr, G: tl.constexpr,
        D: tl.constexpr, E: tl.constexpr,
        BT: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr, BKF: tl.constexpr, BV: tl.constexpr,
        CAUSAL: tl.constexpr, DECAY: tl.constexpr, USE_DH: tl.constexpr, STORE_DH0: tl.constexpr,
        IS_VARLEN: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr, F64: tl.constexpr,
    ):
        """dk and dv in one launch: per (split, head), ⌈D/BK⌉ dk programs then ⌈E/BV⌉ dv
        programs with neighbouring ids, so that their reads of q and do (same chunks, same
        backward order) are served once from L2."""
        NK = tl.cdiv(D, BK)
        NR = NK + tl.cdiv(E, BV)
        pid = tl.program_id(0).to(tl.int64)
        i_r, i_sh = pid % NR, pid // NR
        i_split, i_h = i_sh // H, i_sh % H
        if i_r < NK:
            bwd_dk_program(
                i_r, i_split, i_h, q, v, do, dk, slopes, dh_end, dh0,
                split_index, cu_seqlens, scale, N, NCS, NS,
                H, G, D, E, BT, BK, BE, CAUSAL, DECAY, USE_DH, STORE_DH0, IS_VARLEN,
                PRECISION, UPCAST, F64,
            )
        else:
            bwd_dv_program(
                i_r - NK, i_split, i_h, q, k, do, dv, slopes, dh_end,
                split_index, cu_seqlens, scale, N, NCS, NS,
                H, G, D, E, BT, BKF, BV, CAUSAL, DECAY, USE_DH, IS_VARLEN,
                PRECISION, UPCAST, F64,
            )

    @triton.jit(do_not_specialize=["N", "scale", "NCS", "NS"])
    def chunk_bwd_kernel_dq(
        q, k, v, do, dq, slopes, h_init, dh_end, ds_part,
        split_index, cu_seqlens, scale, N, NCS, NS,
        H: tl.constexpr, G: tl.constexpr, HDIV: tl.constexpr,
        D: tl.constexpr, E: tl.constexpr,
        BT: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr,
        CAUSAL: tl.constexpr, DECAY: tl.constexpr, USE_INIT: tl.constexpr, USE_DH: tl.constexpr,
        SLOPE_GRAD: tl.constexpr, FINE: tl.constexpr, IS_VARLEN: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr, F64: tl.constexpr,
    ):
        """dq alone: per (split, head), ⌈D/BK⌉ programs (``bwd_dq_program``)."""
        NK = tl.cdiv(D, BK)
        pid = tl.program_id(0).to(tl.int64)
        i_k, i_sh = pid % NK, pid // NK
        bwd_dq_program(
            i_k, i_sh // H, i_sh % H, pid, q, k, v, do, dq, slopes, h_init, dh_end, ds_part,
            split_index, cu_seqlens, scale, N, NCS, NS,
            H, G, HDIV, D, E, BT, BK, BE, CAUSAL, DECAY, USE_INIT, USE_DH, SLOPE_GRAD, FINE, IS_VARLEN,
            PRECISION, UPCAST, F64,
        )

    @triton.jit(do_not_specialize=["N", "scale", "NCS", "NS"])
    def chunk_bwd_kernel_fused(
        q, k, v, do, dq, dk, dv, slopes, h_init, dh_end, dh0, ds_part,
        split_index, cu_seqlens, scale, N, NCS, NS,
        H: tl.constexpr, G: tl.constexpr, HDIV: tl.constexpr,
        D: tl.constexpr, E: tl.constexpr,
        BT: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr, BKF: tl.constexpr, BV: tl.constexpr,
        CAUSAL: tl.constexpr, DECAY: tl.constexpr, USE_INIT: tl.constexpr, USE_DH: tl.constexpr,
        STORE_DH0: tl.constexpr, SLOPE_GRAD: tl.constexpr, FINE: tl.constexpr, IS_VARLEN: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr, F64: tl.constexpr,
    ):
        """dq, dk and dv in one launch: per (split, head), ⌈D/BK⌉ dq programs, ⌈D/BK⌉ dk
        programs and ⌈E/BV⌉ dv programs with neighbouring ids. Each program is a walk over
        the chunks that carries one state slice, one chunk at a time: a latency-bound loop.
        Two launches (dq, then dk and dv) leave SMs half idle in each one's tail and hold fewer
        walks per SM to hide one another's latency; one launch overlaps the forward dq walks
        with the backward dk and dv walks."""
        NK = tl.cdiv(D, BK)
        NR = 2 * NK + tl.cdiv(E, BV)
        pid = tl.program_id(0).to(tl.int64)
        i_r, i_sh = pid % NR, pid // NR
        i_split, i_h = i_sh // H, i_sh % H
        if i_r < NK:
            bwd_dq_program(
                i_r, i_split, i_h, i_sh * NK + i_r, q, k, v, do, dq, slopes, h_init, dh_end, ds_part,
                split_index, cu_seqlens, scale, N, NCS, NS,
                H, G, HDIV, D, E, BT, BK, BE, CAUSAL, DECAY, USE_INIT, USE_DH, SLOPE_GRAD, FINE, IS_VARLEN,
                PRECISION, UPCAST, F64,
            )
        elif i_r < 2 * NK:
            bwd_dk_program(
                i_r - NK, i_split, i_h, q, v, do, dk, slopes, dh_end, dh0,
                split_index, cu_seqlens, scale, N, NCS, NS,
                H, G, D, E, BT, BK, BE, CAUSAL, DECAY, USE_DH, STORE_DH0, IS_VARLEN,
                PRECISION, UPCAST, F64,
            )
        else:
            bwd_dv_program(
                i_r - 2 * NK, i_split, i_h, q, k, do, dv, slopes, dh_end,
                split_index, cu_seqlens, scale, N, NCS, NS,
                H, G, D, E, BT, BKF, BV, CAUSAL, DECAY, USE_DH, IS_VARLEN,
                PRECISION, UPCAST, F64,
            )
