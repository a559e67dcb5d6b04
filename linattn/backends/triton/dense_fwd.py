"""Forward kernel of the general operator, flash-style: any dense mask, causal, decay.

One program computes a block of BN query rows of one (batch, head) and walks over the
keys in blocks of BM. Per key block it forms the score tile, weights it and accumulates:

    A = q kᵀ                      # [BN, BM]  scores, float32, never stored
    W = M ⊙ C                     # [BN, BM]  dense mask tile times causal/decay factor
    o += (A ⊙ W) v                # [BN, BE]  float32 accumulator

where C[i, j] = exp(-s_h (i - j)) for j <= i and 0 above the diagonal (s_h = 0 for plain
causal). Nothing of size N×M is ever written: the extra memory is O(1) per program.

Causal and decay split the key walk in two loops without branches inside (so Triton
pipelines both), like the stages of flash attention:

1. key blocks wholly below the diagonal (every j < every i of the block): no causal test.
   Decay factorises around the block's first row i0,

       exp(-s (i - j)) = 2^(-s₂ (i - i0)) · 2^(-s₂ (i0 - j)),      s₂ = s · log₂e,

   both factors in (0, 1]: the column factor multiplies the score tile (BM exponentials
   per tile, not BN·BM), the row factor multiplies the accumulator once after the loop.
   When a factor underflows the exact weight does too (each factor is at least the weight).
2. the one or two key blocks crossing the diagonal: the element-wise weight.

Decay also starts the walk where exp(-s (i - j)) underflows to 0 in float32 (those
tiles add exactly nothing), and causal programs run longest rows first (fewer idle SMs
at the end of the launch).

There is no softmax, hence no running max or rescaling: the output is a plain sum of
tile products. For 16-bit inputs the weighted tile A ⊙ W is rounded to the input dtype
before the second product (as flash attention does with its probabilities); products
accumulate in float32 and the output is rounded once.

float32 products use ``f16x3`` by default (``common.dot``): each operand tile scaled by a
power of two per row (left operand) or column (right operand) and split into two float16
halves, three float16 tensor-core products (lo·hi + hi·lo + hi·hi). The halves carry 22 bits
of every value within 2^-17 of its row's (column's) largest, like tf32x3's TF32 halves, and
float16 products run at twice TF32's rate. On the seed example (H200, runs 27 and 30) its
errors against float64 were 3.0e-7 to 3.5e-7, below tf32x3's 4.2e-7 to 4.5e-7 and the
float32 reference's 8.7e-7 to 9.8e-7. ``LINATTN_TRITON_FP32_DOT`` selects another: ``tf32x3``
(three TF32 products, the float32 default before f16x3), ``ieee`` (CUDA-core products); single TF32
products (error 1.5e-3) only when ``torch.backends.cuda.matmul.allow_tf32`` is True or
``LINATTN_TRITON_FP32_DOT=tf32``.

MQA/GQA: query head h reads kv head h // G with G = H // Hkv; k and v are never expanded.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch

from . import common
from .common import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .common import dot, dot3, dot3_acc, split_tf32, to_operand

__all__ = ["dense_forward", "channel_tiles", "FWD_CONFIGS", "mask_strides", "dot_precision", "smem_estimate", "smem_limit"]

#: Tile configurations tried by the autotuner on a GPU: (BN, BM, num_warps, num_stages).
FWD_CONFIGS = [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)]
#: The configuration used when autotuning is off (LINATTN_TRITON_AUTOTUNE=0): the winner
#: of GPU run 1 at bf16 D = 64 (smaller ones follow where it does not fit, see ``launch``).
FWD_FIXED_GPU = (128, 64, 8, 3)
#: float32 with CUDA-core ("ieee") products runs its dots as FMAs, whose unrolled code is
#: slow to build (10-100 s per kernel for 64×64 tiles, measured compiling for sm_90):
#: every kernel uses this one small config instead of autotuning.
IEEE_FP32_FIXED = (64, 32, 4, 2)
#: float32 with f16x3 products (the float32 default): 128 query rows with only 4 warps and two
#: stages, two programs per SM, was the fastest of 12 configs for the forward, dq, dk-only and
#: dv-only kernels alike on the seed example (run 30, H200: forward 0.536 ms against 0.697 for
#: (128, 64, 8, 3), the tf32x3 winner; 38 registers spilled, 112 KiB shared). The others are the
#: runners-up there.
F16X3_CONFIGS = [(128, 64, 4, 2), (128, 64, 8, 3), (128, 128, 8, 2)]
F16X3_FIXED_GPU = (128, 64, 4, 2)
#: Smaller configs tried in turn when a config does not fit shared memory (wide heads).
FALLBACK_CONFIGS = [(64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 1), (16, 16, 2, 1)]
#: Under the interpreter: small and unequal tiles, so tests cross many tile edges.
FWD_FIXED_INTERPRET = (32, 16, 1, 1)
#: H100/H200 opt-in shared memory per block, when no device can be asked.
H100_SMEM = 232448
LOG2E = math.log2(math.e)

def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of these kernels' ``tl.dot`` for inputs of ``dtype``.

    float32: ``f16x3`` (see the module docstring); ``tf32`` when
    ``torch.backends.cuda.matmul.allow_tf32`` is True; the environment variable
    ``LINATTN_TRITON_FP32_DOT`` = ieee | tf32x3 | tf32 | bf16x6 | f16x3 overrides both
    (``common.dot_precision``); with tf32x3, ``LINATTN_TRITON_DENSE_TF32X3=split`` has the
    kernels split each tile once (``common.PRESPLIT``). 16-bit inputs ignore it.
    """
    p = common.dot_precision(dtype, fp32_default=common.F16X3, f16x3=True)
    mode = tf32x3_mode() if dtype == torch.float32 else ""  # checked whenever it could matter
    return common.PRESPLIT if p == "tf32x3" and mode == "split" else p


