"""The linear-time Triton kernels (``chunk.py``) and the fused decode step (``decode.py``).

Float64 runs check the kernels' logic to ~1e-12 against the float64 reference (the
kernels compute in float64 then), at awkward sizes: N = 1, 2, chunk ± 1, primes, several
chunks and splits; D, E = 1, 48, 60; MQA and GQA. Half and single precision are checked
inside the harness's tolerance bands (``linattn.testing.bands``). Every configuration of
the schedule is exercised: one split per sequence (the fused schedule) and short splits
(boundary states from the state kernel and the scan), forward and backward alike.

The kernels run on a CUDA device, or on the CPU under the Triton interpreter when
TRITON_INTERPRET=1 was set before linattn was imported (tox's interpreter env does so);
otherwise this module is skipped. Under the interpreter a chunk is 16 tokens and the
backward kernels take 16-channel slices, so sizes of a few dozen cross many edges.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import linattn
from linattn.backends.reference import reference_forward
from linattn.backends.triton import common

if not common.HAVE_TRITON:
    pytest.skip("triton is not installed", allow_module_level=True)
if not common.INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "needs a CUDA device, or TRITON_INTERPRET=1 set before linattn is imported "
        "(e.g. `TRITON_INTERPRET=1 pytest tests/test_triton_chunk.py`)",
        allow_module_level=True,
    )

from linattn.backends.triton.chunk import ChunkConfig, chunk_config, chunk_linear_attention, current_config  # noqa: E402
from linattn.backends.triton.decode import decode_step_reference, fused_decode_step  # noqa: E402
from linattn.testing.problem import Problem  # noqa: E402
from linattn.testing.properties import run_property  # noqa: E402

pytestmark = pytest.mark.interpreter
DEVICE = "cpu" if common.INTERPRET else "cuda"
BT = 16 if common.INTERPRET else 64  # the chunk length the kernels use here


def make(B, H, Hkv, N, D, E, *, kind="decay", state=False, seed=0, slope_scale=0.3):
    """Random float64 leaves on the CPU and the upstream gradients."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(
        q=r(B, H, N, D), k=r(B, Hkv, N, D), v=r(B, Hkv, N, E),
        decay=(0.01 + slope_scale * torch.rand(H, generator=g, dtype=torch.float64)) if kind == "decay" else None,
        causal=kind != "none",
        initial_state=r(B, H, D, E) if state else None,
        do=r(B, H, N, E), dS=r(B, H, D, E) if state else None,
    )


def run(p, fn, dtype=torch.float64, device=DEVICE, grads=True, **kw):
    """o, final state and grads of <o, do> + <S, dS> for q, k, v, decay, initial_state."""
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = {}
    for name in ("q", "k", "v", "decay", "initial_state"):
        if p[name] is not None:
            want = dtype if name in "qkv" else sdt
            leaves[name] = p[name].to(device, want).requires_grad_(grads)
    state = p["initial_state"] is not None
    o, S = fn(leaves["q"], leaves["k"], leaves["v"], causal=p["causal"], decay=leaves.get("decay"),
              scale=0.7, initial_state=leaves.get("initial_state"), output_final_state=state, **kw)
    out = {"o": o, "S": S}
    if grads:
        loss = (o.double() * p["do"].to(device)).sum()
        if state:
            loss = loss + (S.double() * p["dS"].to(device)).sum()
        names = list(leaves)
        out.update({f"d{n}": g for n, g in zip(names, torch.autograd.grad(loss, [leaves[n] for n in names]))})
    return {n: (t.detach().double().cpu() if t is not None else None) for n, t in out.items()}


def reference(q, k, v, **kw):
    return reference_forward(q, k, v, None, **kw)


def assert_close(got, want, tol):
    for name, w in want.items():
        if w is None:
            assert got[name] is None, name
            continue
        assert got[name].shape == w.shape, f"{name}: shape {tuple(got[name].shape)} != {tuple(w.shape)}"
        err = (got[name] - w).abs().max().item() / max(w.abs().max().item(), 1e-300)
        assert err < tol, f"{name}: max error {err:.2e} relative to max |{name}| exceeds {tol:g}"


# -- float64: the kernels' logic, every mask kind, awkward sizes ---------------------------------

CASES = [
    # B, H, Hkv, N, D, E, kind
    (1, 2, 1, 1, 1, 1, "decay"),
    (1, 2, 2, 2, 5, 3, "causal"),
    (2, 2, 1, BT - 1, 7, 9, "none"),
    (1, 4, 2, BT + 1, 48, 20, "decay"),
    (1, 2, 1, 37, 20, 60, "causal"),
    (2, 2, 2, 63, 60, 16, "decay"),
    (1, 4, 1, 65, 16, 48, "none"),
    (1, 2, 1, 130, 16, 16, "decay"),
]


