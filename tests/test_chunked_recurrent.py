"""The linear-time backends (``chunked``, ``recurrent``) and the public ``decode_step``.

Everything is checked against the float64 ``reference`` on random data at awkward sizes
(N = 1, 2, 63, 65, 97, 130; chunk sizes that do not divide N; D = 1, 48, 60; Hkv = 1 and
H/2): outputs, final states and the gradients of q, k, v, slopes and initial state.
Low precision is held to a band derived from the reference's own error in that dtype.
"""
from __future__ import annotations

import math

import pytest
import torch

import linattn
from linattn.backends.chunked import DEFAULT_CHUNK_SIZE, chunked_linear_attention
from linattn.backends.reference import reference_forward

F64 = torch.float64
KINDS = ("none", "causal", "decay")


# -- problems -------------------------------------------------------------------------


def _problem(B, H, Hkv, N, D, E, *, dtype=F64, seed=0, M=None):
    """Random q, k, v, slopes and initial state (all requiring grad)."""
    g = torch.Generator().manual_seed(seed)
    M = N if M is None else M

    def r(*shape, sd=1.0):
        return (torch.randn(*shape, generator=g, dtype=F64) * sd).to(dtype).requires_grad_()

    q = r(B, H, N, D, sd=D ** -0.5)
    k = r(B, Hkv, M, D, sd=D ** -0.5)
    v = r(B, Hkv, M, E)
    # slopes spread from weak to strong decay, as in the canonical TNL table
    s = (torch.rand(H, generator=g, dtype=F64) * 0.6 + 0.01).to(dtype).requires_grad_()
    S0 = torch.randn(B, H, D, E, generator=g, dtype=F64).to(linattn.state_dtype(dtype)).requires_grad_()
    return q, k, v, s, S0


def _kwargs(kind, s, S0, scale=0.7):
    kw = dict(causal=kind != "none", decay=s if kind == "decay" else None, scale=scale)
    if kind != "none":
        kw.update(initial_state=S0, output_final_state=True)
    return kw


def _run(fn, q, k, v, s, S0, kind, seed=1):
    """Outputs and gradients of every differentiable input for random cotangents."""
    kw = _kwargs(kind, s, S0)
    o, S = fn(q, k, v, **kw)
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype)
    outs, cots = [o], [do]
    if S is not None:
        outs.append(S)
        cots.append(torch.randn(S.shape, generator=g, dtype=F64).to(S.dtype))
    ins = {"q": q, "k": k, "v": v}
    if kind == "decay":
        ins["s"] = s
    if kind != "none":
        ins["S0"] = S0
    grads = torch.autograd.grad(outs, list(ins.values()), cots)
    res = {"o": o.detach()}
    if S is not None:
        res["S"] = S.detach()
    res.update({f"d{n}": gr for n, gr in zip(ins, grads)})
    return res


def _chunked(C):
    def fn(q, k, v, **kw):
        return chunked_linear_attention(q, k, v, chunk_size=C, **kw)

    return fn


def _backend(name):
    def fn(q, k, v, **kw):
        out = linattn.linear_attention(q, k, v, backend=name, **kw)
        return (out, None) if isinstance(out, torch.Tensor) else tuple(out)

    return fn


def _reference(q, k, v, **kw):
    return reference_forward(q, k, v, None, **kw)


def _max_rel(got, want):
    """max |got - want| / max |want| (or the absolute error when want is all zero)."""
    err = (got.to(F64) - want.to(F64)).abs().max().item()
    return err / max(want.abs().max().item(), 1e-300) if want.abs().max().item() > 0 else err


# -- float64 agreement with the reference at awkward sizes -------------------------------

#       B  H  Hkv  N   D   E   C
CASES = [
    (2, 4, 2, 1, 1, 3, 16),
    (1, 2, 1, 2, 48, 5, 1),
    (2, 4, 1, 63, 60, 48, 16),
    (1, 4, 2, 65, 48, 60, 64),
    (1, 6, 3, 130, 1, 7, 64),
    (2, 2, 1, 97, 8, 8, 10),
    (1, 4, 4, 130, 60, 60, 32),
]


