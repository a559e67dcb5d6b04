"""``check_backend``: run every applicable property on one backend and report.

    from linattn.testing import check_backend
    report = check_backend("chunked", dtypes=["float32", "bfloat16"], max_examples=50)
    report = check_backend(my_fn)            # any callable with linear_attention's signature
    report = check_backend("mypkg.mod:fn")   # or its import path
    print(report.to_markdown()); assert report.ok

Modelled on data-apis/array-api-tests: the backend is named by module path, every
property is a Hypothesis test drawing whole problems, and the result is a structured
report — per property: pass / fail / skip, examples run and skipped, the worst error as a
fraction of its band, seconds, and for a failure the exact reproduction (the shrunk
``Problem(...)`` and Hypothesis' ``@reproduce_failure`` blob). Requests the backend
declares it cannot serve, or answers with NotImplementedError, are counted as skipped;
a property whose every example was skipped is reported ``skip``, never ``pass``.
"""
from __future__ import annotations

import math
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional

from hypothesis import example, given, target as hyp_target

from .poison import poisoned
from .problem import Skip
from .profiles import SIZES, settings_for
from .properties import PROPERTIES, Property
from .strategies import NoProblems, problems
from .target import Target, as_target

__all__ = ["PropertyReport", "BackendReport", "check_backend", "check_property", "merge_narrow"]


@dataclass
class PropertyReport:
    """What one property found on one backend."""

    backend: str
    property: str
    status: str  # "pass" | "fail" | "skip"
    examples: int = 0  # examples on which the property ran
    skipped: int = 0  # examples the backend does not serve
    seconds: float = 0.0
    worst_fraction: Optional[float] = None  # worst error / band over all examples
    worst_quantity: str = ""
    worst_problem: str = ""
    message: str = ""  # failure or skip reason
    reproduction: str = ""  # the shrunk Problem(...) and the @reproduce_failure blob
    first_failure_example: Optional[int] = None  # examples run up to and including the first failure
    first_failure_seconds: Optional[float] = None
    skip_reasons: dict = field(default_factory=dict)
    measurements: list = field(default_factory=list)  # Measurement dicts (for plots)

    def as_dict(self, measurements: bool = True) -> dict:
        d = asdict(self)
        if not measurements:
            d.pop("measurements")
        return d


@dataclass
class BackendReport:
    """Every property's report for one backend."""

    backend: str
    external: bool
    profile: str
    properties: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(p.status == "fail" for p in self.properties)

    @property
    def status(self) -> str:
        if any(p.status == "fail" for p in self.properties):
            return "fail"
        return "pass" if any(p.status == "pass" for p in self.properties) else "skip"

    def failures(self) -> list:
        return [p for p in self.properties if p.status == "fail"]

    def as_dict(self, measurements: bool = True) -> dict:
        return dict(backend=self.backend, external=self.external, profile=self.profile, status=self.status,
                    seconds=self.seconds, properties=[p.as_dict(measurements) for p in self.properties])

    def to_markdown(self) -> str:
        from .report import backend_markdown

        return backend_markdown(self)


_LIST_KEYS = ("dtypes", "devices", "mask_kinds", "mask_shapes", "mask_values", "slope_kinds", "head_ratios",
              "scales", "grad_inputs")
_MAX_KEYS = ("max_n", "max_d", "max_b", "max_h", "max_work")
_MIN_KEYS = ("min_n", "min_b", "min_h")
_OPT_KEYS = ("initial_state", "final_state", "grads", "varlen", "n_ne_m")


def merge_narrow(*narrows: dict) -> dict:
    """Combine narrowings: lists intersect, max_* take the least, min_* the most, flags
    must agree (a conflict raises NoProblems)."""
    from .problem import _dtype_name

    out: dict = {}
    for nw in narrows:
        for key, val in (nw or {}).items():
            if val is None:
                continue
            if key == "dtypes":
                val = [_dtype_name(d) for d in val]
            if key not in out:
                out[key] = list(val) if key in _LIST_KEYS else val
            elif key in _LIST_KEYS:
                out[key] = [x for x in out[key] if x in list(val)]
                if not out[key]:
                    raise NoProblems(f"no {key} left after narrowing")
            elif key in _MAX_KEYS:
                out[key] = min(out[key], val)
            elif key in _MIN_KEYS:
                out[key] = max(out[key], val)
            elif key in _OPT_KEYS:
                if out[key] != val:
                    raise NoProblems(f"{key}={out[key]} conflicts with {key}={val}")
            else:
                out[key] = val
    return out


class _PropertyFailed(AssertionError):
    pass