def _id(c):
    return "B{}-H{}-Hkv{}-N{}-D{}-E{}-{}".format(*c)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_float64_matches_reference(case):
    B, H, Hkv, N, D, E, kind = case
    p = make(B, H, Hkv, N, D, E, kind=kind, state=kind != "none", seed=N)
    got = run(p, chunk_linear_attention)
    want = run(p, reference, device="cpu")
    assert_close(got, want, 1e-10)


@pytest.mark.parametrize("split", [BT, 2 * BT, -1], ids=["split1chunk", "split2chunks", "fused"])
@pytest.mark.parametrize("kind", ["none", "causal", "decay"])
def test_schedules_agree_with_reference(kind, split):
    """Fused and split schedules, forward and backward, with GQA, state and a ragged tail."""
    p = make(1, 4, 2, 3 * BT + 5, 20, 24, kind=kind, state=kind != "none", seed=3)
    want = run(p, reference, device="cpu")
    with chunk_config(split=split, bwd_split=split):
        got = run(p, chunk_linear_attention)
    assert_close(got, want, 1e-10)


@pytest.mark.parametrize("loop", [dict(fwd_peel=-1), dict(fwd_early=1), dict(fwd_peel=-1, fwd_early=1)],
                         ids=["v3-loop", "early", "v3-loop+early"])
@pytest.mark.parametrize("split", [BT, -1], ids=["split1chunk", "fused"])
@pytest.mark.parametrize("kind", ["none", "causal", "decay"])
def test_forward_loop_variants_agree_with_reference(kind, split, loop):
    """The output kernel's loop variants against float64, ragged tail and a whole-chunk N:
    v3's loop (every chunk its own factors and masks; the default is the peeled loop) and
    the state product first."""
    for n, seed in ((3 * BT + 5, 3), (2 * BT, 8)):
        p = make(1, 4, 2, n, 20, 24, kind=kind, state=kind != "none", seed=seed)
        want = run(p, reference, device="cpu", grads=False)
        with chunk_config(split=split, **loop):
            got = run(p, chunk_linear_attention, grads=False)
        assert_close(got, want, 1e-10)


def test_forward_loop_variants_varlen_and_low_precision():
    """Peeled loop (the default) with packed sequences (empty, shorter than a chunk) == the v3 loop, and
    bfloat16 decay inside the harness's bands (with the dk/dv launch's own warps/stages)."""
    lens = [BT + 5, 0, 3, 2 * BT]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int64)
    N, H, D, E = int(cu[-1]), 2, 12, 10
    g = torch.Generator().manual_seed(9)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE)  # noqa: E731
    q, k, v, h0 = r(1, H, N, D), r(1, H, N, D), r(1, H, N, E), r(len(lens), H, D, E)
    s = (0.05 + 0.3 * torch.rand(H, generator=g, dtype=torch.float64)).to(DEVICE)
    with chunk_config(fwd_peel=1, fwd_early=1):
        o, st = chunk_linear_attention(q, k, v, decay=s, initial_state=h0, output_final_state=True,
                                       cu_seqlens=cu.to(DEVICE))
    with chunk_config(fwd_peel=-1):  # v3's loop
        o_ref, st_ref = chunk_linear_attention(q, k, v, decay=s, initial_state=h0, output_final_state=True,
                                               cu_seqlens=cu.to(DEVICE))
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(st, st_ref, rtol=1e-12, atol=1e-12)
    prob = Problem(B=1, H=2, Hkv=1, N=2 * BT + 7, M=2 * BT + 7, D=24, E=20, dtype="bfloat16", mask_kind="decay",
                   slopes="mixed", initial_state=True, final_state=True, grads=("q", "k", "v", "initial_state"),
                   seed=31)
    with chunk_config(fwd_peel=1, fwd_early=1, bwd_dkv_warps=8, bwd_dkv_stages=3):
        res = run_property("backward", "triton", prob)
    assert res.ok, res.message()


def test_tile_overrides_agree():
    """Non-default channel slices in every kernel (more slices than the defaults)."""
    p = make(1, 2, 1, 2 * BT + 3, 48, 40, state=True, seed=4)
    want = run(p, reference, device="cpu")
    with chunk_config(fwd_bv=16, state_bk=16, state_bv=16, bwd_bk=16, bwd_bv=16, split=BT, bwd_split=2 * BT):
        got = run(p, chunk_linear_attention)
    assert_close(got, want, 1e-10)


# -- lower precision: inside the harness's bands -------------------------------------------------