def _case_id(c):
    return "B{}-H{}-Hkv{}-N{}-D{}-E{}-C{}".format(*c)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("which", ["chunked", "recurrent"])
def test_float64_matches_reference(which, case, kind):
    B, H, Hkv, N, D, E, C = case
    q, k, v, s, S0 = _problem(B, H, Hkv, N, D, E)
    fn = _chunked(C) if which == "chunked" else _backend("recurrent")
    got = _run(fn, q, k, v, s, S0, kind)
    want = _run(_reference, q, k, v, s, S0, kind)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        err = _max_rel(got[name], want[name])
        assert err < 1e-11, f"{which} {kind} {name}: relative error {err:.2e}"


def test_chunk_size_sweep_including_one_and_larger_than_n():
    q, k, v, s, S0 = _problem(1, 2, 1, 23, 4, 3)
    want = _run(_reference, q, k, v, s, S0, "decay")
    for C in (1, 2, 5, 22, 23, 24, 1000):
        got = _run(_chunked(C), q, k, v, s, S0, "decay")
        for name in want:
            assert _max_rel(got[name], want[name]) < 1e-11, (C, name)


def test_none_mask_with_n_ne_m():
    q, k, v, s, S0 = _problem(2, 4, 2, 7, 5, 3, M=11)
    want = _run(_reference, q, k, v, s, S0, "none")
    for fn in (_chunked(4), _backend("chunked"), _backend("recurrent")):
        got = _run(fn, q, k, v, s, S0, "none")
        for name in want:
            assert _max_rel(got[name], want[name]) < 1e-12, name


# -- low precision: a band derived from the reference's own error ----------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["chunked", "recurrent"])
def test_low_precision_within_band_of_reference(which, kind, dtype):
    """err(backend in X) <= 4 · err(reference in X) + 8 · eps(X), both against float64.

    Same X-rounded inputs for all three; o is rounded to X, so the band cannot be tighter
    than one rounding of o (the eps floor).
    """
    q, k, v, s, S0 = _problem(2, 4, 2, 65, 16, 12, dtype=dtype)
    up = [t.detach().to(F64).requires_grad_() for t in (q, k, v, s, S0)]
    exact = _run(_reference, *up, kind)
    ref_x = _run(_reference, q, k, v, s, S0, kind)
    fn = _chunked(16) if which == "chunked" else _backend("recurrent")
    got = _run(fn, q, k, v, s, S0, kind)
    eps = torch.finfo(dtype).eps
    for name in exact:
        assert got[name].dtype == ref_x[name].dtype, name
        band = 4 * _max_rel(ref_x[name], exact[name]) + 8 * eps
        err = _max_rel(got[name], exact[name])
        assert err <= band, f"{which} {kind} {dtype} {name}: {err:.2e} > band {band:.2e}"


def test_half_inputs_give_float32_state_and_half_output():
    q, k, v, s, S0 = _problem(1, 2, 1, 9, 4, 4, dtype=torch.bfloat16)
    for name in ("chunked", "recurrent"):
        o, S = linattn.linear_attention(q, k, v, decay=s, output_final_state=True, backend=name)
        assert o.dtype == torch.bfloat16 and S.dtype == torch.float32


# -- float64 gradcheck for every differentiable input ----------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["chunked", "recurrent"])
def test_gradcheck(which, kind):
    q, k, v, s, S0 = _problem(1, 4, 2, 7, 3, 2, seed=3)
    if kind == "decay":  # keep the slopes away from 0, where gradcheck's step could make them < 0
        s = (s.detach() + 0.1).requires_grad_()

    def f(q, k, v, s, S0):
        kw = _kwargs(kind, s, S0)
        if which == "chunked":
            o, S = chunked_linear_attention(q, k, v, chunk_size=3, **kw)
        else:
            o, S = linattn.backends.recurrent.recurrent_forward(q, k, v, None, **kw)
        return (o,) if S is None else (o, S)

    assert torch.autograd.gradcheck(f, (q, k, v, s, S0), eps=1e-6, atol=1e-8)


