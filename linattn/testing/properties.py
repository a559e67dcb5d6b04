"""The properties every backend must have, as plain functions.

Each property is ``prop(target, problem) -> PropertyResult``: it runs the backend on the
problem (and on transformed copies of it), compares every quantity inside its tolerance
band (:mod:`linattn.testing.bands`) and returns the measurements. It raises
:class:`~linattn.testing.problem.Skip` when the backend does not serve the request.
Nothing here needs Hypothesis: call a property on any :class:`Problem` you build by hand;
:func:`linattn.testing.check_backend` and the suites in ``properties/`` drive them with
:func:`linattn.testing.problems`.

    forward          o and the final state agree with the float64 reference
    backward         o, the final state and every gradient (q, k, v, mask, slopes,
                     initial state) agree with the float64 reference
    gradcheck        float64 finite differences agree with the backward (gradgradcheck
                     too when the backend declares double_backward)
    causality        changing the future (q, k, v, mask, do after position t) leaves the
                     output and dq up to t unchanged
    state_split      running [0, s) then [s, N) with the state carried equals the whole
                     run — outputs, final state and all gradients
    recurrent_steps  chunked == recurrent: a prefix in one call, then one token per call
                     (decoding), equals the whole sequence
    gqa              MQA/GQA equals the problem with k and v expanded to H heads, dk and
                     dv summed over each group
    broadcast_mask   a broadcast mask equals the expanded mask, dM summed over the
                     broadcast dimensions
    linearity_v      o(v₁ + v₂) = o(v₁) + o(v₂) (and the gradients linear in v)
    linearity_mask   o(M₁ + M₂) = o(M₁) + o(M₂) (and the gradients linear in M)
    batch_invariance running one batch element alone equals its slice of the batched run
    varlen           packed sequences (cu_seqlens) equal separate calls
    seed_names       normal_linear_attention / flash_linear_attention agree with
                     linear_attention(backend="reference" / "blocked")
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .._api import flash_linear_attention, normal_linear_attention
from ..backends._common import expand_kv, group_sum
from .bands import Measurement, measure
from .problem import Problem, ProblemTensors, Skip
from .target import Target, as_target

__all__ = ["PropertyResult", "Property", "PROPERTIES", "run_property"]


@dataclass
class PropertyResult:
    """The measurements one property made on one problem."""

    property: str
    problem: Problem
    measurements: list = field(default_factory=list)
    failures: list = field(default_factory=list)  # messages that are not band comparisons

    @property
    def ok(self) -> bool:
        return not self.failures and all(m.ok for m in self.measurements)

    @property
    def worst(self) -> Optional[Measurement]:
        return max(self.measurements, key=lambda m: m.fraction, default=None)

    @property
    def worst_fraction(self) -> float:
        w = self.worst
        return w.fraction if w is not None else 0.0

    def message(self) -> str:
        lines = [f"property {self.property} failed on {self.problem.describe()}"]
        lines += [f"  {f}" for f in self.failures]
        bad = [m for m in self.measurements if not m.ok]
        if bad:
            lines.append("  quantity        error      band       error/band  (e_ref in dtype)")
            for m in bad:
                lines.append(
                    f"  {m.quantity:15s} {m.error:.3e}  {m.band:.3e}  {m.fraction:10.3g}  ({m.e_ref:.2e})"
                )
        lines.append("reproduce:\n" + self.problem.repro())
        return "\n".join(lines)


def _rng(problem: Problem, salt: int) -> torch.Generator:
    """A generator for a property's own choices, fixed by the problem's seed."""
    return torch.Generator().manual_seed((problem.seed * 1_000_003 + salt) % (2 ** 62))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _all(result: PropertyResult, name: str, out, ev, *, against=None, index=None, runs=1,
         transform: Optional[Callable] = None, skip=()):
    """Measure every quantity of ``out`` (optionally against another outcome)."""
    for q, x in out.items():
        if q in skip or q not in ev.oracle:
            continue
        other = None
        if against is not None:
            if q not in against:
                continue
            other = against[q]
            if transform is not None:
                other = transform(q, other)
        result.measurements.append(measure(name, q, x, ev, index=index, against=other, runs=runs))


# ---------------------------------------------------------------- agreement with float64
def forward(target: Target, problem: Problem) -> PropertyResult:
    """o and the final state agree with the float64 reference inside the band."""
    target.check(problem)
    res = PropertyResult("forward", problem)
    out = problem.run(target, grads=False)
    _all(res, "forward", out, problem.evaluation)
    return res


def backward(target: Target, problem: Problem) -> PropertyResult:
    """o, the final state and every requested gradient agree with float64."""
    target.check(problem)
    res = PropertyResult("backward", problem)
    out = problem.run(target)
    _all(res, "backward", out, problem.evaluation)
    return res


# ---------------------------------------------------------------- gradcheck
def gradcheck(target: Target, problem: Problem) -> PropertyResult:
    """float64 finite differences (and second differences with double_backward)."""
    if problem.dtype != "float64":
        raise Skip("gradcheck runs in float64 only")
    if not problem.grads:
        problem = problem.replace(grads=("q", "k", "v"))
    target.check(problem)
    t = problem.tensors
    names = list(problem.grads)
    res = PropertyResult("gradcheck", problem)

    def f(*xs):
        kw = dict(zip(names, xs))
        tt = dataclasses.replace(
            t, q=kw.get("q", t.q), k=kw.get("k", t.k), v=kw.get("v", t.v), mask=kw.get("mask", t.mask),
            slopes=kw.get("slopes", t.slopes), initial_state=kw.get("initial_state", t.initial_state),
        )
        out = target(tt.q, tt.k, tt.v, tt.mask, **problem.call_kwargs(tt))
        return tuple(out) if problem.final_state else out

    inputs = tuple(getattr(t, n).detach().clone().requires_grad_(True) for n in names)
    try:
        torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, raise_exception=True)
    except Skip:
        raise
    except NotImplementedError as e:
        raise Skip(f"NotImplementedError: {e}") from None
    except Exception as e:  # GradcheckError (a RuntimeError) with the Jacobians
        res.failures.append(f"gradcheck: {str(e).strip()[:2000]}")
        return res
    if target.double_backward:
        try:
            torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, raise_exception=True)
        except Skip:
            raise
        except Exception as e:
            res.failures.append(f"gradgradcheck (backend declares double_backward): {str(e).strip()[:2000]}")
    return res


# ---------------------------------------------------------------- causality
def causality(target: Target, problem: Problem) -> PropertyResult:
    """Changing q, k, v, the mask and do after position t leaves o and dq up to t."""
    if not problem.causal:
        raise Skip("causality needs a causal or decay mask")
    if problem.N < 2:
        raise Skip("causality needs N >= 2")
    target.check(problem)
    g = _rng(problem, 1)
    t_last = _randint(g, 0, problem.N - 2)  # positions 0..t_last are the past
    base = problem.tensors
    fut = slice(t_last + 1, None)

    def perturb(x: torch.Tensor, dim: int) -> torch.Tensor:
        x = x.clone()
        idx = [slice(None)] * x.dim()
        idx[dim] = fut
        part = x[tuple(idx)]
        size = float(x.double().std()) if x.numel() > 1 else 1.0  # new values of the same size
        noise = torch.randn(part.shape, generator=g, dtype=torch.float64) * (size if size > 0 else 1.0)
        x[tuple(idx)] = noise.to(x.dtype).to(x.device)
        return x

    mask = base.mask
    if mask is not None:
        mask = perturb(perturb(mask, mask.dim() - 2), mask.dim() - 1)
    new = dataclasses.replace(base, q=perturb(base.q, 2), k=perturb(base.k, 2), v=perturb(base.v, 2),
                              mask=mask, do=perturb(base.do, 2))
    grads = ("q",) if "q" in problem.grads else ()
    p = problem.replace(grads=grads)
    out = p.run(target, new)
    ev = problem.evaluation
    res = PropertyResult("causality", problem)
    idx = (slice(None), slice(None), slice(0, t_last + 1))
    res.measurements.append(measure("causality", "o", out["o"][idx], ev, index=idx))
    if "dq" in out and "dq" in ev.oracle:
        res.measurements.append(measure("causality", "dq", out["dq"][idx], ev, index=idx))
    return res


# ---------------------------------------------------------------- state
def _pieces_fn(target: Target, bounds: list) -> Callable:
    """A function with the public signature that runs ``target`` piece by piece along N,
    carrying the state; ``bounds`` are the cut points [0, ..., N]."""

    def fn(q, k, v, mask=None, *, causal=False, decay=None, scale=1.0, initial_state=None,
           output_final_state=False, cu_seqlens=None):
        if mask is not None or cu_seqlens is not None:
            raise ValueError("piecewise runs take no dense mask and no cu_seqlens")
        outs, state = [], initial_state
        n_pieces = len(bounds) - 1
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            last = i == n_pieces - 1
            want_state = (not last) or output_final_state
            r = target(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, causal=causal, decay=decay,
                       scale=scale, initial_state=state, output_final_state=want_state)
            if want_state:
                o_i, state = r
            else:
                o_i = r[0] if isinstance(r, (tuple, list)) else r
            outs.append(o_i)
        o = torch.cat(outs, dim=2)
        return (o, state) if output_final_state else o

    return fn


def state_split(target: Target, problem: Problem) -> PropertyResult:
    """[0, s) then [s, N) with the state carried equals the whole run (values and grads)."""
    if not problem.causal or problem.dense or problem.cu_seqlens is not None:
        raise Skip("state splitting needs causal/decay, no dense mask, no cu_seqlens")
    target.check(problem)
    target.check(problem.replace(final_state=True))
    s = _randint(_rng(problem, 2), 0, problem.N)
    out = problem.run(_pieces_fn(target, [0, s, problem.N]))
    res = PropertyResult("state_split", problem)
    _all(res, "state_split", out, problem.evaluation)
    return res


def recurrent_steps(target: Target, problem: Problem) -> PropertyResult:
    """chunked == recurrent: a prefix in one call, then one token per call (decoding)."""
    if not problem.causal or problem.dense or problem.cu_seqlens is not None:
        raise Skip("decoding needs causal/decay, no dense mask, no cu_seqlens")
    target.check(problem)
    target.check(problem.replace(final_state=True, initial_state=True))
    N = problem.N
    prefix = _randint(_rng(problem, 3), 0, N)
    bounds = [0] + ([prefix] if prefix > 0 else []) + list(range(prefix + 1, N + 1))
    if bounds[-1] != N:
        bounds.append(N)
    out = problem.run(_pieces_fn(target, bounds))
    res = PropertyResult("recurrent_steps", problem)
    _all(res, "recurrent_steps", out, problem.evaluation)
    return res


# ---------------------------------------------------------------- heads, masks, batch
def gqa(target: Target, problem: Problem) -> PropertyResult:
    """MQA/GQA equals k, v expanded to H heads (dk, dv summed over each group)."""
    if problem.Hkv == problem.H:
        raise Skip("gqa needs Hkv < H")
    target.check(problem)
    out = target.run(problem)
    t = problem.tensors
    wide = problem.replace(Hkv=problem.H)
    tw = dataclasses.replace(t, k=expand_kv(t.k, problem.H).contiguous(), v=expand_kv(t.v, problem.H).contiguous())
    out_w = target.run(wide, tw)

    def back(q, x):
        return group_sum(x, problem.Hkv) if q in ("dk", "dv") else x

    res = PropertyResult("gqa", problem)
    _all(res, "gqa", out, problem.evaluation, against=out_w, runs=2, transform=back)
    return res


def broadcast_mask(target: Target, problem: Problem) -> PropertyResult:
    """A broadcast mask equals the expanded [B, H, N, M] mask, dM summed over broadcasts."""
    if not problem.dense or problem.mask_shape == "BHNM":
        raise Skip("broadcast_mask needs a dense mask with a broadcast shape")
    target.check(problem)
    out = target.run(problem)
    t = problem.tensors
    shape4 = problem.mask_shape_4d()
    full = (problem.B, problem.H, problem.N, problem.M)
    wide = problem.replace(mask_shape="BHNM")
    tw = dataclasses.replace(t, mask=t.mask.reshape(shape4).expand(full).contiguous())
    out_w = target.run(wide, tw)

    def back(q, x):
        if q != "dmask":
            return x
        dims = [i for i in range(4) if shape4[i] == 1 and full[i] != 1]
        x = x.sum(dim=dims, keepdim=True) if dims else x
        return x.reshape(t.mask.shape)

    res = PropertyResult("broadcast_mask", problem)
    _all(res, "broadcast_mask", out, problem.evaluation, against=out_w, runs=2, transform=back)
    return res


def _split_exact(x: torch.Tensor, keep: torch.Tensor):
    """x = x·keep + x·(1 - keep) exactly (keep is 0/1): two halves with disjoint support."""
    keep = keep.to(x.dtype)
    return x * keep, x * (1 - keep)


def _linear_in(target: Target, problem: Problem, name: str, t1: ProblemTensors, t2: ProblemTensors,
               linear: tuple) -> PropertyResult:
    out = target.run(problem)
    o1 = target.run(problem, t1)
    o2 = target.run(problem, t2)
    summed = {q: o1[q].double() + o2[q].double() for q in linear if q in o1 and q in o2}
    res = PropertyResult(name, problem)
    _all(res, name, {q: out[q] for q in summed}, problem.evaluation, against=summed, runs=3)
    return res


def linearity_v(target: Target, problem: Problem) -> PropertyResult:
    """o(v₁ + v₂) = o(v₁) + o(v₂), with v₁, v₂ on alternate keys (so v₁ + v₂ = v exactly)."""
    if problem.initial_state:
        raise Skip("o is affine, not linear, in v with an initial state")
    target.check(problem)
    t = problem.tensors
    keep = (torch.arange(problem.M, device=t.v.device) % 2 == 0)[None, None, :, None]
    v1, v2 = _split_exact(t.v, keep)
    linear = ("o", "final_state", "dq", "dk", "dmask", "dslopes")  # dv does not depend on v
    return _linear_in(target, problem, "linearity_v", dataclasses.replace(t, v=v1),
                      dataclasses.replace(t, v=v2), linear)


def linearity_mask(target: Target, problem: Problem) -> PropertyResult:
    """o(M₁ + M₂) = o(M₁) + o(M₂), with M₁, M₂ a random partition of the entries of M."""
    if not problem.dense:
        raise Skip("linearity_mask needs a dense mask")
    target.check(problem)
    t = problem.tensors
    g = _rng(problem, 4)
    keep = (torch.rand(t.mask.shape, generator=g) < 0.5).to(t.mask.device)
    m1, m2 = _split_exact(t.mask, keep)
    linear = ("o", "dq", "dk", "dv", "dslopes")  # dmask does not depend on the mask
    return _linear_in(target, problem, "linearity_mask", dataclasses.replace(t, mask=m1),
                      dataclasses.replace(t, mask=m2), linear)


def batch_invariance(target: Target, problem: Problem) -> PropertyResult:
    """One batch element alone equals its slice of the batched run."""
    if problem.B < 2:
        raise Skip("batch_invariance needs B >= 2")
    target.check(problem)
    b = _randint(_rng(problem, 5), 0, problem.B - 1)
    out = target.run(problem)
    t = problem.tensors
    sl = slice(b, b + 1)
    mask = t.mask
    mask_b = mask is not None and problem.mask_shape in ("BHNM", "B1NM")
    if mask_b:
        mask = mask[sl]
    one = problem.replace(B=1)
    t1 = dataclasses.replace(
        t, q=t.q[sl], k=t.k[sl], v=t.v[sl], mask=mask, do=t.do[sl],
        initial_state=None if t.initial_state is None else t.initial_state[sl],
        dfinal=None if t.dfinal is None else t.dfinal[sl],
    )
    out1 = target.run(one, t1)
    skip = ("dslopes",) + (() if mask_b else ("dmask",))  # sums over the batch
    res = PropertyResult("batch_invariance", problem)
    idx = (sl,)
    for q, x in out1.items():
        if q in skip or q not in problem.evaluation.oracle:
            continue
        res.measurements.append(measure("batch_invariance", q, x, problem.evaluation, index=idx,
                                        against=out[q][idx], runs=2))
    return res


def varlen(target: Target, problem: Problem) -> PropertyResult:
    """Packed sequences (cu_seqlens) equal one call per sequence."""
    if problem.cu_seqlens is None:
        raise Skip("varlen needs cu_seqlens")
    target.check(problem)
    out = target.run(problem)
    cu = list(problem.cu_seqlens)

    def separate(q, k, v, mask=None, *, causal=False, decay=None, scale=1.0, initial_state=None,
                 output_final_state=False, cu_seqlens=None):
        outs, states = [], []
        for i, (a, b) in enumerate(zip(cu, cu[1:])):
            s0 = None if initial_state is None else initial_state[i:i + 1]
            r = target(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, causal=causal, decay=decay,
                       scale=scale, initial_state=s0, output_final_state=output_final_state)
            o_i, s_i = r if output_final_state else (r, None)
            outs.append(o_i)
            states.append(s_i)
        o = torch.cat(outs, dim=2)
        return (o, torch.cat(states, 0)) if output_final_state else o

    out_sep = problem.run(separate)
    res = PropertyResult("varlen", problem)
    _all(res, "varlen", out, problem.evaluation, against=out_sep, runs=2)
    return res


_SEED_NAMES = {"reference": normal_linear_attention, "blocked": flash_linear_attention}


def seed_names(target: Target, problem: Problem) -> PropertyResult:
    """The seed's names agree with linear_attention on the backend they stand for."""
    seed_fn = _SEED_NAMES.get(target.name)
    if seed_fn is None or target.external:
        raise Skip(f"seed names stand for {sorted(_SEED_NAMES)} only")
    if problem.mask_kind not in ("none", "dense") or problem.scale != 1.0 or problem.state:
        raise Skip("the seed's functions take (Q, K, V, M) only")
    target.check(problem)
    out = target.run(problem)

    def seed(q, k, v, mask=None, **kw):
        return seed_fn(q, k, v, mask)

    out_seed = problem.run(seed)
    res = PropertyResult("seed_names", problem)
    _all(res, "seed_names", out, problem.evaluation, against=out_seed, runs=2)
    return res