LOW = [
    Problem(B=2, H=4, Hkv=2, N=BT * 2 + 7, M=BT * 2 + 7, D=48, E=20, dtype="bfloat16", mask_kind="decay",
            slopes="mixed", initial_state=True, final_state=True,
            grads=("q", "k", "v", "slopes", "initial_state"), seed=11),
    Problem(B=1, H=2, Hkv=1, N=70, M=70, D=60, E=16, dtype="float16", mask_kind="causal",
            grads=("q", "k", "v"), seed=12),
    Problem(B=1, H=2, Hkv=2, N=65, M=65, D=16, E=33, dtype="float32", mask_kind="decay", slopes="tnl",
            final_state=True, grads=("q", "k", "v", "slopes"), seed=13),
    Problem(B=2, H=2, Hkv=1, N=40, M=40, D=24, E=8, dtype="bfloat16", mask_kind="none",
            grads=("q", "k", "v"), seed=14),
]


@pytest.mark.parametrize("problem", LOW, ids=lambda p: f"{p.dtype}-{p.mask_kind}-N{p.N}")
def test_low_precision_within_bands(problem):
    res = run_property("backward", "triton", dataclasses.replace(problem, device=DEVICE))
    assert res.ok, res.message()
    print(f"worst error/band {res.worst_fraction:.2f} ({res.worst.quantity})")


def test_float16_varlen_slopes_gradient_regression():
    """Fuzz finding triton-backward-e62d3fff65: one rounding of the state to float16 made
    dslopes 4.8× its band with packed sequences; the dq kernel now splits those operands."""
    p = Problem(B=1, H=2, Hkv=1, N=100, M=100, D=32, E=24, dtype="float16", device=DEVICE, mask_kind="decay",
                slopes="moderate", grads=("q", "k", "v", "slopes"), cu_seqlens=(0, 1, 37, 37, 100), seed=3)
    res = run_property("backward", "triton", p)
    assert res.ok, res.message()


def test_large_slopes_give_zeros_not_nan():
    """s = 1e4: λ underflows to 0 and each output is the diagonal term alone."""
    p = make(1, 2, 1, BT + 3, 8, 8, state=True, seed=5)
    p["decay"] = torch.tensor([1e4, 3e2], dtype=torch.float64)
    with chunk_config(split=BT, bwd_split=BT):
        got = run(p, chunk_linear_attention, dtype=torch.float32)
    for name, t in got.items():
        assert t is not None and torch.isfinite(t).all(), f"{name} has NaN/inf"
    q, k, v = p["q"], p["k"], p["v"]
    diag = 0.7 * (q * k).sum(-1, keepdim=True) * v
    torch.testing.assert_close(got["o"], diag, rtol=1e-5, atol=1e-5)
    assert got["ddecay"].abs().max() < 1e-3  # every factor λ^x (x >= 1) and x·λ^x is 0