def test_recurrent_gradgradcheck():
    q, k, v, s, S0 = _problem(1, 2, 1, 4, 2, 2, seed=4)
    s = (s.detach() + 0.1).requires_grad_()

    def f(q, k, v, s, S0):
        return linattn.linear_attention(
            q, k, v, decay=s, initial_state=S0, output_final_state=True, backend="recurrent"
        )

    assert torch.autograd.gradgradcheck(f, (q, k, v, s, S0), eps=1e-6, atol=1e-7)


# -- properties -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["causal", "decay"])
def test_chunked_equals_recurrent_float32(kind):
    q, k, v, s, S0 = _problem(2, 6, 3, 77, 12, 20, dtype=torch.float32, seed=5)
    a = _run(_chunked(8), q, k, v, s, S0, kind)
    b = _run(_backend("recurrent"), q, k, v, s, S0, kind)
    for name in a:
        assert _max_rel(a[name], b[name]) < 2e-5, name


@pytest.mark.parametrize("split", [1, 20, 31, 32, 33, 64])
@pytest.mark.parametrize("which", ["chunked", "recurrent"])
def test_state_splitting(which, split):
    """Two calls passing the state == one call; gradients flow through the handed-on state."""
    q, k, v, s, S0 = _problem(2, 4, 2, 65, 8, 6, seed=6)
    fn = _chunked(16) if which == "chunked" else _backend("recurrent")

    def two_pieces(q, k, v, **kw):
        kw1 = dict(kw)
        o1, S1 = fn(q[:, :, :split], k[:, :, :split], v[:, :, :split], **kw1)
        o2, S2 = fn(q[:, :, split:], k[:, :, split:], v[:, :, split:], **dict(kw, initial_state=S1))
        return torch.cat([o1, o2], 2), S2

    whole = _run(_reference, q, k, v, s, S0, "decay")
    pieces = _run(two_pieces, q, k, v, s, S0, "decay")
    for name in whole:
        assert _max_rel(pieces[name], whole[name]) < 1e-11, name


@pytest.mark.parametrize("slope", [150.0, 1e4, math.inf])
def test_large_slopes_give_the_diagonal_not_nan(slope):
    """With λ = exp(-s) ~ 0 only the diagonal survives: o_i = scale (q_i · k_i) v_i, S_N = k_Nᵀ v_N."""
    q, k, v, _, S0 = _problem(1, 2, 1, 70, 5, 4, seed=7)
    s = torch.full((2,), slope, dtype=F64, requires_grad=True)
    o, S = chunked_linear_attention(q, k, v, decay=s, initial_state=S0, output_final_state=True, chunk_size=64)
    diag = (q * k).sum(-1, keepdim=True) * v  # [B, H, N, E]
    torch.testing.assert_close(o, diag * 1.0, rtol=1e-12, atol=1e-12)
    last = (k[:, :, -1, :, None] * v[:, :, -1, None, :]).expand(1, 2, 5, 4)  # MQA: both heads
    torch.testing.assert_close(S, last, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((o.sum() + S.sum()), (q, k, v, s, S0))
    for g in grads:
        assert torch.isfinite(g).all()
    if slope >= 1e4:  # d/ds exp(-s x) = -x exp(-s x) underflows to exactly 0
        assert float(grads[3].abs().max()) == 0.0


def test_float32_large_slope_times_chunk_no_overflow():
    """s·C >> 88 (float32's exp limit) must not overflow anywhere, forward or backward."""
    q, k, v, s, S0 = _problem(1, 4, 2, 200, 8, 8, dtype=torch.float32, seed=8)
    s = torch.tensor([0.0, 1.0, 5.0, 40.0], requires_grad=True)
    got = _run(_chunked(128), q, k, v, s, S0, "decay")
    up = [t.detach().to(F64).requires_grad_() for t in (q, k, v, s, S0)]
    want = _run(_reference, *up, "decay")
    for name in want:
        assert torch.isfinite(got[name]).all(), name
        assert _max_rel(got[name], want[name]) < 1e-4, name


def test_causality_future_does_not_change_past():
    q, k, v, s, S0 = _problem(1, 2, 1, 40, 4, 4, seed=9)
    o1, _ = chunked_linear_attention(q, k, v, decay=s, chunk_size=16)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, 25:] += 3.0
    v2[:, :, 25:] -= 2.0
    o2, _ = chunked_linear_attention(q, k2, v2, decay=s, chunk_size=16)
    assert torch.equal(o1[:, :, :25], o2[:, :, :25])
    assert not torch.allclose(o1[:, :, 25:], o2[:, :, 25:])