# ---------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class Property:
    """A property, the problems it is checked on, and when it applies at all."""

    name: str
    fn: Callable
    description: str
    narrow: dict  # keyword arguments for linattn.testing.problems
    applies: Callable = lambda target: None  # -> None, or why the property never applies
    examples: tuple = ()  # Problems always checked (pinned edge cases)

    def __call__(self, target, problem: Problem) -> PropertyResult:
        return self.fn(as_target(target), problem)


def _needs_state(t: Target):
    if t.backend is not None and not t.backend.state:
        return "backend declares no state support"
    return None


def _needs_kinds(*kinds):
    def f(t: Target):
        if t.backend is not None and not (set(kinds) & set(t.backend.mask_kinds)):
            return f"backend supports none of the mask kinds {list(kinds)}"
        return None
    return f


def _needs_gqa(t: Target):
    if t.backend is not None and not t.backend.gqa:
        return "backend declares no GQA support"
    return None


def _needs_float64(t: Target):
    if t.backend is not None and torch.float64 not in t.backend.dtypes:
        return "backend declares no float64 support"
    return None


def _needs_seed_name(t: Target):
    return None if (t.name in _SEED_NAMES and not t.external) else "not behind a seed name"


def _both(*fs):
    def f(t):
        for g in fs:
            why = g(t)
            if why:
                return why
        return None
    return f


