r"""A fuzz campaign: one backend family, a time or example budget, a failure database.

Each example draws a property of :data:`linattn.testing.properties.PROPERTIES` (``backward``
most often; ``gradcheck`` is left to the property suites) and a :class:`StrangeProblem`
that property applies to, runs the backend on it through the public API with uninitialised
memory poisoned to NaN, and compares every quantity with the float64 oracle inside the
tolerance band. ``hypothesis.target`` steers the search toward the largest error/band
fraction of each (property, quantity).

float16 overflow is the one accepted way to be non-finite: when a float16 problem's
result holds inf/NaN, the example passes only if ``linear_attention`` raised its
:class:`Float16OverflowWarning` *and* the problem's magnitudes make overflow plausible
(:func:`fuzz.problems.log2_bound` >= 13); anything else non-finite is a failure — a
silent inf, or a NaN from nowhere.

Rounds. The budget is spent in rounds of ``round_examples`` examples, rotating over the
family's backends, each round with its own Hypothesis seed (``seed * 100003 + round``) so a
campaign is reproducible from ``--seed``. A failure is shrunk by Hypothesis, written to
``fuzz/failures/<id>.json`` (the problem's repr, the property, the message) and printed with
its replay command; the Hypothesis example database in ``fuzz/hypothesis-db`` replays it
first in the next campaign on that backend.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import traceback
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from hypothesis import HealthCheck, Phase, given, seed as hyp_seed, settings, strategies as st, target
from hypothesis.database import DirectoryBasedExampleDatabase

import linattn
from linattn._api import Float16OverflowWarning
from linattn.testing.poison import poisoned
from linattn.testing.problem import Problem, Skip
from linattn.testing.properties import PROPERTIES
from linattn.testing.strategies import problems
from linattn.testing.target import Target

from .problems import EXTREME_SLOPES, LAYOUTS, StrangeProblem, log2_bound, rebuild, relayout_fn

__all__ = ["FAMILIES", "family_backends", "strange_problems", "Campaign", "replay", "CampaignFailure"]

HERE = Path(__file__).resolve().parent
FAILURES = HERE / "failures"
HYPOTHESIS_DB = HERE / "hypothesis-db"
FAMILIES = ("torch", "triton", "cuda")

#: Property weights: backward covers o, the final state and every gradient.
WEIGHTS = {"backward": 8, "forward": 2, "causality": 1, "state_split": 2, "recurrent_steps": 1,
           "gqa": 1, "broadcast_mask": 1, "linearity_v": 1, "linearity_mask": 1,
           "batch_invariance": 1, "varlen": 2, "seed_names": 1}

#: Problem sizes per family and tier. "small" most of the time; "long" reaches the largest
#: N the float64 oracle (N×N scores) handles in about a second on one CPU thread.
SIZES = {
    "torch": {"small": dict(max_n=140, max_d=64, max_b=3, max_h=8, max_work=1 << 21),
              "long": dict(min_n=500, max_n=6000, max_d=8, max_b=1, max_h=2, max_work=1 << 27)},
    "triton": {"small": dict(max_n=70, max_d=32, max_b=2, max_h=4, max_work=1 << 16),
               "long": dict(min_n=100, max_n=260, max_d=16, max_b=1, max_h=2, max_work=1 << 18)},
    "cuda": {"small": dict(max_n=300, max_d=128, max_b=3, max_h=8, max_work=1 << 23),
             "long": dict(min_n=1000, max_n=16384, max_d=64, max_b=1, max_h=2, max_work=1 << 29)},
    # The cuda kernels on a CPU through their emulator (LINATTN_CUDA_EMULATE=1): real threads
    # per block, lane-by-lane wmma; N=130, D=64 forward + backward takes ~2 s on a loaded core.
    "cuda_emulated": {"small": dict(max_n=140, max_d=72, max_b=2, max_h=4, max_work=1 << 19),
                      "long": dict(min_n=150, max_n=700, max_d=16, max_b=1, max_h=2, max_work=1 << 22)},
}

#: Exponent ranges (log2 of the scale of q, k, v) per dtype, and the bound on log2 of the
#: largest score/output the accumulation dtype must hold.
EXPONENTS = {
    "float16": dict(qk=(-12, 9), v=(-10, 10), mask=12, bound=None),
    "bfloat16": dict(qk=(-40, 40), v=(-40, 40), mask=30, bound=100),
    "float32": dict(qk=(-40, 40), v=(-40, 40), mask=30, bound=100),
    "float64": dict(qk=(-150, 150), v=(-150, 150), mask=100, bound=400),
}


def family_of(b) -> str:
    mod = getattr(b.fn, "__module__", "") or ""
    if ".backends.triton" in mod:
        return "triton"
    if ".backends.cuda" in mod:
        return "cuda"
    return "torch"


def family_backends(family: str) -> tuple[list, list]:
    """(available backends of the family, [(name, why unavailable)])."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} or 'all', got {family!r}")
    ok, missing = [], []
    for b in linattn.list_backends():
        if b.fn is None or b.name.startswith("_") or family_of(b) != family:
            continue
        why = b.available()
        if why is None and family == "cuda" and not torch.cuda.is_available() and "cpu" not in b.devices:
            why = "no CUDA device (set LINATTN_CUDA_EMULATE=1 to fuzz the kernels through the CPU emulator)"
        (missing.append((b.name, why)) if why else ok.append(b))
    return ok, missing


