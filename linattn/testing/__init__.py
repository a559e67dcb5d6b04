"""The verification harness, public: validate any backend of masked linear attention.

    import torch
    from linattn.testing import check_backend, problems, Problem, PROPERTIES

    report = check_backend("chunked", profile="ci")          # a registered backend
    report = check_backend("mypkg.attn:linear_attention")      # an external one
    assert report.ok, report.to_markdown()

Pieces, one concept per module:

* :mod:`~linattn.testing.problem` — :class:`Problem`: settings + seed -> tensors, run, repro
* :mod:`~linattn.testing.strategies` — :func:`problems`: Hypothesis draws of whole problems
* :mod:`~linattn.testing.reference` — the float64 oracle, the formula in X, term sizes
* :mod:`~linattn.testing.bands` — the tolerance band and its derivation
* :mod:`~linattn.testing.properties` — the properties as plain functions
* :mod:`~linattn.testing.target` — what a backend under test is (name, Backend, callable)
* :mod:`~linattn.testing.check` — :func:`check_backend`, the structured report
* :mod:`~linattn.testing.mutants` — deliberately broken backends the harness must reject
* :mod:`~linattn.testing.profiles`, :mod:`~linattn.testing.poison` — Hypothesis profiles,
  NaN-filled uninitialised memory
* :mod:`~linattn.testing.report`, :mod:`~linattn.testing.plot` — Markdown/JSON, the PNG
"""
from .bands import FACTOR, FLOOR_C, Measurement, measure, reduction_length, unit_roundoff
from .poison import poisoned
from .problem import ContractViolation, Outcome, Problem, ProblemTensors, Skip
from .properties import PROPERTIES, Property, PropertyResult, run_property
from .reference import Evaluation, evaluate, naive_in_dtype
from .target import Target, as_target, load_callable

try:  # Hypothesis is a test extra: without it, Problem, the bands and the properties still work
    from .check import BackendReport, PropertyReport, check_backend, check_property
    from .profiles import PROFILES
    from .strategies import NoProblems, head_dims, problems, seq_lengths
except ImportError as _e:  # pragma: no cover - depends on the environment
    if "hypothesis" not in str(_e):
        raise
    _MISSING = _e

    def _needs_hypothesis(*args, **kwargs):
        raise ImportError(f"this part of linattn.testing needs Hypothesis: pip install 'linattn[test]' ({_MISSING})")

    check_backend = check_property = problems = seq_lengths = head_dims = _needs_hypothesis
    BackendReport = PropertyReport = NoProblems = PROFILES = None

__all__ = [
    "problems", "seq_lengths", "head_dims", "NoProblems",
    "Problem", "ProblemTensors", "Outcome", "Skip", "ContractViolation",
    "Evaluation", "evaluate", "naive_in_dtype",
    "FACTOR", "FLOOR_C", "Measurement", "measure", "reduction_length", "unit_roundoff",
    "PROPERTIES", "Property", "PropertyResult", "run_property",
    "Target", "as_target", "load_callable",
    "check_backend", "check_property", "BackendReport", "PropertyReport",
    "PROFILES", "poisoned",
]
