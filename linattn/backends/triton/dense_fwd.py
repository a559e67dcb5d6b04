"""Forward kernel of the general operator, flash-style: any dense mask, causal, decay.

One program computes a block of BN query rows of one (batch, head) and walks over the
keys in blocks of BM. Per key block it forms the score tile, weights it and accumulates:

    A = q kᵀ                      # [BN, BM]  scores, float32, never stored
    W = M ⊙ C                     # [BN, BM]  dense mask tile times causal/decay factor
    o += (A ⊙ W) v                # [BN, BE]  float32 accumulator

where C[i, j] = exp(-s_h (i - j)) for j <= i and 0 above the diagonal (s_h = 0 for plain
causal). Nothing of size N×M is ever written: the extra memory is O(1) per program.
Causal and decay stop the key loop at the diagonal, so the fully masked tiles are skipped;
decay also starts it where exp(-s (i - j)) stops underflowing to 0 in float32, and
factorises the weights of tiles below the diagonal (see ``causal_decay``).

There is no softmax, hence no running max or rescaling: the output is a plain sum of
tile products. For 16-bit inputs the weighted tile A ⊙ W is rounded to the input dtype
before the second product (as flash attention does with its probabilities); products
accumulate in float32 and the output is rounded once.

MQA/GQA: query head h reads kv head h // G with G = H // Hkv; k and v are never expanded.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from . import common
from .common import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .common import dot

__all__ = ["dense_forward", "FWD_CONFIGS", "mask_strides"]

#: Tile configurations tried by the autotuner on a GPU: (BN, BM, num_warps, num_stages).
FWD_CONFIGS = [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)]
#: The one configuration used when autotuning is off (interpreter, LINATTN_TRITON_AUTOTUNE=0).
FWD_FIXED_GPU = (64, 64, 4, 3)
#: float32 with full-precision ("ieee") products runs its dots as CUDA-core FMAs, whose
#: unrolled code is slow to build (10-100 s per kernel for 64×64 tiles, measured compiling
#: for sm_90): every kernel uses this one small config instead of autotuning.
IEEE_FP32_FIXED = (64, 32, 4, 2)
#: Under the interpreter: small and unequal tiles, so tests cross many tile edges.
FWD_FIXED_INTERPRET = (32, 16, 1, 1)


def autotune_enabled() -> bool:
    """Autotune on a GPU unless LINATTN_TRITON_AUTOTUNE=0; never under the interpreter."""
    return not common.INTERPRET and os.environ.get("LINATTN_TRITON_AUTOTUNE", "1") != "0"


def smem_estimate(bytes_per_el: int, rows: int, cols: int, BD: int, BE: int, stages: int) -> int:
    """Shared memory a tile config roughly needs: the resident row tile plus the pipelined
    column tiles (k and v, or q and do), in bytes."""
    return bytes_per_el * (rows * max(BD, BE) + stages * cols * (BD + BE))


def _prune(configs, named_args, **kwargs):
    """Drop configs whose tiles cannot fit shared memory for this head size."""
    a = {**named_args, **kwargs}  # Triton passes launch kwargs in either, by version
    el, BD, BE = a["q"].element_size(), a["BD"], a["BE"]
    kept = [
        c for c in configs
        if smem_estimate(el, c.kwargs["BN"], c.kwargs["BM"], BD, BE, c.num_stages) <= 200 * 1024
    ]
    return kept or [min(configs, key=lambda c: c.kwargs["BN"] * c.kwargs["BM"])]


def mask_strides(mask: Optional[torch.Tensor]) -> tuple:
    """Strides of a 4-D mask with 0 on broadcast dimensions (size 1), so a kernel can
    index it with the full (b, h) and land on the shared tile."""
    if mask is None:
        return (0, 0, 0, 0)
    return tuple(0 if mask.shape[i] == 1 and i < 2 else mask.stride(i) for i in range(4))


if HAVE_TRITON:

    @triton.jit
    def causal_decay(i_idx, j_idx, pivot, below, b_s, DECAY: tl.constexpr, KEYS_FIRST: tl.constexpr):
        """The causal/decay factor C[i, j] = exp(-s (i - j)) for j <= i, else 0 (s = 0: causal).

        ``i_idx`` [BI] and ``j_idx`` [BJ] are absolute row and column indices; the tile is
        [BI, BJ], or [BJ, BI] when ``KEYS_FIRST``. When ``below`` (every i >= pivot >= every
        j: the tile lies wholly below the diagonal) the decay factorises as
        exp(-s (i - pivot)) · exp(-s (pivot - j)), both factors in (0, 1]: BI + BJ
        exponentials instead of BI·BJ, and no overflow.
        """
        if KEYS_FIRST:
            d = i_idx[None, :] - j_idx[:, None]  # [BJ, BI]
        else:
            d = i_idx[:, None] - j_idx[None, :]  # [BI, BJ]
        if DECAY:
            if below:
                c_i = tl.exp(-b_s * (i_idx - pivot).to(tl.float32))  # [BI]
                c_j = tl.exp(-b_s * (pivot - j_idx).to(tl.float32))  # [BJ]
                if KEYS_FIRST:
                    c = c_j[:, None] * c_i[None, :]
                else:
                    c = c_i[:, None] * c_j[None, :]
            else:
                c = tl.where(d >= 0, tl.exp(-b_s * tl.maximum(d, 0).to(tl.float32)), 0.0)  # no inf above
        else:
            c = tl.where(d >= 0, 1.0, 0.0)
        return c

    @triton.jit
    def decay_horizon(b_s):
        """Distance past which exp(-s d) is exactly 0 in float32 (e^-104 is below the
        smallest subnormal): tiles farther from the diagonal are skipped, not computed."""
        return 104.0 / tl.maximum(b_s, 1e-30)

    @triton.jit
    def _dense_fwd_kernel(
        q, k, v, m, s, o,
        stride_mb, stride_mh, stride_mn, stride_mm,
        H, G, N, M, D, E, scale,
        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DECAY: tl.constexpr,
        BN: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        tl.static_assert(BD >= 16 and BE >= 16, "channel tiles must be >= 16 for tl.dot")
        tl.static_assert(BN >= 16 and BM >= 16, "row tiles must be >= 16 for tl.dot")
        tl.static_assert(not DECAY or CAUSAL, "decay implies causal")
        i_n, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = i_bh // H, i_bh % H
        i_kv = i_b * (H // G) + i_h // G  # kv head of this query head
        i0 = i_n * BN

        # 64-bit bases: B*H*N*D and N*M can pass 2^31
        q += (i_bh.to(tl.int64) * N + i0) * D
        o += (i_bh.to(tl.int64) * N + i0) * E
        k += i_kv.to(tl.int64) * M * D
        v += i_kv.to(tl.int64) * M * E
        if HAS_MASK:
            m += i_b.to(tl.int64) * stride_mb + i_h.to(tl.int64) * stride_mh + i0.to(tl.int64) * stride_mn

        o_n = tl.arange(0, BN)
        o_m = tl.arange(0, BM)
        o_d = tl.arange(0, BD)
        o_e = tl.arange(0, BE)
        m_n = (i0 + o_n) < N
        m_d = o_d < D
        m_e = o_e < E

        b_q = tl.load(q + o_n[:, None] * D + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
        if DECAY:
            b_s = tl.load(s + i_h).to(tl.float32)
        else:
            b_s = 0.0
        b_o = tl.zeros([BN, BE], dtype=tl.float32)  # accumulated in float32

        hi = tl.minimum(M, i0 + BN) if CAUSAL else M  # causal: no key block past the diagonal
        p_k = k + o_m[:, None] * D + o_d[None, :]  # [BM, BD] pointers, advanced per block
        p_v = v + o_m[:, None] * E + o_e[None, :]  # [BM, BE]
        p_m = m + o_n[:, None] * stride_mn + o_m[None, :] * stride_mm  # [BN, BM]
        lo = 0
        if DECAY:  # decay: no key block whose weights all underflow
            lo = (tl.maximum(i0 - decay_horizon(b_s), 0.0).to(tl.int32) // BM) * BM
            p_k += lo.to(tl.int64) * D
            p_v += lo.to(tl.int64) * E
            p_m += lo.to(tl.int64) * stride_mm
        for j0 in range(lo, hi, BM):
            m_m = (j0 + o_m) < M
            b_k = tl.load(p_k, mask=m_m[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
            b_v = tl.load(p_v, mask=m_m[:, None] & m_e[None, :], other=0.0)  # [BM, BE]
            # -- scores
            b_a = dot(b_q, tl.trans(b_k), PRECISION, UPCAST)  # [BN, BM]
            # -- weights
            if CAUSAL:
                b_a *= causal_decay(i0 + o_n, j0 + o_m, i0, j0 + BM <= i0, b_s, DECAY, False)  # [BN, BM]
            if HAS_MASK:
                b_m = tl.load(p_m, mask=m_n[:, None] & m_m[None, :], other=0.0)  # [BN, BM]
                b_a *= b_m.to(tl.float32)
            # -- o += (A ⊙ W) v
            b_o += dot(b_a.to(b_v.dtype), b_v, PRECISION, UPCAST)  # [BN, BE]
            p_k += BM * D  # pointer arithmetic is 64-bit
            p_v += BM * E
            p_m += BM * stride_mm

        tl.store(o + o_n[:, None] * E + o_e[None, :], (b_o * scale).to(o.dtype.element_ty),
                 mask=m_n[:, None] & m_e[None, :])

    def _configs(table, rows="BN", cols="BM"):
        return [triton.Config({rows: r, cols: c}, num_warps=w, num_stages=st) for r, c, w, st in table]

    def _autotuned(kernel, table, rows="BN", cols="BM", prune=None, key=None):
        """``kernel`` under the autotuner, keyed on what changes the compiled code (tile
        sizes, flags; dtypes are added by Triton) and on the problem size."""
        kw = dict(
            configs=_configs(table, rows, cols),
            key=key or ["N", "M", "BD", "BE", "HAS_MASK", "CAUSAL", "DECAY", "PRECISION"],
            prune_configs_by={"early_config_prune": prune} if prune else None,
        )
        try:  # a shorter benchmark per config (Triton >= 3.2)
            return triton.autotune(
                **kw,
                do_bench=lambda fn, quantiles: triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles),
            )(kernel)
        except TypeError:  # pragma: no cover - older Triton
            return triton.autotune(**kw)(kernel)

    _dense_fwd_tuned = _autotuned(_dense_fwd_kernel, FWD_CONFIGS, prune=_prune)


def launch(kernel, tuned, grid_fn, args: dict, config, fixed_gpu, fixed_interp, rows="BN", cols="BM"):
    """Run ``kernel`` with an explicit tile config, the autotuner, or the fixed default.

    ``config`` is ``(rows, cols, num_warps, num_stages)`` or None; ``grid_fn`` maps the
    tile sizes dict to the launch grid.
    """
    if config is None and args.get("PRECISION") == "ieee" and not common.INTERPRET:
        config = IEEE_FP32_FIXED
    if config is None and autotune_enabled():
        tuned[lambda meta: grid_fn(meta)](**args)
        return
    if config is None:
        config = fixed_interp if common.INTERPRET else fixed_gpu
    r, c, w, st = config
    meta = {rows: r, cols: c}
    kernel[grid_fn(meta)](**args, **meta, num_warps=w, num_stages=st)


def dense_forward(q, k, v, mask, slopes, causal: bool, scale: float, *, config=None) -> torch.Tensor:
    """o [B, H, N, E] in q's dtype.

    Args:
        q: `[B, H, N, D]`; k: `[B, Hkv, M, D]`; v: `[B, Hkv, M, E]` (made contiguous here).
        mask: `[B|1, H|1, N, M]` or None, any strides.
        slopes: `[H]` or None (decay; implies causal).
        config: `(BN, BM, num_warps, num_stages)` to bypass the autotuner. Default: `None`.
    """
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, H, N, D = q.shape
    Hkv, M, E = k.shape[1], k.shape[2], v.shape[3]
    o = torch.empty(B, H, N, E, device=q.device, dtype=q.dtype)
    sm = mask_strides(mask)
    args = dict(
        q=q, k=k, v=v, m=mask if mask is not None else q,
        s=slopes.to(torch.float32).contiguous() if slopes is not None else q,
        o=o,
        stride_mb=sm[0], stride_mh=sm[1], stride_mn=sm[2], stride_mm=sm[3],
        H=H, G=H // Hkv, N=N, M=M, D=D, E=E, scale=float(scale),
        HAS_MASK=mask is not None, CAUSAL=bool(causal or slopes is not None), DECAY=slopes is not None,
        BD=common.next_pow2_tile(D), BE=common.next_pow2_tile(E),
        PRECISION=common.dot_precision(q.dtype), UPCAST=common.UPCAST_DOTS,
    )
    launch(
        _dense_fwd_kernel, _dense_fwd_tuned if HAVE_TRITON else None,
        lambda meta: (triton.cdiv(N, meta["BN"]), B * H),
        args, config, FWD_FIXED_GPU, FWD_FIXED_INTERPRET,
    )
    return o
