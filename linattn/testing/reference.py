"""What every backend is compared with: the float64 oracle, the formula in the problem's
own dtype, and the size of the terms each quantity sums.

For one :class:`~linattn.testing.problem.Problem` :func:`evaluate` computes three outcomes:

``oracle``
    ``linattn.backends.reference`` (``backend="reference"`` through the public API) on
    float64 copies of the problem's tensors — the exact answer for the inputs the backend
    saw (they are already rounded to the problem's dtype; float64 holds them exactly).

``naive``
    the reference formula evaluated in the problem's dtype X itself (:func:`naive_in_dtype`):
    the N×N products ``A = q kᵀ`` and ``P = A ⊙ W`` and ``o = P v`` are formed in X with
    torch's own X kernels, the mask factors (causal, decay) are computed in float32 and
    rounded to X, the state products take operands in X and accumulate in the state dtype
    (float32), and autograd runs through all of it in the same dtypes. Its error against the
    oracle is what "the plain formula in X" loses; a backend in X is judged against it.
    For float64 problems it is the oracle itself (error 0), and is not computed.

``terms``
    for each quantity, the root-sum-square of the terms it is a sum of, e.g. for ``o``
    ``T[b,h,i,e] = sqrt( Σ_{j,d} (scale · q_id k_jd W_ij v_je)² )``. Every quantity is a
    multilinear form in (q, k, v, mask, initial state, do, d(final state)) with the decay
    factors exp(-s·x), so the float64 reference run on the *squared* problem (every tensor
    squared, scale², slopes doubled so that W becomes W²) returns exactly these sums of
    squares; for the slopes, whose terms carry an extra factor (i-j), the sums of squares
    are the second derivative of that run with respect to the doubled slopes
    (d²/ds² exp(-s x) = x² exp(-s x)). ``terms`` is the scale against which rounding is
    measured when a quantity cancels to ~0 (see :mod:`linattn.testing.bands`).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional

import torch

from .._api import linear_attention
from ..backends._common import effective_mask, expand_kv, state_dtype
from .problem import Outcome, Problem, ProblemTensors

__all__ = ["Evaluation", "evaluate", "naive_in_dtype", "oracle_fn", "terms_outcome", "decay_terms_outcome"]

oracle_fn = functools.partial(linear_attention, backend="reference")
oracle_fn.__doc__ = "linear_attention(..., backend='reference'): the oracle, run on float64 copies."


@dataclass
class Evaluation:
    """The oracle, the formula in X, and the term sizes for one problem."""

    problem: Problem
    oracle: Outcome  # float64
    naive: Optional[Outcome]  # in the problem's dtypes; None for float64 problems
    terms: Outcome  # float64, >= 0, same shapes as oracle
    decay_terms: Optional[Outcome] = None  # Σ (i-j)·|term| per element (decay problems only)


def _as_float64(t: ProblemTensors) -> ProblemTensors:
    return t.map(lambda name, x: x.to(torch.float64))


def evaluate(problem: Problem) -> Evaluation:
    """Compute :class:`Evaluation` for ``problem`` (on its own device)."""
    t64 = _as_float64(problem.tensors)
    oracle = problem.run(oracle_fn, t64)
    naive = None
    if problem.dtype != "float64":
        naive = problem.run(naive_in_dtype, problem.tensors)
    terms = terms_outcome(problem, t64)
    decay_terms = decay_terms_outcome(problem, t64) if problem.decay else None
    return Evaluation(problem, oracle, naive, terms, decay_terms)


#: Step for the finite difference in the slopes (float64; second-order error h·(i-j)/2).
_DECAY_STEP = 1e-6


def decay_terms_outcome(problem: Problem, t64: Optional[ProblemTensors] = None) -> Outcome:
    """Per element, Σ (i-j)·|term|: how much a relative error δ in the decay factor
    λ = exp(-s), compounded once per step of distance, moves each quantity (δ times this).

    Every quantity of the problem with all tensors replaced by their absolute values is a
    sum of positive terms |t|·exp(-s·x) with x the decay distance (i-j, i+1, N-1-j, ...),
    so its derivative in s is -Σ x·|t|·exp(-s·x): a forward difference of two float64
    oracle runs (slopes s and s+h) gives it without cancellation.
    """
    if t64 is None:
        t64 = _as_float64(problem.tensors)
    absd = t64.map(lambda name, x: x if name == "slopes" else x.abs())
    p = problem.replace(scale=abs(problem.scale))
    base = p.run(oracle_fn, absd)
    moved = p.run(oracle_fn, dataclasses.replace(absd, slopes=absd.slopes + _DECAY_STEP))
    return Outcome({q: ((base[q] - moved[q]).abs() / _DECAY_STEP) for q in base})


def terms_outcome(problem: Problem, t64: Optional[ProblemTensors] = None) -> Outcome:
    """Root-sum-square of the summed terms of every quantity (see the module docstring)."""
    if t64 is None:
        t64 = _as_float64(problem.tensors)
    sq = t64.map(lambda name, x: 2.0 * x if name == "slopes" else x * x)
    sq_problem = problem.replace(scale=problem.scale ** 2)
    if "slopes" not in problem.grads:
        res = sq_problem.run(oracle_fn, sq)
    else:
        # The run gives Σ x·(terms²) for ds; its derivative in the doubled slopes is the sum
        # of squares Σ x²·(terms²) we want. ``leaf`` is a second handle on the slopes that
        # survives Problem.run's cloning, so the second derivative can reach it.
        leaf = sq.slopes.detach().clone().requires_grad_(True)
        res = sq_problem.run(_with_slopes_leaf(leaf), sq, create_graph=True)
        (d2,) = torch.autograd.grad(res["dslopes"].sum(), leaf, allow_unused=True)
        res["dslopes"] = torch.zeros_like(leaf) if d2 is None else d2
    out = Outcome()
    for name, x in res.items():
        x = x.detach()
        out[name] = x.clamp(min=0).sqrt() if name != "dslopes" else x.abs().sqrt()
    if "slopes" in problem.grads:
        out["dslopes"] = _dslopes_terms_underflow(problem, t64, sq, out["dslopes"])
    return out


def _d2_slopes(sq_problem: Problem, sq: ProblemTensors, slopes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Σ x²·(terms²)·λ'^x per head: the second derivative of the squared problem in its
    slopes (``slopes`` replaces the doubled slopes when given)."""
    if slopes is not None:
        sq = dataclasses.replace(sq, slopes=slopes)
    leaf = sq.slopes.detach().clone().requires_grad_(True)
    res = sq_problem.run(_with_slopes_leaf(leaf), sq, create_graph=True)
    (d2,) = torch.autograd.grad(res["dslopes"].sum(), leaf, allow_unused=True)
    return torch.zeros_like(leaf) if d2 is None else d2.detach()


