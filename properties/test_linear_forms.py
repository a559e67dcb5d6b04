"""chunked == recurrent: every pair of linear-time backends agree with each other.

Each backend is also checked against float64 on its own (test_agreement.py); this is the
direct comparison the design names, on none/causal/decay problems with state, inside the
sum of the two bands.
"""
import itertools

import pytest
from hypothesis import given, settings

from linattn import list_backends
from linattn.testing import as_target, measure, problems
from linattn.testing.problem import Skip


def _linear_pairs():
    found = [b for b in list_backends() if b.linear_time and b.available() is None and "cpu" in b.devices]
    pairs = list(itertools.combinations(sorted(found, key=lambda b: b.name), 2))
    return [pytest.param(a.name, b.name, id=f"{a.name}-vs-{b.name}") for a, b in pairs] or [
        pytest.param(None, None, marks=pytest.mark.skip(reason="fewer than two linear-time backends here"))
    ]


@pytest.mark.parametrize("first, second", _linear_pairs())
def test_linear_time_backends_agree(first, second, request):
    a, b = as_target(first), as_target(second)
    selected = request.config.getoption("--backend")
    if selected and first not in selected and second not in selected:
        pytest.skip(f"neither {first} nor {second} is among --backend {selected}")
    seen = {"ran": 0}
    max_n = request.config.getoption("--max-n") or 130
    max_d = request.config.getoption("--max-d") or 64
    k = request.config.getoption("--max-examples")

    @settings(**({"max_examples": k} if k else {}))
    @given(problem=problems(mask_kinds=["none", "causal", "decay"], backend=a.backend, max_n=max_n, max_d=max_d))
    def check(problem):
        try:
            out_a = a.run(problem)
            out_b = b.run(problem)
        except Skip:
            return
        seen["ran"] += 1
        ev = problem.evaluation
        bad = []
        for q, x in out_a.items():
            if q in out_b and q in ev.oracle:
                m = measure("chunked==recurrent", q, x, ev, against=out_b[q], runs=2)
                if not m.ok:
                    bad.append(f"{q}: {m.error:.3e} > band {m.band:.3e}")
        assert not bad, f"{first} vs {second} on {problem!r}: " + "; ".join(bad)

    check()
    if not seen["ran"]:
        pytest.skip(f"{second} served none of {first}'s problems")
