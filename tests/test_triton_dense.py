"""Backend ``triton_dense``: the flash-style Triton kernels for the general operator.

Everything is compared with the float64 reference on random data at awkward sizes (N = 1,
2, primes, tile edges ±1; D = 1, 48, 60; MQA and GQA). The kernels run on a CUDA device,
or on the CPU under the Triton interpreter when TRITON_INTERPRET=1 was set before linattn
was imported (tox's interpreter env does so); otherwise this module is skipped.
Under the interpreter the tiles are 32×16 (dense_fwd.FWD_FIXED_INTERPRET), so sizes of a
few dozen already cross several tile edges in both directions.
"""
from __future__ import annotations

import pytest
import torch

import linattn
from linattn._registry import MASK_KINDS
from linattn.backends._common import effective_mask, expand_kv
from linattn.backends.triton import common

if not common.HAVE_TRITON:
    pytest.skip("triton is not installed", allow_module_level=True)
if not common.INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "needs a CUDA device, or TRITON_INTERPRET=1 set before linattn is imported "
        "(e.g. `TRITON_INTERPRET=1 pytest tests/test_triton_dense.py`)",
        allow_module_level=True,
    )

from linattn.backends.triton import dense, dense_bwd  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from linattn.backends.triton.common import split_tf32  # noqa: E402

pytestmark = pytest.mark.interpreter
DEVICE = "cpu" if common.INTERPRET else "cuda"
BACKEND = "triton_dense"


# -- problems and the float64 oracle ------------------------------------------------------------

def make_problem(B, H, Hkv, N, M, D, E, mask_shape=None, decay=False, state=False, seed=0):
    """Random float64 leaves (CPU): q, k, v, mask, slopes, initial state and an output cotangent."""
    g = torch.Generator().manual_seed(seed)
    p = dict(
        q=torch.randn(B, H, N, D, generator=g, dtype=torch.float64),
        k=torch.randn(B, Hkv, M, D, generator=g, dtype=torch.float64),
        v=torch.randn(B, Hkv, M, E, generator=g, dtype=torch.float64),
        mask=torch.randn(mask_shape, generator=g, dtype=torch.float64) if mask_shape else None,
        decay=(0.02 + 0.3 * torch.rand(H, generator=g, dtype=torch.float64)) if decay else None,
        initial_state=torch.randn(B, H, D, E, generator=g, dtype=torch.float64) if state else None,
        do=torch.randn(B, H, N, E, generator=g, dtype=torch.float64),
        dS=torch.randn(B, H, D, E, generator=g, dtype=torch.float64) if state else None,
    )
    return p


def run(p, dtype, backend, *, causal=False, scale=0.7, grads=("q", "k", "v", "mask", "decay", "initial_state"),
        device=DEVICE):
    """o, final state and the gradients of <o, do> + <S, dS> for the leaves in ``grads``."""
    leaves = {}
    for name in ("q", "k", "v", "mask", "decay", "initial_state"):
        t = p[name]
        if t is None:
            continue
        want = dtype if name in ("q", "k", "v", "mask") else (torch.float64 if dtype == torch.float64 else torch.float32)
        leaves[name] = t.to(device=device, dtype=want).requires_grad_(name in grads)
    state = p["initial_state"] is not None
    res = linattn.linear_attention(
        leaves["q"], leaves["k"], leaves["v"], leaves.get("mask"), causal=causal, decay=leaves.get("decay"),
        scale=scale, initial_state=leaves.get("initial_state"), output_final_state=state, backend=backend,
    )
    o, S = (res.o, res.final_state) if state else (res, None)
    loss = (o.double() * p["do"].to(device)).sum()
    if S is not None:
        loss = loss + (S.double() * p["dS"].to(device)).sum()
    wrt = [n for n in leaves if leaves[n].requires_grad]
    gs = torch.autograd.grad(loss, [leaves[n] for n in wrt]) if wrt else ()
    out = {"o": o, "S": S}
    out.update({f"d{n}": g for n, g in zip(wrt, gs)})
    return {n: (t.detach().double().cpu() if t is not None else None) for n, t in out.items()}


def naive_low(p, dtype, *, causal=False, scale=0.7):
    """The formula computed with plain torch ops in ``dtype`` (16-bit intermediates): the
    error it makes against float64 sets the tolerance band for a kernel in that dtype."""
    def f(q, k, v, mask, s):
        H = q.shape[1]
        W = effective_mask(q.shape[2], k.shape[2], mask, causal or s is not None, s, q.dtype, q.device)
        A = q @ expand_kv(k, H).transpose(-1, -2)
        return ((A if W is None else A * W) @ expand_kv(v, H)) * scale

    names = ["q", "k", "v", "mask", "decay"]
    leaves = [p[n].to(dtype).requires_grad_() if p[n] is not None else None for n in names]
    o = f(*leaves)
    used = [(n, t) for n, t in zip(names, leaves) if t is not None]
    gs = torch.autograd.grad((o.double() * p["do"]).sum(), [t for _, t in used])
    out = {"o": o.detach().double()}
    out.update({f"d{n}": g.double() for (n, _), g in zip(used, gs)})
    return out


def rel_err(a, b):
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)


def check_float32(got, want, tol=2e-5):
    for name, w in want.items():
        if w is None:
            assert got[name] is None, name
            continue
        assert got[name] is not None, f"{name} missing"
        assert got[name].shape == w.shape, f"{name}: shape {tuple(got[name].shape)} != {tuple(w.shape)}"
        err = rel_err(got[name], w)
        assert err < tol, f"{name}: max error {err:.2e} relative to max |{name}| exceeds {tol:g}"


