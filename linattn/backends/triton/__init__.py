"""Backend ``triton``: the fast path on GPUs.

Two kernel families live here, sharing ``common.py``:

* ``dense.py`` — the general operator, flash-style: any dense mask (and its gradient),
  causal and decay applied in-kernel, N×N scores never stored. Also registered alone
  as backend ``triton_dense`` (quadratic for every mask kind), for comparisons.
* ``chunk.py`` — the linear-time chunked form for no mask, causal and decay
  (Lightning Attention), with state, varlen and slopes gradients; ``decode.py`` — the
  fused single-token step.

``triton`` routes a request without a dense mask to ``chunk`` and one with a dense mask
to ``dense``. Importing this package never needs a GPU.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..._registry import Backend, MASK_KINDS
from . import common

__all__ = ["BACKEND", "BACKENDS", "triton_forward"]


def triton_forward(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
    initial_state=None, output_final_state=False, cu_seqlens=None,
):
    common.require()
    if mask is None:
        from .chunk import chunk_linear_attention

        return chunk_linear_attention(
            q, k, v, causal=causal, decay=decay, scale=scale,
            initial_state=initial_state, output_final_state=output_final_state,
            cu_seqlens=cu_seqlens,
        )
    from .dense import dense_linear_attention

    return dense_linear_attention(
        q, k, v, mask, causal=causal, decay=decay, scale=scale,
        initial_state=initial_state, output_final_state=output_final_state,
    )


def _dense_dtypes(req) -> Optional[str]:
    """What the routing above cannot serve: dense masks go to the triton_dense kernels,
    which take no float64; the chunk kernels need N == M."""
    if req.dense and req.dtype == torch.float64:
        return "a dense mask in float64 (its triton_dense kernels take float16, bfloat16 or float32)"
    if not req.dense and req.N != req.M:
        return f"N != M (N={req.N}, M={req.M}) without a dense mask (its chunk kernels need N == M)"
    return None


BACKEND = Backend(
    name="triton",
    fn=triton_forward,
    description="Triton kernels: chunked linear-time for none/causal/decay, flash-style for dense masks",
    devices=common.devices(),
    mask_kinds=frozenset(MASK_KINDS),
    max_head_dim=256,
    linear_time=True,
    varlen=True,
    auto_rank={"cuda": 0},
    available=common.unavailable,
    constraint=_dense_dtypes,
)

try:
    from .dense import DENSE_BACKEND

    BACKENDS = [DENSE_BACKEND]
except ImportError as _e:  # pragma: no cover - dense.py not written yet / triton missing
    if common.HAVE_TRITON and "dense" not in str(_e):
        raise
    BACKENDS = []
