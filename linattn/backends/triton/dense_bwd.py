"""Backward kernels of the general operator: dq, dk/dv, dM and the slopes gradient.

Each tile recomputes its scores instead of reading them back (nothing N×M is stored by
the forward), then follows the dense-form gradient:

    A  = q kᵀ            W  = M ⊙ C           (C: causal/decay factor)
    dP = scale · do vᵀ   dv = scale · (A ⊙ W)ᵀ do
    dA = dP ⊙ W          dq = dA k            dk = dAᵀ q
    dW = dP ⊙ A          dM = dW ⊙ C          ds_h = -Σ (i - j) dW ⊙ W

Three kernels, launched only for the gradients that are needed:

* ``_dense_bwd_dq_kernel`` — one program per (query block, b, h), walking the keys:
  dq, and the slopes gradient as one float32 partial sum per program (reduced after, in
  a fixed order). When the mask has one tile per (b, h) (no broadcast) it also writes dM.
* ``_dense_bwd_dkdv_kernel`` — one program per (key block, b, kv head), walking the
  queries of every head of its group in turn: dk and dv summed over the GQA group inside
  the program, deterministically, with no [B, H, M, D] buffer.
* ``_dense_bwd_dmask_kernel`` — one program per mask tile (i block, j block, mask b, mask h),
  looping over the (b, h) pairs that share the tile (all of them for a [1, 1, N, M] mask):
  dM summed over the broadcast dimensions without a per-head dM ever existing.

Causal/decay: the dq walk stops at the diagonal, the dk/dv walk starts there, and the
dM kernel writes zeros above it without computing anything. As in the forward, each walk
is two branch-free loops: tiles wholly below the diagonal (no causal test; decay as a
row factor times a column factor, see ``dense_fwd``) and the tiles crossing it
(element-wise weight). Decay also ends both walks where the weights underflow to 0 in
float32 (``decay_horizon``).
"""
from __future__ import annotations

import os

import torch

from . import common
from .common import HAVE_TRITON
from .dense_fwd import (F16X3_CONFIGS, F16X3_FIXED_GPU, FALLBACK_CONFIGS, IEEE_FP32_FIXED, channel_tiles,
                        dot_precision, launch, mask_strides)

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .common import dot, dot3, dot3_acc, split_tf32, to_operand
    from .dense_fwd import _autotuned, _pruner, causal_decay, decay_horizon, diagonal_weight

__all__ = ["dense_backward", "DQ_CONFIGS", "DKDV_CONFIGS", "DKDV_SPLIT_CONFIGS", "DMASK_CONFIGS", "FUSED_CONFIGS"]

# (rows, cols, num_warps, num_stages); rows = the block a program owns.
# Kept small: every config costs a compile (seconds each) the first time a shape is seen.
DQ_CONFIGS = [(64, 64, 4, 3), (128, 64, 8, 3)]
#: float32 adds (128, 64, 8, 2): with operands split once (tf32x3s) (128, 64, 8, 3) needs
#: 256 KiB of shared memory compiled for sm_90 (over the 227 KiB limit); two stages need
#: 192 KiB (191 registers, no spills).
DQ_CONFIGS_WIDE = DQ_CONFIGS + [(128, 64, 8, 2)]
#: (64, 16, 4, 3) is there for float32 (tf32x3): compiled for sm_90 at D = 64 it is the one
#: dk/dv config without spills (run 2's seed winner (64, 32, 4, 3) spills 56 B, (64, 64) 1144 B).
DKDV_CONFIGS = [(64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 16, 4, 3)]
#: Configs of the dk-only and dv-only programs (LINATTN_TRITON_DENSE_DKDV=split): each holds
#: one accumulator and one resident tile (pair), so wider walks fit. Compiled for sm_90 at
#: float32 D = 64 with operands split once (tf32x3s) none of these spills (registers dv/dk:
#: 64×64 184/246, 192 KiB shared; 128×64 8 warps 2 stages 173/200, 192 KiB; 64×32 153/150;
#: 128×32 8 warps 151); (128, 64, 8, 3): dv-only 235 registers, 224 KiB, no spills with
#: Triton's tf32x3 (added after run 9, where dk/dv still ran at half dq's rate per product).
DKDV_SPLIT_CONFIGS = [(64, 64, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3)]
DMASK_CONFIGS = [(64, 64, 4, 3), (128, 64, 8, 3)]
#: The fused causal/decay backward (dk/dv of key block p and dq of query block p in one
#: program): (BP, BW, warps, stages), BP the block owned in both walks, BW the walked tile.
#: 64×64 tiles with 4 warps are left out: compiled for sm_90 (bf16, D = 64) ptxas reports
#: "wgmma.mma_async instructions are serialized due to insufficient register resources"
#: (C7511) for them, for (64,64,4,2) as well; the three below compile without it.
FUSED_CONFIGS = [(64, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3)]
FUSED_FIXED_GPU = (64, 32, 4, 3)
#: The split dk/dv kernel's fixed config for causal/decay. Its v2 fixed (64,64,4,3) (the
#: dense-mask winner, kept for masks) compiles for causal/decay (two loops per walk) with
#: the C7511 wgmma serialisation, and that was the config of run 2's causal/decay timings;
#: (64,32,4,3) compiles without it (176 registers, 40 KiB).
DKDV_CAUSAL_FIXED_GPU = (64, 32, 4, 3)
#: The configs used when autotuning is off, per kernel (the winners of GPU run 1 at bf16 D = 64).
FIXED_GPU = (64, 64, 4, 3)
DQ_FIXED_GPU = (128, 64, 8, 3)
FIXED_INTERPRET = (32, 16, 1, 1)


