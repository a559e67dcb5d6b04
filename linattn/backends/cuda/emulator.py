"""Run the CUDA kernels on the CPU, for tests on machines without a GPU.

``csrc/emu/emu_lib.cpp`` compiles the very same kernel sources with the host compiler
against a small emulation of the CUDA execution model (``csrc/emu/emu.h``): 128 real
threads per block meeting at a barrier on every ``__syncthreads()``, NaN-filled shared
memory, and a lane-by-lane emulation of ``nvcuda::wmma``. The library is built with g++ on
first use (cached in ``~/.cache/linattn/cuda_emu``) and driven through ctypes.

Tensor-core arithmetic is emulated as Hopper does it (``LINATTN_CUDA_EMU_MMA=rz``, the
default: exact products, truncating alignment, sum rounded toward zero; see ``emu.h``), so
long mma chains show the biased error they have on a GPU; ``rn`` rounds to nearest instead.

Set ``LINATTN_CUDA_EMULATE=1`` before importing linattn to make backend ``cuda`` accept CPU
tensors through this path (slow: it is for checking kernel logic on small problems, in the
spirit of ``TRITON_INTERPRET=1``). ``EmulatedOps`` mirrors the torch binding's two
functions, so ``function.py`` drives either one.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

from .loader import CSRC

__all__ = ["unavailable", "EmulatedOps", "get_ops", "ENABLED", "mma_block", "mma_mode"]

ENABLED = os.environ.get("LINATTN_CUDA_EMULATE", "0") == "1"
_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_EMU_SOURCES = ("emu/emu_lib.cpp", "emu/emu.h", "kernels.cuh", "common.cuh", "engine_ffma.cuh", "engine_mma.cuh", "mma.cuh",
                "engine_wmma.cuh", "masked_product.cuh", "mask_grad.cuh", "problem.h", "launch.h")
_lock = threading.Lock()
_lib = None
_error: Optional[str] = None


def _cuda_include() -> Optional[str]:
    """A directory with cuda_fp16.h (the host-side half/bfloat16 types), or None."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(str(Path(nvcc).resolve().parent.parent))
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "include", "cuda_fp16.h")):
            return os.path.join(c, "include")
    return None


def unavailable() -> Optional[str]:
    if not (CSRC / "emu" / "emu_lib.cpp").is_file():
        return "the emulator sources (csrc/emu/) are not installed; use a source checkout"
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "the emulator needs a C++20 host compiler (g++ not found)"
    if _cuda_include() is None:
        return "the emulator needs the CUDA headers (cuda_fp16.h not found; set CUDA_HOME)"
    if _error is not None:
        return f"the emulator failed to build: {_error}"
    return None


def _build() -> ctypes.CDLL:
    global _lib, _error
    with _lock:
        if _lib is not None:
            return _lib
        why = unavailable()
        if why is not None:
            from ..._registry import BackendUnavailable

            raise BackendUnavailable(f"linattn cuda emulator: {why}")
        digest = hashlib.sha256()
        for s in _EMU_SOURCES:
            digest.update((CSRC / s).read_bytes())
        out_dir = Path.home() / ".cache" / "linattn" / "cuda_emu"
        out_dir.mkdir(parents=True, exist_ok=True)
        so = out_dir / f"linattn_emu_{digest.hexdigest()[:16]}.so"
        if not so.exists():
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
            os.close(fd)
            cmd = [os.environ.get("CXX", "g++"), "-std=c++20", "-O2", "-fPIC", "-shared", "-pthread",
                   "-Wno-unknown-pragmas", "-I", _cuda_include(), str(CSRC / "emu" / "emu_lib.cpp"), "-o", tmp]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                os.unlink(tmp)
                _error = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "unknown error"
                raise RuntimeError(f"building the CUDA emulator failed:\n{res.stderr[-4000:]}")
            os.replace(tmp, so)
        lib = ctypes.CDLL(str(so))
        p, i, i64p, f = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_float
        lib.linattn_emu_product.restype = ctypes.c_char_p
        lib.linattn_emu_product.argtypes = [i, p, p, p, p, i, p, i64p, p, i, i, i, i, i, i, i, f, i, i]
        lib.linattn_emu_mask_grad.restype = ctypes.c_char_p
        lib.linattn_emu_mask_grad.argtypes = [i, p, p, p, p, p, i64p, i, i, p, p, p, i, i, i, i, i, i, i, f, i]
        lib.linattn_emu_mma_block.restype = ctypes.c_float
        lib.linattn_emu_mma_block.argtypes = [f, ctypes.POINTER(f), ctypes.POINTER(f), i]
        _lib = lib
        return lib


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _mask_strides(mask: Optional[torch.Tensor]):
    arr = (ctypes.c_int64 * 4)(0, 0, 0, 0)
    if mask is not None:
        for d in range(4):
            arr[d] = 0 if mask.size(d) == 1 else mask.stride(d)
    return arr