def _emulated(family: str) -> bool:
    """The cuda family on a CPU, through the kernel emulator (LINATTN_CUDA_EMULATE=1)."""
    return family == "cuda" and not torch.cuda.is_available()


def _device_for(family: str, b) -> str:
    if _emulated(family) and "cpu" in b.devices:
        return "cpu"
    if family == "cuda" or ("cpu" not in b.devices and "cuda" in b.devices):
        return "cuda"
    return "cpu"


@st.composite
def strange_problems(draw, backend, family: str, prop_name: str = "backward", tier: Optional[str] = None):
    """A :class:`StrangeProblem` for ``backend`` that ``prop_name`` applies to."""
    prop = PROPERTIES[prop_name]
    tier = tier or draw(st.sampled_from(["small"] * 9 + ["long"]))
    kw = dict(SIZES["cuda_emulated" if _emulated(family) else family][tier])
    kw.update(prop.narrow)
    if "max_n" in prop.narrow:  # a property's own length bound wins (recurrent_steps: one call per token)
        kw["min_n"] = min(kw.get("min_n", 1), prop.narrow["max_n"])
    kw.setdefault("slope_kinds", ("tnl", "zero", "tiny", "moderate", "large", "mixed"))
    base = draw(problems(backend=backend, devices=[_device_for(family, backend)], **kw))
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(Problem)}

    ex = EXPONENTS[base.dtype]
    strange = draw(st.integers(0, 3)) > 0  # three quarters of the examples are strange
    q_exp = k_exp = v_exp = mask_exp = spread = 0
    slope_values = None
    stride0: list = []
    layout = "contiguous"
    if strange:
        def expo(lo, hi):
            return draw(st.one_of(st.just(0), st.integers(lo, hi), st.sampled_from([lo, hi])))

        q_exp, k_exp, v_exp = expo(*ex["qk"]), expo(*ex["qk"]), expo(*ex["v"])
        if base.dense:
            spread = draw(st.integers(0, ex["mask"]))
            mask_exp = draw(st.integers(-ex["mask"] + spread, ex["mask"] - spread))
        if base.decay and draw(st.booleans()):
            slope_values = tuple(draw(st.lists(st.sampled_from(EXTREME_SLOPES), min_size=base.H, max_size=base.H)))
        for name in ("q", "k", "v", "slopes", "initial_state"):
            grad_name = name
            if grad_name in base.grads:
                continue  # Problem.run clones inputs that need grad, which drops stride 0
            if name == "slopes" and not base.decay or name == "initial_state" and not base.initial_state:
                continue
            if draw(st.integers(0, 4)) == 0:
                stride0.append(name)
        layout = draw(st.sampled_from(LAYOUTS))
        if ex["bound"] is not None:  # keep the accumulation dtype's range: lower v, then q, k
            while True:
                p = StrangeProblem(**fields, q_exp=q_exp, k_exp=k_exp, v_exp=v_exp, mask_exp=mask_exp,
                                   mask_spread=spread)
                if log2_bound(p) <= ex["bound"]:
                    break
                if v_exp > ex["v"][0]:
                    v_exp -= 10
                else:
                    q_exp, k_exp = q_exp - 5, k_exp - 5
    return StrangeProblem(**fields, q_exp=q_exp, k_exp=k_exp, v_exp=v_exp, mask_exp=mask_exp,
                          mask_spread=spread, slope_values=slope_values, stride0=tuple(stride0), layout=layout)


