"""The harness tests itself: problems rebuild exactly, bands are derived as documented,
skips are never passes, poisoning works, narrowing is respected, reports are written."""
import json
import math

import pytest
import torch
from hypothesis import given, settings

import linattn
from linattn.testing import (
    FACTOR,
    FLOOR_C,
    Problem,
    check_backend,
    measure,
    poisoned,
    problems,
    reduction_length,
    unit_roundoff,
)
from linattn.testing.check import merge_narrow
from linattn.testing.reference import naive_in_dtype, terms_outcome
from linattn.testing.strategies import NoProblems

ALL_GRADS = ("q", "k", "v", "mask", "slopes")


def test_problem_repr_rebuilds_identical_tensors():
    p = Problem(B=2, H=4, Hkv=2, N=17, M=17, D=5, E=3, dtype="bfloat16", mask_kind="dense+decay",
                mask_shape="B1NM", slopes="mixed", scale=0.5, grads=ALL_GRADS, seed=123)
    again = eval(repr(p), {"Problem": Problem})
    assert again == p
    for name in ("q", "k", "v", "mask", "slopes", "do"):
        a, b = getattr(p.tensors, name), getattr(again.tensors, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert p.tensors.q.dtype == torch.bfloat16 and p.tensors.slopes.dtype == torch.float32
    assert "Problem(" in p.repro() and "seed=123" in p.repro()


@pytest.mark.parametrize("bad, words", [
    (dict(mask_kind="dense", initial_state=True), "no dense mask"),
    (dict(mask_kind="causal", N=3, M=4), "N == M"),
    (dict(H=4, Hkv=3), "Hkv must divide H"),
    (dict(mask_kind="causal", grads=("mask",)), "grads names 'mask'"),
    (dict(dtype="float8"), "dtype must be one of"),
])
def test_problem_rejects_inconsistent_settings(bad, words):
    with pytest.raises(ValueError, match=words):
        Problem(**bad)


def test_naive_in_float64_is_the_oracle_and_terms_bound_it():
    p = Problem(B=2, H=2, Hkv=1, N=9, M=9, D=4, E=3, dtype="float64", mask_kind="decay",
                initial_state=True, final_state=True, grads=("q", "k", "v", "slopes", "initial_state"), seed=9)
    ev = p.evaluation
    assert ev.naive is None
    direct = p.run(naive_in_dtype)
    for q, x in ev.oracle.items():
        torch.testing.assert_close(direct[q], x, rtol=1e-12, atol=1e-12)
        # root-sum-square of the terms is at least |sum| / sqrt(#terms) and at most sum|terms|
        assert torch.all(ev.terms[q] >= 0)
        assert float(ev.terms[q].norm()) > 0


def test_terms_of_a_single_product_are_its_magnitude():
    # N = M = D = E = 1, no mask: o = scale * q k v exactly one term
    p = Problem(dtype="float64", scale=0.5, grads=("q", "k", "v"), seed=4)
    t = p.tensors
    terms = terms_outcome(p)
    o = 0.5 * t.q * t.k * t.v
    torch.testing.assert_close(terms["o"], o.abs())
    torch.testing.assert_close(terms["dq"], (0.5 * t.do * t.v * t.k).abs())


def test_slope_terms_are_the_sum_of_squared_distance_weighted_terms():
    p = Problem(B=1, H=1, N=3, M=3, D=1, E=1, dtype="float64", mask_kind="decay", slopes="moderate",
                grads=("slopes",), seed=11)
    t = p.tensors
    s = float(t.slopes[0])
    q, k, v, do = (x.flatten() for x in (t.q, t.k, t.v, t.do))
    want = 0.0
    for i in range(3):
        for j in range(i + 1):
            term = (i - j) * math.exp(-s * (i - j)) * q[i] * k[j] * v[j] * do[i]
            want += float(term) ** 2
    got = float(terms_outcome(p)["dslopes"][0])
    assert got == pytest.approx(math.sqrt(want), rel=1e-10)


def test_band_is_the_documented_formula():
    p = Problem(B=1, H=2, N=16, M=16, D=8, E=8, dtype="float32", mask_kind="causal", seed=5)
    ev = p.evaluation
    x64 = ev.oracle["o"]
    m = measure("t", "o", x64.float(), ev)
    K = reduction_length(p, "o")
    assert K == 8 + 16
    n64 = float(x64.norm())
    floor = FLOOR_C * (unit_roundoff(torch.float32) * n64
                       + unit_roundoff(torch.float32) * math.sqrt(K) * float(ev.terms["o"].norm()))
    e_ref = float((ev.naive["o"].double() - x64).norm())
    assert m.band * n64 == pytest.approx(FACTOR * e_ref + floor, rel=1e-6)
    assert m.ok


def test_float64_oracle_passes_itself_with_zero_error():
    p = Problem(B=1, H=2, N=5, M=5, D=3, E=2, dtype="float64", mask_kind="dense", grads=("q", "mask"), seed=2)
    for q, x in p.evaluation.oracle.items():
        assert measure("t", q, x, p.evaluation).fraction == 0.0


def test_wrong_answer_fails_by_a_wide_margin():
    p = Problem(B=1, H=2, N=33, M=33, D=16, E=16, dtype="bfloat16", mask_kind="causal", seed=3)
    ev = p.evaluation
    o = ev.oracle["o"].clone()
    o[:, :, 16] = 0  # one row lost, as a skipped tile row would
    assert measure("t", "o", o.to(torch.bfloat16), ev).fraction > 5


def _dropping_nothing(q, k, v, mask=None, **kw):
    return linattn.linear_attention(q, k, v, mask, backend="reference", **kw)


def test_external_not_implemented_is_skipped_never_passed():
    def refuses(q, k, v, mask=None, **kw):
        raise NotImplementedError("nothing")

    rep = check_backend(refuses, max_examples=3, properties=["forward", "backward"], keep_measurements=False)
    assert [p.status for p in rep.properties] == ["skip", "skip"]
    assert rep.status == "skip" and rep.ok
    assert all(p.examples == 0 and p.skipped > 0 for p in rep.properties)


def test_external_supports_declaration_skips_what_it_refuses():
    def only_float32(q, k, v, mask=None, **kw):
        assert q.dtype == torch.float32, "called for a request it declared unsupported"
        return _dropping_nothing(q, k, v, mask, **kw)

    only_float32.supports = lambda req: True if req.dtype == torch.float32 else f"dtype {req.dtype}"
    rep = check_backend(only_float32, max_examples=8, properties=["forward"], keep_measurements=False)
    (p,) = rep.properties
    assert p.status in ("pass", "skip") and p.status != "fail", p.message
    assert p.skipped > 0 and any("dtype" in r for r in p.skip_reasons)


def test_unwritten_output_is_nan_under_poisoning():
    with poisoned():
        x = torch.empty(4, 4)
        y = torch.empty_like(x)
        z = x.new_empty(3)
        i = torch.empty(3, dtype=torch.int64)
    assert torch.isnan(x).all() and torch.isnan(y).all() and torch.isnan(z).all()
    assert i.dtype == torch.int64  # integers are left alone


def test_a_backend_leaving_rows_unwritten_fails():
    def lazy(q, k, v, mask=None, **kw):
        o = _dropping_nothing(q, k, v, mask, **kw)
        o = o[0] if isinstance(o, tuple) else o
        out = torch.empty_like(o)
        out[:, :, : max(o.shape[2] - 1, 0)] = o[:, :, :-1]  # forgets the last row
        return out if not kw.get("output_final_state") else (out, None)

    rep = check_backend(lazy, max_examples=5, properties=["forward"], dtypes=["float32"],
                        keep_measurements=False, initial_state=False, final_state=False)
    assert rep.properties[0].status == "fail"


def test_failure_report_carries_the_reproduction():
    def off(q, k, v, mask=None, **kw):
        o = _dropping_nothing(q, k, v, mask, **kw)
        if isinstance(o, tuple):
            return (o[0] * 1.01, o[1])
        return o * 1.01

    rep = check_backend(off, max_examples=5, properties=["forward"], keep_measurements=False, pinned=False)
    p = rep.properties[0]
    assert p.status == "fail" and p.first_failure_example is not None
    assert "Problem(" in p.message
    assert "reproduce_failure" in p.reproduction or "Falsifying" in p.reproduction


def test_merge_narrow_intersects():
    m = merge_narrow(dict(mask_kinds=["causal", "decay"], max_n=130), dict(mask_kinds=["decay", "dense"], max_n=64))
    assert m == dict(mask_kinds=["decay"], max_n=64)
    with pytest.raises(NoProblems):
        merge_narrow(dict(mask_kinds=["causal"]), dict(mask_kinds=["dense"]))


@settings(max_examples=60)
@given(problems(dtypes=[torch.bfloat16], mask_kinds=["decay"], max_n=70, max_d=33, head_ratios=["gqa"]))
def test_narrowing_is_respected(p):
    assert p.dtype == "bfloat16" and p.mask_kind == "decay"
    assert p.N == p.M <= 70 and max(p.D, p.E) <= 33
    assert 1 < p.Hkv < p.H and p.H % p.Hkv == 0


@settings(max_examples=60)
@given(problems(backend=linattn.get_backend("chunked")))
def test_narrowing_by_backend_declaration(p):
    assert p.mask_kind in ("none", "causal", "decay")
    assert linattn.get_backend("chunked").unsupported(p.request()) is None


def test_sizes_hit_block_edges_and_primes():
    seen = set()

    @settings(max_examples=300, database=None)
    @given(problems(max_n=130))
    def collect(p):
        seen.add(p.N)

    collect()
    assert {1, 2} & seen and {15, 16, 17, 31, 33, 63, 64, 65, 127, 129} & seen
    assert any(n in seen for n in (13, 61, 67, 97, 127, 131))


def test_verify_cli_writes_reports(tmp_path):
    from linattn.__main__ import main

    rc = main(["verify", "docs.example_backend:attention", "--max-examples", "2", "--out", str(tmp_path),
               "--property", "forward", "--property", "varlen"])
    assert rc == 0
    data = json.loads((tmp_path / "verify.json").read_text())
    props = {p["property"]: p for p in data["backends"][0]["properties"]}
    assert props["forward"]["status"] == "pass"
    assert props["varlen"]["status"] == "skip"  # the example declares no packed sequences
    assert (tmp_path / "verify_errors.png").stat().st_size > 1000
    assert "conformance matrix" in (tmp_path / "verify.md").read_text()


@pytest.mark.filterwarnings("ignore:float16 overflow")
def test_verify_cli_exit_status_on_failure(tmp_path):
    from linattn.__main__ import main

    rc = main(["verify", "--mutants", "--max-examples", "3", "--out", str(tmp_path), "--no-plot",
               "--property", "forward"])
    # with only the forward property, the gradient-only mutants survive: exit 1, and says so
    assert rc == 1