#: ``LINATTN_TRITON_DENSE_TF32X3``: how these kernels run float32 ``tf32x3`` products.
#: ``triton`` (default): Triton's own ``input_precision="tf32x3"``, which splits both
#: operands at every ``tl.dot``; ``split``: the kernels split each tile once where it is
#: loaded and issue the three TF32 products themselves (``common.split_tf32``/``dot3``),
#: accumulating into the running accumulator. Same three products, same accuracy class.
_TF32X3_MODES = ("triton", "split")


#: f16x3 (``common.dot``) channel tiles are at least this wide. Triton 3.6 on an H200 gave wrong
#: values, inf and out-of-range shared-memory reads (compute-sanitizer: the second HGMMA of a
#: product) when an f16x3 product's right operand was split in registers, stored N-contiguous
#: (v in o += P v, k in dq = dA k, q and do in dk/dv) and narrower than 128 bytes (N = 16 or
#: 32 halves) with K = 64 (run 29, gpu/f16x3_hunt.py); N = 64 halves (128-byte rows) were
#: right at every tile config tried. Loads are masked beyond D and E, so wider tiles only cost
#: work on small heads.
F16X3_MIN_CHANNEL_TILE = 64


def channel_tiles(D: int, E: int, precision: str) -> tuple:
    """``(BD, BE)``: the power-of-two channel tiles for head dims D and E (see
    ``F16X3_MIN_CHANNEL_TILE`` for ``precision == "f16x3"``; not under the interpreter, which
    has no such bug and runs faster on narrow tiles)."""
    least = F16X3_MIN_CHANNEL_TILE if precision == common.F16X3 and not common.INTERPRET else 16
    return common.next_pow2_tile(D, least), common.next_pow2_tile(E, least)


def tf32x3_mode() -> str:
    mode = os.environ.get("LINATTN_TRITON_DENSE_TF32X3", "triton") or "triton"
    if mode not in _TF32X3_MODES:
        raise ValueError(f"LINATTN_TRITON_DENSE_TF32X3 must be one of {_TF32X3_MODES}, got {mode!r}")
    return mode


def autotune_enabled() -> bool:
    """Autotune on a GPU unless LINATTN_TRITON_AUTOTUNE=0; never under the interpreter."""
    return not common.INTERPRET and os.environ.get("LINATTN_TRITON_AUTOTUNE", "1") != "0"


