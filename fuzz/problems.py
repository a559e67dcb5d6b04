r"""Stranger problems than the property suites draw: extreme magnitudes, wild masks, extreme
slopes, stride-0 and non-contiguous inputs.

A :class:`StrangeProblem` is a :class:`linattn.testing.Problem` (same fields, same seeded
tensors, same float64 oracle) with a few more fields, each a transformation of the tensors
that the oracle sees too, so the bands of :mod:`linattn.testing.bands` still apply:

``q_exp, k_exp, v_exp``
    multiply q, k, v by 2^e. Powers of two change only the exponent, so the problem is the
    same one at another magnitude: e large enough overflows float16 in the scores q·k
    (|q·k| ~ 2^(q_exp+k_exp)), e small enough lands in the subnormals.
``mask_exp, mask_spread``
    multiply the dense mask by 2^mask_exp and each entry by its own 2^u, u uniform in
    [-mask_spread, mask_spread]: finite, NaN-free, wildly scaled weights.
``slope_values``
    explicit slopes, one per head, overriding ``slopes``: 0, 1e-30, values around the
    float32 and float64 underflow of exp(-s) (88, 745) and up to 1e30.
``stride0``
    names of tensors built as expanded views (stride 0) of one slice: ``q``, ``k``, ``v``
    along the batch, ``slopes`` from one head, ``initial_state`` along the batch. Values are
    constant along that axis, and the oracle sees the same values.
``layout``
    how the tensors are laid out when the backend is called (:func:`relayout`); the values
    are unchanged, so the oracle does not care: ``contiguous``, ``permuted`` ([B, N, H, D]
    storage viewed as [B, H, N, D]), ``strided`` (every other element of a wider buffer),
    ``offset`` (a view starting one element into its storage), ``mixed`` (one of those per
    tensor), ``expand_mask`` (a broadcast mask passed as an expanded stride-0 [B, H, N, M]).

``repr(problem)`` is an exact reproduction (see :meth:`StrangeProblem.repro`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from linattn.testing.problem import Problem, ProblemTensors

__all__ = ["StrangeProblem", "LAYOUTS", "relayout", "relayout_fn", "EXTREME_SLOPES", "rebuild"]

LAYOUTS = ("contiguous", "permuted", "strided", "offset", "mixed", "expand_mask")
#: Slopes at the edges: zero, vanishing, around exp underflow in float32 (~88..104) and
#: float64 (~708..745), and absurdly large (finite).
EXTREME_SLOPES = (0.0, 1e-30, 1e-12, 1e-6, 0.5, 20.0, 88.0, 104.0, 745.0, 1e4, 1e30)


@dataclass(frozen=True)
class StrangeProblem(Problem):
    """A :class:`linattn.testing.Problem` with extreme magnitudes, slopes and layouts."""

    q_exp: int = 0
    k_exp: int = 0
    v_exp: int = 0
    mask_exp: int = 0
    mask_spread: int = 0
    slope_values: Optional[tuple] = None
    stride0: tuple = ()
    layout: str = "contiguous"

    def __post_init__(self):
        super().__post_init__()
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        bad = set(self.stride0) - {"q", "k", "v", "slopes", "initial_state"}
        if bad:
            raise ValueError(f"stride0 names unknown tensors {sorted(bad)}")
        if self.slope_values is not None:
            if len(self.slope_values) != self.H:
                raise ValueError(f"slope_values must have H={self.H} entries, got {len(self.slope_values)}")
            object.__setattr__(self, "slope_values", tuple(float(s) for s in self.slope_values))

    def describe(self) -> str:
        extra = []
        if (self.q_exp, self.k_exp, self.v_exp) != (0, 0, 0):
            extra.append(f"x2^({self.q_exp},{self.k_exp},{self.v_exp})")
        if self.dense and (self.mask_exp or self.mask_spread):
            extra.append(f"mask2^({self.mask_exp}±{self.mask_spread})")
        if self.decay and self.slope_values is not None:
            extra.append("slopes" + ",".join(f"{s:g}" for s in self.slope_values))
        if self.stride0:
            extra.append("stride0:" + ",".join(self.stride0))
        if self.layout != "contiguous":
            extra.append(self.layout)
        return "-".join([super().describe()] + extra)

    def repro(self, call: str = "fn") -> str:
        return (
            "from fuzz.problems import StrangeProblem\n"
            f"problem = {self!r}\n"
            f"outcome = problem.run({call})   # tensors: problem.tensors; oracle: problem.oracle()"
        )

    def _build(self) -> ProblemTensors:
        t = super()._build()
        g = torch.Generator().manual_seed(int(self.seed) ^ 0x5EED)

        def scaled(x, e):
            return x if e == 0 or x is None else x * (2.0 ** e)

        q, k, v = scaled(t.q, self.q_exp), scaled(t.k, self.k_exp), scaled(t.v, self.v_exp)
        mask = t.mask
        if mask is not None and (self.mask_exp or self.mask_spread):
            u = torch.randint(-self.mask_spread, self.mask_spread + 1, mask.shape, generator=g)
            factor = torch.pow(2.0, (u + self.mask_exp).to(torch.float64))
            mask = (mask.double() * factor.to(mask.device)).to(mask.dtype)
        slopes = t.slopes
        if slopes is not None and self.slope_values is not None:
            slopes = torch.tensor(self.slope_values, dtype=slopes.dtype, device=slopes.device)
        s0 = t.initial_state
        if "q" in self.stride0:
            q = q[:1].expand_as(q)
        if "k" in self.stride0:
            k = k[:1].expand_as(k)
        if "v" in self.stride0:
            v = v[:1].expand_as(v)
        if "slopes" in self.stride0 and slopes is not None:
            slopes = slopes[:1].expand_as(slopes)
        if "initial_state" in self.stride0 and s0 is not None:
            s0 = s0[:1].expand_as(s0)
        for name, x in (("q", q), ("k", k), ("v", v), ("mask", mask), ("slopes", slopes), ("initial_state", s0)):
            if x is not None and x.numel() and not bool(torch.isfinite(x).all()):
                raise ValueError(f"{self.describe()}: {name} is not finite after scaling; choose smaller exponents")
        return ProblemTensors(q, k, v, mask, slopes, s0, t.do, t.dfinal, t.cu_seqlens)


def rebuild(text: str) -> Problem:
    """The problem a ``repr`` describes (failure files store the repr)."""
    return eval(text, {"StrangeProblem": StrangeProblem, "Problem": Problem, "__builtins__": {}})


# -- layouts --------------------------------------------------------------------------


def _permuted(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] values in [B, N, H, D] storage (what a projection followed by a view gives)."""
    if x.dim() < 3:
        return x
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def _strided(x: torch.Tensor) -> torch.Tensor:
    """Every other element of a buffer twice as wide: last-dim stride 2."""
    if x.dim() == 0:
        return x
    wide = torch.stack([x, torch.zeros_like(x)], dim=-1)  # [..., F, 2]
    return wide.flatten(-2)[..., ::2]


