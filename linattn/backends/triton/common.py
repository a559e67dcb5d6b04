"""Pieces shared by the Triton kernels: availability, the interpreter, dtype mapping.

Importing this module never needs a GPU. Triton itself is optional: when it is missing,
``unavailable()`` says so and the backend reports itself unavailable.

Kernels run on CUDA devices, or on the CPU when ``TRITON_INTERPRET=1`` is set *before*
linattn is imported (Triton picks the interpreter when a kernel is decorated). CI uses
the interpreter to check kernel logic on small problems.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

try:  # pragma: no cover - depends on the machine
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAVE_TRITON = True
    _IMPORT_ERROR = None
except Exception as e:  # ImportError, or a broken install
    HAVE_TRITON = False
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable() -> Optional[str]:
    """None when Triton kernels can run here; otherwise why not."""
    if not HAVE_TRITON:
        return f"triton is not importable ({_IMPORT_ERROR}); pip install 'linattn[triton]'"
    if INTERPRET:
        return None
    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 before importing linattn to run the kernels on the CPU)"
    return None


def devices() -> frozenset:
    """Device types the kernels run on in this process."""
    return frozenset({"cpu", "cuda"}) if INTERPRET else frozenset({"cuda"})


def require() -> None:
    """Raise a clear error when the kernels cannot run here."""
    why = unavailable()
    if why is not None:
        from ..._registry import BackendUnavailable

        raise BackendUnavailable(f"linattn triton backend: {why}")


# -- pieces shared by the kernels ---------------------------------------------------------

#: Under the interpreter, Triton 3.9's ``tl.dot`` multiplies bfloat16 operands as their raw
#: uint16 bit patterns; kernels then upcast dot operands to float32 (exact for 16-bit
#: products, so the result matches a tensor-core dot with float32 accumulation).
UPCAST_DOTS = INTERPRET


_FP32_DOTS = ("ieee", "tf32x3", "tf32")


def dot_precision(dtype: torch.dtype, fp32_default: str = "ieee") -> str:
    """``input_precision`` for ``tl.dot``: for float32, ``fp32_default`` (each kernel family
    names its own: ``ieee`` full float32 products, ``tf32x3`` three TF32 products per product,
    close to float32 accuracy on tensor cores) unless the caller opted in to TF32
    (``torch.backends.cuda.matmul.allow_tf32 = True``); 16-bit inputs ignore it.

    ``LINATTN_TRITON_FP32_DOT`` = ieee | tf32x3 | tf32 overrides the float32 choice.
    """
    if dtype != torch.float32:
        return "tf32"
    forced = os.environ.get("LINATTN_TRITON_FP32_DOT")
    if forced:
        if forced not in _FP32_DOTS:
            raise ValueError(f"LINATTN_TRITON_FP32_DOT must be one of {_FP32_DOTS}, got {forced!r}")
        return forced
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else fp32_default


def next_pow2_tile(n: int, minimum: int = 16) -> int:
    """The channel tile for a head dim ``n``: the next power of two, at least ``minimum``
    (``tl.dot`` needs 16); loads are masked beyond ``n``."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


if HAVE_TRITON:

    @triton.jit
    def dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """``a @ b`` accumulated in float32 (see UPCAST_DOTS for ``UPCAST``)."""
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def to_operand(x, like, UPCAST: tl.constexpr):
        """``x`` rounded to ``like``'s dtype, as a dot operand (round to nearest even).

        Under the interpreter (``UPCAST``) Triton 3.9 truncates float32 -> bfloat16 casts
        (``fp_downcast_rounding`` notwithstanding), where a GPU rounds to nearest: a biased
        error that shows, e.g., when a decay factor just below 1 should round back to the
        value it scales. There we round on the bits and keep the result in float32 (the
        upcast dot takes it as is); on a GPU this is ``x.to(like.dtype)``.
        """
        if UPCAST and like.dtype == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
            return bits.to(tl.float32, bitcast=True)
        else:
            return x.to(like.dtype)