def check_property(
    prop: Property,
    target: Target,
    *,
    settings=None,
    profile: str = "dev",
    max_examples: Optional[int] = None,
    narrow: Optional[dict] = None,
    keep_measurements: bool = True,
    poison: bool = True,
    pinned: bool = True,
    on_example: Optional[Callable[[], None]] = None,
) -> PropertyReport:
    """Run one property under Hypothesis; never raises for a backend failure."""
    rep = PropertyReport(target.name, prop.name, "skip")
    why = prop.applies(target)
    if why:
        rep.message = why
        return rep
    try:
        kw = merge_narrow(SIZES.get(profile, {}), prop.narrow, narrow or {})
        if target.backend is not None:
            kw["backend"] = target.backend
    except NoProblems as e:
        rep.message = str(e)
        return rep
    cfg = settings if settings is not None else settings_for(profile, max_examples)
    reasons: Counter = Counter()
    last_failure: list = []
    t0 = time.perf_counter()
    worst = [-1.0]

    def body(problem):
        try:
            res = prop.fn(target, problem)
        except Skip as e:
            rep.skipped += 1
            reasons[str(e).split("\n")[0][:120]] += 1
            if on_example:
                on_example()
            return
        except Exception:
            rep.examples += 1
            if rep.first_failure_example is None:
                rep.first_failure_example = rep.examples
                rep.first_failure_seconds = time.perf_counter() - t0
            last_failure[:] = [f"{problem!r}\n{traceback.format_exc(limit=6)}"]
            raise
        rep.examples += 1
        if on_example:
            on_example()
        if keep_measurements:
            rep.measurements.extend(m.as_dict() for m in res.measurements)
        w = res.worst
        frac = res.worst_fraction
        if w is not None and frac > worst[0]:
            worst[0] = frac
            rep.worst_fraction, rep.worst_quantity, rep.worst_problem = frac, w.quantity, problem.describe()
        hyp_target(min(frac, 1e9) if math.isfinite(frac) else 1e9, label=f"{prop.name} error/band")
        if not res.ok:
            if rep.first_failure_example is None:
                rep.first_failure_example = rep.examples
                rep.first_failure_seconds = time.perf_counter() - t0
            last_failure[:] = [res.message()]
            raise _PropertyFailed(res.message())

    def test(problem):
        body(problem)

    test = given(problem=problems(**kw))(test)
    for ex in (prop.examples if pinned else ()):
        test = example(problem=ex)(test)
    test = cfg(test)
    try:
        with poisoned(poison):
            test()
    except NoProblems as e:
        rep.message = str(e)
        rep.seconds = time.perf_counter() - t0
        return rep
    except BaseException as e:  # noqa: BLE001 - any backend error is a failure to report
        if isinstance(e, KeyboardInterrupt):
            raise
        rep.status = "fail"
        rep.message = last_failure[0] if last_failure else f"{type(e).__name__}: {e}"
        notes = [n for n in getattr(e, "__notes__", []) if n.strip()]
        rep.reproduction = "\n".join(notes)
        rep.seconds = time.perf_counter() - t0
        rep.skip_reasons = dict(reasons)
        return rep
    rep.seconds = time.perf_counter() - t0
    rep.skip_reasons = dict(reasons)
    if rep.examples:
        rep.status = "pass"
    else:
        rep.message = "every example was skipped: " + "; ".join(f"{r} (x{n})" for r, n in reasons.most_common(3))
    return rep


def check_backend(
    fn_or_name,
    *,
    devices: Iterable[str] = ("cpu",),
    dtypes: Optional[Iterable] = None,
    max_examples: Optional[int] = None,
    profile: str = "dev",
    properties: Optional[Iterable[str]] = None,
    fail_fast: bool = False,
    poison: bool = True,
    keep_measurements: bool = True,
    pinned: bool = True,
    on_property: Optional[Callable] = None,
    on_example: Optional[Callable] = None,
    **narrow,
) -> BackendReport:
    """Run every applicable property on a backend; return a :class:`BackendReport`.

    Args:
        fn_or_name: a registered backend name, ``"module:function"``, a
            :class:`linattn.Backend`, or a callable with ``linear_attention``'s signature
            (see :mod:`linattn.testing.target` for what it may declare).
        devices: device types to draw problems on. Default: `("cpu",)`.
        dtypes: dtypes (torch or names). Default: all four.
        max_examples: examples per property. Default: the profile's.
        profile: ``"dev"``, ``"ci"`` or ``"thorough"`` (see :mod:`linattn.testing.profiles`).
        properties: names from :data:`linattn.testing.PROPERTIES`. Default: all.
        fail_fast: stop at the first failing property (for mutation testing).
        pinned: also run each property's pinned ``@example`` problems. Default: `True`.
        poison: fill uninitialised float memory with NaN while running.
        on_property: called as ``on_property(name)`` before each property (progress).
        on_example: called after each example (progress).
        **narrow: more keyword arguments for :func:`linattn.testing.problems`.
    """
    target = as_target(fn_or_name)
    names = list(properties) if properties is not None else list(PROPERTIES)
    for n in names:
        if n not in PROPERTIES:
            raise ValueError(f"unknown property {n!r}; properties: {sorted(PROPERTIES)}")
    user = dict(narrow, devices=list(devices))
    if dtypes is not None:
        user["dtypes"] = list(dtypes)
    report = BackendReport(target.name, target.external, profile)
    t0 = time.perf_counter()
    for n in names:
        if on_property:
            on_property(n)
        rep = check_property(PROPERTIES[n], target, profile=profile, max_examples=max_examples, narrow=user,
                             keep_measurements=keep_measurements, poison=poison, pinned=pinned,
                             on_example=on_example)
        report.properties.append(rep)
        if fail_fast and rep.status == "fail":
            break
    report.seconds = time.perf_counter() - t0
    return report