# -- float32 against float64: every mask kind, broadcast shape, GQA, awkward sizes --------------

CASES = [
    # B, H, Hkv, N, M, D, E, mask shape, causal, decay
    (2, 4, 2, 37, 37, 20, 12, None, False, False),
    (2, 4, 4, 45, 31, 48, 20, None, False, False),
    (2, 4, 2, 37, 21, 20, 12, (1, 1, 37, 21), False, False),
    (2, 4, 1, 33, 33, 60, 9, (2, 4, 33, 33), False, False),
    (2, 4, 2, 37, 50, 16, 16, (2, 1, 37, 50), False, False),
    (1, 4, 2, 37, 37, 16, 16, (1, 4, 37, 37), False, False),
    (1, 2, 2, 1, 1, 1, 1, (1, 1, 1, 1), False, False),
    (1, 2, 1, 2, 2, 5, 3, (1, 2, 2, 2), True, False),
    (2, 2, 1, 63, 63, 48, 16, None, True, False),
    (1, 4, 2, 65, 65, 60, 17, (1, 1, 65, 65), True, False),
    (2, 2, 2, 34, 34, 16, 24, (2, 2, 34, 34), True, False),
    (1, 4, 2, 53, 53, 32, 16, None, False, True),
    (2, 2, 1, 47, 47, 16, 16, (1, 2, 47, 47), False, True),
    (1, 4, 4, 33, 33, 24, 1, (1, 1, 33, 33), False, True),
    (1, 2, 2, 130, 130, 16, 16, (1, 1, 130, 130), False, True),
]


def _id(c):
    B, H, Hkv, N, M, D, E, ms, causal, decay = c
    kind = ("dense" if ms else "") + ("+decay" if decay else "+causal" if causal else "")
    ms_s = "x".join(map(str, ms[:2])) if ms else ""
    return f"B{B}-H{H}-Hkv{Hkv}-N{N}-M{M}-D{D}-E{E}-{kind.strip('+') or 'none'}{'-m' + ms_s if ms else ''}"


def assert_float32_case(case, seed=0):
    """The float32 kernels on ``case`` (a CASES-style tuple) against the float64 reference:
    o and every gradient inside the float32 band."""
    B, H, Hkv, N, M, D, E, ms, causal, decay = case
    p = make_problem(B, H, Hkv, N, M, D, E, ms, decay, seed=seed)
    got = run(p, torch.float32, BACKEND, causal=causal)
    want = run(p, torch.float64, "reference", causal=causal, device="cpu")
    check_float32(got, want)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_float32_matches_float64_reference(case):
    assert_float32_case(case)


# -- 16-bit inputs: inside a band set by the same formula computed in that dtype ----------------

LOW_CASES = [
    (1, 4, 2, 65, 65, 48, 20, (1, 1, 65, 65), False, False),
    (1, 2, 1, 70, 70, 60, 16, (1, 2, 70, 70), False, True),
    (2, 2, 2, 63, 63, 16, 16, None, True, False),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", LOW_CASES, ids=[_id(c) for c in LOW_CASES])
def test_half_within_band_of_same_dtype_formula(case, dtype):
    """Measured ratios (kernel error / naive-in-dtype error) were 0.6-2.2: the kernel rounds
    the weighted score tile to the input dtype before the second product, as flash
    attention does, and rounds once more at the end. The band allows 4×."""
    B, H, Hkv, N, M, D, E, ms, causal, decay = case
    p = make_problem(B, H, Hkv, N, M, D, E, ms, decay, seed=1)
    exact = run(p, torch.float64, "reference", causal=causal, device="cpu")
    low = naive_low(p, dtype, causal=causal)
    got = run(p, dtype, BACKEND, causal=causal)
    for name, e in exact.items():
        if e is None:
            continue
        band = 4 * (low[name] - e).abs().max().item() + 1e-6 * e.abs().max().item()
        err = (got[name] - e).abs().max().item()
        assert err <= band, f"{name}: error {err:.3e} outside band {band:.3e} (naive {dtype} error x4)"


@pytest.mark.parametrize("mask_shape", [None, (1, 1, 90, 90), (1, 4, 90, 90)], ids=["nomask", "m1x1", "m1x4"])
def test_steep_and_zero_slopes(mask_shape):
    """Slopes 0 (plain causal), 0.05, 2 and 9: with s = 9 only ~12 keys behind each query
    survive float32 underflow, so most tiles are skipped by the decay horizon; results and
    every gradient must still match float64."""
    p = make_problem(1, 4, 2, 90, 90, 16, 16, mask_shape, decay=True, seed=3)
    p["decay"] = torch.tensor([0.0, 0.05, 2.0, 9.0], dtype=torch.float64)
    got = run(p, torch.float32, BACKEND)
    want = run(p, torch.float64, "reference", device="cpu")
    check_float32(got, want)


# -- state (causal/decay without a dense mask) -------------------------------------------------

@pytest.mark.parametrize("decay", [False, True], ids=["causal", "decay"])
def test_state_in_and_out_with_gradients(decay):
    p = make_problem(2, 4, 2, 41, 41, 20, 12, None, decay, state=True)
    got = run(p, torch.float32, BACKEND, causal=True)
    want = run(p, torch.float64, "reference", causal=True, device="cpu")
    check_float32(got, want)


def test_state_split_equals_whole():
    p = make_problem(1, 2, 1, 40, 40, 16, 8, None, True, state=False)
    dev = lambda t: t.to(DEVICE, torch.float32)  # noqa: E731
    q, k, v, s = dev(p["q"]), dev(p["k"]), dev(p["v"]), dev(p["decay"])
    o, S = linattn.linear_attention(q, k, v, decay=s, output_final_state=True, backend=BACKEND)
    o1, S1 = linattn.linear_attention(q[:, :, :17], k[:, :, :17], v[:, :, :17], decay=s,
                                      output_final_state=True, backend=BACKEND)
    o2, S2 = linattn.linear_attention(q[:, :, 17:], k[:, :, 17:], v[:, :, 17:], decay=s, initial_state=S1,
                                      output_final_state=True, backend=BACKEND)
    torch.testing.assert_close(torch.cat([o1, o2], 2), o, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(S2, S, rtol=1e-5, atol=1e-4)


# -- masks with unusual layouts, scale, gradients only where needed ---------------------------

def test_mask_views_stride_zero_and_transposed():
    """A mask passed as an expand() view (stride 0) or a transposed view is read in place;
    its gradient reaches the small base tensor summed over the broadcast."""
    p = make_problem(2, 2, 1, 29, 29, 16, 16)
    dev = lambda t: t.to(DEVICE, torch.float32)  # noqa: E731
    base = torch.randn(29, 1, dtype=torch.float32, device=DEVICE, requires_grad=True)
    square = torch.randn(29, 29, dtype=torch.float32, device=DEVICE, requires_grad=True)
    for mk in (lambda: base.expand(29, 29), lambda: square.t()):
        outs = []
        for be in (BACKEND, "reference"):
            q, k, v = dev(p["q"]), dev(p["k"]), dev(p["v"])
            o = linattn.linear_attention(q, k, v, mk(), backend=be)
            leaf = base if mk().stride(-1) == 0 else square
            (g,) = torch.autograd.grad((o * dev(p["do"])).sum(), [leaf])
            outs.append((o, g))
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-3)


def _record_launches(monkeypatch):
    names = []
    orig = dense_bwd.launch

    def spy(kernel, tuned, grid_fn, args, *rest, **kw):
        flags = {k: v for k, v in args.items() if k.startswith("NEED_")}
        names.append((kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel), flags))
        return orig(kernel, tuned, grid_fn, args, *rest, **kw)

    monkeypatch.setattr(dense_bwd, "launch", spy)
    return names