_CAUSAL = ("causal", "decay", "dense+causal", "dense+decay")
_DENSE = ("dense", "dense+causal", "dense+decay")
_LINEAR = ("causal", "decay")

# Edge cases pinned for every run (Hypothesis also replays its database of failures).
_PINNED_FORWARD = (
    Problem(B=1, H=1, Hkv=1, N=1, M=1, D=1, E=1, dtype="float32", mask_kind="decay", slopes="large", seed=1),
    Problem(B=2, H=4, Hkv=1, N=17, M=17, D=60, E=48, dtype="bfloat16", mask_kind="decay", slopes="mixed",
            initial_state=True, final_state=True, seed=2),
    Problem(B=1, H=2, Hkv=2, N=65, M=63, D=7, E=5, dtype="float16", mask_kind="dense", mask_shape="NM",
            seed=3),
)
_PINNED_BACKWARD = (
    Problem(B=2, H=4, Hkv=2, N=33, M=33, D=5, E=3, dtype="float32", mask_kind="dense+decay", mask_shape="1HNM",
            slopes="large", grads=("q", "k", "v", "mask", "slopes"), seed=4),
    Problem(B=3, H=6, Hkv=3, N=16, M=47, D=48, E=60, dtype="bfloat16", mask_kind="dense", mask_shape="B1NM",
            mask_values="binary", scale=0.5, grads=("q", "k", "v", "mask"), seed=6),
    Problem(B=1, H=3, Hkv=1, N=31, M=31, D=16, E=16, dtype="float64", mask_kind="causal",
            initial_state=True, final_state=True, cu_seqlens=(0, 16, 16, 31),
            grads=("q", "k", "v", "initial_state"), seed=5),
)

