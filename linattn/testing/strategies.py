"""Hypothesis strategies that draw whole linear-attention problems.

:func:`problems` draws a :class:`~linattn.testing.problem.Problem`: the settings (B, H, the
Hkv ratio, N, M, D, E, dtype, device, mask kind and broadcast shape, slopes, scale, state,
which inputs need gradients, packed sequences) and one seed. The tensors are then built
from the seed with a ``torch.Generator`` — drawing large arrays element by element would
make them mostly constant and slow. Every argument narrows the draw::

    from linattn.testing import problems
    problems(dtypes=[torch.bfloat16], mask_kinds=["decay"], max_n=4096, devices=["cuda"])

Sizes are biased toward the places where tiled code breaks: 1 and 2, C-1, C and C+1 for
the block sizes C in {16, 32, 64, 128, ...}, and primes (so never only multiples of a
block size); head dims toward 1, odd, 48, 60 and powers of two up to 256.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from hypothesis import strategies as st

from .._registry import MASK_KINDS, Backend
from .problem import DTYPES, GRAD_INPUTS, MASK_SHAPES, SLOPE_KINDS, Problem, _dtype_name

__all__ = ["NoProblems", "problems", "seq_lengths", "head_dims", "BLOCK_SIZES", "PRIMES", "HEAD_RATIOS"]

BLOCK_SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
PRIMES = (3, 5, 7, 13, 17, 31, 61, 67, 97, 127, 131, 251, 257, 509, 521, 1021, 1031, 2039, 2053, 4093)
#: MHA: Hkv == H; GQA: 1 < Hkv < H dividing H; MQA: Hkv == 1.
HEAD_RATIOS = ("mha", "gqa", "mqa")
_HEAD_DIMS = (1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 32, 33, 48, 60, 63, 64, 65, 96, 127, 128, 129, 192, 256)
_SCALES = (1.0, 0.5, 2.0, 0.125, 0.3)
_HS = (1, 2, 3, 4, 6, 8, 12, 16)


class NoProblems(ValueError):
    """The narrowing leaves nothing to draw (e.g. a backend that supports none of it)."""


def _edges(lo: int, hi: int) -> list:
    vals = {1, 2}
    for c in BLOCK_SIZES:
        vals.update((c - 1, c, c + 1))
    vals.update(PRIMES)
    return sorted(v for v in vals if lo <= v <= hi)


def seq_lengths(min_n: int = 1, max_n: int = 130) -> st.SearchStrategy:
    """Sequence lengths in [min_n, max_n], mostly block edges and primes, sometimes any."""
    if min_n > max_n:
        raise NoProblems(f"seq_lengths: min_n={min_n} > max_n={max_n}")
    edges = _edges(min_n, max_n)
    anyn = st.integers(min_n, max_n)
    return st.one_of(st.sampled_from(edges), anyn) if edges else anyn


def head_dims(max_d: int = 64) -> st.SearchStrategy:
    """Head dims up to max_d, biased to 1, odd sizes, 48, 60 and powers of two."""
    vals = [d for d in _HEAD_DIMS if d <= max_d]
    return st.one_of(st.sampled_from(vals), st.integers(1, max_d))


def _names(xs, allowed, what):
    out = []
    for x in xs:
        if x not in allowed:
            raise ValueError(f"{what} must be among {list(allowed)}, got {x!r}")
        out.append(x)
    if not out:
        raise NoProblems(f"{what}: nothing left to draw from")
    return out


def _opt(value, what):
    """None -> draw True or False; a bool -> that."""
    if value is None:
        return st.booleans()
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be None or a bool, got {type(value).__name__}")
    return st.just(value)


@st.composite
def problems(
    draw,
    *,
    dtypes: Optional[Iterable] = None,
    devices: Sequence[str] = ("cpu",),
    mask_kinds: Optional[Iterable[str]] = None,
    mask_shapes: Optional[Iterable[str]] = None,
    mask_values: Sequence[str] = ("real", "binary"),
    slope_kinds: Sequence[str] = SLOPE_KINDS,
    head_ratios: Sequence[str] = HEAD_RATIOS,
    min_n: int = 1,
    max_n: int = 130,
    max_d: int = 64,
    min_b: int = 1,
    max_b: int = 3,
    min_h: int = 1,
    max_h: int = 8,
    n_ne_m: bool = True,
    scales: Optional[Sequence[float]] = None,
    initial_state: Optional[bool] = None,
    final_state: Optional[bool] = None,
    grads: Optional[bool] = None,
    grad_inputs: Sequence[str] = GRAD_INPUTS,
    varlen: Optional[bool] = None,
    max_work: int = 1 << 23,
    backend: Optional[Backend] = None,
) -> Problem:
    """Draw a :class:`Problem`. Every argument narrows what is drawn.

    Args:
        dtypes: torch dtypes or names. Default: all four.
        devices: device types. Default: `("cpu",)`.
        mask_kinds: subset of `linattn._registry.MASK_KINDS`. Default: all.
        mask_shapes: dense-mask broadcast shapes, subset of `MASK_SHAPES`
            (`BHNM, 1HNM, B1NM, 11NM, NM, HNM`). Default: all.
        mask_values: `"real"` (N(0,1)) and/or `"binary"` (0/1).
        slope_kinds: subset of `SLOPE_KINDS` (`tnl, zero, tiny, moderate, large, mixed`).
        head_ratios: subset of `("mha", "gqa", "mqa")`.
        min_n, max_n: bounds on N (and M). max_d: bound on D and E.
        min_b, max_b, min_h, max_h: bounds on B and H.
        n_ne_m: allow M != N for non-causal kinds. Default: `True`.
        scales: values for `scale`. Default: 1, 0.5, 2, 0.125, 0.3.
        initial_state, final_state: None draws; True/False forces (where the kind allows).
        grads: None draws; True: at least one input requires grad; False: none.
        grad_inputs: which inputs may require grad.
        varlen: None draws packed sequences (causal/decay, B=1) sometimes; True only those.
        max_work: bound on B·H·N·M·(D+E), the float64 reference's work.
        backend: a `linattn.Backend`; draws are narrowed to what it declares.
    """
    dts = [_dtype_name(d) for d in (dtypes if dtypes is not None else DTYPES)]
    kinds = list(mask_kinds) if mask_kinds is not None else list(MASK_KINDS)
    _names(kinds, MASK_KINDS, "mask_kinds")
    shapes = _names(list(mask_shapes) if mask_shapes is not None else list(MASK_SHAPES), MASK_SHAPES, "mask_shapes")
    ratios = _names(list(head_ratios), HEAD_RATIOS, "head_ratios")
    slope_kinds = _names(list(slope_kinds), SLOPE_KINDS, "slope_kinds")
    grad_inputs = _names(list(grad_inputs), GRAD_INPUTS, "grad_inputs") if grads is not False else []
    devs = list(devices)
    if backend is not None:  # narrow to the declaration
        dts = [d for d in dts if DTYPES[d] in backend.dtypes]
        devs = [d for d in devs if d in backend.devices]
        kinds = [k for k in kinds if k in backend.mask_kinds]
        if not backend.gqa:
            ratios = [r for r in ratios if r == "mha"] or ["mha"]
        if not backend.state:
            if initial_state or final_state:
                raise NoProblems(f"backend {backend.name!r} declares no state support")
            initial_state = final_state = False
        if not backend.mask_grad:
            grad_inputs = [g for g in grad_inputs if g != "mask"]
        if not backend.slopes_grad:
            grad_inputs = [g for g in grad_inputs if g != "slopes"]
        if not backend.n_ne_m:
            n_ne_m = False
        if backend.max_head_dim is not None:
            max_d = min(max_d, backend.max_head_dim)
        if not (dts and devs and kinds):
            raise NoProblems(
                f"backend {backend.name!r} supports none of the requested problems "
                f"(dtypes {dts}, devices {devs}, mask kinds {kinds})"
            )
    if varlen:
        kinds = [k for k in kinds if k in ("causal", "decay")]
    if initial_state or final_state:
        kinds = [k for k in kinds if k in ("causal", "decay")]
    if not kinds:
        raise NoProblems("problems(): no mask kind is left after narrowing")

    hs_all = [h for h in _HS if min_h <= h <= max_h]
    ratios = [r for r in ratios if r == "mha" or (r == "mqa" and any(h >= 2 for h in hs_all))
              or (r == "gqa" and any(h % d == 0 for h in hs_all for d in range(2, h)))]
    if not ratios:
        raise NoProblems(f"problems(): no head ratio is possible with H in [{min_h}, {max_h}]")

    dtype = draw(st.sampled_from(dts))
    device = draw(st.sampled_from(devs))
    kind = draw(st.sampled_from(kinds))
    dense = kind.startswith("dense")
    causal = kind in ("causal", "decay", "dense+causal", "dense+decay")
    decay = kind.endswith("decay")

    # heads
    ratio = draw(st.sampled_from(ratios))
    hs = [h for h in _HS if min_h <= h <= max_h]
    if ratio == "gqa":  # needs a divisor strictly between 1 and H
        hs = [h for h in hs if any(h % d == 0 for d in range(2, h))]
    elif ratio == "mqa":
        hs = [h for h in hs if h >= 2]
    if not hs:
        raise NoProblems(f"problems(): no head count in [{min_h}, {max_h}] allows {ratio!r}")
    H = draw(st.sampled_from(hs))
    if ratio == "mha":
        Hkv = H
    elif ratio == "mqa":
        Hkv = 1
    else:
        divs = [d for d in range(2, H) if H % d == 0]
        Hkv = draw(st.sampled_from(divs)) if divs else 1

    # varlen / batch
    packed = False
    if causal and not dense and varlen is not False:
        packed = draw(st.integers(0, 3)) == 3 if varlen is None else True  # a quarter
    B = 1 if packed else draw(st.integers(min_b, max(min_b, max_b)))

    N = draw(seq_lengths(max(min_n, 1), max_n))
    M = N if (causal or not n_ne_m) else draw(st.one_of(st.just(N), seq_lengths(1, max_n)))
    D = draw(head_dims(max_d))
    E = draw(st.one_of(st.just(D), head_dims(max_d)))
    # keep the float64 reference cheap: shrink N/M first, then D/E
    while B * H * N * M * (D + E) > max_work and max(N, M) > max(min_n, 1):
        N, M = max(min_n, 1, N // 2), max(1, M // 2)
        if causal or not n_ne_m:
            M = N
    while B * H * N * M * (D + E) > max_work and max(D, E) > 1:
        D, E = max(1, D // 2), max(1, E // 2)

    cu = None
    if packed:
        n_cuts = draw(st.integers(0, min(4, N)))
        cuts = sorted(draw(st.lists(st.integers(0, N), min_size=n_cuts, max_size=n_cuts)))
        cu = tuple([0] + cuts + [N])

    mshape = draw(st.sampled_from(shapes)) if dense else "BHNM"
    mvals = draw(st.sampled_from(list(mask_values))) if dense else "real"
    slopes = draw(st.sampled_from(slope_kinds)) if decay else "tnl"
    scale = draw(st.sampled_from(list(scales) if scales is not None else _SCALES))

    s0 = sN = False
    if causal and not dense:
        s0 = draw(_opt(initial_state, "initial_state"))
        sN = draw(_opt(final_state, "final_state"))

    gs: list = []
    if grads is not False and grad_inputs:
        allowed = [g for g in grad_inputs if (g != "mask" or dense) and (g != "slopes" or decay)
                   and (g != "initial_state" or s0)]
        if allowed:
            if grads is None and not draw(st.booleans()):
                allowed = []
            if allowed:  # half the time every input, else a random non-empty subset
                gs = draw(st.one_of(st.just(allowed), st.lists(st.sampled_from(allowed), min_size=1, unique=True)))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return Problem(
        B=B, H=H, Hkv=Hkv, N=N, M=M, D=D, E=E, dtype=dtype, device=device, mask_kind=kind,
        mask_shape=mshape, mask_values=mvals, slopes=slopes, scale=scale, initial_state=s0,
        final_state=sN, grads=tuple(gs), cu_seqlens=cu, seed=seed,
    )