def _dslopes_terms_underflow(problem: Problem, t64: ProblemTensors, sq: ProblemTensors, T: torch.Tensor) -> torch.Tensor:
    """Repair the root-sum-square of the ``dslopes`` terms where squaring underflows.

    The squared problem runs with λ² = exp(-2s). When exp(-2s) is 0 in float64 (s > ~372.6)
    every term of ds at decay distance x >= 1 vanishes there, although the terms x·t·λ^x
    themselves are representable (e.g. s = 745, λ = 2^-1074, t ~ 1e88: terms ~ 1e-235) —
    the oracle and the backends compute them, and T came out 0 (fuzz finding
    triton-backward-6ceb3a045d: a 1.3-ulp error measured against a floor of u_out alone).
    ds has no x = 0 terms, and in float64 exp(-s·x) = 0 for every x >= 2 at such s, so
    only x = 1 terms exist: Σ (t·λ)² = λ·(Σ t²·λ), and the squared problem run with the
    slopes s (not 2s) gives Σ x²·t²·exp(-s·x) = Σ_{x=1} t²·λ exactly. Hence
    T = sqrt(that)·sqrt(λ), with no intermediate below the float64 range (λ = exp(-s) as
    float64 rounds it, the value the oracle and the backends use).
    """
    s = t64.slopes.detach().double()
    if s.numel() == 0:
        return T
    gone = torch.exp(-2.0 * s) == 0
    if not bool(gone.any()):
        return T
    sq_problem = problem.replace(scale=problem.scale ** 2)
    d2 = _d2_slopes(sq_problem, sq, slopes=torch.where(gone, s, sq.slopes.detach().double()).to(sq.slopes.dtype))
    fixed = d2.abs().sqrt() * torch.exp(-s).sqrt()  # λ as the oracle rounds it (2^-1074 for s = 745)
    return torch.where(gone, torch.maximum(T, fixed), T)


