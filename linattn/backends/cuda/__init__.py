"""Backend ``cuda``: the operator as a CUDA C++ extension, built on first use.

The seed's fifth variant, done right: flash-style tiles for every mask kind (dense of any
broadcast shape, causal, decay, dense × causal/decay) with the dense-mask and slopes
gradients, MQA/GQA without expanding K/V, any N and M, D and E up to 256, float32
(3xTF32 tensor-core MMA: float32 accuracy) and float16/bfloat16 (tensor-core MMA, float32
accumulation), no atomics, and a deterministic backward. Read in this order:

* ``csrc/masked_product.cuh`` — the one kernel behind o, dq, dk and dv, and its tiling;
* ``csrc/mask_grad.cuh`` — the dense-mask and slopes gradients;
* ``csrc/engine_mma.cuh``, ``csrc/mma.cuh`` — the product kernel's warp tiles (mma.sync in
  registers, 3xTF32 for float32); ``csrc/engine_ffma.cuh``, ``csrc/engine_wmma.cuh`` — the
  64 x 64 tile products of the mask-gradient kernel;
* ``function.py`` — the autograd Function and the state terms;
* ``loader.py`` — the build (ninja, cached, for the GPU present); ``emulator.py`` — the
  same kernels on the CPU for tests (``LINATTN_CUDA_EMULATE=1``).

Importing this package never needs a GPU, nvcc or a build: on a machine without them the
backend reports itself unavailable with the reason, and calling it raises
:class:`linattn.BackendUnavailable`.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..._registry import MASK_KINDS, Backend, BackendUnavailable
from . import emulator, loader
from .function import MaskedLinearAttention, cuda_forward

__all__ = ["BACKEND", "FP32_OPT_IN", "cuda_forward", "get_ops", "unavailable", "MaskedLinearAttention"]


#: float32 on a real GPU: on by default since v4 (see BACKEND below); LINATTN_CUDA_FP32=0 turns
#: it off (read at import). The name is kept for callers that read it.
FP32_OPT_IN = os.environ.get("LINATTN_CUDA_FP32", "1") != "0"


def unavailable() -> Optional[str]:
    """None when the backend can run here; otherwise why not."""
    if emulator.ENABLED:
        return emulator.unavailable()
    return loader.unavailable()


def get_ops(device: torch.device):
    """The kernels for tensors on ``device``: the compiled extension, or the CPU emulator."""
    if device.type == "cuda":
        return loader.load(device)
    if device.type == "cpu" and emulator.ENABLED:
        return emulator.get_ops()
    why = unavailable() or f"tensors on {device.type!r} (the kernels need CUDA tensors)"
    raise BackendUnavailable(f"linattn cuda backend: {why}")


BACKEND = Backend(
    name="cuda",
    fn=cuda_forward,
    description="CUDA C++ extension: tiled kernels for every mask kind on tensor cores (3xTF32 for fp32; fp16, bf16)",
    devices=frozenset({"cpu", "cuda"}) if emulator.ENABLED else frozenset({"cuda"}),
    # float32 (3xTF32 product kernel, v2) failed the harness bands on an H200 on 2026-11-27
    # (7 of 15 cases: long mma chains into one accumulator, which tensor cores sum with
    # truncation). v3 keeps every chain short (engine_mma.cuh, "Short chains"): 15/15 on the
    # H200 (run 6), but problems of one term (N = M = D = 1) stayed 1.15-1.36x above the band
    # (3xTF32 keeps 22 of 24 bits). v4 runs short contractions on FFMA (kernels.cuh,
    # fp32_use_ffma), so float32 is on by default; LINATTN_CUDA_FP32=0 (read at import) turns
    # it off on GPUs. The CPU emulator (which models the truncation) always serves it.
    dtypes=frozenset({torch.float16, torch.bfloat16})
    | (frozenset({torch.float32}) if emulator.ENABLED or FP32_OPT_IN else frozenset()),
    mask_kinds=frozenset(MASK_KINDS),
    gqa=True,
    state=True,
    mask_grad=True,
    slopes_grad=True,
    n_ne_m=True,
    max_head_dim=256,
    auto_rank={"cuda": 5},
    available=unavailable,
)