class CampaignFailure(AssertionError):
    """A property failed (or a non-finite result went unreported) on a fuzzed problem."""


def _target(backend, problem: Problem) -> Target:
    def fn(q, k, v, mask=None, **kw):
        return linattn.linear_attention(q, k, v, mask, backend=backend.name, **kw)

    fn.__name__ = backend.name
    return Target(backend.name, relayout_fn(fn, problem), backend=backend,
                  double_backward=backend.double_backward)


def check(backend, prop_name: str, problem: Problem, *, allow_known: bool = False):
    """Run one property on one problem; return (result, notes). Raises CampaignFailure or Skip.

    ``allow_known``: a failure inside the signature of an open, explained failure file is
    counted as that known issue instead of raised (campaigns; never replays)."""
    tgt = _target(backend, problem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Float16OverflowWarning)
        with poisoned():
            res = PROPERTIES[prop_name](tgt, problem)
    warned = any(issubclass(w.category, Float16OverflowWarning) for w in caught)
    nonfinite = [m for m in res.measurements if not math.isfinite(m.error)]
    if nonfinite:
        plausible = problem.dtype == "float16" and log2_bound(problem) >= 13
        if warned and plausible:
            return res, "float16 overflow reported"
        why = ("float16 overflow without the warning" if problem.dtype == "float16" and not warned
               else "non-finite result")
        raise CampaignFailure(
            f"{why}: {', '.join(sorted({m.quantity for m in nonfinite}))} non-finite\n" + res.message()
        )
    if not res.ok:
        known = _known_issue(backend.name, problem, [m for m in res.measurements if not m.ok]) if allow_known else None
        if known is not None:
            return res, f"known:{known}"
        raise CampaignFailure(res.message())
    return res, "overflow warned, values fine" if warned else ""


def _known_signatures() -> list:
    out = []
    for path in sorted(FAILURES.glob("*.json")):
        e = json.loads(path.read_text())
        if e.get("status") != "fixed" and e.get("signature"):
            out.append((e["id"], e["signature"]))
    return out


def _known_issue(backend: str, problem: Problem, bad: list) -> Optional[str]:
    """The id of an open, explained failure whose signature covers every failed measurement.

    A signature (``"signature"`` in a failure file) names the backend, the quantities, the
    dtypes, whether packed sequences are involved and the largest error/band fraction seen
    for it; a failure outside it (another quantity, a larger fraction) is new.
    """
    for fid, sig in _known_signatures():
        if sig.get("backend") != backend or problem.dtype not in sig.get("dtypes", [problem.dtype]):
            continue
        if "varlen" in sig and sig["varlen"] != (problem.cu_seqlens is not None):
            continue
        if all(m.quantity in sig.get("quantities", []) and m.fraction <= sig.get("max_fraction", math.inf)
               for m in bad):
            return fid
    return None