if HAVE_TRITON:

    @triton.jit
    def _dq_inner(
        b_dq, b_ds, b_q, b_ql, b_do, b_dol, k, v, p_mrow, p_dmrow, i0, lo, hi, M, D, E, stride_mm, scale, b_s2, c_i,
        o_n, o_m, o_d, o_e, m_n, m_d, m_e,
        HAS_MASK: tl.constexpr, DECAY: tl.constexpr, STAGE: tl.constexpr,
        NEED_DQ: tl.constexpr, NEED_DM: tl.constexpr, NEED_DS: tl.constexpr,
        BM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """dq (and dM, ds) over key blocks [lo, hi); STAGE as in dense_fwd._fwd_inner. In
        STAGE 1 with decay the row factor ``c_i`` [BN] is left out of dq (applied by the caller
        after the loop) but kept in dM and ds."""
        for j0 in range(lo, hi, BM):
            o_j = j0 + o_m  # [BM]
            m_m = o_j < M
            m_nm = m_n[:, None] & m_m[None, :]
            b_k = tl.load(k + o_j[:, None] * D + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
            b_v = tl.load(v + o_j[:, None] * E + o_e[None, :], mask=m_m[:, None] & m_e[None, :], other=0.0)  # [BM, BE]
            # -- recompute the scores; dP = scale do vᵀ (q, do resident, split once by the caller)
            b_kh, b_kl = split_tf32(b_k, PRECISION)  # k: in the scores and in dq
            b_vh, b_vl = split_tf32(b_v, PRECISION)
            b_a = dot3(b_q, b_ql, tl.trans(b_kh), tl.trans(b_kl), PRECISION, UPCAST)  # [BN, BM]
            b_dp = dot3(b_do, b_dol, tl.trans(b_vh), tl.trans(b_vl), PRECISION, UPCAST) * scale  # [BN, BM]
            # -- W = M ⊙ C, and the full C for dM/ds
            b_w = 1.0
            b_c = 1.0
            if STAGE == 1:
                if DECAY:
                    b_cj = tl.exp2(-b_s2 * (i0 - o_j).to(tl.float32))  # [BM]
                    b_w = b_cj[None, :]
                    if NEED_DM or NEED_DS:
                        b_c = c_i[:, None] * b_cj[None, :]  # [BN, BM]
            if STAGE == 2:
                b_c = diagonal_weight((i0 + o_n)[:, None] - o_j[None, :], b_s2, DECAY)  # [BN, BM]
                b_w = b_c
            if HAS_MASK:
                b_m = tl.load(p_mrow + o_j.to(tl.int64)[None, :] * stride_mm, mask=m_nm, other=0.0).to(tl.float32)
                b_w = b_w * b_m  # [BN, BM]
            if NEED_DM:  # dM = dP ⊙ A ⊙ C (dM has the mask's own layout, contiguous)
                tl.store(p_dmrow + o_j[None, :], (b_dp * b_a * b_c).to(p_dmrow.dtype.element_ty), mask=m_nm)
            if NEED_DS:  # ds accumulates (i - j) dP ⊙ A ⊙ M ⊙ C elementwise; reduced once at the end
                b_dwc = b_dp * b_a * b_c
                if HAS_MASK:
                    b_dwc *= b_m
                b_ds += ((i0 + o_n)[:, None] - o_j[None, :]).to(tl.float32) * b_dwc
            if NEED_DQ:  # dq += (dP ⊙ W) k
                b_sh, b_sl = split_tf32(to_operand(b_dp * b_w, b_k, UPCAST), PRECISION)
                b_dq = dot3_acc(b_dq, b_sh, b_sl, b_kh, b_kl, PRECISION, UPCAST)  # [BN, BD]
        return b_dq, b_ds

    @triton.jit
    def _dense_bwd_dq_kernel(
        q, k, v, m, s, do, dq, dm, ds,
        stride_mb, stride_mh, stride_mn, stride_mm,
        H, G, N, M, D, E, scale, NI,
        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DECAY: tl.constexpr,
        NEED_DQ: tl.constexpr, NEED_DM: tl.constexpr, NEED_DS: tl.constexpr,
        BN: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        i_bh, i_n = tl.program_id(0), tl.program_id(1)
        if CAUSAL:  # longest rows first
            i_n = tl.num_programs(1) - 1 - i_n
        _dq_program(q, k, v, m, s, do, dq, dm, ds, stride_mb, stride_mh, stride_mn, stride_mm,
                    H, G, N, M, D, E, scale, NI, i_bh, i_n,
                    HAS_MASK, CAUSAL, DECAY, NEED_DQ, NEED_DM, NEED_DS, BN, BM, BD, BE, PRECISION, UPCAST)

    @triton.jit
    def _dq_program(
        q, k, v, m, s, do, dq, dm, ds,
        stride_mb, stride_mh, stride_mn, stride_mm,
        H, G, N, M, D, E, scale, NI, i_bh, i_n,
        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DECAY: tl.constexpr,
        NEED_DQ: tl.constexpr, NEED_DM: tl.constexpr, NEED_DS: tl.constexpr,
        BN: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """dq (and fused dM, the slopes partial) of query block ``i_n`` of (b, h) = ``i_bh``."""
        tl.static_assert(BD >= 16 and BE >= 16 and BN >= 16 and BM >= 16, "tiles must be >= 16 for tl.dot")
        tl.static_assert(not DECAY or CAUSAL, "decay implies causal")
        tl.static_assert(not NEED_DM or HAS_MASK, "dM needs a mask")
        i_b, i_h = i_bh // H, i_bh % H
        i_kv = i_b * (H // G) + i_h // G
        i0 = i_n * BN

        q += (i_bh.to(tl.int64) * N + i0) * D
        dq += (i_bh.to(tl.int64) * N + i0) * D
        do += (i_bh.to(tl.int64) * N + i0) * E
        k += i_kv.to(tl.int64) * M * D
        v += i_kv.to(tl.int64) * M * E

        o_n = tl.arange(0, BN)
        o_m = tl.arange(0, BM)
        o_d = tl.arange(0, BD)
        o_e = tl.arange(0, BE)
        m_n = (i0 + o_n) < N
        m_d = o_d < D
        m_e = o_e < E
        p_mrow = (m + i_b.to(tl.int64) * stride_mb + i_h.to(tl.int64) * stride_mh
                  + (i0 + o_n).to(tl.int64)[:, None] * stride_mn)  # [BN, 1]
        # dM has the mask's (unbroadcast) shape, contiguous: one tile per (b, h)
        p_dmrow = dm + (i_bh.to(tl.int64) * N + i0 + o_n.to(tl.int64))[:, None] * M  # [BN, 1]

        b_q = tl.load(q + o_n[:, None] * D + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
        b_do = tl.load(do + o_n[:, None] * E + o_e[None, :], mask=m_n[:, None] & m_e[None, :], other=0.0)  # [BN, BE]
        b_q, b_ql = split_tf32(b_q, PRECISION)  # split once for the whole walk (PRESPLIT)
        b_do, b_dol = split_tf32(b_do, PRECISION)
        b_dq = tl.zeros([BN, BD], dtype=tl.float32)
        b_ds = tl.zeros([BN, BM], dtype=tl.float32)

        if CAUSAL:
            if DECAY:
                b_s = tl.load(s + i_h).to(tl.float32)
                b_s2 = b_s * 1.4426950408889634  # s · log₂e
                # underflowed tiles add nothing (a fused dM starts zeroed, see dense_backward)
                lo = (tl.maximum(i0 - decay_horizon(b_s), 0.0).to(tl.int32) // BM) * BM
            else:
                b_s2 = 0.0
                lo = 0
            c_i = tl.exp2(-b_s2 * o_n.to(tl.float32))  # [BN] row factor 2^(-s₂ (i - i0))
            mid = ((i0 + 1) // BM) * BM  # key blocks before mid lie wholly below the diagonal
            b_dq, b_ds = _dq_inner(b_dq, b_ds, b_q, b_ql, b_do, b_dol, k, v, p_mrow, p_dmrow, i0, lo, mid, M, D, E, stride_mm,
                                   scale, b_s2, c_i, o_n, o_m, o_d, o_e, m_n, m_d, m_e,
                                   HAS_MASK, DECAY, 1, NEED_DQ, NEED_DM, NEED_DS, BM, PRECISION, UPCAST)
            if DECAY:
                b_dq *= c_i[:, None]
            b_dq, b_ds = _dq_inner(b_dq, b_ds, b_q, b_ql, b_do, b_dol, k, v, p_mrow, p_dmrow, i0, mid, tl.minimum(M, i0 + BN),
                                   M, D, E, stride_mm, scale, b_s2, c_i, o_n, o_m, o_d, o_e, m_n, m_d, m_e,
                                   HAS_MASK, DECAY, 2, NEED_DQ, NEED_DM, NEED_DS, BM, PRECISION, UPCAST)
        else:
            b_dq, b_ds = _dq_inner(b_dq, b_ds, b_q, b_ql, b_do, b_dol, k, v, p_mrow, p_dmrow, i0, 0, M, M, D, E, stride_mm,
                                   scale, 0.0, o_n.to(tl.float32), o_n, o_m, o_d, o_e, m_n, m_d, m_e,
                                   HAS_MASK, False, 0, NEED_DQ, NEED_DM, NEED_DS, BM, PRECISION, UPCAST)

        if NEED_DQ:
            tl.store(dq + o_n[:, None] * D + o_d[None, :], b_dq.to(dq.dtype.element_ty), mask=m_n[:, None] & m_d[None, :])
        if NEED_DS:  # one partial per program, summed in a fixed order by the launcher
            tl.store(ds + i_bh * NI + i_n, -tl.sum(tl.sum(b_ds, axis=1), axis=0))

    @triton.jit
    def _dkdv_inner(
        b_dk, b_dv, b_k, b_kl, b_v, b_vl, q, do, p_mcol, j0, lo, hi, N, D, E, stride_mn, scale, b_s2, c_j,
        o_n, o_m, o_d, o_e, m_m, m_d, m_e,
        HAS_MASK: tl.constexpr, DECAY: tl.constexpr, STAGE: tl.constexpr,
        NEED_DK: tl.constexpr, NEED_DV: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """dk, dv of one key block over query rows [lo, hi) of one head, on transposed tiles
        [BM, BN]. STAGE 1 (rows wholly below the block, i >= p = j0 + BM): with decay
        Cᵀ = c_j ⊗ 2^(-s₂ (i - p)), c_j = 2^(-s₂ (p - j)) [BM] given; STAGE 2: element-wise."""
        for i0 in range(lo, hi, BN):
            o_i = i0 + o_n  # [BN] query indices
            m_n = o_i < N
            b_q = tl.load(q + o_i[:, None] * D + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
            b_do = tl.load(do + o_i[:, None] * E + o_e[None, :], mask=m_n[:, None] & m_e[None, :], other=0.0)  # [BN, BE]
            # -- transposed tiles: Aᵀ = k qᵀ (k, v resident, split once by the caller; q and
            #    do split once here for their two products each)
            b_qh, b_ql = split_tf32(b_q, PRECISION)
            b_doh, b_dol = split_tf32(b_do, PRECISION)
            b_at = dot3(b_k, b_kl, tl.trans(b_qh), tl.trans(b_ql), PRECISION, UPCAST)  # [BM, BN]
            # -- Wᵀ
            b_wt = 1.0
            if STAGE == 1:
                if DECAY:
                    b_wt = c_j[:, None] * tl.exp2(-b_s2 * (o_i - (j0 + BM)).to(tl.float32))[None, :]  # [BM, BN]
            if STAGE == 2:
                b_wt = diagonal_weight(o_i[None, :] - (j0 + o_m)[:, None], b_s2, DECAY)  # [BM, BN]
            if HAS_MASK:
                b_mt = tl.load(p_mcol + o_i.to(tl.int64)[None, :] * stride_mn,
                               mask=m_m[:, None] & m_n[None, :], other=0.0).to(tl.float32)  # [BM, BN]  Mᵀ tile
                b_wt = b_wt * b_mt
            if NEED_DV:  # dv += (A ⊙ W)ᵀ do
                b_ph, b_pl = split_tf32(to_operand(b_at * b_wt, b_do, UPCAST), PRECISION)
                b_dv = dot3_acc(b_dv, b_ph, b_pl, b_doh, b_dol, PRECISION, UPCAST)  # [BM, BE]
            if NEED_DK:  # dk += (dP ⊙ W)ᵀ q,  dPᵀ = scale v doᵀ
                b_dpt = dot3(b_v, b_vl, tl.trans(b_doh), tl.trans(b_dol), PRECISION, UPCAST) * scale  # [BM, BN]
                b_sh, b_sl = split_tf32(to_operand(b_dpt * b_wt, b_q, UPCAST), PRECISION)
                b_dk = dot3_acc(b_dk, b_sh, b_sl, b_qh, b_ql, PRECISION, UPCAST)  # [BM, BD]
        return b_dk, b_dv

    @triton.jit
    def _dense_bwd_dkdv_kernel(
        q, k, v, m, s, do, dk, dv,
        stride_mb, stride_mh, stride_mn, stride_mm,
        H, G, N, M, D, E, scale,
        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DECAY: tl.constexpr,
        NEED_DK: tl.constexpr, NEED_DV: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        i_bg, i_m = tl.program_id(0), tl.program_id(1)  # causal: the longest walks (small j0) come first
        _dkdv_program(q, k, v, m, s, do, dk, dv, stride_mb, stride_mh, stride_mn, stride_mm,
                      H, G, N, M, D, E, scale, i_bg, i_m,
                      HAS_MASK, CAUSAL, DECAY, NEED_DK, NEED_DV, BM, BN, BD, BE, PRECISION, UPCAST)

    @triton.jit
    def _dkdv_program(
        q, k, v, m, s, do, dk, dv,
        stride_mb, stride_mh, stride_mn, stride_mm,
        H, G, N, M, D, E, scale, i_bg, i_m,
        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DECAY: tl.constexpr,
        NEED_DK: tl.constexpr, NEED_DV: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """dk, dv of key block ``i_m`` of (b, kv head) = ``i_bg``, summed over its GQA group."""
        tl.static_assert(BD >= 16 and BE >= 16 and BN >= 16 and BM >= 16, "tiles must be >= 16 for tl.dot")
        tl.static_assert(not DECAY or CAUSAL, "decay implies causal")
        Hkv = H // G
        i_b, i_g = i_bg // Hkv, i_bg % Hkv
        j0 = i_m * BM

        k += (i_bg.to(tl.int64) * M + j0) * D
        v += (i_bg.to(tl.int64) * M + j0) * E
        dk += (i_bg.to(tl.int64) * M + j0) * D
        dv += (i_bg.to(tl.int64) * M + j0) * E

        o_n = tl.arange(0, BN)
        o_m = tl.arange(0, BM)
        o_d = tl.arange(0, BD)
        o_e = tl.arange(0, BE)
        m_m = (j0 + o_m) < M
        m_d = o_d < D
        m_e = o_e < E

        b_k = tl.load(k + o_m[:, None] * D + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
        b_v = tl.load(v + o_m[:, None] * E + o_e[None, :], mask=m_m[:, None] & m_e[None, :], other=0.0)  # [BM, BE]
        b_k, b_kl = split_tf32(b_k, PRECISION)  # split once for the whole walk (PRESPLIT)
        b_v, b_vl = split_tf32(b_v, PRECISION)
        b_dk = tl.zeros([BM, BD], dtype=tl.float32)
        b_dv = tl.zeros([BM, BE], dtype=tl.float32)

        for i_h in range(i_g * G, i_g * G + G):  # the heads of this kv head's group, in order
            i_bh = i_b * H + i_h
            p_q = q + i_bh.to(tl.int64) * N * D
            p_do = do + i_bh.to(tl.int64) * N * E
            p_mcol = (m + i_b.to(tl.int64) * stride_mb + tl.cast(i_h, tl.int64) * stride_mh
                      + (j0 + o_m).to(tl.int64)[:, None] * stride_mm)  # [BM, 1]
            if CAUSAL:  # no query row above the diagonal
                if DECAY:
                    b_s = tl.load(s + i_h).to(tl.float32)
                    b_s2 = b_s * 1.4426950408889634
                    hi = tl.minimum(j0 + BM + decay_horizon(b_s), N * 1.0).to(tl.int32)  # past it all underflows
                else:
                    b_s2 = 0.0
                    hi = N
                c_j = tl.exp2(-b_s2 * (BM - o_m).to(tl.float32))  # [BM] 2^(-s₂ (p - j)), p = j0 + BM
                mid = tl.minimum(j0 + ((BM + BN - 1) // BN) * BN, hi)  # rows from mid lie wholly below
                b_dk, b_dv = _dkdv_inner(b_dk, b_dv, b_k, b_kl, b_v, b_vl, p_q, p_do, p_mcol, j0, j0, mid, N, D, E, stride_mn,
                                         scale, b_s2, c_j, o_n, o_m, o_d, o_e, m_m, m_d, m_e,
                                         HAS_MASK, DECAY, 2, NEED_DK, NEED_DV, BM, BN, PRECISION, UPCAST)
                b_dk, b_dv = _dkdv_inner(b_dk, b_dv, b_k, b_kl, b_v, b_vl, p_q, p_do, p_mcol, j0, mid, hi, N, D, E, stride_mn,
                                         scale, b_s2, c_j, o_n, o_m, o_d, o_e, m_m, m_d, m_e,
                                         HAS_MASK, DECAY, 1, NEED_DK, NEED_DV, BM, BN, PRECISION, UPCAST)
            else:
                b_dk, b_dv = _dkdv_inner(b_dk, b_dv, b_k, b_kl, b_v, b_vl, p_q, p_do, p_mcol, j0, 0, N, N, D, E, stride_mn,
                                         scale, 0.0, o_m.to(tl.float32), o_n, o_m, o_d, o_e, m_m, m_d, m_e,
                                         HAS_MASK, False, 0, NEED_DK, NEED_DV, BM, BN, PRECISION, UPCAST)

        if NEED_DK:
            tl.store(dk + o_m[:, None] * D + o_d[None, :], b_dk.to(dk.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])
        if NEED_DV:
            tl.store(dv + o_m[:, None] * E + o_e[None, :], (b_dv * scale).to(dv.dtype.element_ty),
                     mask=m_m[:, None] & m_e[None, :])

    @triton.jit
    def _dense_bwd_fused_kernel(
        q, k, v, m, s, do, dq, dk, dv, ds,
        stride_mb, stride_mh, stride_mn, stride_mm,
        H, G, N, M, D, E, scale, NI,
        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DECAY: tl.constexpr,
        NEED_DQ: tl.constexpr, NEED_DS: tl.constexpr, NEED_DK: tl.constexpr, NEED_DV: tl.constexpr,
        BP: tl.constexpr, BW: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """dk/dv of key block p and dq of query block p in one program (causal/decay, N == M).

        With causal weights the dk/dv walk of key block p covers rows [p·BP, N) and the dq
        walk of query block p keys [0, (p+1)·BP): every program does about N/BP tile steps
        (times the group size), so the launch has no long tail and is one launch, not two.
        """
        i_bg, i_p = tl.program_id(0), tl.program_id(1)
        _dkdv_program(q, k, v, m, s, do, dk, dv, stride_mb, stride_mh, stride_mn, stride_mm,
                      H, G, N, M, D, E, scale, i_bg, i_p,
                      HAS_MASK, CAUSAL, DECAY, NEED_DK, NEED_DV, BP, BW, BD, BE, PRECISION, UPCAST)
        if NEED_DQ or NEED_DS:
            i_b, i_g = i_bg // (H // G), i_bg % (H // G)
            for i_h in range(i_g * G, i_g * G + G):  # the query heads of this kv head
                _dq_program(q, k, v, m, s, do, dq, q, ds, stride_mb, stride_mh, stride_mn, stride_mm,
                            H, G, N, M, D, E, scale, NI, i_b * H + i_h, i_p,
                            HAS_MASK, CAUSAL, DECAY, NEED_DQ, False, NEED_DS, BP, BW, BD, BE, PRECISION, UPCAST)

    @triton.jit
    def _dense_bwd_dmask_kernel(
        q, k, v, s, do, dm,
        B, H, G, N, M, D, E, scale,
        MB, MH,
        CAUSAL: tl.constexpr, DECAY: tl.constexpr,
        BN: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        tl.static_assert(BD >= 16 and BE >= 16 and BN >= 16 and BM >= 16, "tiles must be >= 16 for tl.dot")
        i_n, i_m, i_bhm = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i_bm, i_hm = i_bhm // MH, i_bhm % MH  # this tile's index in the [MB, MH, N, M] mask
        # the (b, h) pairs sharing the tile: every b if MB == 1, every h if MH == 1
        NB = B // MB
        NH = H // MH
        i0 = i_n * BN
        j0 = i_m * BM

        o_n = tl.arange(0, BN)
        o_m = tl.arange(0, BM)
        o_d = tl.arange(0, BD)
        o_e = tl.arange(0, BE)
        m_n = (i0 + o_n) < N
        m_m = (j0 + o_m) < M
        m_d = o_d < D
        m_e = o_e < E

        b_dm = tl.zeros([BN, BM], dtype=tl.float32)
        # causal: a tile wholly above the diagonal is zero; it is written, not computed
        n_pairs = NB * NH
        if CAUSAL:
            n_pairs = tl.where(j0 > i0 + BN - 1, 0, n_pairs)
        for t in range(0, n_pairs):
            i_b = i_bm + t // NH
            i_h = i_hm + t % NH
            i_bh = i_b * H + i_h
            i_kv = i_b * (H // G) + i_h // G
            if DECAY:
                b_s = tl.load(s + i_h).to(tl.float32)
                live = (i0 - j0 - BM + 1).to(tl.float32) <= decay_horizon(b_s)  # else C underflows to 0
            else:
                b_s = 0.0
                live = True
            if live:
                b_q = tl.load(q + (i_bh.to(tl.int64) * N + i0) * D + o_n[:, None] * D + o_d[None, :],
                              mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
                b_do = tl.load(do + (i_bh.to(tl.int64) * N + i0) * E + o_n[:, None] * E + o_e[None, :],
                               mask=m_n[:, None] & m_e[None, :], other=0.0)  # [BN, BE]
                b_k = tl.load(k + (i_kv.to(tl.int64) * M + j0) * D + o_m[:, None] * D + o_d[None, :],
                              mask=m_m[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
                b_v = tl.load(v + (i_kv.to(tl.int64) * M + j0) * E + o_m[:, None] * E + o_e[None, :],
                              mask=m_m[:, None] & m_e[None, :], other=0.0)  # [BM, BE]
                b_a = dot(b_q, tl.trans(b_k), PRECISION, UPCAST)  # [BN, BM]
                b_dp = dot(b_do, tl.trans(b_v), PRECISION, UPCAST)  # [BN, BM]  (scale applied once at the end)
                if CAUSAL:
                    b_dm += b_dp * b_a * causal_decay(i0 + o_n, j0 + o_m, i0, j0 + BM <= i0, b_s, DECAY, False)
                else:
                    b_dm += b_dp * b_a

        p_dm = dm + ((i_bm * MH + i_hm).to(tl.int64) * N + i0) * M + j0 + o_n[:, None] * M + o_m[None, :]
        tl.store(p_dm, (b_dm * scale).to(dm.dtype.element_ty), mask=m_n[:, None] & m_m[None, :])

    _dq_tuned = _autotuned(_dense_bwd_dq_kernel, DQ_CONFIGS, "BN", "BM", _pruner("dq", "BN", "BM"))
    _dq_tuned_wide = _autotuned(_dense_bwd_dq_kernel, DQ_CONFIGS_WIDE, "BN", "BM", _pruner("dq", "BN", "BM"))
    _DKDV_KEY = ["N", "M", "BD", "BE", "HAS_MASK", "CAUSAL", "DECAY", "PRECISION", "NEED_DK", "NEED_DV"]
    _dkdv_tuned = _autotuned(_dense_bwd_dkdv_kernel, DKDV_CONFIGS, "BM", "BN", _pruner("dkdv", "BM", "BN"),
                             key=_DKDV_KEY)
    _dkdv_split_tuned = _autotuned(_dense_bwd_dkdv_kernel, DKDV_SPLIT_CONFIGS, "BM", "BN",
                                   _pruner("dkdv1", "BM", "BN"), key=_DKDV_KEY)
    # float32 with f16x3 products: one config list for dq and dk/dv (dense_fwd.F16X3_CONFIGS, run 30)
    _dq_tuned_f16x3 = _autotuned(_dense_bwd_dq_kernel, F16X3_CONFIGS, "BN", "BM", _pruner("dq", "BN", "BM"))
    _dkdv_tuned_f16x3 = _autotuned(_dense_bwd_dkdv_kernel, F16X3_CONFIGS, "BM", "BN",
                                   _pruner(lambda a: dkdv_kind(a["NEED_DK"], a["NEED_DV"]), "BM", "BN"), key=_DKDV_KEY)
    _fused_tuned = _autotuned(_dense_bwd_fused_kernel, FUSED_CONFIGS, "BP", "BW", _pruner("fused", "BP", "BW"))
    _dmask_tuned = _autotuned(_dense_bwd_dmask_kernel, DMASK_CONFIGS, "BN", "BM", _pruner("dmask", "BN", "BM"),
                              key=["N", "M", "BD", "BE", "CAUSAL", "DECAY", "PRECISION", "MB", "MH"])


def dense_backward(
    do, q, k, v, mask, slopes, causal: bool, scale: float, *,
    need_dq: bool, need_dkv: tuple, need_dmask: bool, need_dslopes: bool, configs=None,
):
    """Gradients ``(dq, dk, dv, dmask, dslopes)``; None for those not needed.

    Args:
        do: `[B, H, N, E]`, the gradient of o.
        need_dkv: `(need_dk, need_dv)`.
        configs: optional dict ``{"dq"|"dkdv"|"dmask": (rows, cols, num_warps, num_stages)}``
            bypassing the autotuner per kernel. Default: `None`.
    """
    configs = configs or {}
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    B, H, N, D = q.shape
    Hkv, M, E = k.shape[1], k.shape[2], v.shape[3]
    causal = bool(causal or slopes is not None)
    has_mask = mask is not None
    need_dmask = need_dmask and has_mask
    need_dslopes = need_dslopes and slopes is not None
    s32 = slopes.to(torch.float32).contiguous() if slopes is not None else None
    common_args = dict(
        H=H, G=H // Hkv, N=N, M=M, D=D, E=E, scale=float(scale),
        CAUSAL=causal, DECAY=slopes is not None,
        PRECISION=dot_precision(q.dtype), UPCAST=common.UPCAST_DOTS,
    )
    common_args["BD"], common_args["BE"] = channel_tiles(D, E, common_args["PRECISION"])
    f16x3 = common_args["PRECISION"] == common.F16X3
    sm = mask_strides(mask)
    mask_args = dict(m=mask if has_mask else q, stride_mb=sm[0], stride_mh=sm[1], stride_mn=sm[2], stride_mm=sm[3])
    # dM inside the dq kernel when the mask has its own tile for every (b, h)
    fuse_dm = need_dmask and mask.shape[0] == B and mask.shape[1] == H

    dq = dk = dv = dmask = dslopes = None
    need_dk, need_dv = need_dkv
    if _use_fused(causal, N, M, need_dq or need_dslopes, need_dk or need_dv, fuse_dm, configs,
                  wide=q.element_size() >= 4):
        # causal/decay: one launch, dk/dv of key block p and dq of query block p per program
        dq = torch.empty_like(q) if need_dq else q
        dk = torch.empty_like(k) if need_dk else k
        dv = torch.empty_like(v) if need_dv else v
        n_part = triton.cdiv(N, _min_rows(configs))
        ds_part = torch.zeros(B * H, n_part, device=q.device, dtype=torch.float32) if need_dslopes else q
        launch(
            _dense_bwd_fused_kernel, _fused_tuned,
            lambda meta: (B * Hkv, triton.cdiv(N, meta["BP"])),
            dict(q=q, k=k, v=v, s=s32 if s32 is not None else q, do=do, dq=dq, dk=dk, dv=dv, ds=ds_part, NI=n_part,
                 **mask_args, **common_args, HAS_MASK=has_mask,
                 NEED_DQ=need_dq, NEED_DS=need_dslopes, NEED_DK=need_dk, NEED_DV=need_dv),
            configs.get("fused"), FUSED_FIXED_GPU, FIXED_INTERPRET, "BP", "BW", kind="fused",
        )
        if need_dslopes:
            dslopes = ds_part.view(B, H, -1).sum(dim=(0, 2)).to(slopes.dtype)  # fixed-order reduction
        if need_dmask:  # a dense mask too: its gradient from the dM kernel (fuse_dm is False here)
            dmask = torch.empty(mask.shape, device=q.device, dtype=mask.dtype)
            _launch_dmask(q, k, v, s32, do, dmask, mask, B, common_args, configs)
        return (dq if need_dq else None, dk if need_dk else None, dv if need_dv else None, dmask, dslopes)

    if need_dmask:
        alloc = torch.zeros if (causal and fuse_dm) else torch.empty  # fused: tiles past the diagonal are never visited
        dmask = alloc(mask.shape, device=q.device, dtype=mask.dtype)

    if need_dq or need_dslopes or fuse_dm:
        dq = torch.empty_like(q) if need_dq else q
        # slopes: one partial per (b, h, row block); the autotuner picks the row block later,
        # so room is made for the smallest one (unused entries stay 0)
        n_part = triton.cdiv(N, _min_rows(configs))
        ds_part = torch.zeros(B * H, n_part, device=q.device, dtype=torch.float32) if need_dslopes else q
        launch(
            _dense_bwd_dq_kernel, _dq_tuned_f16x3 if f16x3 else _dq_tuned_wide if q.element_size() >= 4 else _dq_tuned,
            lambda meta: (B * H, triton.cdiv(N, meta["BN"])),
            dict(q=q, k=k, v=v, s=s32 if s32 is not None else q, do=do, dq=dq,
                 dm=dmask if fuse_dm else q, ds=ds_part, NI=n_part, **mask_args, **common_args,
                 HAS_MASK=has_mask, NEED_DQ=need_dq, NEED_DM=fuse_dm, NEED_DS=need_dslopes),
            configs.get("dq"), F16X3_FIXED_GPU if f16x3 else DQ_FIXED_GPU, FIXED_INTERPRET, "BN", "BM", kind="dq",
        )
        if need_dslopes:
            dslopes = ds_part.view(B, H, -1).sum(dim=(0, 2)).to(slopes.dtype)  # fixed-order reduction
        if not need_dq:
            dq = None

    if need_dk or need_dv:
        dk = torch.empty_like(k) if need_dk else k
        dv = torch.empty_like(v) if need_dv else v
        # one program for both, or (split) a dk-only and a dv-only launch of the same kernel
        mode = dkdv_mode()
        split = (mode == "split" or (mode == "auto" and q.element_size() >= 4)) and need_dk and need_dv
        dkdv_mask_args = mask_args
        if has_mask and mask_transposed_for_dkdv(mask, B, H):
            # the dk/dv walk reads Mᵀ tiles: from a column-major copy they are row-contiguous
            mt = mask.transpose(-1, -2).contiguous().transpose(-1, -2)  # same shape, strides (.., 1, N)
            smt = mask_strides(mt)
            dkdv_mask_args = dict(m=mt, stride_mb=smt[0], stride_mh=smt[1], stride_mn=smt[2], stride_mm=smt[3])
        for flags in ([(True, False), (False, True)] if split else [(need_dk, need_dv)]):
            launch(
                _dense_bwd_dkdv_kernel, _dkdv_tuned_f16x3 if f16x3 else _dkdv_split_tuned if split else _dkdv_tuned,
                lambda meta: (B * Hkv, triton.cdiv(M, meta["BM"])),
                dict(q=q, k=k, v=v, s=s32 if s32 is not None else q, do=do, dk=dk, dv=dv,
                     **dkdv_mask_args, **common_args, HAS_MASK=has_mask, NEED_DK=flags[0], NEED_DV=flags[1]),
                configs.get("dkdv"), DKDV_CAUSAL_FIXED_GPU if causal else F16X3_FIXED_GPU if f16x3 else FIXED_GPU,
                FIXED_INTERPRET, "BM", "BN",
                kind=dkdv_kind(*flags),
            )
        dk = dk if need_dk else None
        dv = dv if need_dv else None

    if need_dmask and not fuse_dm:
        _launch_dmask(q, k, v, s32, do, dmask, mask, B, common_args, configs)
    return dq, dk, dv, dmask, dslopes


def _launch_dmask(q, k, v, s32, do, dmask, mask, B, common_args, configs):
    """dM summed over the mask's broadcast dimensions (the dM kernel)."""
    N, M = common_args["N"], common_args["M"]
    MB, MH = mask.shape[0], mask.shape[1]
    args = dict(q=q, k=k, v=v, s=s32 if s32 is not None else q, do=do, dm=dmask, B=B, MB=MB, MH=MH, **common_args)
    launch(
        _dense_bwd_dmask_kernel, _dmask_tuned,
        lambda meta: (triton.cdiv(N, meta["BN"]), triton.cdiv(M, meta["BM"]), MB * MH),
        args, configs.get("dmask"), FIXED_GPU, FIXED_INTERPRET, "BN", "BM", kind="dmask",
    )


def dkdv_kind(need_dk: bool, need_dv: bool) -> str:
    """``smem_estimate``'s kind for a dk/dv launch: ``dkdv1`` when it computes one of the two
    (one accumulator), else ``dkdv``."""
    return "dkdv" if need_dk and need_dv else "dkdv1"


def _min_rows(configs) -> int:
    """The smallest query block any dq-computing config may use (sizes the slopes partials)."""
    cands = DQ_CONFIGS + F16X3_CONFIGS + FUSED_CONFIGS + FALLBACK_CONFIGS + [
        FIXED_GPU, DQ_FIXED_GPU, FUSED_FIXED_GPU, FIXED_INTERPRET, IEEE_FP32_FIXED, DKDV_CAUSAL_FIXED_GPU, F16X3_FIXED_GPU]
    cands += [c for c in (configs.get("dq"), configs.get("fused")) if c]
    return min(r for r, *_ in cands)


#: ``LINATTN_TRITON_DENSE_BWD``: ``auto`` (default) runs causal/decay backwards of 16-bit
#: inputs as one launch (``_dense_bwd_fused_kernel``) and float32 ones split; ``fused``
#: fuses every dtype (the interpreter tests use it to cover the fused program in float32);
#: ``split`` keeps the separate dq and dk/dv kernels of v2, e.g. to time the two.
_BWD_MODES = ("auto", "fused", "split")


def bwd_mode() -> str:
    mode = os.environ.get("LINATTN_TRITON_DENSE_BWD", "auto") or "auto"
    if mode not in _BWD_MODES:
        raise ValueError(f"LINATTN_TRITON_DENSE_BWD must be one of {_BWD_MODES}, got {mode!r}")
    return mode


#: ``LINATTN_TRITON_DENSE_DKDV``: ``joint`` computes dk and dv in one program (two
#: accumulators and k, v resident); ``split`` launches the dk/dv kernel twice, once for dk
#: and once for dv (``DKDV_SPLIT_CONFIGS``): the same four products in all, half the
#: registers per program (float32 tf32x3 spills in the joint program). ``auto`` (default):
#: split for float32, joint for 16-bit inputs. GPU run 8 (H200, float32 seed B16 H12 N1024
#: D64): dk/dv 3.551 ms joint, 2.538 ms split (fwd+bwd 5.535 -> 4.532 ms, same errors). Only
#: the separate dk/dv kernel is affected (not the fused causal/decay backward).
_DKDV_MODES = ("auto", "joint", "split")


#: ``LINATTN_TRITON_DENSE_MASKT``: ``off`` lets the dk/dv kernel read its transposed mask
#: tiles Mᵀ[j, i] straight from the [.., N, M] mask (stride N between the elements of a
#: tile row); ``on`` gives it a column-major copy of the mask (one extra mask in memory,
#: written once per backward) so those reads are contiguous; ``auto`` (default) does so
#: when the mask is shared by several (b, h) (broadcast over B or H), where the copy is
#: small next to the reads it serves. GPU run 9 (H200): float32 seed dk/dv 2.537 -> 2.201 ms
#: (fwd+bwd 4.527 -> 4.228), bf16 B4 H12 N4096 D64 mask [1,1,N,N] fwd+bwd with dM
#: 2.654 -> 2.456 ms; errors unchanged.
_MASKT_MODES = ("off", "on", "auto")


def mask_transposed_for_dkdv(mask, B: int, H: int) -> bool:
    mode = os.environ.get("LINATTN_TRITON_DENSE_MASKT", "auto") or "auto"
    if mode not in _MASKT_MODES:
        raise ValueError(f"LINATTN_TRITON_DENSE_MASKT must be one of {_MASKT_MODES}, got {mode!r}")
    if mode == "auto":
        return mask.shape[0] * mask.shape[1] < B * H
    return mode == "on"


def dkdv_mode() -> str:
    mode = os.environ.get("LINATTN_TRITON_DENSE_DKDV", "auto") or "auto"
    if mode not in _DKDV_MODES:
        raise ValueError(f"LINATTN_TRITON_DENSE_DKDV must be one of {_DKDV_MODES}, got {mode!r}")
    return mode


def _use_fused(causal, N, M, need_q_side, need_kv_side, fuse_dm, configs, wide=False) -> bool:
    """Whether this backward runs as the one fused launch (see _BWD_MODES)."""
    mode = bwd_mode()
    if configs.get("fused"):
        return causal and N == M and not fuse_dm and need_q_side and need_kv_side
    if mode == "split" or not causal or N != M or fuse_dm or not (need_q_side and need_kv_side):
        return False
    if wide and mode == "auto":
        # float32 (tf32x3: three products per product) spills registers in the fused program
        # (1-2 KB per thread compiled for sm_90, against none split): split kernels there
        return False
    # explicit per-kernel configs for the split kernels keep the split path
    return not (configs.get("dq") or configs.get("dkdv")) or bool(configs.get("fused"))
