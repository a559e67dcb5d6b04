r"""Tolerance bands: how far from the float64 answer a backend in dtype X may be, and why.

The error metric
----------------
For a quantity x (``o``, the final state, or one gradient) the backend's error is the
normwise relative error against the float64 oracle x₆₄ (Frobenius norms over the whole
tensor, or over the slice a property looks at)::

    e(x) = ||x − x₆₄|| / ||x₆₄||

The band
--------
A backend in dtype X passes when

    ||x − x₆₄||  <=  F · ||x_X − x₆₄||  +  c · ( u_out·||x₆₄|| + u_acc·sqrt(K)·||T|| + u_state·||T_λ|| ) + tiny

that is, e(x) <= F·e_ref,X + floor, where

* ``x_X`` is the same quantity from the reference formula evaluated in X itself
  (:func:`linattn.testing.reference.naive_in_dtype`: the N×N products formed in X), so
  ``e_ref,X = ||x_X − x₆₄|| / ||x₆₄||`` is what rounding to X costs the plain formula on
  *these* inputs. A backend may be F = 4 times worse than that. Why 4: a kernel rounds at
  a few more places than the plain formula (the state cast to X before a tensor-core
  product, the decayed keys, the intra-chunk scores...); each rounding adds an error of
  the same size, independent of the others, so k roundings against the formula's 2-3
  grow the norm like sqrt(k/2) — about 1.6 for five. F = 4 leaves room for that and for
  the spread between two random errors of equal size, and stays far below the errors of a
  real bug (a TF32 product in float32 is ~1000 times e_ref; a skipped key is O(1)).
* the floor makes float64 work (there x_X = x₆₄, e_ref = 0) and covers problems where
  the formula in X is exact by luck (a 1×1 problem):

  - ``u_out·||x₆₄||``: rounding the result once to its dtype (q's dtype for ``o`` and the
    input gradients, float32/64 for states, the slopes' dtype for ``dslopes``);
  - ``u_acc·sqrt(K)·||T||``: accumulating K terms in the accumulation dtype (float32 for
    half inputs, float64 for float64). ``T`` is the root-sum-square of the terms each
    element sums (:func:`linattn.testing.reference.terms_outcome`). Summing K terms
    t_1..t_K in order makes rounding errors δ_k·(t_1+...+t_k) with |δ_k| <= u; as
    independent random errors they add up to about u·sqrt(Σ_k |partial_k|²), and with
    partial sums of the size of ||t||₂ that is u·sqrt(K)·||t||₂ — the "sqrt(K) u" rule of
    probabilistic rounding-error analysis (Higham & Mary 2019), with ||t||₂ rather than
    the sum |t|₁ because it is the typical, not the worst, size of a partial sum.
    Measuring against T, not against x₆₄, is what keeps quantities that cancel to ~0 in
    float64 (a slope gradient when the decay is large, a mask gradient where the terms
    have both signs) from demanding an impossible relative accuracy.
  - with decay, ``u_state·‖T_λ‖``: a recurrence that steps token by token multiplies the
    state by λ = exp(-s), rounded once in the state dtype, at every step, so a term at
    decay distance d carries that one rounding d times — a *systematic* relative error
    d·δ (|δ| <= u_state), which adds up coherently, not like sqrt(K). ``T_λ`` holds, per
    element, Σ d·|term| (:func:`linattn.testing.reference.decay_terms_outcome`), so this
    is the error of an exact recurrence with a once-rounded λ. Decoding one token per call
    cannot avoid it (each call sees only λ), so the band admits it for every backend.
  - c = 2 covers "a couple" of such roundings; ``tiny`` is c·(smallest normal of the
    result dtype)·sqrt(numel), so that exact zeros compare as zeros.

K, the reduction length, per quantity (B, H, N, M, D, E as usual, G = H/Hkv heads per
k/v head, R = the number of [B, H] mask entries broadcast into one):

    o            D + M   (+D with an initial state)       dq     E + M   (+E)
    final state  M + 1                                    dk     E + G·N (+D)
    dv           D + G·N (+D)                             dmask  D + E + R
    dinit state  N + 1                                    dslopes B·N·M + B·N·D·E + D + E

Two backend runs compared with each other (metamorphic properties: GQA against expanded
heads, a broadcast mask against the expanded one, batch invariance...) use the sum of
the two bands, ``2·band``; three runs (linearity) ``3·band``.

What the band is not: tuned. The constants above are fixed from this argument; when a
backend fails, the measured error and the band are reported side by side (as a fraction
of the band) so the reason can be found. A band that fails is a finding.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from ..backends._common import state_dtype
from .problem import Problem

__all__ = [
    "FACTOR",
    "FLOOR_C",
    "unit_roundoff",
    "accumulation_dtype",
    "result_dtype",
    "reduction_length",
    "Measurement",
    "measure",
]

#: F: how many times the error of the formula in X a backend may make.
FACTOR = 4.0
#: c: how many "roundings" the floor allows.
FLOOR_C = 2.0

_U = {
    torch.float16: 2.0 ** -11,
    torch.bfloat16: 2.0 ** -8,
    torch.float32: 2.0 ** -24,
    torch.float64: 2.0 ** -53,
}


def unit_roundoff(dtype: torch.dtype) -> float:
    """u(X): half the distance from 1 to the next number (2^-p for p significant bits)."""
    try:
        return _U[dtype]
    except KeyError:
        raise ValueError(f"unit_roundoff: expected a float dtype in {list(_U)}, got {dtype}") from None


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half inputs accumulate in float32; float32 and float64 in themselves."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def result_dtype(problem: Problem, quantity: str) -> torch.dtype:
    """The dtype a backend returns ``quantity`` in."""
    X = problem.torch_dtype
    if quantity in ("final_state", "dinitial_state", "dslopes"):
        return state_dtype(X)
    return X


def reduction_length(problem: Problem, quantity: str) -> int:
    """K for ``quantity``: how many terms one element of it sums (see the table above)."""
    p = problem
    B, H, N, M, D, E = p.B, p.H, p.N, p.M, p.D, p.E
    G = H // max(p.Hkv, 1)
    s0 = p.initial_state
    if quantity == "o":
        return D + M + (D if s0 else 0)
    if quantity == "final_state":
        return M + 1
    if quantity == "dq":
        return E + M + (E if s0 else 0)
    if quantity == "dk":
        return E + G * N + (D if p.final_state else 0)
    if quantity == "dv":
        return D + G * N + (D if p.final_state else 0)
    if quantity == "dmask":
        shape = p.mask_shape_4d()
        R = (B * H) // (shape[0] * shape[1]) if shape else 1
        return D + E + R
    if quantity == "dinitial_state":
        return N + 1
    if quantity == "dslopes":
        return B * N * M + (B * N * D * E if p.state else 0) + D + E
    raise ValueError(f"unknown quantity {quantity!r}")


@dataclass
class Measurement:
    """One comparison: the error of a quantity and its band, both relative to ||x₆₄||."""

    property: str
    quantity: str
    dtype: str
    N: int
    error: float  # ||x - target|| / ||x64||
    band: float  # (F·||x_X - x64|| + floor) / ||x64||  (times `runs` for metamorphic pairs)
    fraction: float  # error / band; <= 1 passes
    e_ref: float  # ||x_X - x64|| / ||x64||
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.fraction <= 1.0

    def as_dict(self) -> dict:
        return asdict(self)


def _norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.double()))


def measure(
    prop: str,
    quantity: str,
    x: torch.Tensor,
    evaluation,
    *,
    index=None,
    against: Optional[torch.Tensor] = None,
    runs: int = 1,
) -> Measurement:
    """Compare ``x`` with the oracle (or with another run, ``against``) inside the band.

    ``evaluation`` is the problem's :class:`~linattn.testing.reference.Evaluation`;
    ``index`` selects the part of the oracle, formula-in-X and terms tensors that ``x``
    corresponds to (``x`` itself is already that part). ``runs`` multiplies the band for
    metamorphic comparisons between ``runs`` backend results.
    """
    p = evaluation.problem

    def part(t):
        return t if index is None else t[index]

    x64 = part(evaluation.oracle[quantity]).double()
    T = part(evaluation.terms[quantity]).double()
    xX = part(evaluation.naive[quantity]).double() if evaluation.naive is not None else x64
    target = x64 if against is None else against.double()
    x = x.double()
    if x.shape != x64.shape:
        raise ValueError(f"measure({quantity}): got shape {tuple(x.shape)}, expected {tuple(x64.shape)}")
    num = _norm(x - target)
    if not math.isfinite(num):
        num = math.inf
    rdt = result_dtype(p, quantity)
    u_out = unit_roundoff(rdt)
    u_acc = unit_roundoff(accumulation_dtype(p.torch_dtype))
    K = reduction_length(p, quantity)
    n64 = _norm(x64)
    e_ref_abs = _norm(xX - x64)
    if not math.isfinite(e_ref_abs):  # the formula in X overflowed: the floor alone applies
        e_ref_abs = 0.0
    tiny = FLOOR_C * torch.finfo(rdt).tiny * math.sqrt(max(x64.numel(), 1))
    floor = FLOOR_C * (u_out * n64 + u_acc * math.sqrt(K) * _norm(T)) + tiny
    if getattr(evaluation, "decay_terms", None) is not None and quantity in evaluation.decay_terms:
        u_state = unit_roundoff(state_dtype(p.torch_dtype))  # λ = exp(-s) rounded once, compounded
        floor += FLOOR_C * u_state * _norm(part(evaluation.decay_terms[quantity]).double())
    band_abs = runs * (FACTOR * e_ref_abs + floor)
    frac = num / band_abs if band_abs > 0 else (0.0 if num == 0 else math.inf)
    denom = n64 if n64 > 0 else 1.0
    return Measurement(
        property=prop, quantity=quantity, dtype=p.dtype, N=p.N,
        error=num / denom, band=band_abs / denom, fraction=frac, e_ref=e_ref_abs / denom,
        problem=p.describe(),
    )
