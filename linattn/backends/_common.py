"""Small pieces every pure-PyTorch backend shares: dtypes, GQA head mapping, mask factors."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = [
    "compute_dtype",
    "expand_kv",
    "group_sum",
    "sum_to_shape",
    "decay_weights",
    "causal_weights",
    "effective_mask",
    "state_dtype",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Low precision accumulates in float32; float32 and float64 compute as themselves."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The recurrent state's dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def expand_kv(x: torch.Tensor, H: int) -> torch.Tensor:
    """[B, Hkv, M, X] -> [B, H, M, X]: query head h reads kv head h // (H // Hkv)."""
    Hkv = x.shape[1]
    if Hkv == H:
        return x
    return x.repeat_interleave(H // Hkv, dim=1)  # (B, H, M, X)


def group_sum(x: torch.Tensor, Hkv: int) -> torch.Tensor:
    """[B, H, M, X] -> [B, Hkv, M, X]: sum the gradients of the heads of one group."""
    B, H = x.shape[:2]
    if H == Hkv:
        return x
    return x.reshape(B, Hkv, H // Hkv, *x.shape[2:]).sum(2)  # (B, Hkv, M, X)


def sum_to_shape(g: torch.Tensor, shape) -> torch.Tensor:
    """Sum ``g`` over the dimensions where ``shape`` has size 1 (undo a broadcast)."""
    dims = [i for i, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1]
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    return g


def causal_weights(N: int, M: int, dtype, device, i0: int = 0, j0: int = 0) -> torch.Tensor:
    """[N, M] lower-triangular 0/1 tile for rows i0.. and columns j0.."""
    i = torch.arange(i0, i0 + N, device=device)[:, None]
    j = torch.arange(j0, j0 + M, device=device)[None, :]
    return (j <= i).to(dtype)


def decay_weights(
    slopes: torch.Tensor, N: int, M: int, dtype, i0: int = 0, j0: int = 0
) -> torch.Tensor:
    """[1, H, N, M] tile of exp(-s[h] (i - j)) for j <= i, 0 above the diagonal.

    The exponent is clamped at 0 before exp so the masked half never overflows to inf
    (inf * 0 would be NaN); differentiable in ``slopes``.
    """
    i = torch.arange(i0, i0 + N, device=slopes.device)[:, None]
    j = torch.arange(j0, j0 + M, device=slopes.device)[None, :]
    dist = (i - j).clamp(min=0).to(dtype)  # (N, M)
    keep = (j <= i).to(dtype)
    return torch.exp(-slopes.to(dtype)[None, :, None, None] * dist) * keep  # (1, H, N, M)


def effective_mask(
    N: int,
    M: int,
    mask: Optional[torch.Tensor],
    causal: bool,
    decay: Optional[torch.Tensor],
    dtype: torch.dtype,
    device,
    i0: int = 0,
    j0: int = 0,
) -> Optional[torch.Tensor]:
    """W for the tile rows i0..i0+N, columns j0..j0+M (None means all ones).

    ``mask`` must already be that tile of the dense mask (4-D, broadcast dims of size 1).
    """
    W = None
    if decay is not None:
        W = decay_weights(decay, N, M, dtype, i0, j0)
    elif causal:
        W = causal_weights(N, M, dtype, device, i0, j0)[None, None]
    if mask is not None:
        m = mask.to(dtype)
        W = m if W is None else W * m
    return W