def test_gqa_equals_expanded_heads():
    q, k, v, s, S0 = _problem(2, 6, 2, 33, 5, 4, seed=10)
    ke, ve = (t.detach().repeat_interleave(3, 1).requires_grad_() for t in (k, v))
    a = _run(_chunked(8), q, k, v, s, S0, "decay")
    b = _run(_chunked(8), q, ke, ve, s, S0, "decay")
    torch.testing.assert_close(a["o"], b["o"])
    torch.testing.assert_close(a["dk"], b["dk"].reshape(2, 2, 3, 33, 5).sum(2))
    torch.testing.assert_close(a["dv"], b["dv"].reshape(2, 2, 3, 33, 4).sum(2))


def test_non_contiguous_inputs():
    q, k, v, s, S0 = _problem(2, 4, 2, 30, 6, 5, seed=11)
    qt = q.detach().transpose(-1, -2).contiguous().transpose(-1, -2)
    kt = k.detach().permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    assert not qt.is_contiguous() and not kt.is_contiguous()
    o1, _ = chunked_linear_attention(qt, kt, v.detach(), decay=s.detach(), chunk_size=7)
    o2, _ = chunked_linear_attention(q.detach(), k.detach(), v.detach(), decay=s.detach(), chunk_size=7)
    torch.testing.assert_close(o1, o2, rtol=0, atol=0)


# -- memory: linear in N ----------------------------------------------------------------