# -- state: splitting, varlen --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["causal", "decay"])
def test_state_split_equals_whole(kind):
    p = make(2, 2, 1, 2 * BT + 9, 12, 10, kind=kind, seed=6)
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    q, k, v, s = dev(p["q"]), dev(p["k"]), dev(p["v"]), dev(p["decay"])
    causal = kind == "causal"
    o, S = chunk_linear_attention(q, k, v, causal=causal, decay=s, output_final_state=True)
    cut = BT + 3
    o1, S1 = chunk_linear_attention(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], causal=causal, decay=s,
                                    output_final_state=True)
    o2, S2 = chunk_linear_attention(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], causal=causal, decay=s,
                                    initial_state=S1, output_final_state=True)
    torch.testing.assert_close(torch.cat([o1, o2], 2), o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S2, S, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("split", [0, BT], ids=["default", "split1chunk"])
def test_varlen_equals_separate_calls(split):
    """Packed sequences (one empty, one shorter than a chunk) == one call per sequence,
    with initial states, final states and every gradient."""
    lens = [BT + 5, 0, 3, 2 * BT + 1]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int64)
    N, H, Hkv, D, E, S = int(cu[-1]), 4, 2, 12, 10, len(lens)
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()  # noqa: E731
    q, k, v, h0 = r(1, H, N, D), r(1, Hkv, N, D), r(1, Hkv, N, E), r(S, H, D, E)
    s = (0.05 + 0.3 * torch.rand(H, generator=g, dtype=torch.float64)).to(DEVICE).requires_grad_()
    do = torch.randn(1, H, N, E, generator=g, dtype=torch.float64).to(DEVICE)
    dS = torch.randn(S, H, D, E, generator=g, dtype=torch.float64).to(DEVICE)

    def grads(o, st):
        return torch.autograd.grad((o * do).sum() + (st * dS).sum(), [q, k, v, s, h0])

    with chunk_config(split=split, bwd_split=split):
        o, st = chunk_linear_attention(q, k, v, decay=s, initial_state=h0, output_final_state=True,
                                       cu_seqlens=cu.to(DEVICE))
        g_packed = grads(o, st)
    outs, states = [], []
    for i, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        if b > a:
            o_i, s_i = chunk_linear_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], decay=s,
                                              initial_state=h0[i:i + 1], output_final_state=True)
        else:  # an empty sequence passes its state through
            o_i, s_i = q[:, :, a:b, :E] * 0, h0[i:i + 1] * 1
        outs.append(o_i)
        states.append(s_i)
    o_sep, st_sep = torch.cat(outs, 2), torch.cat(states, 0)
    torch.testing.assert_close(o, o_sep, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(st, st_sep, rtol=1e-12, atol=1e-12)
    for name, a_, b_ in zip("q k v s h0".split(), g_packed, grads(o_sep, st_sep)):
        torch.testing.assert_close(a_, b_, rtol=1e-10, atol=1e-10, msg=f"d{name}")


def test_public_api_routes_here():
    p = make(1, 2, 1, 20, 8, 8, seed=8)
    q, k, v, s = (p[n].to(DEVICE, torch.float32) for n in ("q", "k", "v", "decay"))
    o = linattn.linear_attention(q, k, v, decay=s, backend="triton")
    o2, _ = chunk_linear_attention(q, k, v, decay=s)
    torch.testing.assert_close(o, o2, rtol=0, atol=0)


# -- the decode step -------------------------------------------------------------------------------

@pytest.mark.parametrize("decay", [False, True], ids=["causal", "decay"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
def test_decode_step_is_one_reference_step(dtype, decay):
    """The step equals the last row of the reference run on the sequence plus the token."""
    B, H, Hkv, N, D, E = 2, 4, 2, 5, 48, 20
    p = make(B, H, Hkv, N + 1, D, E, kind="decay" if decay else "causal", seed=9)
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    q, k, v = (p[n].to(dtype) for n in ("q", "k", "v"))
    s = p["decay"]
    o_ref, S_ref = reference_forward(q.double(), k.double(), v.double(), None, causal=True, decay=s,
                                     scale=0.7, output_final_state=True)
    _, S_prev = reference_forward(q[:, :, :N].double(), k[:, :, :N].double(), v[:, :, :N].double(), None,
                                  causal=True, decay=s, output_final_state=True)
    dev = lambda t: t.to(DEVICE)  # noqa: E731
    state = dev(S_prev.to(sdt))
    o, new = fused_decode_step(dev(q[:, :, N]), dev(k[:, :, N]), dev(v[:, :, N]), state,
                               decay=None if s is None else dev(s.to(sdt)), scale=0.7)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(new.double().cpu(), S_ref, rtol=tol, atol=tol * S_ref.abs().max().item())
    torch.testing.assert_close(o.double().cpu(), o_ref[:, :, N], rtol=tol, atol=tol * o_ref.abs().max().item())
    assert o.dtype == dtype and new.dtype == sdt and new.data_ptr() != state.data_ptr()


def test_decode_step_inplace_and_grad_fallback():
    B, H, D, E = 2, 2, 20, 36
    g = torch.Generator().manual_seed(10)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    q, k, v, st = r(B, H, D), r(B, 1, D), r(B, 1, E), r(B, H, D, E)
    s = torch.tensor([0.1, 2.0], device=DEVICE)
    o_ref, new_ref = decode_step_reference(q, k, v, st, decay=s, scale=0.5)
    st2 = st.clone()
    o, new = fused_decode_step(q, k, v, st2, decay=s, scale=0.5, inplace=True)
    assert new is st2
    torch.testing.assert_close(new, new_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    qg = q.clone().requires_grad_()
    o, _ = fused_decode_step(qg, k, v, st, decay=s, scale=0.5)
    (g_q,) = torch.autograd.grad(o.sum(), qg)
    torch.testing.assert_close(g_q, 0.5 * new_ref.sum(-1), rtol=1e-5, atol=1e-5)


# -- packaging: torch.compile, config, errors --------------------------------------------------------

def test_torch_compile_traces_the_custom_ops():
    p = make(1, 2, 1, BT + 2, 8, 8, state=True, seed=12)
    f = torch.compile(chunk_linear_attention, backend="aot_eager", fullgraph=True)
    got = run(p, f)
    want = run(p, reference, device="cpu")
    assert_close(got, want, 1e-10)


def test_config_env_and_errors(monkeypatch):
    monkeypatch.setenv("LINATTN_CHUNK", "split=64, fwd_bv=32")
    assert current_config() == ChunkConfig(split=64, fwd_bv=32)
    with chunk_config(bwd_bk=16) as cfg:
        assert cfg == ChunkConfig(split=64, fwd_bv=32, bwd_bk=16)
    monkeypatch.setenv("LINATTN_CHUNK", "splat=3")
    with pytest.raises(ValueError, match="name=int pairs"):
        current_config()
    monkeypatch.delenv("LINATTN_CHUNK")
    q = torch.randn(1, 2, 5, 4, device=DEVICE)
    with pytest.raises(ValueError, match=r"initial_state must have shape \(1, 2, 4, 3\), got \(1, 2, 4, 4\)"):
        chunk_linear_attention(q, q, q[..., :3], causal=True, initial_state=torch.zeros(1, 2, 4, 4, device=DEVICE))
    with pytest.raises(ValueError, match="head dims up to 256"):
        chunk_linear_attention(torch.randn(1, 1, 2, 257), torch.randn(1, 1, 2, 257), torch.randn(1, 1, 2, 3))
    with pytest.raises(ValueError, match=r"state must have shape \[B, H, D, E\]"):
        fused_decode_step(q[:, :, 0], q[:, :, 0], q[:, :, 0, :3], torch.zeros(1, 2, 4, 4, device=DEVICE))
    with pytest.raises(TypeError, match="state must be torch.float32"):
        fused_decode_step(q[:, :, 0], q[:, :, 0], q[:, :, 0], torch.zeros(1, 2, 4, 4, device=DEVICE,
                                                                          dtype=torch.float64))


# -- the host path: eager calls skip the custom-op machinery, no per-call host→device work ---------

def test_host_path_is_lean(monkeypatch):
    """With the kernels mocked out, an eager fused-schedule step launches exactly one forward and
    two backward kernels, goes through neither custom op (torch.compile still does, above),
    and builds no index tensors (those are for packed sequences only)."""
    from linattn.backends.triton import chunk, chunk_bwd, chunk_fwd

    launched = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *a, **kw: launched.append((self.name, a))

    for mod in (chunk_fwd, chunk_bwd):
        for name in dir(mod):
            if "_kernel" in name:
                monkeypatch.setattr(mod, name, Fake(name))

    def refuse(*a, **kw):
        raise AssertionError("the eager path went through a custom op")

    monkeypatch.setattr(chunk, "_chunk_fwd_op", refuse)
    monkeypatch.setattr(chunk, "_chunk_bwd_op", refuse)
    q, k, v = (torch.randn(2, 4, 3 * BT, 16, requires_grad=True) for _ in range(3))
    s = torch.rand(4, requires_grad=True)
    with chunk_config(split=-1, bwd_split=-1):
        o, _ = chunk_linear_attention(q, k, v, decay=s)
        torch.autograd.grad(o, (q, k, v, s), torch.ones_like(o))
    assert [n for n, _ in launched] == ["chunk_fwd_kernel_o", "chunk_bwd_kernel_dq", "chunk_bwd_kernel_dkv"]
    # split_index (the packed-sequence index) is None in every launch
    assert all(a[7 if n == "chunk_fwd_kernel_o" else 9] is None for n, a in launched)
    launched.clear()
    with torch.no_grad():
        chunk_linear_attention(q, k, v, decay=s)
    assert [n for n, _ in launched] == ["chunk_fwd_kernel_o"]


def test_gradient_through_the_final_state_only():
    """The eager autograd.Function gets no gradient for o when only the state reaches the loss."""
    p = make(1, 2, 2, 2 * BT + 3, 8, 5, state=True, seed=21)
    got, want = {}, {}
    for out, fn, dev in ((got, chunk_linear_attention, DEVICE), (want, reference, "cpu")):
        q, k, v = (p[n].to(dev).requires_grad_() for n in "qkv")
        s = p["decay"].to(dev).requires_grad_()
        _, S = fn(q, k, v, decay=s, scale=0.7, output_final_state=True)
        out.update(zip("qkvs", torch.autograd.grad((S * p["dS"].to(dev)).sum(), (q, k, v, s),
                                                   materialize_grads=True)))  # q: unused, zeros
    for n in "qkvs":
        torch.testing.assert_close(got[n].cpu(), want[n], rtol=1e-10, atol=1e-10)


def test_packed_sequences_read_their_lengths_once(monkeypatch):
    """cu_seqlens is read on the host (a sync on a GPU) once per training step, not again in
    the backward; the result still equals separate calls (checked at length elsewhere)."""
    from linattn.backends.triton import chunk

    reads = []
    real = chunk._lengths

    def counting(cu):
        reads.append(cu is not None)
        return real(cu)

    monkeypatch.setattr(chunk, "_lengths", counting)
    p = make(1, 2, 1, 2 * BT + 5, 8, 4, seed=31)
    cu = torch.tensor([0, 7, 7, 2 * BT + 5], device=DEVICE)
    q, k, v = (p[n].to(DEVICE).requires_grad_() for n in "qkv")
    o, _ = chunk_linear_attention(q, k, v, decay=p["decay"].to(DEVICE), cu_seqlens=cu)
    torch.autograd.grad(o, (q, k, v), p["do"].to(DEVICE))
    assert reads == [True]


# -- GPU run 10 (H200, Triton 3.6): the harness's three failures, as regressions ------------------
#
# On the GPU these run as found. Under the interpreter they run at the GPU's tile sizes
# (64-token chunks, the GPU's channel slices), which is as close as the CPU gets; sizes are
# cut where the interpreter would take minutes.

GPU_TILES = {} if DEVICE == "cuda" else dict(chunk=64, bwd_bk=32, bwd_bv=64)


def test_run10_float16_dslopes_regression():
    """triton/backward/float16: dslopes 64x its band on the H200 (one chunk of 7 tokens,
    slopes 5.8e-5 and 0.04, scale 2, initial state)."""
    p = Problem(B=3, H=2, Hkv=2, N=7, M=7, D=17, E=60, dtype="float16", device=DEVICE, mask_kind="decay",
                mask_shape="BHNM", mask_values="binary", slopes="mixed", scale=2.0, initial_state=True,
                final_state=False, grads=("q", "k", "v", "slopes", "initial_state"), cu_seqlens=None,
                seed=150573592)
    for cfg in ({}, GPU_TILES):
        with chunk_config(**cfg):
            res = run_property("backward", "triton", p)
        assert res.ok, res.message()


def _float16_states_beyond_range(kind: str) -> Problem:
    """A float16 problem whose states leave float16's range (largest 65504) though every
    input, output and gradient stays inside it: positive keys and values of size ~16 add
    ~10^4 to each state entry per chunk with no (or a 2^-16) decay, and Ṫ = dS/ds grows
    like the window squared; queries of size 2^-10 keep o in range."""
    N = 256 if DEVICE == "cpu" else 1000
    p = Problem(B=1, H=2, Hkv=2, N=N, M=N, D=16, E=16, dtype="float16", device=DEVICE, mask_kind=kind,
                slopes="tiny", final_state=True, grads=("q", "k", "v") + (("slopes",) if kind == "decay" else ()),
                seed=5)
    t = p.tensors
    scaled = dataclasses.replace(t, q=t.q * 2.0 ** -10, k=t.k.abs() * 32, v=t.v.abs() * 32, do=t.do * 2.0 ** -8)
    p.__dict__["tensors"] = scaled  # the cached property: the oracle and the bands follow these
    return p


@pytest.mark.parametrize("kind", ["causal", "decay"])
def test_float16_states_beyond_float16_range(kind):
    """GPU run 11 (triton/linearity_v/float16, N = 4095, slopes 'tnl'): dslopes = inf, from
    Ṫ = dS/ds rounded to float16 past 65504. The states are now scaled into range by a power
    of two before they become float16 operands (``common.f16_range``)."""
    p = _float16_states_beyond_range(kind)
    S = torch.einsum("bhnd,bhne->bhde", p.tensors.k.double(), p.tensors.v.double())
    assert S.abs().max() > 65504, "the problem must take the state past float16's range"
    res = run_property("backward", "triton", p)
    assert res.ok, res.message()


@pytest.mark.parametrize("kind", ["none", "causal", "decay"])
def test_fused_backward_matches_two_launches(kind):
    """``bwd_fuse``: dq, dk and dv in one launch give what the two launches give (the same
    per-program code), with GQA, an initial state, splits and packed sequences."""
    p = make(1, 4, 2, 3 * BT + 5, 20, 24, kind=kind, state=kind != "none", seed=8)
    want = run(p, reference, device="cpu")
    got = {}
    for fuse in (1, -1):
        for split in (-1, BT):
            with chunk_config(bwd_fuse=fuse, bwd_split=split):
                got[fuse, split] = run(p, chunk_linear_attention)
            assert_close(got[fuse, split], want, 1e-10)
    for split in (-1, BT):
        for name, x in got[1, split].items():
            if x is not None:
                assert torch.equal(x, got[-1, split][name]), (name, split)
    if kind != "none":
        lens = [BT + 3, 2 * BT]
        cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int64, device=DEVICE)
        prob = Problem(B=1, H=2, Hkv=1, N=sum(lens), M=sum(lens), D=24, E=20, dtype="bfloat16", device=DEVICE,
                       mask_kind=kind, slopes="mixed", initial_state=True, final_state=True,
                       cu_seqlens=tuple(cu.tolist()),
                       grads=("q", "k", "v", "initial_state") + (("slopes",) if kind == "decay" else ()), seed=32)
        with chunk_config(bwd_fuse=1):
            res = run_property("backward", "triton", prob)
        assert res.ok, res.message()


def test_run16_small_head_regression():
    """triton/batch_invariance/float16 (GPU run 16): dq and dk ~1 relative error at D = 3,
    E = 128 (16-channel slices, 2 stages: Triton 3.6's pipelined loads of 2-byte aligned rows
    on sm_90; bfloat16 too; run 18: E = 63 with packed sequences). 16-bit inputs with an odd
    head dim now run every chunk kernel at one stage (``chunk._unaligned_rows``)."""
    p = Problem(B=2, H=6, Hkv=2, N=65, M=65, D=3, E=128, dtype="float16", device=DEVICE, mask_kind="causal",
                mask_shape="NM", mask_values="real", slopes="large", scale=0.5, initial_state=False,
                final_state=False, grads=("q", "k", "v"), cu_seqlens=None, seed=1755817294)
    for dtype in ("float16", "bfloat16"):
        for prop in ("backward", "batch_invariance"):
            res = run_property(prop, "triton", p.replace(dtype=dtype))
            assert res.ok, res.message()
    p18 = Problem(B=1, H=2, Hkv=1, N=257, M=257, D=3, E=63, dtype="float16", device=DEVICE, mask_kind="decay",
                  mask_shape="NM", mask_values="real", slopes="zero", scale=0.125, initial_state=False,
                  final_state=True, grads=("q", "k", "v", "slopes"), cu_seqlens=(0, 142, 257), seed=49495136)
    res = run_property("causality", "triton", p18)
    assert res.ok, res.message()


def test_unaligned_rows_run_unpipelined():
    """16-bit with an odd head dim: one stage in every chunk kernel; aligned rows keep theirs."""
    from linattn.backends.triton import chunk as chunk_mod

    cfg = ChunkConfig()
    assert chunk_mod._unaligned_rows(torch.float16, 3, 64) and chunk_mod._unaligned_rows(torch.bfloat16, 64, 63)
    assert not chunk_mod._unaligned_rows(torch.float16, 48, 60) and not chunk_mod._unaligned_rows(torch.float32, 3, 63)
    limit = 232448
    assert chunk_mod._bwd_tiles(17, 60, torch.float16, True, cfg, limit)[6] == 1
    assert chunk_mod._bwd_tiles(64, 64, torch.float16, True, cfg, limit)[6] == 2
    assert chunk_mod._fwd_tiles(65, 17, torch.bfloat16, 64, cfg, limit)[3] == 1
    assert chunk_mod._fwd_tiles(128, 128, torch.bfloat16, 64, cfg, limit)[3] > 1


def test_run10_bfloat16_causality_regression():
    """triton/causality/bfloat16: o 47x its band on the H200 (D = 65 padded to 128 channels,
    E = 17 in 32-channel slices, 4 programs: the 1024-token split schedule, a zero slope,
    ragged last chunk, MQA)."""
    N = 2039 if DEVICE == "cuda" else 263
    p = Problem(B=2, H=2, Hkv=1, N=N, M=N, D=65, E=17, dtype="bfloat16", device=DEVICE, mask_kind="decay",
                mask_shape="11NM", mask_values="binary", slopes="mixed", scale=1.0, initial_state=False,
                final_state=False, grads=(), cu_seqlens=None, seed=1925797963)
    split = {} if DEVICE == "cuda" else dict(chunk=64, split=128)
    for cfg in ({}, split, dict(split, split=-1)):
        with chunk_config(**cfg):
            for prop in ("forward", "causality"):
                res = run_property(prop, "triton", p)
                assert res.ok, f"{cfg}: {res.message()}"


def test_run10_float64_wide_heads_plan_fits_shared_memory(monkeypatch):
    """triton/varlen/float64: OutOfResources at D = E = 256 (dq: 393216 B > 232448 with
    64-token chunks and 2 stages). The GPU plan now fits every dtype and head size up to 256
    by the estimates (fitted to sm_90 compiles), and the defaults of GPU run 9's winner hold
    where they fit."""
    from linattn.backends.triton import chunk

    monkeypatch.setattr(common, "INTERPRET", False)  # plan as on a GPU
    lim = chunk._SMEM_SM90
    cfg = ChunkConfig()
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for D, E in ((16, 16), (64, 64), (128, 128), (65, 17), (256, 256), (256, 32), (32, 256)):
            BT = chunk._chunk_size(cfg)
            BK, BV, _, st, _ = chunk._fwd_tiles(D, E, dtype, BT, cfg, lim)
            fwd = chunk._smem_fwd(dtype, BT, BK, BV, st)
            assert fwd <= lim or st == 1, (dtype, D, E, st, fwd)
            for sg in (False, True):
                BTb, BK, BV, BKf, BE, _, st = chunk._bwd_tiles(D, E, dtype, sg, cfg, lim)
                el = torch.empty((), dtype=dtype).element_size()
                need = chunk._smem_bwd(el, BTb, BK, BKf, BE, BV, st)
                assert need <= lim, (dtype, D, E, sg, BTb, st, need)
    # float64 D = E = 256: 32-token chunks in the backward
    assert chunk._bwd_tiles(256, 256, torch.float64, True, cfg, lim)[0] == 32
    # where it fits: forward 4 stages (peeled loop, run 9), backward 2 (run 13 A/B), at bf16 D = E = 128 and 64
    for D in (64, 128):
        assert chunk._fwd_tiles(D, D, torch.bfloat16, 64, cfg, lim)[3] == 4
        assert chunk._bwd_tiles(D, D, torch.bfloat16, False, cfg, lim)[6] == 2
        assert chunk._bwd_tiles(D, D, torch.bfloat16, True, cfg, lim)[6] == 2
    assert chunk._fwd_tiles(128, 128, torch.bfloat16, 64, cfg, lim)[4]  # the peeled loop is the default at BV 64
    # odd E runs 64-channel slices (run 10's bf16 causality failure had BV 32 at D = 65, E = 17),
    # unpipelined: 16-bit rows 2-byte aligned (chunk._unaligned_rows)
    assert chunk._fwd_tiles(65, 17, torch.bfloat16, 64, cfg, lim)[1:] == (64, 4, 1, True)
    # D > 128: 32-channel slices keep v3's loop at <= 2 stages
    assert chunk._fwd_tiles(256, 256, torch.bfloat16, 64, cfg, lim)[1:] == (32, 4, 2, False)


class OutOfResources(Exception):
    """Named like Triton's, which the launcher recognises by name and message."""


def test_out_of_resources_falls_back_and_remembers(monkeypatch):
    """A launch Triton refuses for shared memory is retried with fewer stages, then shorter
    chunks; the configuration that fitted is remembered; the results are right."""
    from linattn.backends.triton import chunk, chunk_bwd, chunk_fwd

    chunk._FITTED.clear()
    tried = []

    def guard(mod, name):
        real = getattr(mod, name)

        class Guarded:
            def __getitem__(self, grid):
                def call(*a, **kw):
                    tried.append((name, kw["BT"], kw.get("num_stages")))
                    if kw["BT"] > 16 or (kw.get("num_stages") or 3) > 2:
                        raise OutOfResources("out of resource: shared memory, Required: 393216, Hardware limit: 232448")
                    return real[grid](*a, **kw)
                return call
        monkeypatch.setattr(mod, name, Guarded())

    for mod, name in ((chunk_fwd, "chunk_fwd_kernel_o"), (chunk_fwd, "chunk_state_kernel"),
                      (chunk_bwd, "chunk_bwd_kernel_dq"), (chunk_bwd, "chunk_bwd_kernel_dkv")):
        guard(mod, name)
    p = make(1, 2, 1, 2 * BT + 5, 12, 10, state=True, seed=41)
    want = run(p, reference, device="cpu")
    with chunk_config(chunk=32, split=32, bwd_split=32):
        got = run(p, chunk_linear_attention)
        assert_close(got, want, 1e-10)
        first = list(tried)
        tried.clear()
        again = run(p, chunk_linear_attention)
        assert_close(again, want, 1e-10)
    assert any(bt == 32 for _, bt, _ in first) and all(bt == 16 for _, bt, _ in tried), (first, tried)
    assert all((st or 3) <= 2 for _, _, st in tried), tried  # remembered: no refused launch again
    chunk._FITTED.clear()

    def broken(*a, **kw):
        raise RuntimeError("something else")

    class Broken:
        def __getitem__(self, grid):
            return broken
    monkeypatch.setattr(chunk_fwd, "chunk_fwd_kernel_o", Broken())
    with pytest.raises(RuntimeError, match="something else"):
        chunk_linear_attention(*(p[n].to(DEVICE) for n in "qkv"), decay=p["decay"].to(DEVICE))


def test_backward_uses_the_forwards_config(monkeypatch):
    """autograd runs a CUDA backward on its own thread, where chunk_config's thread-local
    overrides are not in force: the eager path records the forward's configuration."""
    from linattn.backends.triton import chunk as chunk_mod

    seen = []
    real = chunk_mod._backward_with

    def spy(cfg, *a, **k):
        seen.append(cfg)
        return real(cfg, *a, **k)

    monkeypatch.setattr(chunk_mod, "_backward_with", spy)
    q, k, v = (torch.randn(1, 2, 20, 8, device=DEVICE, dtype=torch.float64, requires_grad=True) for _ in range(3))
    with chunk_config(bwd_fuse=1, bwd_bk=16):
        o, _ = chunk_linear_attention(q, k, v, causal=True)
    o.sum().backward()  # outside the block: the forward's configuration still holds
    assert seen and seen[-1].bwd_fuse == 1 and seen[-1].bwd_bk == 16
