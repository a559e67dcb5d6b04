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


#: bf16x6 (Triton: each float32 operand as three bfloat16 parts, six bf16 products) is there
#: to be timed against tf32x3 (same tensor-core cost); it is nobody's default. f16x3 (ours,
#: ``dot`` below): each operand scaled by a power of two per row / column and split into two
#: float16 halves, three float16 products — tf32x3's 22 bits at float16's tensor-core rate;
#: the dense kernels' float32 default (dense_fwd.dot_precision), not used by the chunk kernels.
_FP32_DOTS = ("ieee", "tf32x3", "tf32", "bf16x6", "f16x3")

#: The ``PRECISION`` of ``dot``'s scaled float16 split (see ``split_f16``).
F16X3 = "f16x3"


def dot_precision(dtype: torch.dtype, fp32_default: str = "ieee", f16x3: bool = False) -> str:
    """``input_precision`` for ``tl.dot``: for float32, ``fp32_default`` (each kernel family
    names its own: ``ieee`` full float32 products, ``tf32x3`` three TF32 products per product,
    ``f16x3`` three float16 products of scaled halves, both close to float32 accuracy on tensor
    cores) unless the caller opted in to TF32 (``torch.backends.cuda.matmul.allow_tf32 = True``);
    16-bit inputs ignore it.

    ``LINATTN_TRITON_FP32_DOT`` = ieee | tf32x3 | tf32 | bf16x6 | f16x3 overrides the float32
    choice; f16x3 only in kernel families that pass ``f16x3=True`` (the others keep
    ``fp32_default``).
    """
    if dtype != torch.float32:
        return "tf32"
    forced = os.environ.get("LINATTN_TRITON_FP32_DOT")
    if forced:
        if forced not in _FP32_DOTS:
            raise ValueError(f"LINATTN_TRITON_FP32_DOT must be one of {_FP32_DOTS}, got {forced!r}")
        return fp32_default if forced == F16X3 and not f16x3 else forced
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else fp32_default


#: The ``PRECISION`` value of kernels that split float32 operands themselves (``split_tf32``,
#: ``dot3``): three TF32 products like Triton's ``tf32x3``, each tile split once. Kernels
#: that use ``dot`` only accept it too (they then split at every product, like tf32x3).
PRESPLIT = "tf32x3s"


