"""Repository-wide pytest setup: Hypothesis profiles, backend/device options, NaN poisoning.

    LINATTN_PROFILE=dev|ci|thorough   Hypothesis profile (default dev; tox uses ci)
    --device cpu|cuda                 devices the property suites draw problems on (repeatable)
    --backend NAME                    registered backend(s) to check (repeatable; default: all)
    --external module:function        also check an external backend (repeatable)
    --max-n N, --max-d D              largest sequence length / head dim the suites draw
    --max-examples K                  examples per property (overrides the profile)
    --no-poison                       do not fill uninitialised memory with NaN
    --no-pinned                       skip the properties' pinned @example problems
    --no-shrink                       report failures unshrunk (the Triton interpreter is slow)

Every test runs with ``torch.empty``/``empty_like``/``empty_strided``/``Tensor.new_empty``
returning NaN-filled float tensors (``linattn.testing.poison``), so a backend that leaves
part of its output unwritten fails instead of passing on a lucky zero.
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from linattn.testing import profiles  # noqa: E402

# Hypothesis loads its own "ci" profile when it sees CI=...; load ours explicitly.
PROFILE = profiles.profile_from_env()
profiles.load(PROFILE)


def pytest_addoption(parser):
    g = parser.getgroup("linattn", "linattn verification harness")
    g.addoption("--device", action="append", default=None, help="device type for property suites (repeatable)")
    g.addoption("--backend", action="append", default=None, help="registered backend to check (repeatable)")
    g.addoption("--external", action="append", default=None, metavar="MODULE:FUNCTION",
                help="an external backend with linear_attention's signature (repeatable)")
    g.addoption("--max-n", type=int, default=None, help="largest N the property suites draw")
    g.addoption("--max-d", type=int, default=None, help="largest head dim the property suites draw")
    g.addoption("--max-examples", type=int, default=None, help="examples per property (overrides the profile)")
    g.addoption("--no-poison", action="store_true", help="do not NaN-fill uninitialised memory")
    g.addoption("--no-shrink", action="store_true",
                help="report the first failing example unshrunk (shrinking is slow under TRITON_INTERPRET)")
    g.addoption("--no-pinned", action="store_true",
                help="skip the pinned @example problems (they ignore --max-n; slow under TRITON_INTERPRET)")


def pytest_report_header(config):
    return f"linattn: hypothesis profile {PROFILE!r} (LINATTN_PROFILE)"


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory(request):
    from linattn.testing.poison import poisoned

    with poisoned(not request.config.getoption("--no-poison")):
        yield


def _target_params(config):
    """pytest params for every backend under test; unavailable ones are skipped, not dropped."""
    from linattn import list_backends
    from linattn.testing import as_target

    names = config.getoption("--backend")
    externals = config.getoption("--external") or []
    params = []
    if names or not externals:
        known = {b.name: b for b in list_backends()}
        for n in names or list(known):
            if n not in known:
                raise pytest.UsageError(f"--backend {n!r}: registered backends are {sorted(known)}")
            b = known[n]
            why = b.available()
            devs = config.getoption("--device") or ["cpu"]
            if why is None and not (set(devs) & set(b.devices)):
                why = f"runs on {sorted(b.devices)}, not {devs}"
            marks = [pytest.mark.skip(reason=f"{n}: {why}")] if why else []
            params.append(pytest.param(n, id=n, marks=marks))
    for spec in externals:
        as_target(spec)  # fail early on a bad import path
        params.append(pytest.param(spec, id=spec))
    return params


def pytest_generate_tests(metafunc):
    if "backend_under_test" in metafunc.fixturenames:
        metafunc.parametrize("backend_under_test", _target_params(metafunc.config))


@pytest.fixture
def target(backend_under_test):
    from linattn.testing import as_target

    return as_target(backend_under_test)


@pytest.fixture
def harness(request):
    """``harness(property_name, target, **narrow)``: run one property under the loaded
    Hypothesis profile; fail with the reproduction, or skip if every example was skipped."""
    from hypothesis import settings

    from linattn.testing import PROPERTIES, check_property

    devices = request.config.getoption("--device") or ["cpu"]
    max_n = request.config.getoption("--max-n")
    max_d = request.config.getoption("--max-d")
    max_examples = request.config.getoption("--max-examples")
    pinned = not request.config.getoption("--no-pinned")
    no_shrink = request.config.getoption("--no-shrink")

    def run(name, target, **narrow):
        narrow.setdefault("devices", devices)
        if max_n:
            narrow.setdefault("max_n", max_n)
        if max_d:
            narrow.setdefault("max_d", max_d)
        over = {}
        if max_examples:
            over["max_examples"] = max_examples
        if no_shrink:
            from hypothesis import Phase

            over["phases"] = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
        cfg = settings(**over)
        rep = check_property(PROPERTIES[name], target, settings=cfg, profile=PROFILE, narrow=narrow,
                             pinned=pinned)
        if rep.status == "skip":
            pytest.skip(f"{target.name} / {name}: {rep.message or 'every example skipped'}")
        if rep.status == "fail":
            pytest.fail(f"{target.name} / {name}:\n{rep.message}\n{rep.reproduction}", pytrace=False)
        return rep

    return run