def test_constant_mask_gets_no_mask_work(monkeypatch):
    launches = _record_launches(monkeypatch)
    p = make_problem(1, 2, 1, 33, 33, 16, 16, (1, 1, 33, 33))
    got = run(p, torch.float32, BACKEND, grads=("q", "k", "v"))
    assert "dmask" not in got
    kinds = [n for n, _ in launches]
    assert not any("dmask" in n for n in kinds), launches
    assert all(not f.get("NEED_DM", False) for _, f in launches), launches


def test_only_mask_grad_runs_only_the_mask_kernel(monkeypatch):
    launches = _record_launches(monkeypatch)
    p = make_problem(2, 2, 1, 33, 20, 16, 16, (1, 1, 33, 20))
    got = run(p, torch.float32, BACKEND, grads=("mask",))
    want = run(p, torch.float64, "reference", grads=("mask",), device="cpu")
    check_float32(got, want)
    assert [n for n, _ in launches] == ["_dense_bwd_dmask_kernel"], launches


def test_only_v_grad_skips_dk_and_dq(monkeypatch):
    launches = _record_launches(monkeypatch)
    p = make_problem(1, 2, 2, 33, 33, 16, 16, (1, 2, 33, 33))
    got = run(p, torch.float32, BACKEND, grads=("v",))
    want = run(p, torch.float64, "reference", grads=("v",), device="cpu")
    check_float32(got, want)
    assert launches == [("_dense_bwd_dkdv_kernel", {"NEED_DK": False, "NEED_DV": True})], launches


# -- v3: the fused causal/decay backward (dk/dv of key block p and dq of query block p) ------

FUSED_CASES = [
    # B, H, Hkv, N, D, E, mask shape, decay
    (1, 2, 1, 1, 5, 3, None, False),
    (2, 4, 2, 37, 20, 12, None, False),  # N not a multiple of the 32x16 tiles
    (1, 4, 1, 50, 16, 16, None, True),  # one kv head for 4 query heads; slopes gradient
    (2, 2, 2, 65, 48, 17, (1, 1, 65, 65), True),  # dense x decay: fused program + the dM kernel
    (1, 2, 1, 33, 16, 16, (1, 1, 33, 33), False),  # dense x causal
]


def _fused_id(c):
    B, H, Hkv, N, D, E, ms, decay = c
    return f"B{B}-H{H}-Hkv{Hkv}-N{N}-D{D}-E{E}-{'decay' if decay else 'causal'}{'-m1x1' if ms else ''}"


@pytest.mark.parametrize("mode", ["fused", "split"])
@pytest.mark.parametrize("case", FUSED_CASES, ids=[_fused_id(c) for c in FUSED_CASES])
def test_fused_and_split_backward_match_float64(case, mode, monkeypatch):
    """LINATTN_TRITON_DENSE_BWD=fused forces the one-launch backward in float32 too (auto
    keeps it for 16-bit inputs); both paths match float64 and launch what they say."""
    monkeypatch.setenv("LINATTN_TRITON_DENSE_BWD", mode)
    launches = _record_launches(monkeypatch)
    B, H, Hkv, N, D, E, ms, decay = case
    p = make_problem(B, H, Hkv, N, N, D, E, ms, decay, seed=5)
    got = run(p, torch.float32, BACKEND, causal=True)
    want = run(p, torch.float64, "reference", causal=True, device="cpu")
    check_float32(got, want)
    names = [n for n, _ in launches]
    if mode == "fused":
        assert names[0] == "_dense_bwd_fused_kernel" and "_dense_bwd_dq_kernel" not in names, names
        assert ("_dense_bwd_dmask_kernel" in names) == (ms is not None), names
    else:
        assert "_dense_bwd_fused_kernel" not in names, names


