"""Canonical TransNormerLLM / Lightning Attention decay slopes."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

__all__ = ["alibi_slopes", "tnl_slopes"]


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi's geometric slopes 2^(-8(h+1)/H); for H not a power of two, ALiBi's interleaving:
    the slopes of the nearest lower power of two, then every other slope of twice that."""
    if isinstance(n_heads, bool) or not isinstance(n_heads, numbers.Integral):
        raise TypeError(f"n_heads must be an int, got {type(n_heads).__name__} {n_heads!r}")
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")

    def pow2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return pow2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return pow2(closest) + pow2(2 * closest)[0::2][: n_heads - closest]


def tnl_slopes(
    n_heads: int,
    layer: int = 0,
    n_layers: int = 1,
    *,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Decay slopes ``[H]`` for layer ``layer`` (0-based) of ``n_layers``, as in the paper:

        s_h = 2^(-8(h+1)/H) * (1 - layer/(n_layers-1) + 1e-5)

    (for a single layer the depth factor is taken as 1 + 1e-5). H need not be a power
    of two (ALiBi interleaving).
    """
    for name, x in (("layer", layer), ("n_layers", n_layers)):
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(x).__name__} {x!r}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be floating (slopes are fractions), got {dtype}")
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer must be in [0, n_layers={n_layers}), got {layer}")
    depth = 1.0 - layer / (n_layers - 1) + 1e-5 if n_layers > 1 else 1.0 + 1e-5
    return torch.tensor([s * depth for s in alibi_slopes(n_heads)], device=device, dtype=dtype)