def _saved_bytes(fn):
    """Bytes autograd keeps for the backward (distinct storages), and fn's result."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


def test_chunked_saves_inputs_plus_one_state_per_chunk():
    B, H, Hkv, D, E, C = 1, 4, 2, 16, 16, 32
    for N in (256, 2048):
        q, k, v, s, S0 = _problem(B, H, Hkv, N, D, E, dtype=torch.float32, seed=12)
        saved, _ = _saved_bytes(
            lambda: chunked_linear_attention(q, k, v, decay=s, initial_state=S0, chunk_size=C)
        )
        inputs = sum(t.numel() * 4 for t in (q, k, v, s, S0))
        states = B * H * math.ceil(N / C) * D * E * 4
        assert saved <= inputs + states, (N, saved, inputs, states)


def test_recurrent_memory_is_one_state_per_token():
    """Autograd keeps O(N·H·D·E): linear in N, never N² (checked at two lengths)."""
    B, H, Hkv, D, E = 1, 2, 1, 8, 8
    per_token = []
    for N in (64, 256):
        q, k, v, s, S0 = _problem(B, H, Hkv, N, D, E, dtype=torch.float32, seed=13)
        saved, _ = _saved_bytes(lambda: linattn.linear_attention(q, k, v, decay=s, backend="recurrent"))
        per_token.append(saved / N)
        assert saved <= 2 * N * B * H * D * E * 4 + 16 * N * B * H * (D + E) * 4, (N, saved)
    assert per_token[1] <= per_token[0] * 1.1


# -- registry ---------------------------------------------------------------------------


def test_backends_declare_and_auto_picks_chunked_on_cpu():
    ch, rec = linattn.get_backend("chunked"), linattn.get_backend("recurrent")
    assert ch.mask_kinds == rec.mask_kinds == frozenset(KINDS)
    assert ch.linear_time and rec.linear_time
    assert rec.auto_rank == {} and ch.auto_rank == {"cpu": 0, "cuda": 40}
    q, k, v, s, _ = _problem(1, 2, 1, 8, 4, 4)
    _, _, _, _, _, _, _, _, _, req = linattn.validate(q, k, v, decay=s)
    assert linattn.select_backend(req).name == "chunked"


def test_dense_mask_is_refused_naming_capable_backends():
    q, k, v, _, _ = _problem(1, 2, 1, 8, 4, 4)
    mask = torch.ones(8, 8, dtype=F64)
    for name in ("chunked", "recurrent"):
        with pytest.raises(linattn.UnsupportedRequest, match="reference"):
            linattn.linear_attention(q, k, v, mask, backend=name)


@pytest.mark.parametrize("bad, exc, words", [
    (0, ValueError, "chunk_size must be >= 1, got 0"),
    (2.0, TypeError, "chunk_size must be an int, got float"),
    (True, TypeError, "got bool"),
])
def test_chunk_size_validation(bad, exc, words):
    q, k, v, s, _ = _problem(1, 2, 1, 8, 4, 4)
    with pytest.raises(exc, match=words):
        chunked_linear_attention(q, k, v, decay=s, chunk_size=bad)


def test_default_chunk_size_is_used():
    assert DEFAULT_CHUNK_SIZE == 64


# -- decode_step ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["causal", "decay"])
def test_decode_step_repeated_equals_linear_attention(kind):
    B, H, Hkv, N, D, E = 2, 4, 2, 65, 6, 5
    q, k, v, s, S0 = _problem(B, H, Hkv, N, D, E, seed=14)
    decay = s if kind == "decay" else None
    state = S0
    outs = []
    for t in range(N):
        o_t, state = linattn.decode_step(q[:, :, t], k[:, :, t], v[:, :, t], state, decay=decay, scale=0.7)
        outs.append(o_t)
    o = torch.stack(outs, 2)
    o_ref, S_ref = linattn.linear_attention(
        q, k, v, causal=True, decay=decay, scale=0.7, initial_state=S0, output_final_state=True,
        backend="reference",
    )
    assert _max_rel(o, o_ref) < 1e-12 and _max_rel(state, S_ref) < 1e-12
    # gradients through the token loop equal the reference's
    ins = [q, k, v, S0] + ([s] if decay is not None else [])
    g = torch.Generator().manual_seed(0)
    do, dS = torch.randn(o.shape, generator=g, dtype=F64), torch.randn(state.shape, generator=g, dtype=F64)
    got = torch.autograd.grad([o, state], ins, [do, dS])
    want = torch.autograd.grad([o_ref, S_ref], ins, [do, dS])
    for a, b in zip(got, want):
        assert _max_rel(a, b) < 1e-11


def test_decode_step_after_chunked_prefill_float32():
    """Prefill 50 tokens with chunked, decode 15 more: equals the whole sequence."""
    q, k, v, s, _ = _problem(1, 4, 1, 65, 16, 16, dtype=torch.float32, seed=15)
    q, k, v, s = (t.detach() for t in (q, k, v, s))
    o_pre, state = linattn.linear_attention(q[:, :, :50], k[:, :, :50], v[:, :, :50], decay=s,
                                            output_final_state=True, backend="chunked")
    outs = [o_pre]
    for t in range(50, 65):
        o_t, state = linattn.decode_step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state, decay=s)
        assert o_t.shape == (1, 4, 1, 16)  # rank-4 q gives rank-4 o
        outs.append(o_t)
    o_whole, S_whole = linattn.linear_attention(q, k, v, decay=s, output_final_state=True, backend="reference")
    torch.testing.assert_close(torch.cat(outs, 2), o_whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, S_whole, rtol=1e-5, atol=1e-5)


def test_decode_step_inplace_and_dtypes():
    g = torch.Generator().manual_seed(16)
    q = torch.randn(2, 4, 8, generator=g).to(torch.float16)
    k = torch.randn(2, 1, 8, generator=g).to(torch.float16)
    v = torch.randn(2, 1, 3, generator=g).to(torch.float16)
    state = torch.randn(2, 4, 8, 3, generator=g)
    s = linattn.tnl_slopes(4)
    o, new = linattn.decode_step(q, k, v, state, decay=s, backend="torch")
    assert o.dtype == torch.float16 and o.shape == (2, 4, 3) and new.dtype == torch.float32
    expected = torch.exp(-s)[:, None, None] * state + k.float()[..., :, None] * v.float()[..., None, :]
    torch.testing.assert_close(new, expected)
    torch.testing.assert_close(o.float(), (q.float()[:, :, None] @ expected)[:, :, 0], rtol=2e-3, atol=2e-3)
    same = state
    o2, new2 = linattn.decode_step(q, k, v, state, decay=s, inplace=True)
    assert new2 is same and torch.equal(state, new) and torch.equal(o2, o)


@pytest.mark.parametrize("change, exc, words", [
    (dict(q=torch.randn(2, 4, 3, 8)), ValueError, "q must hold one token"),
    (dict(q=torch.randn(2, 4)), ValueError, "q must be [B, H, D]"),
    (dict(k=torch.randn(2, 3, 8), v=torch.randn(2, 3, 3)), ValueError, "H=4 and Hkv=3"),
    (dict(v=torch.randn(2, 2, 3, dtype=F64)), TypeError, "share one dtype"),
    (dict(state=torch.zeros(2, 4, 8, 4)), ValueError, "(2, 4, 8, 3), got (2, 4, 8, 4)"),
    (dict(state=torch.zeros(2, 4, 8, 3, dtype=torch.float16)), TypeError, "state must be float32 or float64"),
    (dict(decay=torch.ones(3)), ValueError, "shape [H]=[4], got (3,)"),
    (dict(decay=-torch.ones(4)), ValueError, ">= 0"),
    (dict(decay=0.5), TypeError, "got float"),
    (dict(scale="1"), TypeError, "scale must be a real number"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
    (dict(inplace=1), TypeError, "inplace must be a bool"),
])
def test_decode_step_bad_input(change, exc, words):
    args = dict(q=torch.randn(2, 4, 8), k=torch.randn(2, 2, 8), v=torch.randn(2, 2, 3),
                state=torch.zeros(2, 4, 8, 3))
    kw = {}
    for key, val in change.items():
        (args if key in args else kw)[key] = val
    with pytest.raises(exc) as info:
        linattn.decode_step(args["q"], args["k"], args["v"], args["state"], **kw)
    assert words in str(info.value)


def test_decode_step_inplace_refuses_leaf_requiring_grad():
    state = torch.zeros(1, 2, 3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="leaf state"):
        linattn.decode_step(torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.randn(1, 2, 4), state, inplace=True)


def test_decode_step_triton_on_cpu_is_a_clear_error_and_auto_falls_back():
    from linattn.backends.triton import common

    q, k, v, state = torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.randn(1, 2, 4), torch.zeros(1, 2, 3, 4)
    o, new = linattn.decode_step(q, k, v, state, backend="auto")  # CPU tensors: torch path
    torch.testing.assert_close(new, k[..., :, None] * v[..., None, :])
    if common.unavailable() is not None:
        with pytest.raises(linattn.BackendUnavailable, match="triton"):
            linattn.decode_step(q, k, v, state, backend="triton")


@pytest.mark.parametrize("use", ["o", "S"])
def test_gradient_of_one_output_only(use):
    """Only o (or only the final state) feeds the loss: the other cotangent arrives as None."""
    q, k, v, s, S0 = _problem(1, 4, 2, 45, 6, 5, seed=17)
    ins = (q, k, v, s, S0)
    grads = []
    for fn in (_chunked(16), _reference):
        o, S = fn(q, k, v, decay=s, initial_state=S0, output_final_state=True)
        g = torch.autograd.grad((o if use == "o" else S).sin().sum(), ins, allow_unused=True)
        grads.append([torch.zeros_like(t) if d is None else d for t, d in zip(ins, g)])
    for a, b in zip(*grads):
        assert _max_rel(a, b) < 1e-11


def test_direct_call_causal_needs_square():
    q, k, v, s, _ = _problem(1, 2, 1, 8, 4, 4, M=9)
    with pytest.raises(ValueError, match="N=8"):
        chunked_linear_attention(q, k, v, decay=s)
