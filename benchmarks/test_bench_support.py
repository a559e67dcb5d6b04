"""Checks of the benchmark machinery itself: counts, rooflines, rounds, registry, plots.

The FLOP formulas are checked against ``torch.utils.flop_counter.FlopCounterMode``
running the reference backend, which counts every matrix product it actually performs.
"""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from linattn.backends.reference import reference_forward
from linattn.bench import counts as C
from linattn.bench.roofline import Roofline
from linattn.bench.shapes import PROFILES, SHAPES, Shape, make_inputs, select_shapes
from linattn.bench.timing import choose_rounds


def _shape(mask, N=65, D=48, E=60, H=2, Hkv=None):
    return Shape("t", B=2, H=H, Hkv=Hkv, N=N, D=D, E=E, mask=mask, dtype="float64")


def _count(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("mask", ["none", "dense"])
@pytest.mark.parametrize("N, D, E", [(1, 1, 1), (65, 48, 60), (130, 60, 48)])
def test_quadratic_forward_flops_match_flop_counter(mask, N, D, E):
    s = _shape(mask, N=N, D=D, E=E)
    x = make_inputs(s, "cpu")
    got = _count(lambda: reference_forward(x.q, x.k, x.v, x.mask, causal=x.causal, decay=x.slopes))
    assert C.flops(s, form="quadratic", pass_="fwd") == got


def test_quadratic_backward_is_counter_plus_recompute():
    """Our backward recomputes A = q kᵀ (2·N·M·D per head); the reference keeps A instead."""
    s = _shape("dense")
    x = make_inputs(s, "cpu", requires_grad=True)

    def step():
        o, _ = reference_forward(x.q, x.k, x.v, x.mask, causal=False, decay=None)
        torch.autograd.grad(o, (x.q, x.k, x.v), x.do)

    got = _count(step)
    recompute = 2 * s.B * s.H * s.N * s.N * s.D
    assert C.flops(s, form="quadratic", pass_="fwd+bwd") == got + recompute


def test_causal_counts_the_lower_triangle_and_backward_ratio():
    s = _shape("decay", N=64, D=64, E=64)
    full = _shape("none", N=64, D=64, E=64)
    ratio = C.flops(s, form="quadratic", pass_="fwd") / C.flops(full, form="quadratic", pass_="fwd")
    assert ratio == pytest.approx(65 / 128)
    # D == E: backward is 2.5x forward, as in Triton's tutorial
    assert C.flops(s, form="quadratic", pass_="fwd+bwd") == pytest.approx(3.5 * C.flops(s, form="quadratic", pass_="fwd"))


def test_chunked_counts_are_linear_in_n():
    a = C.flops(_shape("decay", N=4096), form="chunked", pass_="fwd")
    b = C.flops(_shape("decay", N=8192), form="chunked", pass_="fwd")
    assert b == pytest.approx(2 * a)
    # chunk of 1: no intra-chunk tile beyond the diagonal, i.e. the recurrent count plus the diagonal
    s = _shape("decay", N=100)
    diag = 2 * s.B * s.H * s.N * (s.D + s.E)
    assert C.flops(s, form="chunked", pass_="fwd", chunk=1) == C.flops(s, form="recurrent", pass_="fwd") + diag


def test_bytes_read_inputs_once_write_outputs_once():
    s = _shape("dense", N=10, D=3, E=5, H=4, Hkv=2)
    it = 8
    q, k, v, o, m = 2 * 4 * 10 * 3, 2 * 2 * 10 * 3, 2 * 2 * 10 * 5, 2 * 4 * 10 * 5, 100
    assert C.bytes_moved(s, pass_="fwd") == (q + k + v + m + o) * it
    assert C.bytes_moved(s, pass_="fwd+bwd") == (q + k + v + m + o) * it * 2 + (q + k + v) * it


def test_bad_form_or_pass_names_expected():
    with pytest.raises(ValueError, match="form must be one of"):
        C.flops(_shape("none"), form="cubic", pass_="fwd")
    with pytest.raises(ValueError, match="pass must be one of"):
        C.flops(_shape("none"), form="chunked", pass_="bwd")


def test_roofline_bound_and_fraction():
    rl = Roofline("cpu", "test", flops={"float32": 1e12}, bandwidth=1e11)
    assert rl.bound(2e12, 1e9, "float32") == (2.0, "compute")
    assert rl.bound(1e9, 1e12, "float32") == (10.0, "memory")
    assert rl.fraction(2e12, 1e9, "float32", 4.0) == 0.5
    assert rl.bound(1.0, 1.0, "bfloat16") == (None, "unknown")


def test_choose_rounds_clamps():
    assert choose_rounds(0.1, budget_s=1.0, min_rounds=3, max_rounds=20) == 10
    assert choose_rounds(5.0, budget_s=1.0, min_rounds=3, max_rounds=20) == 3
    assert choose_rounds(1e-6, budget_s=1.0, min_rounds=3, max_rounds=20) == 20
    with pytest.raises(ValueError, match="min_rounds"):
        choose_rounds(1.0, budget_s=1.0, min_rounds=0, max_rounds=3)


def test_registry_profiles():
    ids = [s.id for s in SHAPES]
    assert len(ids) == len(set(ids)), "shape ids must be unique"
    for p in PROFILES:
        assert select_shapes(p), f"profile {p} is empty"
    assert {s.id for s in select_shapes("quick")} <= {s.id for s in select_shapes("gpu")}
    seed = [s for s in SHAPES if s.name == "seed"]
    assert seed and (seed[0].B, seed[0].H, seed[0].N, seed[0].D, seed[0].mask) == (16, 12, 1024, 64, "dense")
    with pytest.raises(ValueError, match="shape profile must be one of"):
        select_shapes("huge")
    with pytest.raises(ValueError, match="unknown shape families"):
        select_shapes("all", names=["nope"])
    with pytest.raises(ValueError, match="mask must be one of"):
        Shape("bad", B=1, H=1, N=1, D=1, E=1, mask="softmax")


def test_plot_writes_pngs(tmp_path):
    from linattn.cli.plot import make_plots

    benches = []
    for backend in ("reference", "chunked"):
        for n in (64, 128, 256):
            benches.append({
                "group": "g", "name": f"t[{backend}-{n}]", "stats": {"median": 1e-3 * n / 64, "min": 1e-3, "rounds": 3},
                "extra_info": {
                    "target": f"linattn:{backend}", "backend": backend, "family": "f", "shape": f"f-N{n}",
                    "pass": "fwd", "N": n, "mask": "decay", "dtype": "float32", "peak_mem_bytes": n * 1024,
                    "roofline_fraction": 0.5, "roofline_bound": "memory",
                },
            })
    benches.append({**benches[0], "extra_info": {**benches[0]["extra_info"], "family": "one", "shape": "one-N64"}})
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmarks": benches, "machine_info": {"linattn": {"device_name": "test"}},
                                "datetime": "2026-01-01T00:00:00"}))
    written = make_plots(path, tmp_path / "png")
    assert [p.name for p in written] == ["time.png", "memory.png", "roofline.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
    (one,) = make_plots(path, tmp_path / "png", combined=True, prefix="x-")
    assert one.name == "x-bench.png" and one.stat().st_size > 10_000


def test_plot_rejects_foreign_json(tmp_path):
    from linattn.bench.results import load

    p = tmp_path / "r.json"
    p.write_text(json.dumps({"benchmarks": [{"stats": {}, "extra_info": {}}]}))
    with pytest.raises(ValueError, match="holds no linattn benchmarks"):
        load(p)
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a pytest-benchmark JSON"):
        load(p)