def test_fused_backward_is_the_16bit_default(monkeypatch):
    monkeypatch.delenv("LINATTN_TRITON_DENSE_BWD", raising=False)
    launches = _record_launches(monkeypatch)
    p = make_problem(1, 2, 1, 40, 40, 16, 16, None, decay=True)
    run(p, torch.bfloat16, BACKEND)
    run(p, torch.float32, BACKEND)
    # float32: split kernels, dk and dv as two launches (LINATTN_TRITON_DENSE_DKDV=auto)
    assert [n for n, _ in launches] == ["_dense_bwd_fused_kernel", "_dense_bwd_dq_kernel", "_dense_bwd_dkdv_kernel",
                                        "_dense_bwd_dkdv_kernel"]
    monkeypatch.setenv("LINATTN_TRITON_DENSE_BWD", "both")
    with pytest.raises(ValueError, match="LINATTN_TRITON_DENSE_BWD must be one of .*got 'both'"):
        run(p, torch.float32, BACKEND)


@pytest.mark.parametrize("mode", ["fused", "split"])
def test_extreme_slopes(mode, monkeypatch):
    """Slopes 0, 1e-6 (weights ~1 across the sequence), 40 and 1e4 (only the diagonal
    survives float32 underflow; every tile below it is skipped or multiplies exact zeros):
    finite results, every gradient within the float32 band."""
    monkeypatch.setenv("LINATTN_TRITON_DENSE_BWD", mode)
    p = make_problem(1, 4, 2, 70, 70, 16, 16, None, decay=True, seed=7)
    p["decay"] = torch.tensor([0.0, 1e-6, 40.0, 1e4], dtype=torch.float64)
    got = run(p, torch.float32, BACKEND)
    want = run(p, torch.float64, "reference", device="cpu")
    assert all(torch.isfinite(t).all() for t in got.values() if t is not None)
    check_float32(got, want)


def test_gqa_gradients_deterministic():
    p = make_problem(1, 4, 1, 40, 40, 16, 16, (1, 1, 40, 40), decay=True)
    a = run(p, torch.float32, BACKEND)
    b = run(p, torch.float32, BACKEND)
    for name in a:
        if a[name] is not None:
            assert torch.equal(a[name], b[name]), f"{name} differs between two identical runs"


def test_explicit_tile_configs_agree():
    """The launchers accept explicit tiles (the GPU script times them); every one computes the same."""
    from linattn.backends.triton.dense_fwd import dense_forward

    p = make_problem(1, 2, 1, 50, 50, 16, 16, (1, 1, 50, 50), decay=True)
    q, k, v, m = (p[n].to(DEVICE, torch.float32) for n in ("q", "k", "v", "mask"))
    s = p["decay"].to(DEVICE, torch.float32)
    do = p["do"].to(DEVICE, torch.float32)
    outs = []
    for cfg in [(16, 16, 1, 1), (32, 16, 1, 1), (16, 32, 1, 1)]:
        o = dense_forward(q, k, v, m, s, True, 0.5, config=cfg)
        g = dense_bwd.dense_backward(
            do, q, k, v, m, s, True, 0.5, need_dq=True, need_dkv=(True, True), need_dmask=True,
            need_dslopes=True, configs={"dq": cfg, "dkdv": cfg, "dmask": cfg},
        )
        outs.append([o, *g])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


# -- torch.compile, registry, errors --------------------------------------------------------

def test_torch_compile_traces_the_custom_op():
    p = make_problem(1, 2, 1, 20, 20, 16, 16, (1, 1, 20, 20), decay=True)
    dev = lambda t: t.to(DEVICE, torch.float32).requires_grad_()  # noqa: E731

    def f(q, k, v, m, s):
        o, _ = dense.dense_linear_attention(q, k, v, m, decay=s, scale=0.5)
        return o

    ins = [dev(p[n]) for n in ("q", "k", "v", "mask", "decay")]
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    o1 = compiled(*ins)
    g1 = torch.autograd.grad(o1.sum(), ins)
    o2 = f(*ins)
    g2 = torch.autograd.grad(o2.sum(), ins)
    torch.testing.assert_close(o1, o2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 4, 7, 5)
        k = torch.empty(2, 2, 9, 5)
        v = torch.empty(2, 2, 9, 3)
        o = torch.ops.linattn.dense_fwd(q, k, v, None, None, False, 1.0)
        assert o.shape == (2, 4, 7, 3)


def test_backend_declaration_and_routing():
    b = linattn.get_backend(BACKEND)
    assert b is dense.DENSE_BACKEND
    assert b.mask_kinds == frozenset(MASK_KINDS)
    assert b.max_head_dim == 256 and b.auto_rank == {} and b.state and b.mask_grad and b.slopes_grad
    assert torch.float64 not in b.dtypes
    # the `triton` backend sends dense-mask requests here
    p = make_problem(1, 2, 1, 9, 9, 4, 4, (1, 1, 9, 9))
    q, k, v, m = (p[n].to(DEVICE, torch.float32) for n in ("q", "k", "v", "mask"))
    torch.testing.assert_close(
        linattn.linear_attention(q, k, v, m, backend="triton"),
        linattn.linear_attention(q, k, v, m, backend=BACKEND),
    )