def _offset(x: torch.Tensor) -> torch.Tensor:
    """A view that starts one element into its storage (storage_offset 1, rows padded)."""
    if x.dim() == 0:
        return x
    pad = torch.zeros_like(x[..., :1])
    return torch.cat([pad, x], dim=-1)[..., 1:]


_ONE = {"contiguous": lambda x: x, "permuted": _permuted, "strided": _strided, "offset": _offset}


def relayout(name: str, x: Optional[torch.Tensor], layout: str, B: int, H: int, salt: int) -> Optional[torch.Tensor]:
    """``x`` with the same values in the layout ``layout`` (differentiable)."""
    if x is None or not isinstance(x, torch.Tensor) or x.numel() == 0:
        return x
    if layout == "expand_mask":
        if name == "mask" and x.dim() >= 2:
            return x.reshape((1,) * (4 - x.dim()) + tuple(x.shape)).expand(B, H, *x.shape[-2:])
        return x
    if layout == "mixed":
        order = ("q", "k", "v", "mask", "decay", "initial_state")
        layout = ("contiguous", "permuted", "strided", "offset")[(salt + order.index(name)) % 4]
    return _ONE[layout](x)


def relayout_fn(fn: Callable, problem: Problem) -> Callable:
    """Wrap ``fn`` (linear_attention's signature) so the backend sees ``problem.layout``."""
    layout = getattr(problem, "layout", "contiguous")
    if layout == "contiguous":
        return fn
    salt = int(problem.seed) % 4

    def wrapped(q, k, v, mask=None, **kw):
        B, H = q.shape[0], q.shape[1]
        r = lambda n, x: relayout(n, x, layout, B, H, salt)  # noqa: E731
        for key in ("decay", "initial_state"):
            if kw.get(key) is not None:
                kw[key] = r(key, kw[key])
        return fn(r("q", q), r("k", k), r("v", v), r("mask", mask), **kw)

    wrapped.__name__ = getattr(fn, "__name__", "fn")
    return wrapped


def log2_bound(problem: StrangeProblem) -> float:
    """A generous log2 of the largest entry the problem can produce in o or any gradient
    (inputs and upstream gradients are O(1) before scaling; 5 standard deviations):

        scores q·k·m ~ q k D m       o ~ scores v M        dq ~ do v k m M E
        dk ~ do v q m N E            dv ~ q k m do N D     dmask ~ do v q k D E
    """
    D, E, N, M = (max(x, 1) for x in (problem.D, problem.E, problem.N, problem.M))
    m = (problem.mask_exp + problem.mask_spread + 2) if problem.dense else 0
    qe, ke, ve, tail = problem.q_exp, problem.k_exp, problem.v_exp, 2.3
    lg = math.log2
    return max(
        qe + ke + lg(D) + 2 * tail + m,                       # scores
        qe + ke + ve + lg(D * M) + 3 * tail + m,              # o
        ke + ve + lg(M * E) + 3 * tail + m,                   # dq
        qe + ve + lg(N * E) + 3 * tail + m,                   # dk
        qe + ke + lg(N * D) + 3 * tail + m,                   # dv
        qe + ke + ve + lg(D * E) + 4 * tail,                  # dmask
    )