def next_pow2_tile(n: int, minimum: int = 16) -> int:
    """The channel tile for a head dim ``n``: the next power of two, at least ``minimum``
    (``tl.dot`` needs 16); loads are masked beyond ``n``."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


if HAVE_TRITON:

    _PRESPLIT = tl.constexpr(PRESPLIT)  # a global a jitted function may read
    _F16X3 = tl.constexpr(F16X3)
    #: ``LINATTN_TRITON_F16_RANGE=0`` turns ``f16_range`` off (for A/B runs on a GPU only).
    _F16_RANGE = tl.constexpr(os.environ.get("LINATTN_TRITON_F16_RANGE", "1") != "0")

    @triton.jit
    def dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """``a @ b`` accumulated in float32 (see UPCAST_DOTS for ``UPCAST``; PRESPLIT below)."""
        if PRECISION == _PRESPLIT:
            a_hi, a_lo = split_tf32(a, PRECISION)
            b_hi, b_lo = split_tf32(b, PRECISION)
            return dot3(a_hi, a_lo, b_hi, b_lo, PRECISION, UPCAST)
        elif PRECISION == _F16X3:
            a_hi, a_lo, a_inv = split_f16(a, 1)
            b_hi, b_lo, b_inv = split_f16(b, 0)
            if UPCAST:  # the interpreter: float16 values times float16 values are exact in float32
                r = tl.dot(a_lo.to(tl.float32), b_hi.to(tl.float32), input_precision="ieee")
                r = tl.dot(a_hi.to(tl.float32), b_lo.to(tl.float32), r, input_precision="ieee")
                r = tl.dot(a_hi.to(tl.float32), b_hi.to(tl.float32), r, input_precision="ieee")
            else:
                r = tl.dot(a_lo, b_hi)
                r = tl.dot(a_hi, b_lo, r)
                r = tl.dot(a_hi, b_hi, r)
            return r * a_inv[:, None] * b_inv[None, :]
        elif UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def split_f16(x, AXIS: tl.constexpr):
        """float32 ``x`` as ``(hi, lo, inv)``: ``x ≈ (hi + lo) * inv`` along ``AXIS`` (1: one
        power of two ``inv`` per row, reducing over the columns; 0: per column), hi and lo float16.

        Each row (column) is scaled by the power of two that puts its largest magnitude in
        [2^14, 2^15), below float16's 65504; hi = float16(x·s) and lo = float16(x·s − hi) carry
        22 significant bits of every value not far below that largest one (smaller values keep
        an absolute error of 2^-39 of it, float16's subnormal step), as tf32x3's two TF32 halves
        do. Zero or tiny rows (largest < 2^-112) use s = 2^126; inf/NaN propagate.
        """
        m = tl.max(tl.abs(x), axis=AXIS)
        e = (m.to(tl.int32, bitcast=True) >> 23) & 0xFF  # biased exponent of the largest
        e = tl.minimum(tl.maximum(e, 15), 254)
        s = ((268 - e) << 23).to(tl.float32, bitcast=True)  # 2^(141 - e): largest·s in [2^14, 2^15)
        inv = ((e - 14) << 23).to(tl.float32, bitcast=True)  # 1 / s
        if AXIS == 1:
            xs = x * s[:, None]
        else:
            xs = x * s[None, :]
        hi = xs.to(tl.float16)
        lo = (xs - hi.to(tl.float32)).to(tl.float16)
        return hi, lo, inv

    # -- three TF32 products per float32 product, with operands split by the kernel -------
    #
    # Triton's own ``tf32x3`` splits both operands of every ``tl.dot`` where it stands, so a
    # tile a program keeps for its whole walk (q in the forward, k and v in dk/dv) is split
    # again at every step, and a tile used by two products is split twice. With
    # ``PRECISION == _PRESPLIT`` a kernel splits each tile once, where it is loaded
    # (``split_tf32``), and passes the halves to ``dot3``/``dot3_acc``: the same three TF32
    # products (lo·hi + hi·lo + hi·hi, small terms first), accumulated straight into the
    # running accumulator. Other precisions pass through: ``split_tf32`` returns (x, x),
    # ``dot3`` is ``dot`` of the first halves, so one kernel body serves every mode.

    @triton.jit
    def round_tf32(x):
        """float32 ``x`` rounded to TF32 (10 explicit mantissa bits; to nearest, ties away
        from zero, like ``cvt.rna.tf32.f32``), as float32. Done on the bits so that it also
        runs under the interpreter; where rounding up would carry into the inf/NaN exponent
        (|x| within half a TF32 ulp of the float32 maximum, or x already inf/NaN) the bits
        are truncated instead, so a finite x stays finite."""
        bits = x.to(tl.int32, bitcast=True)
        up = (bits + 0x1000) & -8192  # -8192 == 0xFFFFE000: clear the 13 low mantissa bits
        r = tl.where((up & 0x7F800000) == 0x7F800000, bits & -8192, up)
        return r.to(tl.float32, bitcast=True)

    @triton.jit
    def split_tf32(x, PRECISION: tl.constexpr):
        """``(hi, lo)`` with x ≈ hi + lo, both exact in TF32, for ``PRECISION == _PRESPLIT``
        (hi = x rounded to TF32, lo = the exact remainder x - hi rounded to TF32: x to
        about 2^-22 relative); ``(x, x)`` otherwise (the second is then unused)."""
        if PRECISION == _PRESPLIT:
            hi = round_tf32(x)
            lo = round_tf32(x - hi)
        else:
            hi = x
            lo = x
        return hi, lo

    @triton.jit
    def dot3(a_hi, a_lo, b_hi, b_lo, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """``a @ b`` from ``split_tf32`` halves: lo·hi + hi·lo + hi·hi in TF32 (PRESPLIT),
        else ``dot(a_hi, b_hi)``."""
        if PRECISION == _PRESPLIT:
            if UPCAST:  # the halves are exact in TF32: full float32 products are the same
                r = tl.dot(a_lo, b_hi, input_precision="ieee")
                r = tl.dot(a_hi, b_lo, r, input_precision="ieee")
                r = tl.dot(a_hi, b_hi, r, input_precision="ieee")
            else:
                r = tl.dot(a_lo, b_hi, input_precision="tf32")
                r = tl.dot(a_hi, b_lo, r, input_precision="tf32")
                r = tl.dot(a_hi, b_hi, r, input_precision="tf32")
            return r
        else:
            return dot(a_hi, b_hi, PRECISION, UPCAST)

    @triton.jit
    def dot3_acc(acc, a_hi, a_lo, b_hi, b_lo, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """``acc + a @ b``; with PRESPLIT the three products accumulate into ``acc`` itself
        (no second accumulator tile live in registers)."""
        if PRECISION == _PRESPLIT:
            if UPCAST:
                acc = tl.dot(a_lo, b_hi, acc, input_precision="ieee")
                acc = tl.dot(a_hi, b_lo, acc, input_precision="ieee")
                acc = tl.dot(a_hi, b_hi, acc, input_precision="ieee")
            else:
                acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
                acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
                acc = tl.dot(a_hi, b_hi, acc, input_precision="tf32")
            return acc
        else:
            return acc + dot(a_hi, b_hi, PRECISION, UPCAST)

    @triton.jit
    def f16_range(x):
        """(x / p, p) with p a power of two >= 1 such that every |x / p| <= 2^14: a float32
        tile brought into float16's range (largest 65504) before it is rounded to a dot
        operand. p = 1 (exactly, so nothing changes) unless the tile's largest entry passes
        2^14. Used for the chunked kernels' float32 states (S, G, dS/ds): unlike the inputs
        they are sums over up to the whole sequence (with slow decay S grows like the window,
        dS/ds like the window squared) and can leave float16's range where the reference's
        products, which only sum in float32, never do."""
        if _F16_RANGE:
            m = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
            e = tl.minimum(tl.maximum(tl.ceil(tl.log2(tl.maximum(m, 1e-30))) - 14.0, 0.0), 100.0).to(tl.int32)
            inv = ((127 - e) << 23).to(tl.float32, bitcast=True)
            p = ((127 + e) << 23).to(tl.float32, bitcast=True)
        else:
            inv = 1.0
            p = 1.0
        return x * inv, p

    @triton.jit
    def dot_state(a, b, like, PRECISION: tl.constexpr, UPCAST: tl.constexpr, FINE: tl.constexpr):
        """``a @ b`` for a float32 tile ``b`` (a state, or a weighted operand the chunk
        kernels sum into one) rounded to ``like``'s dtype. In float16, b is first scaled into
        range by a power of two (``f16_range``): exact, and a no-op unless an entry passes
        2^14. FINE splits b = b_hi + b_lo into two 16-bit operands (two products, ~twice the
        mantissa; chunk_bwd.py's dq kernel with the slopes' gradient)."""
        if like.dtype == tl.float16:
            b, p = f16_range(b)
        b_hi = to_operand(b, like, UPCAST)
        r = dot(a, b_hi, PRECISION, UPCAST)
        if FINE:
            r += dot(a, to_operand(b - b_hi.to(b.dtype), like, UPCAST), PRECISION, UPCAST)
        if like.dtype == tl.float16:
            r = r * p
        return r

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
