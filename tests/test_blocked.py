"""The blocked backends (``blocked``, ``blocked_indexed``, ``blocked_prealloc``).

Every output and gradient is compared with the float64 ``reference`` on random data at
awkward sizes (N = 1, 2, 63, 65, 97 (prime), 130; D = 1, 48, 60; Hkv = 1 and H/2; a
block size that does not divide N), for every mask kind and broadcast shape of the mask.

The tolerance is a rounding-error bound, not a magic number
-----------------------------------------------------------
Each element of o (or of a gradient) is a sum of K products, and the backends differ
from the oracle only in the order of the sums and where they round. The classical bound
for a sum of K terms t_k computed in any order with unit roundoff u is

    |fl(Σ t_k) - Σ t_k|  <=  γ_K · Σ |t_k|,        γ_K = K·u / (1 - K·u)

(Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1; the products' own
roundings add a few units to K). ``Σ|t_k|`` for every element is obtained exactly by
running the float64 reference on |q|, |k|, |v|, |mask|, |initial_state| with |cotangents|:
the operator is multilinear with nonnegative decay factors, so the outputs and gradients
of that problem are the sums of absolute terms (for the slopes up to sign, hence abs()).
The backend and the oracle each make at most that error, so they may differ by 2·γ_K·T.
Half-precision results are rounded once more, which adds u_out·|x|. Any real bug (a
missing tile, a wrong mask factor, padding leaking in) is orders of magnitude above this
bound at these sizes, so the test can fail; it cannot flake, because the bound is a
worst case, not an estimate.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import linattn
from linattn.backends import blocked as blocked_mod
from linattn.backends import blocked_indexed as indexed_mod
from linattn.backends import blocked_prealloc as prealloc_mod
from linattn.backends.reference import reference_forward

F64 = torch.float64
VARIANTS = ("blocked", "blocked_indexed", "blocked_prealloc")
KINDS = ("none", "dense", "causal", "decay", "dense+causal", "dense+decay")
PUBLIC = {
    "blocked": blocked_mod.blocked_linear_attention,
    "blocked_indexed": indexed_mod.blocked_indexed_linear_attention,
    "blocked_prealloc": prealloc_mod.blocked_prealloc_linear_attention,
}
U = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float32: 2.0 ** -24, F64: 2.0 ** -53}


# -- problems -------------------------------------------------------------------------


def make_problem(B, H, Hkv, N, M, D, E, kind, *, mask_shape=None, state=None, dtype=F64, seed=0):
    """Random inputs (all requiring grad) for one mask kind; ``state`` in {None, "init",
    "final", "both"} (causal/decay without dense mask only)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, sd=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, dtype=F64) * sd).to(dt).requires_grad_()

    p = dict(q=r(B, H, N, D), k=r(B, Hkv, M, D), v=r(B, Hkv, M, E), mask=None, decay=None, S0=None)
    if kind.startswith("dense"):
        p["mask"] = r(*(mask_shape or (B, H, N, M)))
    if kind.endswith("decay"):
        # slopes from weak to strong decay (canonical TNL slopes lie in (0, 0.71])
        p["decay"] = (torch.rand(H, generator=g, dtype=F64) * 0.7 + 0.005).to(
            torch.float32 if dtype != F64 else F64).requires_grad_()
    if state in ("init", "both"):
        p["S0"] = r(B, H, D, E, dt=linattn.state_dtype(dtype))
    p["kw"] = dict(
        causal=kind not in ("none", "dense"),
        decay=p["decay"],
        scale=0.7,
        initial_state=p["S0"],
        output_final_state=state in ("final", "both"),
    )
    return p


INPUTS = ("q", "k", "v", "mask", "decay", "S0")


def run(fn, p, *, dtype_of_cotangent=None, seed=1):
    """o, the final state and the gradient of every input that requires grad, for random
    cotangents (drawn in float64, then rounded to the output's dtype)."""
    o, S = fn(p["q"], p["k"], p["v"], p["mask"], **p["kw"])
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype)
    outs, cots = [o], [do]
    if S is not None:
        outs.append(S)
        cots.append(torch.randn(S.shape, generator=g, dtype=F64).to(S.dtype))
    leaves = [(n, p[n]) for n in INPUTS if p[n] is not None and p[n].requires_grad]
    grads = torch.autograd.grad(outs, [t for _, t in leaves], cots, allow_unused=True)
    res = {"o": o.detach(), "final": None if S is None else S.detach()}
    res.update({"d" + n: g_ for (n, _), g_ in zip(leaves, grads)})
    return res, cots