#: device index -> its opt-in shared memory per block (asking torch for the properties on every
#: launch cost ~20 µs of host time per config checked; run 34's host profile)
_SMEM_LIMITS: dict = {}


def smem_limit() -> int:
    """Shared memory one program may use on the current device (bytes)."""
    if torch.cuda.is_available():
        dev = torch.cuda.current_device()
        if dev not in _SMEM_LIMITS:
            props = torch.cuda.get_device_properties(dev)
            _SMEM_LIMITS[dev] = int(getattr(props, "shared_memory_per_block_optin", 0) or H100_SMEM)
        return _SMEM_LIMITS[dev]
    return H100_SMEM


def smem_estimate(kind: str, bytes_per_el: int, rows: int, cols: int, BD: int, BE: int, stages: int) -> int:
    """Shared memory a tile config needs (bytes): an estimate of what Triton allocates,
    fitted to what it reported, and an upper bound where it was not exact.

    ``rows`` is the block a program owns (kept resident), ``cols`` the block it walks
    (k and v, or q and do, buffered ``stages`` deep for the pipelined loads), plus score
    tiles [rows, cols] staged for a product (float32 tf32x3 dots stage more of them).
    Against Triton 3.6 on an H100 (the "Required" of OutOfResources): forward float16
    D = E = 256 (64, 64, 4, 3) needed 237568 B, exactly this; the dM kernel bfloat16 tiles
    128/256 (64, 128, 8, 3) needed 294912, below this. Against Triton 3.9 compiling for
    sm_90 (``metadata.shared``): float32 tf32x3 D = 64 forward and dq (128, 64, 8, 3) and
    dk/dv (64, 64, 4, 3) exactly this; 16-bit kernels 1.5-4x below it. float32 with
    128- or 256-wide tiles stages extra operand copies (tf32 tensor-core products want
    their operands K-major): forward (64, 32, 4, 2) at 256/256 took 1.22x and dk/dv
    (32, 32, 4, 1) 1.33x the plain count, so those count 1.5x.

    The dk-only / dv-only programs ("dkdv1") hold one accumulator: float32 at D = 64 compiled
    for sm_90 with Triton's tf32x3 dv-only (64, 64, 4, 3) took 160 KiB, with operands split
    once (128, 64, 8, 2) 192 KiB and (128, 32, 8, 3) 160 KiB (these three exactly this or
    below), (64, 64, 4, 3) split once 192 KiB (above it: a compile that fails, not a wrong
    prune).

    f16x3 kernels (the float32 default: float32 tiles split into float16 halves) allocate at or
    below this 4-byte count in every one of 219 configurations compiled for sm_90 with Triton
    3.6 (forward, dq, dk/dv, fused; tiles 64 to 256; ``gpu/f16x3_smem.py``,
    ``docs/f16x3-smem-sm90.jsonl``).

    kind: "fwd" (resident q), "dq" (q, do), "dkdv" (k, v), "dkdv1" (k or v), "fused" (dkdv then dq in one
    program: the sum of both, an upper bound), "dmask" (nothing resident, all four tiles
    pipelined over the (b, h) pairs).
    """
    cols_tiles = stages * cols * (BD + BE)
    score = rows * cols
    wide = bytes_per_el >= 4
    if kind == "fwd":
        n = rows * BD + cols_tiles + (3 if wide else 1) * score
    elif kind == "dq":
        n = rows * (BD + BE) + cols_tiles + 2 * score
    elif kind == "dkdv":
        n = rows * (BD + BE) + cols_tiles + (4 if wide else 2) * score
    elif kind == "dkdv1":  # a dk-only or dv-only program (LINATTN_TRITON_DENSE_DKDV=split)
        n = rows * (BD + BE) + cols_tiles + (3 if wide else 2) * score
    elif kind == "fused":  # the dk/dv walk then the dq walk in one program: counted as both
        n = (rows * (BD + BE) + cols_tiles + (4 if wide else 2) * score) + (rows * (BD + BE) + cols_tiles + 2 * score)
    elif kind == "dmask":
        n = stages * (rows + cols) * (BD + BE) + score
    else:
        raise ValueError(f"kind must be fwd, dq, dkdv, dkdv1, fused or dmask, got {kind!r}")
    if wide and max(BD, BE) >= 128:
        n = n * 3 // 2
    return bytes_per_el * n


