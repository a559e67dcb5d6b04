"""pytest glue for the benchmark suites: options, parametrisation, machine info.

    pytest benchmarks --benchmark-only                          # cpu profile here, gpu on a GPU
    pytest benchmarks --benchmark-only --linattn-shapes=quick   # the GPU script's set
    pytest benchmarks --benchmark-only --benchmark-save=base    # then --benchmark-compare
    pytest benchmarks                                           # smoke: tiny shapes, 1 round, checked

Each ``bench_*.py`` module declares what it times through three module attributes,
``BENCH_TARGETS`` ("linattn" or "baselines"), ``BENCH_PASS`` ("fwd" or "fwd+bwd") and
``BENCH_DECODE`` (decode shapes or the others); its test takes the fixtures
``bench_target`` and ``bench_shape`` that this file parametrises, and ``bench``.
(Distinct names: the harness's root conftest owns a ``target`` fixture.)
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from linattn.bench.roofline import get_roofline
from linattn.bench.runner import Settings, Skip, run_case
from linattn.bench.shapes import PROFILES, SHAPES, default_profile, select_shapes
from linattn.bench.targets import baseline_targets, decode_step_targets, linattn_targets
from linattn.bench.timing import machine_info


def pytest_addoption(parser):
    g = parser.getgroup("linattn benchmarks")
    g.addoption("--linattn-shapes", choices=PROFILES, default=None,
                help="shape profile (default: $LINATTN_BENCH_SHAPES, else gpu with CUDA and cpu without; "
                     "smoke when run without --benchmark-only)")
    g.addoption("--linattn-families", default=None, help="comma-separated shape families to keep (seed,tnl-1b,...)")
    g.addoption("--linattn-backends", default=None, help="comma-separated linattn backends to time (default: all registered)")
    g.addoption("--linattn-no-baselines", action="store_true", help="skip fla, lightning_attn and SDPA")
    g.addoption("--linattn-device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    g.addoption("--linattn-roofline", choices=("measured", "datasheet"), default="measured",
                help="peaks for the roofline fraction: measured matmul/copy rates here, or the card's datasheet")
    g.addoption("--linattn-budget", type=float, default=None, help="seconds of timed rounds per case")
    g.addoption("--linattn-rounds", type=int, default=None, help="fixed number of timed rounds per case")
    g.addoption("--linattn-deadline", type=float, default=None,
                help="seconds after the session starts past which remaining cases are skipped")


def pytest_configure(config):
    config._linattn_t0 = time.monotonic()
    config._linattn_roofline = None


def _profile(config) -> str:
    explicit = config.getoption("--linattn-shapes")
    if explicit:
        return explicit
    if os.environ.get("LINATTN_BENCH_SHAPES"):
        return default_profile()
    if not config.getoption("benchmark_only", default=False):
        return "smoke"
    return default_profile()


def _device(config) -> str:
    dev = config.getoption("--linattn-device")
    if dev is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--linattn-device=cuda but torch.cuda.is_available() is False")
    return dev


def _csv(value):
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


_TARGETS: dict = {}  # target name -> Target, filled while parametrising
_SHAPES = {s.id: s for s in SHAPES}


def pytest_generate_tests(metafunc):
    if "bench_target" not in metafunc.fixturenames or "bench_shape" not in metafunc.fixturenames:
        return
    config = metafunc.config
    mod = metafunc.module
    decode = getattr(mod, "BENCH_DECODE", False)
    shapes = [s for s in select_shapes(_profile(config), names=_csv(config.getoption("--linattn-families")))
              if s.decode == decode]
    which = getattr(mod, "BENCH_TARGETS", "linattn")
    if which == "linattn":
        targets = linattn_targets(_csv(config.getoption("--linattn-backends")))
        if decode:
            targets += decode_step_targets()
    elif which == "baselines":
        targets = [] if config.getoption("--linattn-no-baselines") else baseline_targets()
    else:
        raise pytest.UsageError(f"{mod.__name__}.BENCH_TARGETS must be 'linattn' or 'baselines', got {which!r}")
    for t in targets:
        _TARGETS[t.name] = t
    # parametrise with names, not objects, so the saved JSON's "params" stay readable
    params = [
        pytest.param(t.name, s.id, id=f"{t.short}-{s.id}")
        for s in shapes
        for t in targets
    ]
    metafunc.parametrize(("bench_target", "bench_shape"), params)


def pytest_collection_modifyitems(session, config, items):
    """Run every target of one shape in a row, shapes in registry order, forward first.

    Inputs and the float64 reference are then computed once per shape, and a run cut
    short by --linattn-deadline loses whole shapes at the end rather than one pass.
    """
    order = {s.id: i for i, s in enumerate(SHAPES)}

    def ours(item):
        cs = getattr(item, "callspec", None)
        return cs is not None and "bench_shape" in cs.params and "bench_target" in cs.params

    def key(item):
        cs = item.callspec
        p = cs.params.get("pass_", getattr(item.module, "BENCH_PASS", "fwd"))
        return (order.get(cs.params["bench_shape"], len(order)), p != "fwd", cs.params["bench_target"])

    slots = [i for i, item in enumerate(items) if ours(item)]  # other suites keep their places
    for i, item in zip(slots, sorted((items[i] for i in slots), key=key)):
        items[i] = item


@pytest.fixture(scope="session")
def settings(request) -> Settings:
    config = request.config
    dev = _device(config)
    profile = _profile(config)
    smoke = profile == "smoke"
    dtypes = sorted({s.dtype for s in select_shapes(profile)})
    measure = config.getoption("--linattn-roofline") == "measured" and not smoke
    rl = get_roofline(dev, dtypes, measure=measure)
    config._linattn_roofline = rl
    if dev == "cuda":
        mem_limit = int(0.6 * torch.cuda.get_device_properties(0).total_memory)
        budget, lo, hi = 0.25, 5, 50
    else:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        mem_limit = int(min(4 * 2 ** 30, 0.25 * ram))
        budget, lo, hi = 1.0, 3, 20
    if profile == "quick":
        budget, lo, hi = 0.08, 3, 20
    if smoke:
        budget, lo, hi = 0.0, 1, 1
    deadline = config.getoption("--linattn-deadline")
    return Settings(
        device=dev,
        roofline=rl,
        budget_s=config.getoption("--linattn-budget") or budget,
        min_rounds=lo,
        max_rounds=hi,
        # the checked first call and the memory call warm up already; a GPU gets one more round
        warmup_rounds=1 if dev == "cuda" and not smoke else 0,
        rounds=config.getoption("--linattn-rounds"),
        memory_limit=mem_limit,
        deadline=None if deadline is None else config._linattn_t0 + deadline,
    )


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory():
    """Overrides the harness's autouse fixture of this name (repository conftest.py): it
    NaN-fills every ``torch.empty``, a cost inside every timed call. Benchmarks check
    their outputs against the float64 reference instead; the property suites poison."""
    yield


@pytest.fixture
def bench(benchmark, settings):
    """``bench(target_name, shape_id, pass_)``: run one case, turning :class:`Skip` into a pytest skip."""

    def run(target_name, shape_id, pass_):
        try:
            return run_case(benchmark, _TARGETS[target_name], _SHAPES[shape_id], pass_, settings)
        except Skip as e:
            pytest.skip(str(e))

    return run


def pytest_report_header(config):
    try:
        dev = _device(config)
        info = machine_info(dev)
    except Exception as e:  # the header must never break a run
        return f"linattn bench: machine info unavailable ({e})"
    return (
        f"linattn bench: profile={_profile(config)} device={dev} ({info['device_name']}), "
        f"torch {info['torch']}, triton {info['triton']}, {info['cpu_cores']} CPU cores, {info['torch_threads']} threads"
    )


def pytest_benchmark_update_machine_info(config, machine_info):
    try:
        dev = _device(config)
        from linattn.bench.timing import machine_info as mi

        info = mi(dev)
        info["profile"] = _profile(config)
        rl = getattr(config, "_linattn_roofline", None)
        info["roofline"] = rl.as_dict() if rl is not None else None
        machine_info["linattn"] = info
    except Exception as e:  # pragma: no cover - never lose a run over metadata
        machine_info["linattn"] = {"error": f"{type(e).__name__}: {e}"}
