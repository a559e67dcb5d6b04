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
from .check import BackendReport, PropertyReport, check_backend, check_property
from .poison import poisoned
from .problem import ContractViolation, Outcome, Problem, ProblemTensors, Skip
from .profiles import PROFILES
from .properties import PROPERTIES, Property, PropertyResult, run_property
from .reference import Evaluation, evaluate, naive_in_dtype
from .strategies import NoProblems, head_dims, problems, seq_lengths
from .target import Target, as_target, load_callable

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