@dataclass
class Stats:
    examples: Counter = field(default_factory=Counter)  # backend -> examples checked
    skipped: Counter = field(default_factory=Counter)
    by_property: Counter = field(default_factory=Counter)
    overflow_reported: int = 0
    known: Counter = field(default_factory=Counter)  # failure id -> examples matching a known issue
    worst: dict = field(default_factory=dict)  # backend -> (fraction, property, quantity, problem)
    failures: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    rounds: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(examples=dict(self.examples), skipped=dict(self.skipped), by_property=dict(self.by_property),
                    overflow_reported=self.overflow_reported, known=dict(self.known), worst=self.worst, failures=self.failures,
                    errors=self.errors, rounds=self.rounds, seconds=round(self.seconds, 1),
                    total_examples=sum(self.examples.values()))


def _failure_id(backend: str, prop: str, problem: Problem, message: str) -> str:
    first = message.splitlines()[0] if message else ""
    h = hashlib.sha1(f"{backend}|{prop}|{problem!r}|{first}".encode()).hexdigest()[:10]
    return f"{backend}-{prop}-{h}"


def record_failure(family: str, backend: str, prop: str, problem: Problem, message: str, seed: int) -> Path:
    FAILURES.mkdir(parents=True, exist_ok=True)
    fid = _failure_id(backend, prop, problem, message)
    path = FAILURES / f"{fid}.json"
    entry = dict(
        id=fid, status="open", found=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        family=family, backend=backend, property=prop, problem=repr(problem),
        describe=problem.describe(), hypothesis_seed=seed, message=message,
        replay=f"python -m fuzz --replay {path.relative_to(HERE.parent)}",
        torch=torch.__version__, notes="",
    )
    if path.exists():  # keep the notes and status a person wrote
        old = json.loads(path.read_text())
        entry.update({k: old[k] for k in ("status", "notes", "found") if k in old})
    path.write_text(json.dumps(entry, indent=2) + "\n")
    return path


def replay(path) -> tuple[bool, str]:
    """Re-run a failure file; (passes now, message)."""
    entry = json.loads(Path(path).read_text())
    problem = rebuild(entry["problem"])
    backend = linattn.get_backend(entry["backend"])
    why = backend.available()
    if why is not None:
        return False, f"backend {backend.name!r} unavailable here: {why}"
    try:
        res, note = check(backend, entry["property"], problem)
        return True, f"passes now (worst error/band {res.worst_fraction:.3g}{'; ' + note if note else ''})"
    except Skip as e:  # a fix that makes the backend refuse the request (UnsupportedRequest)
        return entry.get("fixed_expect") == "unsupported", f"refused as unsupported: {e}"
    except CampaignFailure as e:
        return False, str(e)


