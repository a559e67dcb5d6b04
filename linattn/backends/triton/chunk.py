r"""Linear-time Triton kernels for no mask, causal and decay (Lightning Attention), with autograd.

What this computes (one (sequence, head), λ = exp(-s), s = 0 for plain causal):

    S_i = λ S_{i-1} + k_iᵀ v_i         o_i = scale · q_i S_i        S_{-1} = initial state

and, without a mask, o = scale · q (kᵀ v). The kernels evaluate it chunk by chunk (the
derivation is in ``chunk_fwd.py``; the backward pass and the slopes' gradient are derived
in ``chunk_bwd.py``). This module plans the launch (tile sizes, how to cut sequences into
splits), wraps the kernels as ``torch.library`` custom ops so they work under
``torch.compile``, and connects forward and backward.

Layers, bottom up:

    chunk_fwd.py / chunk_bwd.py   Triton kernels
    _forward / _backward          launchers: allocate, plan, launch
    linattn::chunk_fwd / _bwd     custom ops (+ register_fake, register_autograd), traced
                                  by torch.compile
    _ChunkFn                      the eager path: an autograd.Function around the launchers
                                  (a custom-op call costs more host time than the launch)
    chunk_linear_attention        the entry point the ``triton`` backend calls

Without packed sequences a call never synchronises with the host and copies nothing to
the device (planning is integer arithmetic on shapes); with ``cu_seqlens`` the lengths
are read once per forward (one sync) and reused by the eager backward.

Choosing a schedule. The fused schedule (one split per sequence) reads q, k, v once and
writes o once, but has only B·H·⌈E/BV⌉ programs, too few for, say, B=1 H=16 N=32768 on
132 SMs. Cutting sequences into splits buys parallelism at the price of reading k and v
once more. The default takes the fused schedule when it launches at least 0.8·SMs
programs, and otherwise cuts sequences into splits of 1024 tokens. Measured on an H200
(132 SMs), bf16 decay forward: B4·H16·N8192·D128 (128 programs) fused 0.436 ms, 1024-token
splits 0.484, 3 splits 0.730; B1·H16·N32768·D128 (32 programs) fused 1.238, 1024-token
splits 0.522, 9 splits 0.558 (docs/results-triton-chunk.md). The backward decides the
same way for its own kernels (dq, dk and dv programs together), recomputing the boundary
states it needs. Everything is overridable per
call (``chunk_config(...)``) or per process (``LINATTN_CHUNK="split=1024,fwd_bv=32"``) so
one GPU run can time the alternatives. See ``ChunkConfig`` for the knobs.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

from . import common
from .common import HAVE_TRITON

__all__ = ["chunk_linear_attention", "ChunkConfig", "chunk_config", "current_config"]


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkConfig:
    """Tile sizes and schedule for the chunk kernels; 0 means "choose by heuristic".

    chunk        tokens per chunk BT (64 on a GPU, 16 under the interpreter)
    split        tokens per split, forward (a multiple of ``chunk``); -1: one split per
                 sequence (the fused schedule); 0: heuristic
    bwd_split    the same for the backward pass
    fwd_bv       output kernel: E channels per program (it holds all of D)
    fwd_warps, fwd_stages        num_warps / num_stages of the output kernel
    fwd_peel     1: the output kernel runs full chunks with their decay factors computed
                 once and no row masks, a partial last chunk after the loop; -1: v3's loop
                 (every chunk computes its own factors and masks); 0: peeled when BV >= 64
    fwd_early    1: the output kernel issues the state product before the intra-chunk one
    state_bk, state_bv, state_warps, state_stages   the split-state kernel's tile, warps, stages
    bwd_bk       dq and dk kernels: D channels per program (they hold all of E)
    bwd_bv       dv kernel: E channels per program (it holds all of D)
    bwd_warps, bwd_stages        num_warps / num_stages of the three backward kernels
    bwd_dkv_warps, bwd_dkv_stages    the same for the dk/dv launch alone (0: as above, but
                 1 stage for D = E = 128 tiles: ``_dkv_stages``); on sm_90 (ptxas, bf16 decay
                 D = E = 128) that launch spills 344 bytes at 4 warps and none at 8 (193
                 registers)
    bwd_chunk    tokens per chunk in the backward pass (0: ``chunk``, or 32 where a 64-token
                 chunk cannot fit shared memory: float64 with wide heads)
    bwd_fuse     1: dq, dk and dv in one launch (``chunk_bwd_kernel_fused``; warps and
                 stages from ``bwd_warps``/``bwd_stages``); -1 or 0 (the default): dq, then
                 dk and dv, as two launches. On an H200 (GPU run 16, bf16 decay) one launch
                 was no faster: B4·H16·N8192·D128 fwd+bwd 1.124 ms against 1.107, B8·H16·
                 N2048·D128 0.489 against 0.495 (the launches are bound by each walk's
                 latency, not by the tail of the first)

    Stages default to what fits shared memory (``_fwd_tiles``/``_bwd_tiles``); a launch
    that Triton still refuses (OutOfResources) is retried with fewer stages, then shorter
    chunks, and the configuration that fitted is remembered per shape (``_run_fitted``).
    """

    chunk: int = 0
    split: int = 0
    bwd_split: int = 0
    fwd_bv: int = 0
    fwd_warps: int = 0
    fwd_stages: int = 0
    fwd_peel: int = 0
    fwd_early: int = 0
    state_bk: int = 0
    state_bv: int = 0
    state_warps: int = 0
    state_stages: int = 0
    bwd_bk: int = 0
    bwd_bv: int = 0
    bwd_warps: int = 0
    bwd_stages: int = 0
    bwd_dkv_warps: int = 0
    bwd_dkv_stages: int = 0
    bwd_chunk: int = 0
    bwd_fuse: int = 0


_local = threading.local()
_ENV = "LINATTN_CHUNK"


_env_cache: tuple = ("", ChunkConfig())


def _env_config() -> ChunkConfig:
    """``$LINATTN_CHUNK`` parsed, re-parsed only when the variable changes (it is read on
    every call: host time counts when the kernels are short)."""
    global _env_cache
    raw = os.environ.get(_ENV, "")
    if raw == _env_cache[0]:
        return _env_cache[1]
    cfg = _parse_env(raw)
    _env_cache = (raw, cfg)
    return cfg


def _parse_env(raw: str) -> ChunkConfig:
    text = raw.strip()
    if not text:
        return ChunkConfig()
    names = {f.name for f in fields(ChunkConfig)}
    kw = {}
    for item in text.split(","):
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise ValueError(
                f"{_ENV} must be comma-separated name=int pairs with names in {sorted(names)}, got {text!r}"
            )
        kw[key] = int(val)
    return ChunkConfig(**kw)


def current_config() -> ChunkConfig:
    """The configuration in force: ``chunk_config`` overrides on top of ``$LINATTN_CHUNK``."""
    return getattr(_local, "config", None) or _env_config()


@contextlib.contextmanager
def chunk_config(**overrides):
    """Run the block with some ``ChunkConfig`` fields overridden (for timing variants).

    >>> with chunk_config(split=-1, fwd_bv=32):   # fused schedule, 32 channels per program
    ...     o = linattn.linear_attention(q, k, v, decay=slopes, backend="triton")

    The backward of a forward run inside the block uses the block's configuration too,
    wherever and whenever autograd runs it (eager calls record it with the forward); under
    torch.compile the backward reads the configuration in force when it runs.
    """
    old = getattr(_local, "config", None)
    _local.config = replace(old or _env_config(), **overrides)
    try:
        yield _local.config
    finally:
        _local.config = old


_SMS: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: small, so that tests see several splits
    index = device.index if device.index is not None else torch.cuda.current_device()
    sms = _SMS.get(index)
    if sms is None:
        sms = _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return sms


def _pow2(n: int) -> int:
    return common.next_pow2_tile(n)


# -- shared memory ---------------------------------------------------------------------------
#
# Triton keeps ``num_stages`` copies of a loop's pipelined loads in shared memory, plus the
# tiles it stages for products. The estimates below were fitted to what Triton 3.9 reports
# compiling these kernels for sm_90 on the CPU (``metadata.shared``) and to Triton 3.6's
# OutOfResources on an H200 (dq, float64 D = E = 256, 64-token chunks, 2 stages: 393216 B);
# they pick the default stages. Where one is still too small, Triton refuses the launch
# before it runs and ``_run_fitted`` retries with fewer stages, then shorter chunks.

_SMEM_SM90 = 232448  # bytes one program may use on sm_90 (227 KiB, opt-in)
_SMEM: dict = {}


def _smem_limit(device: torch.device) -> int:
    if device.type != "cuda":
        return _SMEM_SM90  # the interpreter: plan as for an H100/H200
    index = device.index if device.index is not None else torch.cuda.current_device()
    lim = _SMEM.get(index)
    if lim is None:
        props = torch.cuda.get_device_properties(index)
        lim = _SMEM[index] = int(getattr(props, "shared_memory_per_block_optin", 0) or _SMEM_SM90)
    return lim


def _smem_fwd(dtype: torch.dtype, BT: int, BK: int, BV: int, stages: int) -> int:
    """Bytes the output kernel needs: q, k [BT, BK] and v [BT, BV] per stage, plus one
    staged operand tile."""
    el = torch.empty((), dtype=dtype).element_size()
    return el * (stages * BT * (2 * BK + BV) + max(BT * BT, BK * BV))


def _smem_bwd(el: int, BT: int, BK: int, BKf: int, BE: int, BV: int, stages: int) -> int:
    """Bytes the costlier backward launch needs, per stage the widest of the dq programs
    (q, k [BT, BK], do, v [BT, BE]), dk programs (q [BT, BK], v, do [BT, BE]) and dv programs
    (k, q [BT, BKf], do [BT, BV]), plus one staged [BT, BT] tile. Fitted to sm_90 (Triton 3.9):
    bf16 D = E = 128, dq (BK 32) 3 stages 114688 B, dk/dv 122880 (this: 204800; float64 is
    below it too)."""
    width = max(2 * BK + 2 * BE, 2 * BKf + BV)
    return el * (stages * BT * width + BT * BT)


def _fitting_stages(need, limit: int, most: int) -> int:
    for st in range(most, 1, -1):
        if need(st) <= limit:
            return st
    return 1


def _is_out_of_resources(e: BaseException) -> bool:
    return type(e).__name__ == "OutOfResources" or "out of resource" in str(e)


#: (pass, configuration in force, shapes and flags) -> the configuration that fitted
_FITTED: dict = {}


def _run_fitted(key, cfg: ChunkConfig, run, shrink):
    """``run(cfg)``; on Triton's OutOfResources, ``run(shrink(cfg))`` and so on, remembering
    what fitted under ``key``. A pass allocates its outputs afresh, so a retry is clean."""
    c = _FITTED.get(key, cfg)
    while True:
        try:
            out = run(c)
        except Exception as e:  # noqa: BLE001 - only out-of-resources is retried
            if not _is_out_of_resources(e):
                raise
            nxt = shrink(c)
            if nxt is None:
                raise RuntimeError(
                    f"linattn triton chunk: no configuration fits this GPU's shared memory "
                    f"(last tried {c}): {e}"
                ) from e
            c = nxt
            continue
        if c is not cfg:
            _FITTED[key] = c
        return out


# -- planning a launch ------------------------------------------------------------------------


@dataclass
class _Plan:
    """How a call is cut: BT tokens per chunk, NCS chunks per split, TS splits in all."""

    BT: int
    NCS: int
    NS: int  # splits per sequence (uniform batches; unused with varlen)
    TS: int  # splits in all
    n_seq: int
    split_index: Optional[torch.Tensor]  # [TS, 2] int32 (sequence, split) for varlen
    split_offsets: Optional[torch.Tensor]  # [n_seq + 1] int64 first split of each sequence

    @property
    def single(self) -> bool:
        """One split per sequence: no boundary states needed."""
        return self.TS == self.n_seq


def _chunk_size(cfg: ChunkConfig) -> int:
    if cfg.chunk:
        if cfg.chunk < 16 or cfg.chunk & (cfg.chunk - 1):
            raise ValueError(f"chunk must be a power of two >= 16, got {cfg.chunk}")
        return cfg.chunk
    return 16 if common.INTERPRET else 64


def _plan(N: int, n_seq: int, lengths: Optional[list], programs_per_split: int,
          split: int, BT: int, device) -> _Plan:
    """Cut every sequence into splits of NCS chunks.

    ``programs_per_split``: programs one split launches summed over heads and channel
    slices (the rule is in the module docstring).
    """
    NT = max(1, math.ceil((N if lengths is None else max(lengths + [1])) / BT))
    if split > 0:
        NCS = max(1, split // BT)
    elif split < 0:
        NCS = NT
    else:
        progs = programs_per_split * n_seq
        sms = _sm_count(device)
        if progs >= 0.8 * sms:
            NCS = NT
        else:
            NCS = min(NT, max(1, 1024 // BT))
    if lengths is None:
        NS = math.ceil(NT / NCS)
        return _Plan(BT, NCS, NS, n_seq * NS, n_seq, None, None)
    per = [max(1, math.ceil(t / (NCS * BT))) for t in lengths]
    idx = [(n, s) for n, c in enumerate(per) for s in range(c)]
    offsets = [0]
    for c in per:
        offsets.append(offsets[-1] + c)
    split_index = torch.tensor(idx, dtype=torch.int32).to(device, non_blocking=True)
    split_offsets = torch.tensor(offsets, dtype=torch.int64).to(device, non_blocking=True)
    return _Plan(BT, NCS, 1, len(idx), n_seq, split_index, split_offsets)


def _lengths(cu_seqlens: Optional[torch.Tensor]) -> Optional[list]:
    if cu_seqlens is None:
        return None
    cu = cu_seqlens.tolist()
    return [b - a for a, b in zip(cu, cu[1:])]


def _dot_flags(dtype: torch.dtype) -> dict:
    return dict(
        PRECISION=common.dot_precision(dtype) if dtype != torch.float64 else "ieee",
        UPCAST=common.UPCAST_DOTS and dtype in (torch.float16, torch.bfloat16),
    )


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- the split-state pass (forward S at split starts, or backward G at split ends) ------------


_STATE_STAGES = 3  # Triton's default num_stages, which the state kernel always had


def _boundary_states(x, y, slopes, h0, plan: _Plan, cu_seqlens, *, HS: int, xdiv: int,
                     reverse: bool, causal: bool, scale: float, cfg: ChunkConfig,
                     total_heads: Optional[int] = None):
    """Run ``chunk_state_kernel`` + ``chunk_scan_kernel``.

    causal: returns [TS, HS, DX, DY] states at the split boundaries (S entering each split,
    or in ``reverse`` G leaving it). Not causal: returns [n_seq, HS, DX, DY], the sum over
    the whole sequence (kᵀv, or scale·qᵀdo in ``reverse``).
    """
    from .chunk_fwd import chunk_scan_kernel, chunk_state_kernel

    DX, DY = x.shape[-1], y.shape[-1]
    BK = cfg.state_bk or min(64, _pow2(DX))
    BV = cfg.state_bv or min(64, _pow2(DY))
    NK, NV = math.ceil(DX / BK), math.ceil(DY / BV)
    sdt = _state_dtype(x.dtype)
    hs = torch.empty(plan.TS, HS, DX, DY, device=x.device, dtype=sdt)
    varlen = cu_seqlens is not None
    decay = slopes is not None
    N = x.shape[2]
    chunk_state_kernel[(plan.TS * HS * NK * NV,)](
        x, y, slopes, hs, plan.split_index, cu_seqlens, scale, N, plan.NCS, plan.NS,
        HS=HS, XDIV=xdiv, DX=DX, DY=DY, BT=plan.BT, BK=BK, BV=BV,
        DECAY=decay, REVERSE=reverse, IS_VARLEN=varlen, SKIP_UNUSED=causal,
        num_warps=cfg.state_warps or 4,
        num_stages=cfg.state_stages or (1 if _unaligned_rows(x.dtype, DX, DY) else _STATE_STAGES),
        **_dot_flags(x.dtype),
    )
    ht = None if causal else torch.empty(plan.n_seq, HS, DX, DY, device=x.device, dtype=sdt)
    chunk_scan_kernel[(plan.n_seq * HS * NK * NV,)](
        hs, h0, ht, slopes, plan.split_offsets, cu_seqlens, N, plan.NCS * plan.BT, plan.NS,
        HS=HS, DX=DX, DY=DY, BK=BK, BV=BV, CAUSAL=causal, DECAY=decay, REVERSE=reverse,
        USE_INITIAL_STATE=h0 is not None, IS_VARLEN=varlen, num_warps=cfg.state_warps or 4,
    )
    return hs if causal else ht


# -- forward ---------------------------------------------------------------------------------------


def _fwd_tiles(D: int, E: int, dtype: torch.dtype, BT: int, cfg: ChunkConfig, limit: int):
    """(BK, BV, warps, stages, peel) of the output kernel.

    BV: 64 channels of E per program whenever q and k fit 128 channels (D <= 128), also for
    E < 64 (masked): GPU run 10's two unexplained forward faults both had [BK 128, BV 32]
    tiles (the bf16 causality failure at E = 17 with 2 stages, and an illegal address with
    3 stages and the peeled loop), while BV 64 ran every timing and check; D > 128 needs 32.
    With BV 64 the default is run 9's winner: the peeled loop and 4 stages where they fit
    shared memory (H200, bf16 decay B4·H16·N8192·D128: 0.305 ms at 2 stages, 0.185 at 4),
    else 3, 2, 1 (``_smem_fwd``); narrower tiles keep run 10's validated v3 loop at <= 2.
    """
    BK = _pow2(D)
    BV = cfg.fwd_bv or (64 if BK <= 128 else 32)
    warps = cfg.fwd_warps or (4 if BK * BV <= 128 * 64 else 8)
    peel = cfg.fwd_peel > 0 or (cfg.fwd_peel == 0 and BV >= 64)
    if cfg.fwd_stages:
        stages = cfg.fwd_stages
    elif _unaligned_rows(dtype, D, E):
        stages = 1
    else:
        stages = _fitting_stages(lambda st: _smem_fwd(dtype, BT, BK, BV, st), limit, 4 if peel else 2)
    return BK, BV, warps, stages, peel


def _forward(q, k, v, slopes, h0, cu_seqlens, causal: bool, scale: float, output_final_state: bool,
             lengths: Optional[list] = None):
    """Launch the forward pass; returns (o, final state or None). ``lengths``: the packed
    sequences' lengths when the caller already has them (reading cu_seqlens syncs)."""
    cfg = current_config()
    D, E = q.shape[-1], v.shape[-1]
    if lengths is None:
        lengths = _lengths(cu_seqlens)
    limit = _smem_limit(q.device)
    key = ("fwd", cfg, q.dtype, D, E, q.device, causal, slopes is not None, h0 is not None,
           cu_seqlens is not None, output_final_state)

    def shrink(c: ChunkConfig) -> Optional[ChunkConfig]:
        BT = _chunk_size(c)
        stages = _fwd_tiles(D, E, q.dtype, BT, c, limit)[3]
        sst = c.state_stages or _STATE_STAGES
        if stages > 1 or sst > 1:
            return replace(c, fwd_stages=max(1, stages - 1), state_stages=max(1, sst - 1))
        if BT > 16:
            return replace(c, chunk=BT // 2, fwd_stages=0, state_stages=0)
        return None

    return _run_fitted(key, cfg, lambda c: _forward_with(c, q, k, v, slopes, h0, cu_seqlens, causal, scale,
                                                         output_final_state, lengths, limit), shrink)


def _forward_with(cfg: ChunkConfig, q, k, v, slopes, h0, cu_seqlens, causal: bool, scale: float,
                  output_final_state: bool, lengths: Optional[list], limit: int):
    from .chunk_fwd import chunk_fwd_kernel_o

    B, H, N, D = q.shape
    Hkv, E = k.shape[1], v.shape[-1]
    G = H // Hkv
    n_seq = B if cu_seqlens is None else cu_seqlens.numel() - 1
    BT = _chunk_size(cfg)
    BK, BV, warps, stages, peel = _fwd_tiles(D, E, q.dtype, BT, cfg, limit)
    NV = math.ceil(E / BV)
    plan = _plan(N, n_seq, lengths, H * NV, cfg.split, BT, q.device)
    sdt = _state_dtype(q.dtype)
    o = torch.empty(B, H, N, E, device=q.device, dtype=q.dtype)
    ht = torch.empty(n_seq, H, D, E, device=q.device, dtype=sdt) if output_final_state else None

    if not causal:  # o = scale · q (kᵀv), kᵀv per k/v head
        h_init = _boundary_states(k, v, None, None, plan, cu_seqlens, HS=Hkv, xdiv=1,
                                  reverse=False, causal=False, scale=1.0, cfg=cfg)
        hdiv = G
    elif plan.single:
        h_init, hdiv = h0, 1
    else:
        h_init = _boundary_states(k, v, slopes, h0, plan, cu_seqlens, HS=H, xdiv=G,
                                  reverse=False, causal=True, scale=1.0, cfg=cfg)
        hdiv = 1
    chunk_fwd_kernel_o[(plan.TS * H * NV,)](
        q, k, v, o, slopes, h_init, ht, plan.split_index, cu_seqlens, scale, N, plan.NCS, plan.NS,
        H=H, G=G, HDIV=hdiv, D=D, E=E, BT=BT, BK=BK, BV=BV,
        CAUSAL=causal, DECAY=slopes is not None, USE_INIT=h_init is not None,
        STORE_FINAL_STATE=ht is not None, IS_VARLEN=cu_seqlens is not None,
        F64=q.dtype == torch.float64, PEEL=peel, EARLY_STATE=bool(cfg.fwd_early),
        num_warps=warps, num_stages=stages, **_dot_flags(q.dtype),
    )
    return o, ht


# -- backward --------------------------------------------------------------------------------------


def _bwd_tiles(D: int, E: int, dtype: torch.dtype, slope_grad: bool, cfg: ChunkConfig, limit: int):
    """(BT, BK, BV, BKf, BE, warps, stages) of the backward kernels.

    Stages: 1 where rows are not 4-byte aligned (``_unaligned_rows``), else 2 where they fit.

    BT: the forward's chunk, halved while the backward launches cannot fit shared memory
    at one stage (float64 with wide heads: D = E = 256 runs 32-token chunks). Stages: 2
    where they fit, else 1 (``_smem_bwd``). An A/B in one process on an H200 (GPU run 13,
    bf16 decay B4·H16·N8192·D128, the forward's new defaults): backward at 3 stages fwd+bwd
    1.443 ms, at 2 stages 1.103 (run 9's "3 stages: 1.107" did not hold up).
    """
    BKf, BE = _pow2(D), _pow2(E)
    if common.INTERPRET:
        BK = cfg.bwd_bk or 16
        BV = cfg.bwd_bv or 16
    else:
        BK = cfg.bwd_bk or min(BKf, 64 if BE <= 128 and not slope_grad else 32)
        BV = cfg.bwd_bv or min(BE, 64 if BKf <= 128 else 32)
    warps = cfg.bwd_warps or (4 if max(BK * BE, BKf * BV) <= 128 * 64 else 8)
    el = torch.empty((), dtype=dtype).element_size()
    if cfg.bwd_chunk:
        BT = _chunk_size(replace(cfg, chunk=cfg.bwd_chunk))
    else:
        BT = _chunk_size(cfg)
        while not cfg.chunk and BT > 16 and _smem_bwd(el, BT, BK, BKf, BE, BV, 1) > limit:
            BT //= 2
    stages = cfg.bwd_stages or (1 if _unaligned_rows(dtype, D, E) else
                                _fitting_stages(lambda st: _smem_bwd(el, BT, BK, BKf, BE, BV, st), limit, 2))
    return BT, BK, BV, BKf, BE, warps, stages


def _unaligned_rows(dtype: torch.dtype, D: int, E: int) -> bool:
    """Whether rows of q/k (D) or v/o (E) are not 4-byte aligned (16-bit with an odd head dim).

    Triton 3.6 pipelines the chunk loops' loads on sm_90 with asynchronous copies, which move
    4, 8 or 16 bytes; with rows 2-byte aligned it produces wrong results or illegal addresses.
    Every GPU-only failure of these kernels had an odd head dim in a 16-bit dtype, and the
    interpreter got each one right: bf16 D = 65 / E = 17 (forward, run 10), float16 and
    bfloat16 D = 17 with the slopes' gradient (backward, runs 10-17, an out-of-bounds shared
    read under compute-sanitizer, then dslopes 64x its band or dk 900x), D = 3 with E = 128
    and E = 63 (backward, runs 16 and 18, dq ~1 relative error). D = 16, 32, 48 with E = 60,
    64, 128 always passed. In run 17's grid (gpu/chunk_fault_grid.py, one process per check)
    one stage fixed every failing problem (8 warps fixed some, not run 18's). So these loops
    run unpipelined: 1 stage, in every chunk kernel; float32 rows are always 4-byte aligned.
    """
    return (D * dtype.itemsize) % 4 != 0 or (E * dtype.itemsize) % 4 != 0


def _dkv_stages(cfg: ChunkConfig, BK: int, BE: int, BKf: int, BV: int, stages: int, single: bool) -> int:
    """Stages of the dk/dv launch: one where its tiles are large (D = E = 128: BK·BE = 64·128)
    and each program walks a whole sequence (``single``: no splits), else the dq launch's.
    On an H200 (GPU run 17, bf16 decay B4·H16·N8192·D128, nine backward variants timed in one
    process) dk/dv at 1 stage made fwd+bwd 1.062 ms against 1.099 at 2: that launch spills
    at 4 warps, and a second stage's buffers only add to it; dq at 1 stage as well was slower
    (1.122). With splits (short walks: B1·H16·N32768, 1024-token splits) 1 stage was slower:
    1.528 ms in run 18 against run 14's 1.398 at 2 (fla 2.222 and 2.216 in those runs)."""
    if cfg.bwd_dkv_stages:
        return cfg.bwd_dkv_stages
    return 1 if single and max(BK * BE, BKf * BV) >= 64 * 128 and not cfg.bwd_stages else stages


def _backward(do, dht, q, k, v, slopes, h0, cu_seqlens, causal: bool, scale: float,
              slope_grad: bool, state_grad: bool, lengths: Optional[list] = None,
              cfg: Optional[ChunkConfig] = None):
    """Launch the backward pass; returns (dq, dk, dv, ds or None, dh0 or None). ``cfg``: the
    configuration the forward ran under (autograd runs a CUDA backward on its own device
    thread, where ``chunk_config``'s thread-local overrides are not seen)."""
    cfg = cfg or current_config()
    D, E = q.shape[-1], v.shape[-1]
    slope_grad = slope_grad and slopes is not None
    if lengths is None:
        lengths = _lengths(cu_seqlens)
    limit = _smem_limit(q.device)
    key = ("bwd", cfg, q.dtype, D, E, q.device, causal, slopes is not None, h0 is not None,
           cu_seqlens is not None, dht is not None, slope_grad, state_grad)

    def shrink(c: ChunkConfig) -> Optional[ChunkConfig]:
        BT, stages = (lambda t: (t[0], t[6]))(_bwd_tiles(D, E, q.dtype, slope_grad, c, limit))
        dkv = c.bwd_dkv_stages or stages
        sst = c.state_stages or _STATE_STAGES
        if stages > 1 or dkv > 1 or sst > 1:
            return replace(c, bwd_stages=max(1, stages - 1), bwd_dkv_stages=max(1, dkv - 1),
                           state_stages=max(1, sst - 1))
        if BT > 16:
            return replace(c, bwd_chunk=BT // 2, bwd_stages=0, bwd_dkv_stages=0, state_stages=0)
        return None

    return _run_fitted(key, cfg, lambda c: _backward_with(c, do, dht, q, k, v, slopes, h0, cu_seqlens, causal,
                                                          scale, slope_grad, state_grad, lengths, limit), shrink)


def _backward_with(cfg: ChunkConfig, do, dht, q, k, v, slopes, h0, cu_seqlens, causal: bool, scale: float,
                   slope_grad: bool, state_grad: bool, lengths: Optional[list], limit: int):
    from .chunk_bwd import chunk_bwd_kernel_fused

    B, H, N, D = q.shape
    Hkv, E = k.shape[1], v.shape[-1]
    G = H // Hkv
    n_seq = B if cu_seqlens is None else cu_seqlens.numel() - 1
    BT, BK, BV, BKf, BE, warps, stages = _bwd_tiles(D, E, q.dtype, slope_grad, cfg, limit)
    NK, NV = math.ceil(D / BK), math.ceil(E / BV)
    plan = _plan(N, n_seq, lengths, H * (2 * NK + NV), cfg.bwd_split, BT, q.device)
    varlen = cu_seqlens is not None
    decay = slopes is not None
    sdt = _state_dtype(q.dtype)

    if not causal:
        h_init = _boundary_states(k, v, None, None, plan, cu_seqlens, HS=Hkv, xdiv=1,
                                  reverse=False, causal=False, scale=1.0, cfg=cfg)
        dh_end = _boundary_states(q, do, None, None, plan, cu_seqlens, HS=H, xdiv=1,
                                  reverse=True, causal=False, scale=scale, cfg=cfg)
        hdiv = G
    elif plan.single:
        h_init, dh_end, hdiv = h0, dht, 1
    else:
        h_init = _boundary_states(k, v, slopes, h0, plan, cu_seqlens, HS=H, xdiv=G,
                                  reverse=False, causal=True, scale=1.0, cfg=cfg)
        dh_end = _boundary_states(q, do, slopes, dht, plan, cu_seqlens, HS=H, xdiv=1,
                                  reverse=True, causal=True, scale=scale, cfg=cfg)
        hdiv = 1

    kv_dtype = q.dtype if G == 1 else sdt  # GQA: per-query-head buffers summed afterwards
    dq = torch.empty_like(q)
    dk = torch.empty(B, H, N, D, device=q.device, dtype=kv_dtype)
    dv = torch.empty(B, H, N, E, device=q.device, dtype=kv_dtype)
    dh0 = torch.empty(n_seq, H, D, E, device=q.device, dtype=sdt) if (state_grad and h0 is not None) else None
    ds_part = torch.empty(plan.TS * H * NK, device=q.device, dtype=sdt) if slope_grad else None
    common_kw = dict(H=H, G=G, D=D, E=E, BT=BT, CAUSAL=causal, DECAY=decay, IS_VARLEN=varlen,
                     F64=q.dtype == torch.float64, num_warps=warps, num_stages=stages,
                     **_dot_flags(q.dtype))
    runtime = (plan.split_index, cu_seqlens, scale, N, plan.NCS, plan.NS)
    fine = slope_grad and q.dtype in (torch.float16, torch.bfloat16)
    if cfg.bwd_fuse > 0:
        chunk_bwd_kernel_fused[(plan.TS * H * (2 * NK + NV),)](
            q, k, v, do, dq, dk, dv, slopes, h_init, dh_end, dh0, ds_part, *runtime,
            HDIV=hdiv, BK=BK, BE=BE, BKF=BKf, BV=BV, USE_INIT=h_init is not None, USE_DH=dh_end is not None,
            STORE_DH0=dh0 is not None, SLOPE_GRAD=slope_grad, FINE=fine, **common_kw,
        )
    else:
        _bwd_two_launches(cfg, common_kw, runtime, plan, H, NK, NV, hdiv, BK, BE, BKf, BV, fine, slope_grad,
                          q, k, v, do, dq, dk, dv, slopes, h_init, dh_end, dh0, ds_part)
    if G > 1:  # sum each group's heads, in a fixed order
        dk = dk.view(B, Hkv, G, N, D).sum(2).to(q.dtype)
        dv = dv.view(B, Hkv, G, N, E).sum(2).to(q.dtype)
    ds = ds_part.view(plan.TS, H, NK).sum((0, 2)) if slope_grad else None
    return dq, dk, dv, ds, dh0


def _bwd_two_launches(cfg, common_kw, runtime, plan, H, NK, NV, hdiv, BK, BE, BKf, BV, fine, slope_grad,
                      q, k, v, do, dq, dk, dv, slopes, h_init, dh_end, dh0, ds_part):
    from .chunk_bwd import chunk_bwd_kernel_dkv, chunk_bwd_kernel_dq

    chunk_bwd_kernel_dq[(plan.TS * H * NK,)](
        q, k, v, do, dq, slopes, h_init, dh_end, ds_part, *runtime,
        HDIV=hdiv, BK=BK, BE=BE, USE_INIT=h_init is not None, USE_DH=dh_end is not None,
        SLOPE_GRAD=slope_grad, FINE=fine, **common_kw,
    )
    dkv_kw = dict(common_kw, num_warps=cfg.bwd_dkv_warps or common_kw["num_warps"],
                  num_stages=_dkv_stages(cfg, BK, BE, BKf, BV, common_kw["num_stages"], plan.single))
    chunk_bwd_kernel_dkv[(plan.TS * H * (NK + NV),)](
        q, k, v, do, dk, dv, slopes, dh_end, dh0, *runtime,
        BK=BK, BE=BE, BKF=BKf, BV=BV, USE_DH=dh_end is not None, STORE_DH0=dh0 is not None, **dkv_kw,
    )


# -- custom ops --------------------------------------------------------------------------------------

_EMPTY = (0,)


@torch.library.custom_op("linattn::chunk_fwd", mutates_args=())
def _chunk_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    slopes: Optional[torch.Tensor], initial_state: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
    causal: bool, scale: float, output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    o, ht = _forward(q, k, v, slopes, initial_state, cu_seqlens, causal, scale, output_final_state)
    if ht is None:
        ht = q.new_empty(_EMPTY, dtype=_state_dtype(q.dtype))
    return o, ht


@_chunk_fwd_op.register_fake
def _(q, k, v, slopes, initial_state, cu_seqlens, causal, scale, output_final_state):
    B, H, N, _ = q.shape
    D, E = q.shape[-1], v.shape[-1]
    sdt = _state_dtype(q.dtype)
    o = q.new_empty(B, H, N, E)
    if not output_final_state:
        return o, q.new_empty(_EMPTY, dtype=sdt)
    n_seq = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return o, q.new_empty(n_seq, H, D, E, dtype=sdt)


@torch.library.custom_op("linattn::chunk_bwd", mutates_args=())
def _chunk_bwd_op(
    do: torch.Tensor, dht: Optional[torch.Tensor],
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    slopes: Optional[torch.Tensor], initial_state: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
    causal: bool, scale: float, slope_grad: bool, state_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, ds, dh0 = _backward(do, dht, q, k, v, slopes, initial_state, cu_seqlens,
                                    causal, scale, slope_grad, state_grad)
    sdt = _state_dtype(q.dtype)
    if ds is None:
        ds = q.new_empty(_EMPTY, dtype=sdt)
    if dh0 is None:
        dh0 = q.new_empty(_EMPTY, dtype=sdt)
    return dq, dk, dv, ds, dh0


@_chunk_bwd_op.register_fake
def _(do, dht, q, k, v, slopes, initial_state, cu_seqlens, causal, scale, slope_grad, state_grad):
    sdt = _state_dtype(q.dtype)
    ds = slopes.new_empty(slopes.shape) if (slope_grad and slopes is not None) else q.new_empty(_EMPTY, dtype=sdt)
    dh0 = (initial_state.new_empty(initial_state.shape) if (state_grad and initial_state is not None)
           else q.new_empty(_EMPTY, dtype=sdt))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), ds, dh0


def _setup_context(ctx, inputs, output):
    q, k, v, slopes, initial_state, cu_seqlens, causal, scale, output_final_state = inputs
    ctx.save_for_backward(q, k, v, slopes, initial_state, cu_seqlens)
    ctx.causal, ctx.scale = causal, scale


def _backward_rule(ctx, do, dht):
    q, k, v, slopes, initial_state, cu_seqlens = ctx.saved_tensors
    if dht is not None and dht.numel() == 0:
        dht = None
    slope_grad = slopes is not None and ctx.needs_input_grad[3]
    state_grad = initial_state is not None and ctx.needs_input_grad[4]
    dq, dk, dv, ds, dh0 = _chunk_bwd_op(
        do.contiguous(), None if dht is None else dht.contiguous(), q, k, v, slopes,
        initial_state, cu_seqlens, ctx.causal, ctx.scale, slope_grad, state_grad,
    )
    return (dq, dk, dv, ds if slope_grad else None, dh0 if state_grad else None,
            None, None, None, None)


torch.library.register_autograd("linattn::chunk_fwd", _backward_rule, setup_context=_setup_context)


# -- the eager path ----------------------------------------------------------------------------------
#
# A custom-op call costs ~4x the Python of the launcher itself (dispatcher round trips,
# schema defaults, the autograd wrapper), twice per training step: measured with the
# launches mocked out (tests/test_triton_chunk.py::test_host_path_is_lean). Eager calls
# therefore take a plain autograd.Function around the same launchers; torch.compile
# traces the custom ops above (``torch.compiler.is_compiling()``), which it needs.


class _ChunkFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slopes, initial_state, cu_seqlens, causal, scale, output_final_state):
        lengths = _lengths(cu_seqlens)  # packed sequences: one host read, kept for the backward
        o, ht = _forward(q, k, v, slopes, initial_state, cu_seqlens, causal, scale, output_final_state, lengths)
        ctx.save_for_backward(q, k, v, slopes, initial_state, cu_seqlens)
        ctx.causal, ctx.scale, ctx.lengths = causal, scale, lengths
        ctx.cfg = current_config()  # for the backward, which may run on autograd's device thread
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, slopes, initial_state, cu_seqlens = ctx.saved_tensors
        if do is None:  # only the final state reached the loss
            do = q.new_zeros(q.shape[:-1] + (v.shape[-1],))
        slope_grad = slopes is not None and ctx.needs_input_grad[3]
        state_grad = initial_state is not None and ctx.needs_input_grad[4]
        dq, dk, dv, ds, dh0 = _backward(
            do.contiguous(), None if dht is None else dht.contiguous(), q, k, v, slopes,
            initial_state, cu_seqlens, ctx.causal, ctx.scale, slope_grad, state_grad, ctx.lengths, ctx.cfg,
        )
        return (dq, dk, dv, ds if slope_grad else None, dh0 if state_grad else None,
                None, None, None, None)


# -- the entry point ---------------------------------------------------------------------------------


def _check(q, k, v, causal, decay, scale, initial_state, cu_seqlens):
    """Cheap checks for direct callers (``linattn.linear_attention`` validates fully)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor, got {got}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"q, k, v must share a floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, N, D = q.shape
    if k.shape[0] != B or k.shape[3] != D or v.shape[:3] != k.shape[:3] or H % max(1, k.shape[1]):
        raise ValueError(
            f"expected q [B, H, N, D], k [B, Hkv, N, D], v [B, Hkv, N, E] with Hkv dividing H, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[2] != N:
        raise ValueError(f"the chunk kernels need as many keys as queries, got N={N}, M={k.shape[2]}")
    if max(D, v.shape[3]) > 256:
        raise ValueError(f"head dims up to 256 are supported, got D={D}, E={v.shape[3]}")
    if decay is not None and tuple(decay.shape) != (H,):
        raise ValueError(f"decay slopes must have shape [H]=[{H}], got {tuple(decay.shape)}")
    if (initial_state is not None or cu_seqlens is not None) and not (causal or decay is not None):
        raise ValueError("initial_state and cu_seqlens need causal=True or decay slopes")
    if cu_seqlens is not None and (B != 1 or cu_seqlens.dim() != 1):
        raise ValueError(f"cu_seqlens needs B == 1 and a 1-D tensor, got q {tuple(q.shape)}, cu_seqlens {tuple(cu_seqlens.shape)}")
    n_seq = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if initial_state is not None and tuple(initial_state.shape) != (n_seq, H, D, v.shape[3]):
        raise ValueError(
            f"initial_state must have shape {(n_seq, H, D, v.shape[3])}, got {tuple(initial_state.shape)}"
        )


def chunk_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    decay: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
):
    """Linear attention without a dense mask, in O(N) time and memory, by Triton kernels.

    Args:
        q (torch.Tensor): queries `[B, H, N, D]`, float16/bfloat16/float32/float64.
        k (torch.Tensor): keys `[B, Hkv, N, D]`, `Hkv` dividing `H` (never expanded).
        v (torch.Tensor): values `[B, Hkv, N, E]`. `D, E <= 256`, any size.
        causal (bool): causal mask; `False` with no decay means `o = scale · q (kᵀ v)`.
        decay (torch.Tensor, optional): slopes `[H]`, `>= 0`; implies causal. Default: `None`.
        scale (float): multiplies the output. Default: `1.0`.
        initial_state (torch.Tensor, optional): `[B, H, D, E]` (`[S, H, D, E]` with
            cu_seqlens), float32 (float64 for float64 inputs). Default: `None`.
        output_final_state (bool): also return the state after the last token.
        cu_seqlens (torch.Tensor, optional): int64 `[S+1]` offsets of packed sequences
            along N (B == 1); the state restarts at each. Default: `None`.

    Returns:
        `(o [B, H, N, E] in q's dtype, final_state [B|S, H, D, E] or None)`.
        Gradients flow to q, k, v, decay and initial_state.
    """
    common.require()
    _check(q, k, v, causal, decay, scale, initial_state, cu_seqlens)
    causal = bool(causal) or decay is not None
    sdt = _state_dtype(q.dtype)
    slopes = None if decay is None else decay.to(sdt).contiguous()
    h0 = None if initial_state is None else initial_state.to(sdt).contiguous()
    cu = None if cu_seqlens is None else cu_seqlens.to(torch.int64).contiguous()
    args = (q.contiguous(), k.contiguous(), v.contiguous(), slopes, h0, cu,
            causal, float(scale), bool(output_final_state) and causal)
    if torch.compiler.is_compiling():
        o, ht = _chunk_fwd_op(*args)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:5]):
        o, ht = _ChunkFn.apply(*args)
    else:
        o, ht = _forward(*args)
    return o, (ht if output_final_state and causal else None)