def _with_slopes_leaf(slopes_leaf: torch.Tensor):
    """The oracle, but with ``decay`` replaced by ``slopes_leaf`` so that a second
    derivative can reach it (``Problem.run`` clones its leaves)."""

    def fn(q, k, v, mask=None, **kw):
        s = kw["decay"]  # the clone Problem.run differentiates; same value, both get ds
        kw["decay"] = s + (slopes_leaf - slopes_leaf.detach())
        return oracle_fn(q, k, v, mask, **kw)

    return fn


def _powers(slopes: torch.Tensor, n: int, offset: int, dtype) -> torch.Tensor:
    """[1, H, n, 1] of λ^(t + offset), λ = exp(-s), computed in ``dtype``."""
    t = torch.arange(n, device=slopes.device, dtype=dtype) + offset
    return torch.exp(-slopes.to(dtype)[None, :, None, None] * t[None, None, :, None])


def naive_in_dtype(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
    initial_state=None, output_final_state=False, cu_seqlens=None,
):
    """The reference formula with every N×N product formed in q's dtype X.

    Same signature and result as :func:`linattn.linear_attention`. Used only to measure
    the error the plain formula makes in X (see the module docstring); never an oracle.
    """
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        outs, states = [], []
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            r = naive_in_dtype(
                q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, causal=causal, decay=decay,
                scale=scale, initial_state=None if initial_state is None else initial_state[i:i + 1],
                output_final_state=output_final_state,
            )
            o_i, s_i = r if output_final_state else (r, None)
            outs.append(o_i)
            states.append(s_i)
        o = torch.cat(outs, dim=2)
        return (o, torch.cat(states, 0)) if output_final_state else o

    X = q.dtype
    sdt = state_dtype(X)
    wdt = torch.float64 if X == torch.float64 else torch.float32
    B, H, N, D = q.shape
    M = k.shape[2]
    causal = causal or decay is not None
    kx, vx = expand_kv(k, H), expand_kv(v, H)  # (B, H, M, D), (B, H, M, E)
    A = q @ kx.transpose(-1, -2)  # (B, H, N, M) formed in X
    W = effective_mask(N, M, None, causal, decay, wdt, q.device)  # causal/decay factor, float32
    if W is not None:
        W = W.to(X)
    if mask is not None:
        m4 = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        W = m4 if W is None else W * m4  # in X
    P = A if W is None else A * W  # (B, H, N, M) in X
    o = (P @ vx) * scale  # (B, H, N, E) in X
    if initial_state is not None:
        qs = q if decay is None else (q.to(wdt) * _powers(decay, N, 1, wdt)).to(X)  # q_i λ^(i+1)
        o = o + (qs @ initial_state.to(X)) * scale
    if not output_final_state:
        return o
    ks = kx if decay is None else (kx.to(wdt) * _powers(decay, M, 0, wdt).flip(2)).to(X)  # k_j λ^(N-1-j)
    final = ks.to(sdt).transpose(-1, -2) @ vx.to(sdt)  # (B, H, D, E) in the state dtype
    if initial_state is not None:
        s0 = initial_state.to(sdt)
        final = final + (s0 if decay is None else torch.exp(-decay.to(sdt) * N)[None, :, None, None] * s0)
    return o, final