PROPERTIES = {
    p.name: p
    for p in (
        Property("forward", forward, "o and final state agree with float64", dict(grads=False),
                 examples=_PINNED_FORWARD),
        Property("backward", backward, "all gradients agree with float64", dict(grads=True),
                 examples=_PINNED_BACKWARD),
        Property("gradcheck", gradcheck, "float64 gradcheck (+gradgradcheck)",
                 dict(dtypes=["float64"], max_n=8, max_d=3, max_b=2, max_h=2, grads=True,
                      slope_kinds=("tnl", "tiny", "moderate", "large")), applies=_needs_float64),
        Property("causality", causality, "the future never changes the past",
                 dict(mask_kinds=_CAUSAL, min_n=2), applies=_needs_kinds(*_CAUSAL)),
        Property("state_split", state_split, "split + carried state == whole",
                 dict(mask_kinds=_LINEAR, varlen=False), applies=_both(_needs_state, _needs_kinds(*_LINEAR))),
        Property("recurrent_steps", recurrent_steps, "chunked == recurrent (prefill, then decode)",
                 dict(mask_kinds=_LINEAR, varlen=False, max_n=40, grads=False),
                 applies=_both(_needs_state, _needs_kinds(*_LINEAR))),
        Property("gqa", gqa, "MQA/GQA == expanded heads", dict(head_ratios=("gqa", "mqa"), min_h=2),
                 applies=_needs_gqa),
        Property("broadcast_mask", broadcast_mask, "broadcast mask == expanded mask, dM summed",
                 dict(mask_kinds=_DENSE, mask_shapes=("1HNM", "B1NM", "11NM", "NM", "HNM")),
                 applies=_needs_kinds(*_DENSE)),
        Property("linearity_v", linearity_v, "linear in v", dict(initial_state=False)),
        Property("linearity_mask", linearity_mask, "linear in the mask", dict(mask_kinds=_DENSE),
                 applies=_needs_kinds(*_DENSE)),
        Property("batch_invariance", batch_invariance, "batch element alone == its slice",
                 dict(min_b=2, varlen=False)),
        Property("varlen", varlen, "packed sequences == separate calls",
                 dict(mask_kinds=_LINEAR, varlen=True), applies=_needs_kinds(*_LINEAR)),
        Property("seed_names", seed_names, "seed names == linear_attention",
                 dict(mask_kinds=("none", "dense"), initial_state=False, final_state=False, scales=(1.0,)),
                 applies=_needs_seed_name),
    )
}


def run_property(name: str, target, problem: Problem) -> PropertyResult:
    """Run property ``name`` on ``problem`` (raises Skip when it does not apply)."""
    try:
        prop = PROPERTIES[name]
    except KeyError:
        raise ValueError(f"unknown property {name!r}; properties: {sorted(PROPERTIES)}") from None
    return prop(target, problem)