def oracle(p, cots):
    """The float64 reference's outputs/gradients and the sums of absolute terms T."""

    def with_inputs(transform, cot_transform):
        q = {n: None if p[n] is None else transform(n, p[n].detach().to(F64)).requires_grad_()
             for n in INPUTS}
        kw = dict(p["kw"], decay=q["decay"], initial_state=q["S0"])
        o, S = reference_forward(q["q"], q["k"], q["v"], q["mask"], **kw)
        outs = [o] + ([S] if S is not None else [])
        leaves = [n for n in INPUTS if q[n] is not None and p[n].requires_grad]
        grads = torch.autograd.grad(outs, [q[n] for n in leaves],
                                    [cot_transform(c.to(F64)) for c in cots], allow_unused=True)
        res = {"o": o.detach(), "final": None if S is None else S.detach()}
        res.update({"d" + n: None if g_ is None else g_.detach() for n, g_ in zip(leaves, grads)})
        return res

    exact = with_inputs(lambda n, t: t, lambda c: c)
    terms = with_inputs(lambda n, t: t if n == "decay" else t.abs(), lambda c: c.abs())
    return exact, {k: None if t is None else t.abs() for k, t in terms.items()}


def reduction_lengths(p):
    """K per quantity: how many rounded terms one element sums (see the module docstring)."""
    B, H, N, D = p["q"].shape
    Hkv, M, E = p["k"].shape[1], p["k"].shape[2], p["v"].shape[3]
    G = H // Hkv
    R = 1
    if p["mask"] is not None:
        R = (B * H) // (p["mask"].shape[0] * p["mask"].shape[1])
    extra = 8  # the products each term passes through: q·k, ⊙mask, ⊙decay (exp), ·scale, ·v
    return {
        "o": 2 * D + M + extra, "final": M + 1 + extra,
        "dq": 2 * E + M + extra, "dk": D + E + G * N + extra, "dv": D + E + G * N + extra,
        "dmask": D + E + R + extra, "dS0": N + 1 + extra,
        "ddecay": B * N * M + B * N * D * E + D + E + extra,
    }


def assert_close_to_oracle(res, exact, terms, p, *, where=""):
    Ks = reduction_lengths(p)
    acc = torch.float32 if p["q"].dtype in (torch.float16, torch.bfloat16) else p["q"].dtype
    for name, x in res.items():
        x64 = exact[name]
        if x is None or x64 is None:
            assert x is None and x64 is None, f"{where}: {name} is {x} but the oracle has {x64}"
            continue
        assert x.shape == x64.shape, f"{where}: {name} shape {tuple(x.shape)}, expected {tuple(x64.shape)}"
        K = Ks[name]
        u_acc = U[acc]
        gamma = K * u_acc / (1 - K * u_acc)
        u_out = U.get(x.dtype, 0.0) if x.dtype != acc else 0.0
        tol = u_out * x64.abs() + 2 * gamma * terms[name] * (1 + u_out) + torch.finfo(x.dtype).tiny
        err = (x.to(F64) - x64).abs()
        worst = float((err / tol).max()) if err.numel() else 0.0
        assert worst <= 1.0, (
            f"{where}: {name} differs from the float64 reference by {float(err.max()):.3e} "
            f"(max err/bound = {worst:.3g}; K = {K}, dtype {x.dtype})"
        )


def backend_fn(variant, **blocks):
    fn = linattn.get_backend(variant).fn
    return lambda q, k, v, mask, **kw: fn(q, k, v, mask, **kw, **blocks)


def check_against_reference(variant, p, *, where="", **blocks):
    res, cots = run(backend_fn(variant, **blocks), p)
    exact, terms = oracle(p, cots)
    assert_close_to_oracle(res, exact, terms, p, where=where)


# -- agreement with the reference at awkward sizes ------------------------------------

# (B, H, Hkv, N, M, D, E); M != N only where the mask kind allows it.
SIZES = [
    (2, 4, 2, 1, 1, 48, 5),
    (1, 4, 1, 2, 2, 1, 3),
    (2, 4, 2, 63, 63, 60, 7),
    (1, 4, 1, 65, 65, 48, 1),
    (2, 4, 2, 97, 97, 1, 4),
    (1, 4, 4, 130, 130, 60, 48),
    (2, 4, 1, 63, 65, 5, 6),  # N != M: none / dense only
]
MASK_SHAPES = ("full", "1,1", "B,1", "1,H")