def fits(kind: str, el: int, config, BD: int, BE: int, limit: Optional[int] = None) -> bool:
    """Whether ``config`` = (rows, cols, warps, stages) fits shared memory by the estimate."""
    r, c, _, st = config
    return smem_estimate(kind, el, r, c, BD, BE, st) <= (limit or smem_limit())


def _pruner(kind, rows: str, cols: str):
    """early_config_prune for the autotuner: drop configs that cannot fit shared memory
    (``kind`` as for ``smem_estimate``, or a function of the launch's arguments giving it)."""
    def prune(configs, named_args, **kwargs):
        a = {**named_args, **kwargs}  # Triton passes launch kwargs in either, by version
        el, BD, BE = a["q"].element_size(), a["BD"], a["BE"]
        k = kind(a) if callable(kind) else kind
        kept = [c for c in configs if fits(k, el, (c.kwargs[rows], c.kwargs[cols], c.num_warps, c.num_stages), BD, BE)]
        return kept or [min(configs, key=lambda c: c.kwargs[rows] * c.kwargs[cols] * c.num_stages)]

    return prune


def mask_strides(mask: Optional[torch.Tensor]) -> tuple:
    """Strides of a 4-D mask with 0 on broadcast dimensions (size 1), so a kernel can
    index it with the full (b, h) and land on the shared tile."""
    if mask is None:
        return (0, 0, 0, 0)
    return tuple(0 if mask.shape[i] == 1 and i < 2 else mask.stride(i) for i in range(4))