def test_bad_inputs_say_expected_and_got():
    q = torch.randn(1, 1, 4, 3, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32, got torch.float64"):
        dense.dense_linear_attention(q, q, q)
    q = torch.randn(1, 1, 4, 257, device=DEVICE)
    with pytest.raises(ValueError, match="up to 256, got D=257"):
        dense.dense_linear_attention(q, q, q)
    with pytest.raises(linattn.UnsupportedRequest, match="exceed 256"):
        linattn.linear_attention(q, q, q, backend=BACKEND)


# -- tiles that fit: shared memory estimate, fallbacks, float32 dot precision ----------------------

def test_smem_estimate_covers_what_an_h100_required():
    """GPU run 1 (H100, Triton 3.6) stopped on two shapes with OutOfResources. The estimate
    reproduces the forward's figure exactly and bounds the dM kernel's from above."""
    from linattn.backends.triton.dense_fwd import H100_SMEM, smem_estimate

    # float16 D = E = 256, forward (64, 64, 4, 3): "Required: 237568"
    assert smem_estimate("fwd", 2, 64, 64, 256, 256, 3) == 237568
    # bfloat16 D = 96, E = 160 (tiles 128, 256), dM kernel (64, 128, 8, 3): "Required: 294912"
    assert smem_estimate("dmask", 2, 64, 128, 128, 256, 3) >= 294912
    assert 237568 > H100_SMEM and 294912 > H100_SMEM  # both rightly refused by the estimate
    with pytest.raises(ValueError, match="kind must be fwd, dq, dkdv, dkdv1, fused or dmask, got 'bwd'"):
        smem_estimate("bwd", 2, 64, 64, 64, 64, 3)


@pytest.mark.parametrize("kind", ["fwd", "dq", "dkdv", "dkdv1", "fused", "dmask"])
def test_every_head_size_has_a_config_that_fits(kind):
    """D, E from 1 to 256 in every dtype: the launcher's chain (fixed config, then the
    fallbacks) holds a config inside the H100 limit by the estimate, for every kernel."""
    from linattn.backends.triton.dense_fwd import FALLBACK_CONFIGS, FWD_FIXED_GPU, H100_SMEM, fits

    for el in (2, 4):
        for D in (1, 16, 48, 60, 64, 96, 128, 160, 200, 256):
            for E in (1, 60, 160, 256):
                BD, BE = common.next_pow2_tile(D), common.next_pow2_tile(E)
                chain = [FWD_FIXED_GPU] + FALLBACK_CONFIGS
                assert any(fits(kind, el, c, BD, BE, H100_SMEM) for c in chain), (kind, el, D, E)
    # and the bf16 D = E = 64 headline keeps its big tiles
    assert fits("fwd", 2, (128, 64, 8, 3), 64, 64, H100_SMEM) and fits("dq", 2, (128, 64, 8, 3), 64, 64, H100_SMEM)
    # float32 (tf32x3 on tensor cores) at D = 64 too
    assert fits("fwd", 4, (128, 64, 8, 3), 64, 64, H100_SMEM) and fits("dq", 4, (128, 64, 8, 3), 64, 64, H100_SMEM)


def test_f16x3_winner_fits_by_the_estimate():
    """The f16x3 tiles (128, 64, 4, 2) (run 30's winner for every kernel) pass the shared-memory
    estimate at D = E = 64 for the forward, dq and the one-accumulator dk/dv programs (the split
    launches), though not for a joint dk+dv program (two accumulators, more than it took)."""
    from linattn.backends.triton.dense_bwd import dkdv_kind
    from linattn.backends.triton.dense_fwd import F16X3_FIXED_GPU, H100_SMEM, fits

    assert dkdv_kind(True, False) == dkdv_kind(False, True) == "dkdv1" and dkdv_kind(True, True) == "dkdv"
    for kind in ("fwd", "dq", "dkdv1"):
        assert fits(kind, 4, F16X3_FIXED_GPU, 64, 64, H100_SMEM), kind
    assert not fits("dkdv", 4, F16X3_FIXED_GPU, 64, 64, H100_SMEM)


class OutOfResources(Exception):
    """Named like Triton's, which the launcher recognises by name and message."""


def test_launcher_falls_back_when_a_config_is_out_of_resources(monkeypatch):
    """A GPU launch whose config does not fit is retried with smaller ones, and the fitting
    one is remembered for the next call; other errors pass through."""
    from linattn.backends.triton import dense_fwd

    monkeypatch.setattr(common, "INTERPRET", False)
    monkeypatch.setenv("LINATTN_TRITON_AUTOTUNE", "0")
    dense_fwd._FITTED.clear()
    dense_fwd._CHAINS.clear()
    tried = []

    class FakeKernel:
        class fn:
            __name__ = "fake"

        def __getitem__(self, grid):
            def call(**kw):
                tried.append((kw["BN"], kw["BM"], kw["num_stages"]))
                if kw["BN"] * kw["BM"] * kw["num_stages"] > 64 * 32 * 2:
                    raise OutOfResources("out of resource: shared memory, Required: 300000, Hardware limit: 232448")
            return call

    args = dict(q=torch.empty(1, dtype=torch.bfloat16), BD=64, BE=64, HAS_MASK=True)
    grid = lambda meta: (1,)  # noqa: E731
    dense_fwd.launch(FakeKernel(), None, grid, args, None, (64, 64, 4, 3), (16, 16, 1, 1), kind="fwd")
    assert tried == [(64, 64, 3), (64, 64, 2), (64, 32, 2)], tried
    tried.clear()
    dense_fwd.launch(FakeKernel(), None, grid, args, None, (64, 64, 4, 3), (16, 16, 1, 1), kind="fwd")
    assert tried == [(64, 32, 2)], tried  # remembered

    class Broken(FakeKernel):
        def __getitem__(self, grid):
            def call(**kw):
                raise RuntimeError("not a resource problem")
            return call

    with pytest.raises(RuntimeError, match="not a resource problem"):
        dense_fwd.launch(Broken(), None, grid, args, None, (64, 64, 4, 3), (16, 16, 1, 1), kind="fwd")
    dense_fwd._FITTED.clear()
    dense_fwd._CHAINS.clear()


def test_float32_dot_precision_default_and_overrides(monkeypatch):
    from linattn.backends.triton.dense_fwd import dot_precision

    # allow_tf32 lives behind torch's cuBLAS module __getattr__/__setattr__: pytest >= 9.2's
    # monkeypatch records it as absent and its undo then calls delattr, which that module
    # refuses. Save and restore it by hand so a failure here cannot leak into other tests.
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    monkeypatch.delenv("LINATTN_TRITON_FP32_DOT", raising=False)
    try:
        matmul.allow_tf32 = False
        assert dot_precision(torch.float32) == "f16x3"
        assert dot_precision(torch.bfloat16) == "tf32"  # ignored by 16-bit dots
        matmul.allow_tf32 = True
        assert dot_precision(torch.float32) == "tf32"
    finally:
        matmul.allow_tf32 = saved
    monkeypatch.setenv("LINATTN_TRITON_FP32_DOT", "ieee")
    assert dot_precision(torch.float32) == "ieee"
    monkeypatch.setenv("LINATTN_TRITON_FP32_DOT", "fp64")
    with pytest.raises(ValueError, match=r"one of \('ieee', 'tf32x3', 'tf32', 'bf16x6', 'f16x3'\), got 'fp64'"):
        dot_precision(torch.float32)


# -- float32 paths of issue 4: operands split once (tf32x3s), dk and dv as two programs -----------

FP32_PATH_CASES = [
    # B, H, Hkv, N, M, D, E, mask shape, causal, decay
    (2, 4, 2, 37, 21, 20, 12, (1, 1, 37, 21), False, False),  # dense mask, GQA, N != M
    (1, 4, 1, 33, 33, 60, 9, (1, 4, 33, 33), False, False),  # per-head mask (dM fused in dq), MQA, odd D/E
    (1, 4, 2, 65, 65, 60, 17, (1, 1, 65, 65), True, False),  # dense x causal
    (2, 2, 1, 47, 47, 16, 16, (1, 2, 47, 47), False, True),  # dense x decay, slopes gradient
]


@triton.jit
def _tf32_halves(x, y, z, PRECISION: tl.constexpr, N: tl.constexpr):
    o = tl.arange(0, N)
    hi, lo = split_tf32(tl.load(x + o), PRECISION)
    tl.store(y + o, hi)
    tl.store(z + o, lo)


@pytest.mark.parametrize("tf32x3,dkdv", [("split", "split"), ("split", "joint"), ("triton", "split")])
@pytest.mark.parametrize("case", FP32_PATH_CASES, ids=[_id(c) for c in FP32_PATH_CASES])
def test_float32_paths_match_float64(case, tf32x3, dkdv, monkeypatch):
    """LINATTN_TRITON_DENSE_TF32X3=split (the kernels split each float32 tile into TF32
    halves once and issue the three TF32 products themselves) and LINATTN_TRITON_DENSE_DKDV=
    split (dk and dv from two launches) give every output and gradient within the float32
    band. Under the interpreter the split halves are formed exactly as on a GPU (bit
    rounding) and their products are exact, so this checks the split arithmetic itself."""
    monkeypatch.setenv("LINATTN_TRITON_FP32_DOT", "tf32x3")
    monkeypatch.setenv("LINATTN_TRITON_DENSE_TF32X3", tf32x3)
    monkeypatch.setenv("LINATTN_TRITON_DENSE_DKDV", dkdv)
    monkeypatch.setenv("LINATTN_TRITON_DENSE_BWD", "split")  # causal/decay through the dk/dv kernel too
    launches = _record_launches(monkeypatch)
    assert_float32_case(case, seed=11)
    dkdv_flags = [(f["NEED_DK"], f["NEED_DV"]) for n, f in launches if n == "_dense_bwd_dkdv_kernel"]
    assert dkdv_flags == ([(True, False), (False, True)] if dkdv == "split" else [(True, True)]), launches


def test_float32_split_dk_only_and_dv_only(monkeypatch):
    """With dk/dv split, a backward that needs only one of them launches only that one."""
    monkeypatch.setenv("LINATTN_TRITON_DENSE_DKDV", "split")
    monkeypatch.setenv("LINATTN_TRITON_DENSE_TF32X3", "split")
    launches = _record_launches(monkeypatch)
    p = make_problem(1, 2, 1, 33, 33, 16, 16, (1, 1, 33, 33), seed=3)
    got = run(p, torch.float32, BACKEND, grads=("v",))
    want = run(p, torch.float64, "reference", device="cpu", grads=("v",))
    check_float32(got, want)
    assert [(f["NEED_DK"], f["NEED_DV"]) for n, f in launches if n == "_dense_bwd_dkdv_kernel"] == [(False, True)]


def test_tf32_split_halves():
    """common.split_tf32: both halves exact in TF32 (13 low mantissa bits zero), hi + lo = x
    to 2^-22 relative over the float32 range, |lo| <= 2^-11 |x| (hi rounded to nearest; near
    the float32 maximum truncated, so a finite x (the maximum included) gives finite halves),
    inf stays inf in hi."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g) * torch.exp2(torch.randint(-120, 120, (1000,), generator=g).float())
    fmax = torch.finfo(torch.float32).max
    special = torch.tensor([fmax, -fmax, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -12, -(1.0 + 2 ** -11), 0.0, -0.0, 2.0 ** -126,
                            float("inf"), -float("inf")])
    x = torch.cat([x, special, torch.zeros(1024 - 1000 - special.numel())]).to(DEVICE)
    hi, lo = torch.empty_like(x), torch.empty_like(x)
    _tf32_halves[(1,)](x, hi, lo, common.PRESPLIT, 1024)
    x, hi, lo = x.cpu(), hi.cpu(), lo.cpu()
    assert ((hi.view(torch.int32) & 0x1FFF) == 0).all() and ((lo.view(torch.int32) & 0x1FFF) == 0).all()
    fin = torch.isfinite(x)
    assert torch.isfinite(hi[fin]).all() and torch.isfinite(lo[fin]).all()
    normal = fin & (x.abs() >= 2.0 ** -100)
    xd = x[normal].double()
    assert ((xd - hi[normal].double() - lo[normal].double()).abs() <= 2.0 ** -22 * xd.abs()).all()
    inner = normal & (x.abs() < 2.0 ** 127)  # next to the maximum hi is truncated instead: |lo| < 2^-10 |x|
    assert (lo[inner].double().abs() <= 2.0 ** -11 * x[inner].double().abs()).all()
    assert (lo[normal].double().abs() < 2.0 ** -10 * xd.abs()).all()
    assert hi[1002].item() == 1.0 + 2 ** -10  # a tie rounds away from zero (cvt.rna)
    assert hi[1008].item() == float("inf") and hi[1009].item() == -float("inf")


@triton.jit
def _f16_halves(x, hi_r, lo_r, inv_r, hi_c, lo_c, inv_c, R: tl.constexpr, C: tl.constexpr):
    o_r, o_c = tl.arange(0, R), tl.arange(0, C)
    b = tl.load(x + o_r[:, None] * C + o_c[None, :])
    h, l_, i = common.split_f16(b, 1)  # per row
    tl.store(hi_r + o_r[:, None] * C + o_c[None, :], h.to(tl.float32))
    tl.store(lo_r + o_r[:, None] * C + o_c[None, :], l_.to(tl.float32))
    tl.store(inv_r + o_r, i)
    h, l_, i = common.split_f16(b, 0)  # per column
    tl.store(hi_c + o_r[:, None] * C + o_c[None, :], h.to(tl.float32))
    tl.store(lo_c + o_r[:, None] * C + o_c[None, :], l_.to(tl.float32))
    tl.store(inv_c + o_c, i)


def test_f16x3_split_halves():
    """common.split_f16 (LINATTN_TRITON_FP32_DOT=f16x3): per row (axis 1) and per column
    (axis 0) a power of two 1/inv puts the largest magnitude in [2^14, 2^15); (hi + lo)·inv
    equals x to 2^-22 relative for every value within 2^-17 of its row's (column's) largest,
    and to 2^-38 of that largest below; all-zero, tiny (1e-38 ... 1e-30) and huge (1e30) rows
    and columns are fine."""
    g = torch.Generator().manual_seed(0)
    R = C = 32
    x = torch.randn(R, C, generator=g) * torch.exp2(torch.randint(-20, 20, (R, C), generator=g).float())
    x[1] = 0.0
    x[2] *= 1e-38
    x[3] *= 1e-30
    x[4] *= 1e30
    x[:, 5] = 0.0
    x[6, 7] = 1e6  # one large value: the rest of row 6 falls far below it
    x = x.to(DEVICE)
    out = [torch.empty(R, C, device=DEVICE) for _ in range(2)] + [torch.empty(R, device=DEVICE)]
    out += [torch.empty(R, C, device=DEVICE) for _ in range(2)] + [torch.empty(C, device=DEVICE)]
    _f16_halves[(1,)](x, *out, R, C)
    x = x.cpu().double()
    for axis, (hi, lo, inv) in ((1, out[:3]), (0, out[3:])):
        hi, lo, inv = hi.cpu().double(), lo.cpu().double(), inv.cpu().double()
        assert (torch.log2(inv) == torch.round(torch.log2(inv))).all()  # powers of two
        big = x.abs().amax(dim=axis)
        s = 1.0 / inv
        live = (big > 1e-33) & (big < 1e33)  # rows/columns whose largest is a normal float32 far from the ends
        scaled = big * s
        assert ((scaled[live] >= 2.0 ** 14) & (scaled[live] < 2.0 ** 15)).all()
        inv_b = inv[:, None] if axis == 1 else inv[None, :]
        big_b = big[:, None] if axis == 1 else big[None, :]
        err = (x - (hi + lo) * inv_b).abs()
        near = x.abs() >= big_b * 2.0 ** -17
        assert (err[near] <= 2.0 ** -22 * x.abs()[near]).all()
        assert (err <= 2.0 ** -38 * big_b + 2.0 ** -22 * x.abs()).all()
        assert torch.isfinite(hi).all() and torch.isfinite(lo).all()


@pytest.mark.parametrize("case", FP32_PATH_CASES, ids=[_id(c) for c in FP32_PATH_CASES])
def test_float32_f16x3_matches_float64(case, monkeypatch):
    """f16x3 (the float32 default: every float32 product as three float16 products of
    power-of-two scaled halves, common.dot): every output and gradient within the float32 band.
    Under the interpreter the halves are formed as on a GPU and their products are exact."""
    monkeypatch.setenv("LINATTN_TRITON_FP32_DOT", "f16x3")
    assert_float32_case(case, seed=11)


def test_f16x3_only_in_the_dense_kernels(monkeypatch):
    """LINATTN_TRITON_FP32_DOT=f16x3 reaches the kernel families that ask for it (dense); the
    chunk kernels keep their own float32 default."""
    monkeypatch.setenv("LINATTN_TRITON_FP32_DOT", "f16x3")
    assert common.dot_precision(torch.float32, fp32_default="ieee") == "ieee"
    assert common.dot_precision(torch.float32, fp32_default="ieee", f16x3=True) == "f16x3"
    monkeypatch.setenv("LINATTN_TRITON_FP32_DOT", "tf32x3")
    assert common.dot_precision(torch.float32, fp32_default="ieee") == "tf32x3"


def test_f16x3_channel_tiles_at_least_64_on_a_gpu(monkeypatch):
    """On a GPU, f16x3 kernels pad their channel tiles to 64 (dense_fwd.F16X3_MIN_CHANNEL_TILE:
    narrower N-contiguous float16 right operands were misread by Triton 3.6); other precisions,
    and the interpreter, keep the next power of two from 16."""
    from linattn.backends.triton import dense_fwd

    monkeypatch.setattr(common, "INTERPRET", False)
    assert dense_fwd.channel_tiles(3, 17, "f16x3") == (64, 64)
    assert dense_fwd.channel_tiles(64, 96, "f16x3") == (64, 128)
    assert dense_fwd.channel_tiles(3, 17, "tf32x3") == (16, 32)
    assert dense_fwd.channel_tiles(3, 17, "tf32") == (16, 32)
    monkeypatch.setattr(common, "INTERPRET", True)
    assert dense_fwd.channel_tiles(3, 17, "f16x3") == (16, 32)


def test_float32_path_knobs_say_expected_and_got(monkeypatch):
    from linattn.backends.triton.dense_bwd import dkdv_mode
    from linattn.backends.triton.dense_fwd import dot_precision

    monkeypatch.delenv("LINATTN_TRITON_FP32_DOT", raising=False)
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        monkeypatch.setenv("LINATTN_TRITON_DENSE_TF32X3", "split")
        assert dot_precision(torch.float32) == "f16x3"  # the split applies to tf32x3 products only
        monkeypatch.setenv("LINATTN_TRITON_FP32_DOT", "tf32x3")
        assert dot_precision(torch.float32) == common.PRESPLIT
        assert dot_precision(torch.bfloat16) == "tf32"
        monkeypatch.setenv("LINATTN_TRITON_FP32_DOT", "ieee")  # an explicit precision wins
        assert dot_precision(torch.float32) == "ieee"
        monkeypatch.setenv("LINATTN_TRITON_FP32_DOT", "f16x3")
        assert dot_precision(torch.float32) == "f16x3"
        assert dot_precision(torch.bfloat16) == "tf32"
        monkeypatch.delenv("LINATTN_TRITON_FP32_DOT")
        monkeypatch.setenv("LINATTN_TRITON_DENSE_TF32X3", "cutlass")
        with pytest.raises(ValueError, match=r"LINATTN_TRITON_DENSE_TF32X3 must be one of \('triton', 'split'\), got 'cutlass'"):
            dot_precision(torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    monkeypatch.setenv("LINATTN_TRITON_DENSE_DKDV", "both")
    with pytest.raises(ValueError, match=r"LINATTN_TRITON_DENSE_DKDV must be one of \('auto', 'joint', 'split'\), got 'both'"):
        dkdv_mode()


@pytest.mark.parametrize("dtype,want", [(torch.float32, [(True, False), (False, True)]), (torch.bfloat16, [(True, True)])])
def test_dkdv_default_splits_float32_only(dtype, want, monkeypatch):
    """The default (auto) runs dk and dv as two launches for float32 (GPU run 8: 3.55 -> 2.54 ms
    on the seed, the joint float32 program spills) and as one for 16-bit inputs."""
    monkeypatch.delenv("LINATTN_TRITON_DENSE_DKDV", raising=False)
    launches = _record_launches(monkeypatch)
    p = make_problem(1, 2, 1, 33, 33, 16, 16, (1, 1, 33, 33), seed=4)
    run(p, dtype, BACKEND)
    assert [(f["NEED_DK"], f["NEED_DV"]) for n, f in launches if n == "_dense_bwd_dkdv_kernel"] == want


@pytest.mark.parametrize("maskt", ["on", "off"])
@pytest.mark.parametrize("case", FP32_PATH_CASES + [(2, 2, 2, 40, 29, 16, 24, (2, 2, 40, 29), False, False)],
                         ids=[_id(c) for c in FP32_PATH_CASES] + ["per-bh-mask"])
def test_dkdv_transposed_mask_copy(case, maskt, monkeypatch):
    """LINATTN_TRITON_DENSE_MASKT: the dk/dv kernel reading Mᵀ tiles from a column-major copy
    of the mask gives every output and gradient within the float32 band (broadcast masks, a
    per-(b, h) mask, N != M, with causal and decay)."""
    monkeypatch.setenv("LINATTN_TRITON_DENSE_MASKT", maskt)
    monkeypatch.setenv("LINATTN_TRITON_DENSE_BWD", "split")
    assert_float32_case(case, seed=12)


def test_maskt_knob_says_expected_and_got(monkeypatch):
    from linattn.backends.triton.dense_bwd import mask_transposed_for_dkdv

    m = torch.zeros(1, 1, 4, 4)
    monkeypatch.setenv("LINATTN_TRITON_DENSE_MASKT", "auto")
    assert mask_transposed_for_dkdv(m, 2, 3) and not mask_transposed_for_dkdv(torch.zeros(2, 3, 4, 4), 2, 3)
    monkeypatch.setenv("LINATTN_TRITON_DENSE_MASKT", "yes")
    with pytest.raises(ValueError, match=r"LINATTN_TRITON_DENSE_MASKT must be one of \('off', 'on', 'auto'\), got 'yes'"):
        mask_transposed_for_dkdv(m, 1, 1)