def _mask_shape(code, B, H, N, M):
    return {"full": (B, H, N, M), "1,1": (1, 1, N, M), "B,1": (B, 1, N, M), "1,H": (1, H, N, M)}[code]


def _cases():
    for i, (B, H, Hkv, N, M, D, E) in enumerate(SIZES):
        for kind in KINDS:
            if N != M and kind not in ("none", "dense"):
                continue
            shape = MASK_SHAPES[i % 4] if kind.startswith("dense") else None
            state = ("both", "init", "final")[i % 3] if kind in ("causal", "decay") else None
            yield pytest.param(
                (B, H, Hkv, N, M, D, E), kind, shape, state,
                id=f"{kind}-B{B}-H{H}-Hkv{Hkv}-N{N}-M{M}-D{D}-E{E}"
                + (f"-mask[{shape}]" if shape else "") + (f"-state_{state}" if state else ""),
            )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size, kind, mshape, state", list(_cases()))
def test_matches_reference(variant, size, kind, mshape, state):
    B, H, Hkv, N, M, D, E = size
    p = make_problem(B, H, Hkv, N, M, D, E, kind, state=state,
                     mask_shape=_mask_shape(mshape, B, H, N, M) if mshape else None)
    check_against_reference(variant, p, where=f"{variant} {kind}", block_size=16)  # 16 divides no N


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["dense", "dense+causal", "dense+decay"])
@pytest.mark.parametrize("mshape", MASK_SHAPES)
def test_every_mask_broadcast_shape(variant, kind, mshape):
    B, H, Hkv, N, D, E = 2, 4, 2, 37, 6, 5
    p = make_problem(B, H, Hkv, N, N, D, E, kind, mask_shape=_mask_shape(mshape, B, H, N, N), seed=3)
    check_against_reference(variant, p, where=f"{variant} {kind} mask {mshape}", block_size=8)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bn, bm", [(1, 1), (7, 5), (5, 64), (64, 7), (200, 200)])
def test_block_sizes_rectangular_and_oversized(variant, bn, bm):
    p = make_problem(2, 4, 2, 29, 29, 8, 3, "dense+decay", mask_shape=(1, 4, 29, 29), seed=4)
    check_against_reference(variant, p, where=f"{variant} bn={bn} bm={bm}",
                            block_size_n=bn, block_size_m=bm)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind, state", [("dense", None), ("dense+decay", None), ("decay", "both"), ("causal", "both")])