class Campaign:
    """Fuzz one family for a time or example budget."""

    def __init__(self, family: str, *, seed: int = 0, minutes: Optional[float] = None,
                 examples: Optional[int] = None, round_examples: int = 20, backends=None,
                 use_database: bool = True, log=print):
        self.family = family
        self.seed = seed
        self.deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
        self.max_examples = examples
        self.round_examples = round_examples
        avail, self.missing = family_backends(family)
        if backends:
            names = set(backends)
            unknown = names - {b.name for b in avail} - {n for n, _ in self.missing}
            if unknown:
                raise ValueError(f"backends {sorted(unknown)} are not in family {family!r}")
            avail = [b for b in avail if b.name in names]
        self.backends = avail
        self.db = DirectoryBasedExampleDatabase(str(HYPOTHESIS_DB)) if use_database else None
        self.log = log
        self.stats = Stats()

    def _done(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return True
        return self.max_examples is not None and sum(self.stats.examples.values()) >= self.max_examples

    def _props(self, backend) -> list:
        tgt = Target(backend.name, None, backend=backend)
        out = []
        for name, w in WEIGHTS.items():
            if name in PROPERTIES and PROPERTIES[name].applies(tgt) is None:
                out += [name] * w
        return out

    def _round(self, backend, rnd: int) -> None:
        props = self._props(backend)
        stats, family = self.stats, self.family
        last = {}  # the example run last (the shrunk one, after Hypothesis is done)
        failed = {}  # the last example that failed (what to record if the failure was flaky)

        # Shrinking re-runs the backend many times: cheap on the torch family, minutes per
        # failure under the Triton interpreter; there the failure is recorded unshrunk.
        phases = list(Phase) if family == "torch" else [p for p in Phase if p not in (Phase.shrink, Phase.explain)]

        @settings(max_examples=self.round_examples, deadline=None, database=self.db, print_blob=False,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False, phases=phases)
        @given(data=st.data())
        def body(data):
            prop = data.draw(st.sampled_from(props), label="property")
            problem = data.draw(strange_problems(backend, family, prop), label="problem")
            if self._done():  # after the draws: what is drawn must not depend on the clock
                return
            last.update(prop=prop, problem=problem)
            try:
                res, note = check(backend, prop, problem, allow_known=True)
            except CampaignFailure as e:
                failed.update(prop=prop, problem=problem, message=str(e))
                raise
            except Skip:
                stats.skipped[backend.name] += 1
                return
            stats.examples[backend.name] += 1
            stats.by_property[prop] += 1
            if note.startswith("float16 overflow"):
                stats.overflow_reported += 1
            if note.startswith("known:"):
                stats.known[note[6:]] += 1
            w = res.worst
            if w is not None and math.isfinite(w.fraction):
                target(w.fraction, label=f"{prop}:{w.quantity}")
                best = stats.worst.get(backend.name)
                if best is None or w.fraction > best[0]:
                    stats.worst[backend.name] = (round(w.fraction, 4), prop, w.quantity, problem.describe())

        body._hypothesis_internal_database_key = f"linattn-fuzz:{family}:{backend.name}".encode()
        hseed = self.seed * 100003 + rnd
        try:
            hyp_seed(hseed)(body)()
        except CampaignFailure as e:
            self._report(backend, last, str(e), hseed)
        except Exception as e:  # a crash inside a backend is a failure too, with its traceback
            if isinstance(e, Skip):
                return
            msg = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
            if failed:  # e.g. FlakyFailure: record the example that did fail, with its message
                self._report(backend, failed, f"{type(e).__name__} (did not reproduce on replay); first failure:\n"
                             + failed["message"], hseed)
            elif last:
                self._report(backend, last, msg, hseed)
            else:
                stats.errors.append(msg)
                self.log(f"[fuzz] error outside an example on {backend.name}: {msg}")

    def _report(self, backend, last, message, hseed) -> None:
        path = record_failure(self.family, backend.name, last["prop"], last["problem"], message, hseed)
        self.stats.failures.append(str(path.relative_to(HERE.parent)))
        self.log(f"\n[fuzz] FAILURE on backend {backend.name!r}, property {last['prop']!r}:\n{message}\n"
                 f"[fuzz] recorded in {path.relative_to(HERE.parent)}; reproduce with:\n"
                 f"    python -m fuzz --replay {path.relative_to(HERE.parent)}\n"
                 f"or in Python:\n    {last['problem'].repro().replace(chr(10), chr(10) + '    ')}\n")

    def run(self) -> Stats:
        if not self.backends:
            why = "; ".join(f"{n}: {w}" for n, w in self.missing) or "no backend registered"
            self.log(f"[fuzz] family {self.family!r}: nothing to run ({why})")
            return self.stats
        t0 = time.monotonic()
        rnd = 0
        while not self._done():
            backend = self.backends[rnd % len(self.backends)]
            self._round(backend, rnd)
            rnd += 1
            self.stats.rounds = rnd
            self.stats.seconds = time.monotonic() - t0
            if rnd % len(self.backends) == 0:
                self.log(f"[fuzz] {self.family}: {sum(self.stats.examples.values())} examples in "
                         f"{self.stats.seconds / 60:.1f} min, {len(self.stats.failures)} failures")
        self.stats.seconds = time.monotonic() - t0
        return self.stats