if HAVE_TRITON:

    @triton.jit
    def causal_decay(i_idx, j_idx, pivot, below, b_s, DECAY: tl.constexpr, KEYS_FIRST: tl.constexpr):
        """The causal/decay factor C[i, j] = exp(-s (i - j)) for j <= i, else 0 (s = 0: causal),
        for a tile that may or may not cross the diagonal (the dM kernel's pair loop).

        ``i_idx`` [BI] and ``j_idx`` [BJ] are absolute row and column indices; the tile is
        [BI, BJ], or [BJ, BI] when ``KEYS_FIRST``. When ``below`` (every i >= pivot >= every
        j) the decay factorises as exp(-s (i - pivot)) · exp(-s (pivot - j)): BI + BJ
        exponentials instead of BI·BJ.
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
    def diagonal_weight(d, b_s2, DECAY: tl.constexpr):
        """C on a tile crossing the diagonal, from d = i - j: 2^(-s₂ d) (or 1) where d >= 0, else 0."""
        if DECAY:
            return tl.where(d >= 0, tl.exp2(-b_s2 * tl.maximum(d, 0).to(tl.float32)), 0.0)  # no inf above
        else:
            return tl.where(d >= 0, 1.0, 0.0)

    @triton.jit
    def decay_horizon(b_s):
        """Distance past which exp(-s d) is exactly 0 in float32 (e^-104 is below the
        smallest subnormal): tiles farther from the diagonal are skipped, not computed."""
        return 104.0 / tl.maximum(b_s, 1e-30)

    @triton.jit
    def _fwd_inner(
        b_o, b_q, b_ql, k, v, p_mrow, i0, lo, hi, M, D, E, stride_mm, b_s2,
        o_n, o_m, o_d, o_e, m_n, m_d, m_e,
        HAS_MASK: tl.constexpr, DECAY: tl.constexpr, STAGE: tl.constexpr,
        BM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """o += (A ⊙ W) v over key blocks [lo, hi). STAGE 0: no causal factor; 1: blocks
        wholly below the diagonal (decay: column factor only); 2: blocks crossing it."""
        for j0 in range(lo, hi, BM):
            o_j = j0 + o_m  # [BM] key indices
            m_m = o_j < M
            b_k = tl.load(k + o_j[:, None] * D + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
            b_v = tl.load(v + o_j[:, None] * E + o_e[None, :], mask=m_m[:, None] & m_e[None, :], other=0.0)  # [BM, BE]
            # -- scores (b_q, b_ql: the resident q split once, see common.split_tf32)
            b_kh, b_kl = split_tf32(b_k, PRECISION)
            b_a = dot3(b_q, b_ql, tl.trans(b_kh), tl.trans(b_kl), PRECISION, UPCAST)  # [BN, BM]
            # -- weights
            if STAGE == 1:
                if DECAY:  # 2^(-s₂ (i0 - j)); the row factor 2^(-s₂ (i - i0)) comes after the loop
                    b_a *= tl.exp2(-b_s2 * (i0 - o_j).to(tl.float32))[None, :]
            if STAGE == 2:
                b_a *= diagonal_weight((i0 + o_n)[:, None] - o_j[None, :], b_s2, DECAY)  # [BN, BM]
            if HAS_MASK:
                b_m = tl.load(p_mrow + o_j.to(tl.int64)[None, :] * stride_mm, mask=m_n[:, None] & m_m[None, :], other=0.0)
                b_a *= b_m.to(tl.float32)  # [BN, BM]
            # -- o += (A ⊙ W) v
            b_ah, b_al = split_tf32(to_operand(b_a, b_v, UPCAST), PRECISION)
            b_vh, b_vl = split_tf32(b_v, PRECISION)
            b_o = dot3_acc(b_o, b_ah, b_al, b_vh, b_vl, PRECISION, UPCAST)  # [BN, BE]
        return b_o

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
        i_bh, i_n = tl.program_id(0), tl.program_id(1)
        if CAUSAL:  # longest rows first
            i_n = tl.num_programs(1) - 1 - i_n
        i_b, i_h = i_bh // H, i_bh % H
        i_kv = i_b * (H // G) + i_h // G  # kv head of this query head
        i0 = i_n * BN

        # 64-bit bases: B*H*N*D and N*M can pass 2^31
        q += (i_bh.to(tl.int64) * N + i0) * D
        o += (i_bh.to(tl.int64) * N + i0) * E
        k += i_kv.to(tl.int64) * M * D
        v += i_kv.to(tl.int64) * M * E

        o_n = tl.arange(0, BN)
        o_m = tl.arange(0, BM)
        o_d = tl.arange(0, BD)
        o_e = tl.arange(0, BE)
        m_n = (i0 + o_n) < N
        m_d = o_d < D
        m_e = o_e < E
        # mask rows of this block: [BN, 1] pointers (columns added per key block)
        p_mrow = (m + i_b.to(tl.int64) * stride_mb + i_h.to(tl.int64) * stride_mh
                  + (i0 + o_n).to(tl.int64)[:, None] * stride_mn)

        b_q = tl.load(q + o_n[:, None] * D + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
        b_q, b_ql = split_tf32(b_q, PRECISION)  # split once for the whole walk (PRESPLIT)
        b_o = tl.zeros([BN, BE], dtype=tl.float32)  # accumulated in float32
        if CAUSAL:
            if DECAY:
                b_s = tl.load(s + i_h).to(tl.float32)
                b_s2 = b_s * 1.4426950408889634  # s · log₂e
                # no key block whose weights all underflow
                lo = (tl.maximum(i0 - decay_horizon(b_s), 0.0).to(tl.int32) // BM) * BM
            else:
                b_s2 = 0.0
                lo = 0
            mid = ((i0 + 1) // BM) * BM  # key blocks before mid lie wholly below the diagonal
            b_o = _fwd_inner(b_o, b_q, b_ql, k, v, p_mrow, i0, lo, mid, M, D, E, stride_mm, b_s2,
                             o_n, o_m, o_d, o_e, m_n, m_d, m_e, HAS_MASK, DECAY, 1, BM, PRECISION, UPCAST)
            if DECAY:  # the row factor of the blocks below
                b_o *= tl.exp2(-b_s2 * o_n.to(tl.float32))[:, None]
            b_o = _fwd_inner(b_o, b_q, b_ql, k, v, p_mrow, i0, mid, tl.minimum(M, i0 + BN), M, D, E, stride_mm, b_s2,
                             o_n, o_m, o_d, o_e, m_n, m_d, m_e, HAS_MASK, DECAY, 2, BM, PRECISION, UPCAST)
        else:
            b_o = _fwd_inner(b_o, b_q, b_ql, k, v, p_mrow, i0, 0, M, M, D, E, stride_mm, 0.0,
                             o_n, o_m, o_d, o_e, m_n, m_d, m_e, HAS_MASK, False, 0, BM, PRECISION, UPCAST)

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

    _dense_fwd_tuned = _autotuned(_dense_fwd_kernel, FWD_CONFIGS, prune=_pruner("fwd", "BN", "BM"))
    _dense_fwd_tuned_f16x3 = _autotuned(_dense_fwd_kernel, F16X3_CONFIGS, prune=_pruner("fwd", "BN", "BM"))


def _is_out_of_resources(e: Exception) -> bool:
    return type(e).__name__ == "OutOfResources" or "out of resource" in str(e)


#: (kernel name, dtype, BD, BE, flags) -> the config that last fitted after a fallback
_FITTED: dict = {}
#: (that key, first config, kind, device) -> the fixed-tile chain to try (``launch``)
_CHAINS: dict = {}


def launch(kernel, tuned, grid_fn, args: dict, config, fixed_gpu, fixed_interp, rows="BN", cols="BM", kind="fwd"):
    """Run ``kernel`` with an explicit tile config, the autotuner, or the fixed default.

    ``config`` is ``(rows, cols, num_warps, num_stages)`` or None; ``grid_fn`` maps the
    tile sizes dict to the launch grid. On a GPU, configs that do not fit shared memory
    (by ``smem_estimate``, or by Triton's OutOfResources) give way to smaller ones from
    FALLBACK_CONFIGS, so every head size up to 256 runs in every dtype.
    """
    def run(cfg):
        r, c, w, st = cfg
        meta = {rows: r, cols: c}
        kernel[grid_fn(meta)](**args, **meta, num_warps=w, num_stages=st)

    if config is not None:  # explicit: exactly this one
        run(config)
        return
    if common.INTERPRET:
        run(fixed_interp)
        return
    el, BD, BE = args["q"].element_size(), args["BD"], args["BE"]
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel), args["q"].dtype, BD, BE,
           tuple(sorted((n, v) for n, v in args.items() if n.isupper() and isinstance(v, (bool, str)))))
    ieee = args.get("PRECISION") == "ieee"
    if key not in _FITTED and autotune_enabled() and not ieee:
        try:
            tuned[lambda meta: grid_fn(meta)](**args)
            return
        except Exception as e:  # noqa: BLE001 - only out-of-resources falls through
            if not _is_out_of_resources(e):
                raise
    first = _FITTED.get(key) or (IEEE_FP32_FIXED if ieee else fixed_gpu)
    ckey = (key, first, kind, args["q"].device)
    chain = _CHAINS.get(ckey)
    if chain is None:  # the configs to try, in order: worked out once per kernel, flags and tiles
        chain = [first] + [c for c in FALLBACK_CONFIGS if c != first]
        chain = _CHAINS[ckey] = [c for c in chain if fits(kind, el, c, BD, BE)] or chain[-1:]
    for i, cfg in enumerate(chain):
        try:
            run(cfg)
            if i:
                _FITTED[key] = cfg
            return
        except Exception as e:  # noqa: BLE001
            if not _is_out_of_resources(e) or i == len(chain) - 1:
                raise


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
        PRECISION=dot_precision(q.dtype), UPCAST=common.UPCAST_DOTS,
    )
    args["BD"], args["BE"] = channel_tiles(D, E, args["PRECISION"])
    f16x3 = args["PRECISION"] == common.F16X3
    launch(
        _dense_fwd_kernel, (_dense_fwd_tuned_f16x3 if f16x3 else _dense_fwd_tuned) if HAVE_TRITON else None,
        lambda meta: (B * H, triton.cdiv(N, meta["BN"])),
        args, config, F16X3_FIXED_GPU if f16x3 else FWD_FIXED_GPU, FWD_FIXED_INTERPRET, kind="fwd",
    )
    return o