def test_low_precision_accumulates_in_float32(variant, dtype, kind, state):
    p = make_problem(2, 4, 2, 65, 65, 48, 20, kind, mask_shape=(2, 1, 65, 65), state=state, dtype=dtype, seed=5)
    res, cots = run(backend_fn(variant, block_size=16), p)
    assert res["o"].dtype == dtype
    if state:
        assert res["final"].dtype == torch.float32 and res["dS0"].dtype == torch.float32
    for n in ("q", "k", "v", "mask"):
        if p[n] is not None:
            assert res["d" + n].dtype == dtype, f"d{n} is {res['d' + n].dtype}, expected {dtype}"
    exact, terms = oracle(p, cots)
    assert_close_to_oracle(res, exact, terms, p, where=f"{variant} {kind} {dtype}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["causal", "decay"])
def test_state_split_equals_whole(variant, kind):
    """Running the sequence in two pieces, passing the state, equals running it whole."""
    p = make_problem(1, 4, 2, 50, 50, 6, 5, kind, state="both", seed=6)
    f = backend_fn(variant, block_size=8)
    kw = p["kw"]
    o, S = f(p["q"], p["k"], p["v"], None, **kw)
    cut = 23
    o1, S1 = f(p["q"][:, :, :cut], p["k"][:, :, :cut], p["v"][:, :, :cut], None, **kw)
    o2, S2 = f(p["q"][:, :, cut:], p["k"][:, :, cut:], p["v"][:, :, cut:], None, **dict(kw, initial_state=S1))
    torch.testing.assert_close(torch.cat([o1, o2], 2), o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S2, S, rtol=1e-12, atol=1e-12)


# -- float64 gradcheck of every differentiable input ----------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(variant, kind):
    N = 5
    M = 4 if kind in ("none", "dense") else N
    state = "both" if kind in ("causal", "decay") else None
    p = make_problem(2, 2, 1, N, M, 3, 2, kind, mask_shape=(1, 2, N, M), state=state, seed=7)
    fn = linattn.get_backend(variant).fn
    names = [n for n in INPUTS if p[n] is not None]

    def f(*xs):
        d = dict(zip(names, xs))
        kw = dict(p["kw"], decay=d.get("decay"), initial_state=d.get("S0"))
        o, S = fn(d["q"], d["k"], d["v"], d.get("mask"), block_size=2, **kw)
        return (o, S) if S is not None else o

    assert torch.autograd.gradcheck(f, tuple(p[n] for n in names), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_double_backward_raises(variant):
    p = make_problem(1, 2, 1, 6, 6, 3, 2, "dense+decay", seed=8)
    o, _ = linattn.get_backend(variant).fn(p["q"], p["k"], p["v"], p["mask"], **p["kw"], block_size=4)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(o.sum(), p["q"], create_graph=True)
    o, _ = linattn.get_backend(variant).fn(p["q"], p["k"], p["v"], p["mask"], **p["kw"], block_size=4)
    do = torch.ones_like(o, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(o, p["q"], do, create_graph=True)
    assert linattn.get_backend(variant).double_backward is False


# -- only what is needed is computed; no N×M tensor exists ----------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_needs_input_grad_is_honoured(variant, monkeypatch):
    import importlib

    mod = importlib.import_module(f"linattn.backends.{variant}")
    seen = []
    real = mod.wanted
    monkeypatch.setattr(mod, "wanted", lambda needs: seen.append(real(needs)) or seen[-1])
    p = make_problem(1, 2, 1, 9, 9, 3, 2, "dense+decay", seed=9)
    p["mask"].requires_grad_(False)
    p["decay"].requires_grad_(False)
    p["k"].requires_grad_(False)
    o, _ = linattn.get_backend(variant).fn(p["q"], p["k"], p["v"], p["mask"], **p["kw"], block_size=4)
    o.sum().backward()
    assert seen == [{"q", "v"}]
    assert p["k"].grad is None and p["mask"].grad is None and p["decay"].grad is None
    assert p["q"].grad is not None and p["v"].grad is not None


def _allocations(fn):
    """Sizes in bytes of every CPU allocation made while ``fn`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind, mask_grad", [("decay", False), ("dense", False), ("dense+causal", True)])
def test_no_scores_sized_tensor(variant, kind, mask_grad):
    """Forward + backward never allocate anything of the size of the B·H·N·M scores; the
    only N×M allocation allowed is dM itself (a buffer shaped like the mask)."""
    B, H, N, D = 1, 4, 256, 8
    p = make_problem(B, H, 2, N, N, D, D, kind, mask_shape=(1, 1, N, N), seed=10)
    if p["mask"] is not None:
        p["mask"].requires_grad_(mask_grad)
    fn = linattn.get_backend(variant).fn

    def fwd_bwd():
        o, _ = fn(p["q"], p["k"], p["v"], p["mask"], **p["kw"], block_size=32)
        o.backward(torch.ones_like(o))

    fwd_bwd()  # warm-up
    sizes = _allocations(fwd_bwd)
    nm = N * N * 8  # one float64 N×M matrix
    big = [s for s in sizes if s >= nm]
    assert len(big) == (1 if mask_grad else 0), f"allocations of >= N·M float64: {big} (scores: {B * H * nm})"
    assert max(sizes) <= nm < B * H * nm  # at most dM; the scores would be B·H times larger


@pytest.mark.parametrize("kind", KINDS)
def test_prealloc_allocates_nothing_per_tile(kind):
    """blocked_prealloc's allocation count does not grow with the number of tiles."""
    fn = linattn.get_backend("blocked_prealloc").fn
    counts = []
    for N in (16, 64):
        p = make_problem(2, 4, 2, N, N, 8, 6, kind, mask_shape=(1, 4, N, N), seed=11)

        def fwd_bwd():
            o, _ = fn(p["q"], p["k"], p["v"], p["mask"], **p["kw"], block_size=4)
            o.backward(torch.ones_like(o))

        fwd_bwd()
        counts.append(len(_allocations(fwd_bwd)))
    assert counts[0] == counts[1], f"allocations for 16 vs 256 tiles: {counts}"


# -- the public functions and the registry --------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_public_signature_matches_linear_attention(variant):
    ours = inspect.signature(PUBLIC[variant]).parameters
    api = inspect.signature(linattn.linear_attention).parameters
    for name, par in api.items():
        if name == "backend":
            continue
        assert name in ours, f"{variant} lacks {name}"
        assert ours[name].kind == par.kind and ours[name].default == par.default, name
    for name in ("block_size", "block_size_n", "block_size_m"):
        assert ours[name].kind == inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("variant", VARIANTS)
def test_public_function_and_registry(variant):
    p = make_problem(2, 4, 2, 20, 20, 5, 3, "decay", state="both", seed=12)
    out = PUBLIC[variant](p["q"], p["k"], p["v"], decay=p["decay"], initial_state=p["S0"],
                          output_final_state=True, scale=0.7, block_size=6)
    ref = linattn.linear_attention(p["q"], p["k"], p["v"], decay=p["decay"], initial_state=p["S0"],
                                   output_final_state=True, scale=0.7, backend="reference")
    torch.testing.assert_close(out.o, ref.o)
    torch.testing.assert_close(out.final_state, ref.final_state)
    via_api = linattn.linear_attention(p["q"], p["k"], p["v"], decay=p["decay"], backend=variant)
    torch.testing.assert_close(via_api, linattn.linear_attention(p["q"], p["k"], p["v"], decay=p["decay"]))
    b = linattn.get_backend(variant)
    assert b.auto_rank["cpu"] > linattn.get_backend("reference").auto_rank["cpu"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_public_varlen(variant):
    p = make_problem(1, 2, 1, 17, 17, 4, 3, "decay", seed=13)
    cu = torch.tensor([0, 5, 5, 17])
    o = PUBLIC[variant](p["q"], p["k"], p["v"], decay=p["decay"], cu_seqlens=cu, block_size=4)
    ref = linattn.linear_attention(p["q"], p["k"], p["v"], decay=p["decay"], cu_seqlens=cu, backend="reference")
    torch.testing.assert_close(o, ref)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bad, exc, words", [
    (dict(block_size=0), ValueError, "block_size must be a positive int, got 0"),
    (dict(block_size=2.5), TypeError, "block_size must be a positive int, got float 2.5"),
    (dict(block_size_n=-3), ValueError, "block_size_n must be a positive int, got -3"),
    (dict(block_size_m=True), TypeError, "block_size_m must be a positive int, got bool True"),
])
def test_bad_block_size_names_expected_and_got(variant, bad, exc, words):
    p = make_problem(1, 2, 1, 4, 4, 3, 2, "none")
    with pytest.raises(exc) as info:
        PUBLIC[variant](p["q"], p["k"], p["v"], **bad)
    assert words in str(info.value)


@pytest.mark.parametrize("variant", VARIANTS)
def test_public_validates_like_the_api(variant):
    p = make_problem(1, 4, 2, 4, 5, 3, 2, "none")
    with pytest.raises(ValueError, match="N=4"):
        PUBLIC[variant](p["q"], p["k"], p["v"], causal=True)
    with pytest.raises(ValueError, match="rank 4"):
        PUBLIC[variant](p["q"][0], p["k"], p["v"])


# -- the seed's own example -----------------------------------------------------------


@pytest.mark.slow
def test_seed_example_flash_equals_normal():
    """Q, K, V [16, 12, 1024, 64] float32, M random 0/1 [1, 1, N, N]: the seed's check."""
    torch.manual_seed(0)
    B, H, N, D = 16, 12, 1024, 64
    Q, K, V = (torch.randn(B, H, N, D) for _ in range(3))
    M = torch.randint(0, 2, (1, 1, N, N), dtype=torch.float32)
    with torch.no_grad():
        O_flash = linattn.flash_linear_attention(Q, K, V, M)
        O_normal = linattn.normal_linear_attention(Q, K, V, M)
        # T = Σ_j Σ_d |q_d k_d| M_ij |v_j|: the sum of absolute terms of each element,
        # one batch at a time to keep memory low. Each float32 result is within γ_K·T of
        # the exact value, K = D + N + 8 (see the module docstring).
        T = torch.stack([((Q[b].abs() @ K[b].abs().mT) * M[0]) @ V[b].abs() for b in range(B)])
    K_ = D + N + 8
    gamma = K_ * U[torch.float32] / (1 - K_ * U[torch.float32])
    assert O_flash.shape == O_normal.shape == (B, H, N, D)
    err = (O_flash - O_normal).abs()
    bound = 2 * gamma * T
    assert bool((err <= bound).all()), f"max diff {float(err.max()):.3e}, max err/bound {float((err / bound).max()):.3g}"
    print(f"seed example: O diff {float(err.max()):.3e} (bound at that element {float(bound.flatten()[err.argmax()]):.3e})")