def _check(err) -> None:
    if err is not None:
        raise RuntimeError(f"linattn cuda emulator: {err.decode()}")


class EmulatedOps:
    """The torch binding's ``masked_product`` and ``mask_slopes_grad`` for CPU tensors."""

    def masked_product(self, a, b, c, mask, slopes, scale, causal, col_mode, out_f32):
        lib = _build()
        a, b, c = a.contiguous(), b.contiguous(), c.contiguous()
        B, DA, EC = a.shape[0], a.shape[3], c.shape[3]
        H, Hkv = (b.shape[1], a.shape[1]) if col_mode else (a.shape[1], b.shape[1])
        N, M = (b.shape[2], a.shape[2]) if col_mode else (a.shape[2], b.shape[2])
        out = torch.empty(B, Hkv if col_mode else H, M if col_mode else N, EC,
                          dtype=torch.float32 if out_f32 else a.dtype)
        if slopes is not None:
            slopes = slopes.contiguous()
        _check(lib.linattn_emu_product(
            _DTYPES[a.dtype], _ptr(a), _ptr(b), _ptr(c), _ptr(out), int(out_f32), _ptr(mask),
            _mask_strides(mask), _ptr(slopes), B, H, Hkv, N, M, DA, EC, float(scale),
            int(causal or slopes is not None), int(col_mode)))
        return out

    def mask_slopes_grad(self, q, k, v, dout, mask, slopes, scale, causal, want_dmask, want_dslopes):
        lib = _build()
        q, k, v, dout = q.contiguous(), k.contiguous(), v.contiguous(), dout.contiguous()
        B, H, N, D = q.shape
        Hkv, M, E = k.shape[1], k.shape[2], v.shape[3]
        mb, mh = (mask.shape[0], mask.shape[1]) if mask is not None else (B, H)
        ti, tj = -(-N // 64), -(-M // 64)
        dmask = torch.empty(mb, mh, N, M, dtype=q.dtype) if want_dmask else None
        partials = torch.zeros(H, B * ti * tj, dtype=torch.float32) if want_dslopes else None
        if not want_dmask and not want_dslopes:
            return None, None
        if slopes is not None:
            slopes = slopes.contiguous()
        _check(lib.linattn_emu_mask_grad(
            _DTYPES[q.dtype], _ptr(q), _ptr(k), _ptr(v), _ptr(dout), _ptr(mask), _mask_strides(mask),
            mb, mh, _ptr(slopes), _ptr(dmask), _ptr(partials), B, H, Hkv, N, M, D, E, float(scale),
            int(causal or slopes is not None)))
        dslopes = partials.double().sum(1).float() if want_dslopes else None
        return dmask, dslopes


def mma_block(c: float, a, b) -> float:
    """One emulated tensor-core instruction for one output element, ``c + sum_i a[i] b[i]``
    (at most 16 terms, each exactly representable in the input format), in the arithmetic
    that ``LINATTN_CUDA_EMU_MMA`` selects when the library is first loaded: ``rz`` (default,
    the Hopper hardware model: exact products, truncating alignment with 2 extra bits,
    result rounded toward zero) or ``rn`` (exact sum rounded to nearest)."""
    a, b = list(a), list(b)
    if len(a) != len(b) or len(a) > 16:
        raise ValueError(f"mma_block: expected two sequences of equal length <= 16, got {len(a)} and {len(b)}")
    lib = _build()
    fa, fb = (ctypes.c_float * max(len(a), 1))(*a), (ctypes.c_float * max(len(b), 1))(*b)
    return float(lib.linattn_emu_mma_block(float(c), fa, fb, len(a)))


def mma_mode() -> str:
    """The emulated tensor-core arithmetic: ``rz`` (hardware model, default) or ``rn``."""
    mode = os.environ.get("LINATTN_CUDA_EMU_MMA", "rz") or "rz"
    return mode if mode in ("rz", "rn") else "rz"


_OPS = EmulatedOps()


def get_ops() -> EmulatedOps:
    return _OPS
