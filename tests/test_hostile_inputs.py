r"""Hostile input against every public function and every backend: nothing wrong passes silently.

Each class of hostile input has one required behaviour (the table in docs/results-fuzz.md
lists them per backend):

    wrong types, ranks, shapes, head ratios, dtypes, devices;      TypeError / ValueError whose
    bad initial_state, bad cu_seqlens, bad slopes, bad options  -> message names what was expected
                                                                   and what arrived (text tested)
    a request a backend cannot serve                            -> UnsupportedRequest naming the
                                                                   backends that can
    zero-size dimensions                                        -> the exact answer (empty or zeros)
                                                                   and exact gradients
    NaN / Inf in q, k, v, mask, initial_state or do             -> propagation bracketed by two
                                                                   oracles (below)
    float16 overflow though every input is finite               -> Float16OverflowWarning + advice
    non-contiguous, stride-0 (expanded), permuted layouts       -> the same answer as contiguous

NaN and Inf: what "propagate like the reference" can mean
--------------------------------------------------------
The reference applies the causal and decay masks by multiplication, and in IEEE arithmetic
NaN · 0 = NaN and Inf · 0 = NaN. So a NaN in a *future* key k_j reaches o_i for i < j in the
reference, although k_j is not part of o_i's formula; a linear-time backend (which never
touches the future) leaves o_i finite, and a blocked one leaves finite exactly the rows
whose blocks it skips. All three are honest. The property is therefore a bracket: for o,
the final state and every gradient, each backend's set of non-finite entries must

    contain the structural set   -- entries whose formula reads the bad value, computed by a
                                    float64 row-by-row oracle that only touches j <= i, so no
                                    bad value is ever silently dropped;
    lie inside the reference's   -- no backend invents a NaN/Inf the dense formula lacks.

Where the two oracles agree (no causal mask; a bad key at position 0; a bad query in the
last row) the bracket pins the backend's set exactly, and those cases are tested too.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

import linattn
from linattn import linear_attention
from linattn._api import Float16OverflowWarning
from linattn.backends._common import expand_kv

NAN, INF = float("nan"), float("inf")


# -- the backends under test ------------------------------------------------------------


def _cpu_backends():
    """Registered backends that run on the CPU in this process (Triton: interpreter only)."""
    out = []
    for b in linattn.list_backends():
        if b.fn is None or b.name.startswith("_"):
            continue
        if b.available() is None and "cpu" in b.devices:
            out.append(b)
    return out


BACKENDS = _cpu_backends()
NAMES = [b.name for b in BACKENDS]


def _kinds(b):
    return sorted(b.mask_kinds)


def _serves_n_ne_m(b, kind, dtype) -> bool:
    req = linattn.Request(device="cpu", dtype=dtype, B=1, H=2, Hkv=1, N=8, M=6, D=4, E=4, mask_kind=kind,
                          mask_shape=(1, 2, 8, 6) if kind.startswith("dense") else None)
    return b.unsupported(req) is None


def _dtype_for(b, kind="none"):
    """The most precise dtype the backend serves for this mask kind (float64 where it can)."""
    for dt in (torch.float64, torch.float32, torch.float16):
        req = linattn.Request(device="cpu", dtype=dt, B=1, H=2, Hkv=1, N=8, M=8, D=4, E=4, mask_kind=kind,
                              mask_shape=(1, 2, 8, 8) if kind.startswith("dense") else None)
        if b.unsupported(req) is None:
            return dt
    return torch.float32


def _rand(*shape, dtype=torch.float64, seed=0, lo=0.5, hi=1.5):
    """Random values of both signs bounded away from zero (no accidental exact zeros)."""
    g = torch.Generator().manual_seed(seed)
    mag = lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(*shape, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return (mag * sign).to(dtype)


def _qkv(B=2, H=4, Hkv=2, N=7, M=7, D=5, E=3, dtype=torch.float64, seed=0):
    return (
        _rand(B, H, N, D, dtype=dtype, seed=seed),
        _rand(B, Hkv, M, D, dtype=dtype, seed=seed + 1),
        _rand(B, Hkv, M, E, dtype=dtype, seed=seed + 2),
    )


def _call(q, k, v, mask=None, backend="reference", **kw):
    return linear_attention(q, k, v, mask, backend=backend, **kw)


def _raises(exc, words, fn):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for w in words if isinstance(words, (list, tuple)) else [words]:
        assert w in msg, f"message {msg!r} lacks {w!r}"
    return msg


# -- 1. wrong types, ranks, shapes, head ratios, dtypes, devices --------------------------

_Q, _K, _V = _qkv()


def _meta(*s):
    return torch.empty(*s, device="meta", dtype=torch.float64)


BAD_CALLS = {
    # name: (q, k, v, kwargs, exception, words that must appear in the message)
    "q not a tensor": (lambda: ([[1.0]], _K, _V, {}), TypeError, ["q must be a torch.Tensor", "list"]),
    "q rank 3": (lambda: (_Q[0], _K, _V, {}), ValueError, ["q must have rank 4", "(4, 7, 5)", "rank 3"]),
    "k rank 5": (lambda: (_Q, _K[None], _V, {}), ValueError, ["k must have rank 4", "rank 5"]),
    "v rank 2": (lambda: (_Q, _K, _V[0, 0], {}), ValueError, ["v must have rank 4", "rank 2"]),
    "batch mismatch": (lambda: (_Q, _K[:1], _V[:1], {}), ValueError, ["batch sizes differ", "(2, 4, 7, 5)", "(1, 2, 7, 5)"]),
    "D mismatch": (lambda: (_Q, _K[..., :4], _V, {}), ValueError, ["share the last dim D", "(2, 2, 7, 4)"]),
    "k/v length mismatch": (lambda: (_Q, _K, _V[:, :, :6], {}), ValueError, ["share heads and length", "(2, 2, 6, 3)"]),
    "k/v heads mismatch": (lambda: (_Q, _K, _V[:, :1], {}), ValueError, ["share heads and length", "(2, 1, 7, 3)"]),
    "Hkv does not divide H": (lambda: (_Q, _rand(2, 3, 7, 5), _rand(2, 3, 7, 3), {}), ValueError, ["must divide", "H=4", "Hkv=3"]),
    "Hkv > H": (lambda: (_Q, _rand(2, 8, 7, 5), _rand(2, 8, 7, 3), {}), ValueError, ["must divide", "Hkv=8"]),
    "Hkv = 0, H > 0": (lambda: (_Q, _rand(2, 0, 7, 5), _rand(2, 0, 7, 3), {}), ValueError, ["must divide", "Hkv=0"]),
    "int q": (lambda: (torch.ones(2, 4, 7, 5, dtype=torch.int64), _K, _V, {}), TypeError, ["q must be float16", "torch.int64"]),
    "bool q": (lambda: (_Q > 0, _K, _V, {}), TypeError, ["q must be float16", "torch.bool"]),
    "complex q,k,v": (lambda: (_Q.to(torch.complex128), _K.to(torch.complex128), _V.to(torch.complex128), {}),
                      TypeError, ["q must be float16", "complex128"]),
    "uint8 v": (lambda: (_Q, _K, _V.to(torch.uint8), {}), TypeError, ["v must be float16", "torch.uint8"]),
    "mixed dtypes": (lambda: (_Q, _K.float(), _V, {}), TypeError, ["share one dtype", "torch.float32"]),
    "fp16 q, fp32 k, v": (lambda: (_Q.half(), _K.float(), _V.float(), {}), TypeError, ["share one dtype", "torch.float16"]),
    "mixed devices": (lambda: (_Q, _meta(2, 2, 7, 5), _V, {}), ValueError, ["one device", "meta"]),
    # masks
    "mask rank 1": (lambda: (_Q, _K, _V, dict(mask=torch.ones(7, dtype=torch.float64))), ValueError, ["mask must have rank 2 or 3 or 4", "rank 1"]),
    "mask rank 5": (lambda: (_Q, _K, _V, dict(mask=torch.ones(1, 2, 4, 7, 7, dtype=torch.float64))), ValueError, ["rank 5"]),
    "mask wrong N": (lambda: (_Q, _K, _V, dict(mask=torch.ones(6, 7, dtype=torch.float64))), ValueError, ["does not broadcast", "(6, 7)", "[2|1, 4|1, 7, 7]"]),
    "mask broadcast in N": (lambda: (_Q, _K, _V, dict(mask=torch.ones(1, 7, dtype=torch.float64))), ValueError, ["does not broadcast", "(1, 7)"]),
    "mask wrong heads": (lambda: (_Q, _K, _V, dict(mask=torch.ones(2, 2, 7, 7, dtype=torch.float64))), ValueError, ["does not broadcast", "(2, 2, 7, 7)"]),
    "mask int": (lambda: (_Q, _K, _V, dict(mask=torch.ones(7, 7, dtype=torch.int32))), TypeError, ["mask must be bool or have q's dtype", "torch.int32"]),
    "mask complex": (lambda: (_Q, _K, _V, dict(mask=torch.ones(7, 7, dtype=torch.complex128))), TypeError, ["complex128"]),
    "mask other float dtype": (lambda: (_Q, _K, _V, dict(mask=torch.ones(7, 7))), TypeError, ["q's dtype torch.float64", "torch.float32"]),
    "mask on meta": (lambda: (_Q, _K, _V, dict(mask=_meta(7, 7))), ValueError, ["mask must be on cpu", "meta"]),
    "mask not a tensor": (lambda: (_Q, _K, _V, dict(mask=[[1.0] * 7] * 7)), TypeError, ["mask must be a torch.Tensor", "list"]),
    # slopes
    "slopes wrong length": (lambda: (_Q, _K, _V, dict(decay=torch.ones(3, dtype=torch.float64))), ValueError, ["shape [H]=[4]", "(3,)"]),
    "slopes rank 2": (lambda: (_Q, _K, _V, dict(decay=torch.ones(1, 4, dtype=torch.float64))), ValueError, ["decay must have rank 1", "(1, 4)"]),
    "slopes 0-d": (lambda: (_Q, _K, _V, dict(decay=torch.tensor(1.0))), ValueError, ["decay must have rank 1", "()"]),
    "slopes int": (lambda: (_Q, _K, _V, dict(decay=torch.ones(4, dtype=torch.int64))), TypeError, ["floating", "torch.int64"]),
    "slopes negative": (lambda: (_Q, _K, _V, dict(decay=torch.tensor([0.1, -0.5, 0.1, 0.1]))), ValueError, ["finite and >= 0", "s[1]=-0.5"]),
    "slopes NaN": (lambda: (_Q, _K, _V, dict(decay=torch.tensor([0.1, 0.1, NAN, 0.1]))), ValueError, ["finite and >= 0", "s[2]=nan"]),
    "slopes +Inf": (lambda: (_Q, _K, _V, dict(decay=torch.tensor([INF, 0.1, 0.1, 0.1]))), ValueError, ["finite and >= 0", "s[0]=inf"]),
    "slopes on meta": (lambda: (_Q, _K, _V, dict(decay=_meta(4))), ValueError, ["decay slopes must be on cpu", "meta"]),
    "slopes a list": (lambda: (_Q, _K, _V, dict(decay=[0.1] * 4)), TypeError, ["decay must be a torch.Tensor", "list"]),
    # options
    "causal with N != M": (lambda: (_Q, _rand(2, 2, 9, 5), _rand(2, 2, 9, 3), dict(causal=True)), ValueError, ["as many queries as keys", "N=7", "M=9"]),
    "decay with N != M": (lambda: (_Q, _rand(2, 2, 9, 5), _rand(2, 2, 9, 3), dict(decay=torch.ones(4, dtype=torch.float64))), ValueError, ["N=7", "M=9"]),
    "causal not bool": (lambda: (_Q, _K, _V, dict(causal="yes")), TypeError, ["causal must be a bool", "str"]),
    "causal a tensor": (lambda: (_Q, _K, _V, dict(causal=torch.tensor(True))), TypeError, ["causal must be a bool", "Tensor"]),
    "scale a string": (lambda: (_Q, _K, _V, dict(scale="2")), TypeError, ["scale must be a real number", "str"]),
    "scale a tensor": (lambda: (_Q, _K, _V, dict(scale=torch.tensor(2.0))), TypeError, ["scale must be a real number", "Tensor"]),
    "scale complex": (lambda: (_Q, _K, _V, dict(scale=1j)), TypeError, ["scale must be a real number", "complex"]),
    "scale NaN": (lambda: (_Q, _K, _V, dict(scale=NAN)), ValueError, ["scale must be finite", "nan"]),
    "scale Inf": (lambda: (_Q, _K, _V, dict(scale=-INF)), ValueError, ["scale must be finite", "-inf"]),
    "output_final_state a tensor": (lambda: (_Q, _K, _V, dict(causal=True, output_final_state=torch.tensor([1, 0]))),
                                    TypeError, ["output_final_state must be a bool", "Tensor"]),
    # state
    "state without causal": (lambda: (_Q, _K, _V, dict(output_final_state=True)), ValueError, ["need a causal or decay mask"]),
    "state with dense mask": (lambda: (_Q, _K, _V, dict(mask=torch.ones(7, 7, dtype=torch.float64), causal=True,
                                                         initial_state=torch.zeros(2, 4, 5, 3, dtype=torch.float64))),
                              ValueError, ["no dense mask", "mask=given"]),
    "state wrong shape": (lambda: (_Q, _K, _V, dict(causal=True, initial_state=torch.zeros(2, 4, 3, 5))), ValueError,
                          ["initial_state must have shape [B, H, D, E]", "(2, 4, 5, 3)", "got (2, 4, 3, 5)"]),
    "state kv heads": (lambda: (_Q, _K, _V, dict(causal=True, initial_state=torch.zeros(2, 2, 5, 3))), ValueError, ["(2, 4, 5, 3)", "got (2, 2, 5, 3)"]),
    "state rank 3": (lambda: (_Q, _K, _V, dict(causal=True, initial_state=torch.zeros(4, 5, 3))), ValueError, ["initial_state must have rank 4", "rank 3"]),
    "state int": (lambda: (_Q, _K, _V, dict(causal=True, initial_state=torch.zeros(2, 4, 5, 3, dtype=torch.int32))), TypeError,
                  ["initial_state must be floating", "torch.int32"]),
    "state complex": (lambda: (_Q, _K, _V, dict(causal=True, initial_state=torch.zeros(2, 4, 5, 3, dtype=torch.complex64))), TypeError,
                      ["complex64"]),
    "state on meta": (lambda: (_Q, _K, _V, dict(causal=True, initial_state=_meta(2, 4, 5, 3))), ValueError, ["initial_state must be on cpu", "meta"]),
    "state a list": (lambda: (_Q, _K, _V, dict(causal=True, initial_state=[0.0])), TypeError, ["initial_state must be a torch.Tensor"]),
}

_Q1, _K1, _V1 = _qkv(B=1, N=9, M=9)

BAD_VARLEN = {
    "cu_seqlens float": (dict(cu_seqlens=torch.tensor([0.0, 4.0, 9.0])), TypeError, ["cu_seqlens must be int32 or int64", "torch.float32"]),
    "cu_seqlens uint8": (dict(cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.uint8)), TypeError, ["torch.uint8"]),
    "cu_seqlens bool": (dict(cu_seqlens=torch.tensor([False, True])), TypeError, ["torch.bool"]),
    "cu_seqlens unsorted": (dict(cu_seqlens=torch.tensor([0, 6, 3, 9])), ValueError, ["non-decreasing from 0 to N=9", "[0, 6, 3, 9]"]),
    "cu_seqlens not from 0": (dict(cu_seqlens=torch.tensor([1, 9])), ValueError, ["from 0 to N=9", "[1, 9]"]),
    "cu_seqlens short of N": (dict(cu_seqlens=torch.tensor([0, 4, 8])), ValueError, ["to N=9", "[0, 4, 8]"]),
    "cu_seqlens past N": (dict(cu_seqlens=torch.tensor([0, 4, 12])), ValueError, ["to N=9", "[0, 4, 12]"]),
    "cu_seqlens negative": (dict(cu_seqlens=torch.tensor([0, -3, 9])), ValueError, ["non-decreasing", "-3"]),
    "cu_seqlens one entry": (dict(cu_seqlens=torch.tensor([0])), ValueError, ["at least [0, N]", "[0]"]),
    "cu_seqlens rank 2": (dict(cu_seqlens=torch.tensor([[0, 9]])), ValueError, ["cu_seqlens must have rank 1", "(1, 2)"]),
    "cu_seqlens on meta": (dict(cu_seqlens=torch.empty(3, dtype=torch.int64, device="meta")), ValueError, ["cu_seqlens must be on cpu", "meta"]),
    "cu_seqlens a list": (dict(cu_seqlens=[0, 9]), TypeError, ["cu_seqlens must be a torch.Tensor", "list"]),
    "cu_seqlens, no causal": (dict(cu_seqlens=torch.tensor([0, 9]), causal=False), ValueError, ["needs a causal or decay mask"]),
    "cu_seqlens with dense mask": (dict(cu_seqlens=torch.tensor([0, 9]), mask=torch.ones(9, 9, dtype=torch.float64)), ValueError, ["no dense mask"]),
    "cu_seqlens state per sequence": (dict(cu_seqlens=torch.tensor([0, 4, 9]), initial_state=torch.zeros(1, 4, 5, 3)), ValueError,
                                      ["[S, H, D, E]", "(2, 4, 5, 3)", "got (1, 4, 5, 3)"]),
}


@pytest.mark.parametrize("backend", NAMES + ["auto"])
@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_call_names_expected_and_got(case, backend):
    make, exc, words = BAD_CALLS[case]
    q, k, v, kw = make()
    _raises(exc, words, lambda: linear_attention(q, k, v, backend=backend, **kw))


@pytest.mark.parametrize("backend", NAMES + ["auto"])
@pytest.mark.parametrize("case", sorted(BAD_VARLEN))
def test_bad_cu_seqlens_names_expected_and_got(case, backend):
    kw, exc, words = BAD_VARLEN[case]
    kw = dict(kw)
    kw.setdefault("causal", True)
    _raises(exc, words, lambda: linear_attention(_Q1, _K1, _V1, backend=backend, **kw))


def test_cu_seqlens_needs_batch_one():
    q, k, v = _qkv(B=2, N=9, M=9)
    _raises(ValueError, ["B must be 1", "(2, 4, 9, 5)"],
            lambda: linear_attention(q, k, v, causal=True, cu_seqlens=torch.tensor([0, 4, 9])))


def test_unknown_backend_lists_registered_ones():
    _raises(ValueError, ["unknown backend 'nope'", "reference"], lambda: _call(_Q, _K, _V, backend="nope"))


@pytest.mark.parametrize("backend", NAMES)
def test_unservable_request_names_capable_backends(backend):
    """Every mask kind a backend does not declare gets UnsupportedRequest naming the ones that can."""
    b = linattn.get_backend(backend)
    q, k, v = _qkv(N=7, M=7)
    mask = _rand(7, 7)
    s = torch.full((4,), 0.3, dtype=torch.float64)
    kinds = {
        "none": {}, "causal": dict(causal=True), "decay": dict(decay=s), "dense": dict(mask=mask),
        "dense+causal": dict(mask=mask, causal=True), "dense+decay": dict(mask=mask, decay=s),
    }
    missing = [kd for kd in kinds if kd not in b.mask_kinds]
    if not missing:
        pytest.skip(f"{backend} serves every mask kind")
    for kd in missing:
        msg = _raises(linattn.UnsupportedRequest, [f"backend {backend!r} cannot serve", "Backends that can", "reference"],
                      lambda: _call(q, k, v, backend=backend, **kinds[kd]))
        assert kd in msg


def test_meta_device_is_refused_clearly_or_shaped():
    """meta tensors: no backend computes on them (UnsupportedRequest naming the devices);
    the value checks on slopes and cu_seqlens do not crash on them; a zero-size problem
    gets its (empty) meta output."""
    q, k, v = _meta(1, 4, 9, 5), _meta(1, 2, 9, 5), _meta(1, 2, 9, 3)
    _raises(linattn.UnsupportedRequest, ["on meta", "device 'meta' not in"], lambda: linear_attention(q, k, v))
    _raises(linattn.UnsupportedRequest, ["on meta"], lambda: linear_attention(q, k, v, decay=_meta(4)))
    _raises(ValueError, ["cu_seqlens must hold values", "meta"],
            lambda: linear_attention(q, k, v, causal=True, cu_seqlens=torch.empty(2, dtype=torch.int64, device="meta")))
    o = linear_attention(_meta(0, 4, 9, 5), _meta(0, 2, 9, 5), _meta(0, 2, 9, 3))
    assert o.device.type == "meta" and o.shape == (0, 4, 9, 3)


def test_gpu_backends_without_gpu_say_why():
    """'cuda when absent': asking for a GPU-only backend on a machine without one names the reason."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    checked = 0
    for b in linattn.list_backends():
        why = b.available()
        if why is None or b.name.startswith("_"):
            continue
        msg = _raises(linattn.UnsupportedRequest, [f"backend {b.name!r} cannot serve", "unavailable", "Backends that can"],
                      lambda: _call(_Q, _K, _V, backend=b.name))
        assert why in msg
        checked += 1
    from linattn._decode import decode_step
    from linattn.backends.triton import common

    if common.unavailable() is not None:
        _raises(linattn.BackendUnavailable, ["decode_step(backend='triton')"],
                lambda: decode_step(_Q[:, :, 0], _K[:, :, 0], _V[:, :, 0], torch.zeros(2, 4, 5, 3, dtype=torch.float64),
                                    backend="triton"))
        checked += 1
    if not checked:
        pytest.skip("every backend is available here")


# -- the seed's names, decode_step and tnl_slopes --------------------------------------


@pytest.mark.parametrize("fn", ["normal_linear_attention", "flash_linear_attention"])
def test_seed_names_reject_like_the_api(fn):
    f = getattr(linattn, fn)
    if fn == "flash_linear_attention" and "blocked" not in [b.name for b in linattn.list_backends()]:
        _raises(ValueError, ["unknown backend 'blocked'"], lambda: f(_Q, _K, _V))
        return
    _raises(ValueError, ["q must have rank 4"], lambda: f(_Q[0], _K, _V))
    _raises(TypeError, ["share one dtype"], lambda: f(_Q, _K.float(), _V))
    _raises(ValueError, ["does not broadcast"], lambda: f(_Q, _K, _V, torch.ones(6, 7, dtype=torch.float64)))
    _raises(ValueError, ["must divide"], lambda: f(_Q, _rand(2, 3, 7, 5), _rand(2, 3, 7, 3)))
    torch.testing.assert_close(f(_Q, _K, _V, _rand(7, 7)), _call(_Q, _K, _V, _rand(7, 7)))


_S = torch.zeros(2, 4, 5, 3)
_q, _k, _v = _Q[:, :, 0].float(), _K[:, :, 0].float(), _V[:, :, 0].float()  # [B, H, D], [B, Hkv, D], [B, Hkv, E]

BAD_DECODE = {
    "q rank 2": (lambda: (_q[0], _k, _v, _S, {}), ValueError, ["q must be [B, H, D]", "(4, 5)"]),
    "q two tokens": (lambda: (_Q[:, :, :2].float(), _k, _v, _S, {}), ValueError, ["one token", "(2, 4, 2, 5)"]),
    "q int": (lambda: (_q.long(), _k, _v, _S, {}), TypeError, ["q must be float16", "torch.int64"]),
    "q complex": (lambda: (_q.to(torch.complex64), _k, _v, _S, {}), TypeError, ["complex64"]),
    "mixed dtypes": (lambda: (_q, _k.double(), _v, _S, {}), TypeError, ["share one dtype"]),
    "D mismatch": (lambda: (_q, _k[..., :4], _v, _S, {}), ValueError, ["share the last dim D"]),
    "Hkv does not divide H": (lambda: (_q, torch.randn(2, 3, 5), torch.randn(2, 3, 3), _S, {}), ValueError, ["must divide", "Hkv=3"]),
    "state wrong shape": (lambda: (_q, _k, _v, torch.zeros(2, 4, 3, 5), {}), ValueError, ["state must have shape", "(2, 4, 5, 3)", "(2, 4, 3, 5)"]),
    "state half": (lambda: (_q, _k, _v, _S.half(), {}), TypeError, ["state must be float32 or float64", "torch.float16"]),
    "state int": (lambda: (_q, _k, _v, _S.long(), {}), TypeError, ["torch.int64"]),
    "state on meta": (lambda: (_q, _k, _v, torch.empty(2, 4, 5, 3, device="meta"), {}), ValueError, ["state must be on cpu", "meta"]),
    "state a list": (lambda: (_q, _k, _v, [0.0], {}), TypeError, ["state must be a torch.Tensor", "list"]),
    "slopes wrong length": (lambda: (_q, _k, _v, _S, dict(decay=torch.ones(3))), ValueError, ["[H]=[4]", "(3,)"]),
    "slopes negative": (lambda: (_q, _k, _v, _S, dict(decay=-torch.ones(4))), ValueError, [">= 0"]),
    "slopes int": (lambda: (_q, _k, _v, _S, dict(decay=torch.ones(4, dtype=torch.int32))), TypeError, ["torch.int32"]),
    "scale NaN": (lambda: (_q, _k, _v, _S, dict(scale=NAN)), ValueError, ["scale must be finite"]),
    "scale a string": (lambda: (_q, _k, _v, _S, dict(scale="1")), TypeError, ["scale must be a real number"]),
    "unknown backend": (lambda: (_q, _k, _v, _S, dict(backend="cuda-graph")), ValueError, ["backend must be one of", "'cuda-graph'"]),
    "inplace not bool": (lambda: (_q, _k, _v, _S, dict(inplace=1)), TypeError, ["inplace must be a bool", "int"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DECODE))
def test_decode_step_rejects(case):
    from linattn import decode_step

    make, exc, words = BAD_DECODE[case]
    q, k, v, s, kw = make()
    _raises(exc, words, lambda: decode_step(q, k, v, s, **kw))


@pytest.mark.parametrize("bad", [NAN, INF, -INF, -0.5])
def test_decode_step_rejects_non_finite_slopes_like_linear_attention(bad):
    """linear_attention refuses NaN/Inf slopes; decode_step must not silently turn them into a
    NaN state (Inf: exp(-inf) = 0 would even drop the past without a word)."""
    from linattn import decode_step

    s = torch.tensor([0.1, bad, 0.1, 0.1])
    _raises(ValueError, ["finite and >= 0", f"s[1]={bad:g}"], lambda: decode_step(_q, _k, _v, _S, decay=s))


def _decode_backends():
    from linattn.backends.triton import common

    return ["torch"] + (["triton"] if common.unavailable() is None else [])


DECODE_BACKENDS = _decode_backends()


def _decode_problem(dtype, H=4, Hkv=2, D=5, E=3, seed=11):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return (r(2, H, D).to(dtype), r(2, Hkv, D).to(dtype), r(2, Hkv, E).to(dtype), r(2, H, D, E).float(),
            torch.rand(H, generator=g, dtype=torch.float64).float())


@pytest.mark.parametrize("backend", DECODE_BACKENDS)
def test_decode_step_float16_overflow_warns_with_advice(backend):
    """decode_step in float16: o overflowing from finite inputs warns like linear_attention
    (it used to come back inf without a word); normalising q and k, as advised, fixes it;
    no warning when o is finite, nor when an inf input explains the inf."""
    from linattn import decode_step

    q, k, v, S, s = _decode_problem(torch.float16)
    big_q, big_k, big_v = q * 200, k * 200, v * 200
    with pytest.warns(Float16OverflowWarning, match="float16 overflow in decode_step.*Normalise q and k"):
        o, _ = decode_step(big_q, big_k, big_v, S, decay=s, backend=backend)
    assert not bool(torch.isfinite(o).all())
    nq, nk = big_q / big_q.norm(dim=-1, keepdim=True), big_k / big_k.norm(dim=-1, keepdim=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Float16OverflowWarning)
        o, _ = decode_step(nq, nk, big_v, S, decay=s, backend=backend)
        assert bool(torch.isfinite(o).all())
        q_inf = big_q.clone()
        q_inf[0, 1, 2] = INF
        o, _ = decode_step(q_inf, big_k, big_v, S, decay=s, backend=backend)  # inf in, inf out: no warning
        assert not bool(torch.isfinite(o).all())
        o, _ = decode_step(q.to(torch.bfloat16) * 200, k.to(torch.bfloat16) * 200, v.to(torch.bfloat16) * 200, S,
                           decay=s, backend=backend)  # bfloat16: finite, nothing to report
        assert bool(torch.isfinite(o).all())


@pytest.mark.parametrize("backend", DECODE_BACKENDS)
@pytest.mark.parametrize("target", ["q", "k", "v", "state"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_decode_step_nan_inf_propagate_like_the_reference(backend, target, value):
    """A bad value in q, k, v or the state: decode_step's non-finite entries of o and of the
    new state are exactly those of the float64 reference on the same one-token problem
    (linear_attention with the state as initial_state; one token has no future, so the
    reference's set is the structural one)."""
    from linattn import decode_step

    q, k, v, S, s = _decode_problem(torch.float32)
    bad = float(value)
    t = dict(q=q, k=k, v=v, state=S)[target].clone()
    t.view(-1)[t.numel() // 2] = bad
    args = dict(q=q, k=k, v=v, state=S)
    args[target] = t
    o, new = decode_step(args["q"], args["k"], args["v"], args["state"], decay=s, backend=backend)
    ro, rnew = linear_attention(args["q"][:, :, None].double(), args["k"][:, :, None].double(),
                                args["v"][:, :, None].double(), decay=s.double(), initial_state=args["state"].double(),
                                output_final_state=True, backend="reference")
    assert torch.equal(~torch.isfinite(o), ~torch.isfinite(ro[:, :, 0])), (target, value, o, ro)
    assert torch.equal(~torch.isfinite(new), ~torch.isfinite(rnew)), (target, value)
    # the bad value is never dropped silently: q reaches o; k, v and the state reach the new state
    assert not bool(torch.isfinite(o if target == "q" else new).all())


DECODE_ZERO = {"B": (0, 4, 2, 5, 3), "H": (2, 0, 0, 5, 3), "D": (2, 4, 2, 0, 3), "E": (2, 4, 2, 5, 0)}


@pytest.mark.parametrize("backend", DECODE_BACKENDS)
@pytest.mark.parametrize("dim", sorted(DECODE_ZERO))
def test_decode_step_zero_size(backend, dim):
    """Zero-size B, H, D or E: the right (empty) shapes, exact answers (D = 0: o = 0 and the
    new state is empty), as linear_attention; H = Hkv = 0 is accepted like there."""
    from linattn import decode_step

    B, H, Hkv, D, E = DECODE_ZERO[dim]
    q, k, v = torch.randn(B, H, D), torch.randn(B, Hkv, D), torch.randn(B, Hkv, E)
    S = torch.randn(B, H, D, E)
    o, new = decode_step(q, k, v, S, decay=torch.rand(H), backend=backend)
    assert o.shape == (B, H, E) and new.shape == (B, H, D, E)
    assert bool((o == 0).all()) and bool(torch.isfinite(new).all())


@pytest.mark.parametrize("backend", DECODE_BACKENDS)
def test_decode_step_hostile_layouts(backend):
    """Permuted, strided (last-dim stride 2), offset and stride-0 (expanded) q, k, v and state
    give the contiguous answer to float32 rounding."""
    from linattn import decode_step

    q, k, v, S, s = _decode_problem(torch.float32)
    want_o, want_new = decode_step(q, k, v, S, decay=s, backend=backend)

    def strided(x):
        return torch.stack([x, torch.full_like(x, NAN)], dim=-1).flatten(-2)[..., ::2]

    def offset(x):
        return torch.cat([torch.full_like(x[..., :1], NAN), x], dim=-1)[..., 1:]

    def permuted(x):
        return x.transpose(0, 1).contiguous().transpose(0, 1)

    for f in (strided, offset, permuted):
        o, new = decode_step(f(q), f(k), f(v), f(S), decay=s, backend=backend)
        torch.testing.assert_close(o, want_o, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(new, want_new, rtol=1e-6, atol=1e-6)
    q0, k0, v0, S0 = q[:1].expand_as(q), k[:1].expand_as(k), v[:1].expand_as(v), S[:1].expand_as(S)
    o, new = decode_step(q0, k0, v0, S0, decay=s[:1].expand_as(s), backend=backend)
    ref_o, ref_new = decode_step(q0.contiguous(), k0.contiguous(), v0.contiguous(), S0.contiguous(),
                                 decay=s[:1].expand_as(s).contiguous(), backend=backend)
    torch.testing.assert_close(o, ref_o, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new, ref_new, rtol=1e-6, atol=1e-6)


BAD_SLOPES_ARGS = {
    "zero heads": (dict(n_heads=0), ValueError, ["n_heads must be >= 1", "0"]),
    "negative heads": (dict(n_heads=-4), ValueError, ["n_heads", "-4"]),
    "fractional heads": (dict(n_heads=4.5), TypeError, ["n_heads must be an int", "float"]),
    "bool heads": (dict(n_heads=True), TypeError, ["n_heads must be an int", "bool"]),
    "layer past the end": (dict(n_heads=4, layer=3, n_layers=3), ValueError, ["layer must be in [0, n_layers=3)", "3"]),
    "negative layer": (dict(n_heads=4, layer=-1, n_layers=3), ValueError, ["layer must be in", "-1"]),
    "fractional layer": (dict(n_heads=4, layer=0.5, n_layers=3), TypeError, ["layer must be an int", "float"]),
    "zero layers": (dict(n_heads=4, layer=0, n_layers=0), ValueError, ["n_layers must be >= 1", "0"]),
    "integer dtype": (dict(n_heads=4, dtype=torch.int64), TypeError, ["dtype must be floating", "torch.int64"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SLOPES_ARGS))
def test_tnl_slopes_rejects(case):
    kw, exc, words = BAD_SLOPES_ARGS[case]
    _raises(exc, words, lambda: linattn.tnl_slopes(**kw))


# -- 2. zero-size dimensions: exact answers and exact gradients ----------------------------

ZERO_DIMS = ["B", "H", "N", "M", "D", "E", "H=Hkv=0"]


def _zero_problem(dim, kind, dtype):
    size = dict(B=2, H=4, Hkv=2, N=5, M=5, D=3, E=2)
    if dim == "H=Hkv=0":
        size.update(H=0, Hkv=0)
    elif dim == "H":
        size["H"] = 0  # Hkv=2 divides H=0: zero query heads reading two kv heads
    else:
        size[dim] = 0
    if kind in ("causal", "decay", "dense+causal", "dense+decay") and dim in ("N", "M"):
        size["N"] = size["M"] = 0
    q, k, v = _qkv(**size, dtype=dtype)
    kw = {}
    if kind.endswith("causal"):
        kw["causal"] = True
    if kind.endswith("decay"):
        kw["decay"] = torch.full((size["H"],), 0.4, dtype=dtype).requires_grad_()
    if kind.startswith("dense"):
        kw["mask"] = _rand(1, size["H"], size["N"], size["M"], dtype=dtype).requires_grad_()
    return q, k, v, kw


@pytest.mark.parametrize("backend", NAMES)
@pytest.mark.parametrize("dim", ZERO_DIMS)
def test_zero_size_exact_answer_and_gradients(backend, dim):
    b = linattn.get_backend(backend)
    dtype = _dtype_for(b)
    for kind in _kinds(b):
        q, k, v, kw = _zero_problem(dim, kind, dtype)
        state = kind in ("causal", "decay")
        for t in (q, k, v):
            t.requires_grad_()
        if state:
            B, H, D, E = q.shape[0], q.shape[1], q.shape[3], v.shape[3]
            kw["initial_state"] = _rand(B, H, D, E, dtype=torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
            kw["output_final_state"] = True
        out = _call(q, k, v, backend=backend, **kw)
        o, st = (out.o, out.final_state) if state else (out, None)
        ref = _exact(q, k, v, kw)
        assert o.shape == (q.shape[0], q.shape[1], q.shape[2], v.shape[3]), (kind, o.shape)
        assert o.dtype == q.dtype
        torch.testing.assert_close(o, ref[0].to(o.dtype), rtol=1e-12, atol=0, msg=f"{kind}: o")
        if state:
            torch.testing.assert_close(st, ref[1].to(st.dtype), rtol=1e-12, atol=0, msg=f"{kind}: final state")
        # gradients: of the right shape, finite, and equal to the exact ones
        ins = [q, k, v] + [kw[n] for n in ("mask", "decay", "initial_state") if n in kw]
        loss = (o * _rand(*o.shape, dtype=o.dtype, seed=7)).sum() + (0 if st is None else (st * _rand(*st.shape, dtype=st.dtype, seed=8)).sum())
        got = torch.autograd.grad(loss, ins, allow_unused=True)
        want = _exact_grads(q, k, v, kw, seed_o=7, seed_s=8)
        for name, x, g, w in zip(["q", "k", "v", "mask", "decay", "initial_state"], ins, got, want):
            g = torch.zeros_like(x) if g is None else g
            assert g.shape == x.shape, (kind, name, g.shape, x.shape)
            torch.testing.assert_close(g, w.to(g.dtype), rtol=1e-12, atol=1e-12, msg=f"{kind}: d{name}")


def _exact(q, k, v, kw):
    """Zero-size problems by hand: o is zero whenever the sum over keys or channels is empty;
    the final state is λ^N S0 (+ nothing)."""
    B, H, N, D = q.shape
    E = v.shape[3]
    o = torch.zeros(B, H, N, E, dtype=torch.float64)
    s0 = kw.get("initial_state")
    st = None
    if kw.get("output_final_state"):
        st = torch.zeros(B, H, D, E, dtype=torch.float64)
        if s0 is not None:
            lam_n = 1.0 if "decay" not in kw else torch.exp(-kw["decay"].detach().double() * N)[None, :, None, None]
            st = st + lam_n * s0.detach().double()
    return o, st


def _exact_grads(q, k, v, kw, seed_o, seed_s):
    """Gradients of the zero-size problems: every product has an empty factor, so all are 0
    except d(initial_state) = λ^N · dS when the final state is used."""
    grads = [torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)]
    for name in ("mask", "decay", "initial_state"):
        if name not in kw:
            continue
        x = kw[name]
        if name == "initial_state":
            N = q.shape[2]
            lam_n = 1.0 if "decay" not in kw else torch.exp(-kw["decay"].detach().double() * N)[None, :, None, None]
            dS = _rand(*x.shape, dtype=x.dtype, seed=seed_s).double()
            g = (lam_n * dS).to(x.dtype)
        elif name == "decay" and "initial_state" in kw and q.shape[2] > 0 and q.shape[0] > 0:
            # d/ds of <dS, exp(-s N) S0> = -N exp(-s N) <dS, S0> summed over b, d, e
            N = q.shape[2]
            s0 = kw["initial_state"].detach().double()
            dS = _rand(*s0.shape, dtype=s0.dtype, seed=seed_s).double()
            g = (-N * torch.exp(-x.detach().double() * N) * (dS * s0).sum((0, 2, 3))).to(x.dtype)
        else:
            g = torch.zeros_like(x)
        grads.append(g)
    return grads


@pytest.mark.parametrize("backend", [n for n in NAMES if linattn.get_backend(n).state])
def test_varlen_with_empty_sequences(backend):
    """Empty packed sequences pass the state through untouched; the rest equals one call each."""
    b = linattn.get_backend(backend)
    dtype = _dtype_for(b, "decay")
    q, k, v = _qkv(B=1, N=9, M=9, dtype=dtype)
    s = torch.tensor([0.05, 0.3, 1.0, 2.5], dtype=dtype)
    s0 = _rand(3, 4, 5, 3, dtype=torch.float64 if dtype == torch.float64 else torch.float32, seed=4)
    cu = torch.tensor([0, 0, 4, 4, 9])[[0, 1, 2, 4]]  # [0, 0, 4, 9]: the first sequence is empty
    o, st = _call(q, k, v, backend=backend, decay=s, cu_seqlens=cu, initial_state=s0, output_final_state=True)
    torch.testing.assert_close(st[0], s0[0], rtol=0, atol=0)
    for i, (a, e) in enumerate([(0, 0), (0, 4), (4, 9)]):
        o_i, st_i = _call(q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], backend="reference", decay=s,
                          initial_state=s0[i:i + 1], output_final_state=True)
        tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(o[:, :, a:e], o_i, **tol)
        torch.testing.assert_close(st[i:i + 1], st_i, **tol)


# -- 3. NaN and Inf: the bracket between the structural oracle and the reference -----------


def _structural(q, k, v, mask4, causal, decay, scale, s0, want_final):
    """Float64, row by row, reading only what row i's formula reads (j <= i when causal).

    Slicing and concatenation never multiply a bad value by zero, so the non-finite entries
    of the result and of its gradients are exactly those that depend on a bad input.
    """
    B, H, N, D = q.shape
    M = k.shape[2]
    kx, vx = expand_kv(k, H), expand_kv(v, H)
    rows = []
    for i in range(N):
        J = i + 1 if causal else M
        A = q[:, :, i : i + 1] @ kx[:, :, :J].transpose(-1, -2)  # [B, H, 1, J]
        if decay is not None and J > 1:
            # λ^(i-j) for j < i; the diagonal factor is the constant 1, not exp(-s·0), whose
            # zero derivative would carry a bad score into d(slopes) as 0·NaN
            dist = (i - torch.arange(J - 1, dtype=q.dtype))[None, None, None, :]
            lam = torch.exp(-decay[None, :, None, None] * dist)  # [1, H, 1, J-1]
            A = torch.cat([A[..., : J - 1] * lam, A[..., J - 1 :]], dim=-1)
        if mask4 is not None:
            A = A * mask4[:, :, i : i + 1, :J]
        o_i = A @ vx[:, :, :J]  # [B, H, 1, E]
        if s0 is not None:
            qi = q[:, :, i : i + 1]
            if decay is not None:
                qi = qi * torch.exp(-decay * (i + 1))[None, :, None, None]
            o_i = o_i + qi @ s0
        rows.append(o_i * scale)
    o = torch.cat(rows, dim=2)
    final = None
    if want_final:
        kk = kx
        if decay is not None and N > 1:
            lam = torch.exp(-decay[None, :, None, None] * (N - 1 - torch.arange(N - 1, dtype=q.dtype))[None, None, :, None])
            kk = torch.cat([kx[:, :, : N - 1] * lam, kx[:, :, N - 1 :]], dim=2)  # the last key: factor 1
        final = kk.transpose(-1, -2) @ vx
        if s0 is not None:
            final = final + (s0 if decay is None else torch.exp(-decay * N)[None, :, None, None] * s0)
    return o, final


def _bad_sets(run, inputs, do, dS):
    """Run, backprop (do, dS), return {name: bool tensor of non-finite entries}."""
    leaves = {n: t.detach().clone().requires_grad_() for n, t in inputs.items() if t is not None}
    o, final = run(**leaves)
    sets = {"o": ~torch.isfinite(o.double())}
    loss = (o.double() * do).sum()
    if final is not None:
        sets["final_state"] = ~torch.isfinite(final.double())
        loss = loss + (final.double() * dS).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    for (n, x), g in zip(leaves.items(), grads):
        sets["d" + n] = torch.zeros_like(x, dtype=torch.bool) if g is None else ~torch.isfinite(g.double())
    return sets


NAN_TARGETS = ["q", "k", "v", "mask", "initial_state", "do"]


def _nan_problem(kind, target, value, where, seed, square=False):
    """A small problem with one bad entry in ``target`` at a place chosen by ``where``:
    "first"/"last" position along N (q, do) or M (k, v); mask: on / above / below the diagonal."""
    B, H, Hkv, D, E = 2, 4, 2, 5, 3
    N = M = 7
    if kind in ("none", "dense") and not square:
        M = 6
    q, k, v = _qkv(B, H, Hkv, N, M, D, E, seed=seed)
    mask = _rand(1, H, N, M, seed=seed + 3) if kind.startswith("dense") else None
    decay = torch.tensor([0.0, 0.2, 1.5, 30.0], dtype=torch.float64) if kind.endswith("decay") else None
    causal = kind != "none" and kind != "dense"
    s0 = _rand(B, H, D, E, seed=seed + 4) if kind in ("causal", "decay") else None
    do = _rand(B, H, N, E, seed=seed + 5)
    g = torch.Generator().manual_seed(seed)

    def pick(n):
        return {"first": 0, "last": n - 1}.get(where, int(torch.randint(n, (1,), generator=g)))

    t = dict(q=q, k=k, v=v, mask=mask, initial_state=s0, do=do)[target]
    if t is None:
        return None
    idx = [int(torch.randint(s, (1,), generator=g)) for s in t.shape]
    if target in ("q", "do"):
        idx[2] = pick(N)
    elif target in ("k", "v"):
        idx[2] = pick(M)
    elif target == "mask":
        i = int(torch.randint(N, (1,), generator=g))
        j = {"first": i, "last": min(i + 1, M - 1), "mid": max(i - 1, 0)}[where]  # on / above / below
        idx[2], idx[3] = i, j
    t[tuple(idx)] = value
    return dict(q=q, k=k, v=v, mask=mask, decay=decay, causal=causal, s0=s0, do=do)


def _nan_cases():
    cases = []
    for b in BACKENDS:
        for kind in _kinds(b):
            for target in NAN_TARGETS:
                if target == "mask" and not kind.startswith("dense"):
                    continue
                if target == "initial_state" and kind not in ("causal", "decay"):
                    continue
                for value in ("nan", "inf", "-inf"):
                    for where in ("first", "last", "mid"):
                        cases.append(pytest.param(b.name, kind, target, value, where,
                                                  id=f"{b.name}-{kind}-{target}-{value}-{where}"))
    return cases


@pytest.mark.parametrize("backend, kind, target, value, where", _nan_cases())
def test_nan_inf_propagation_is_bracketed(backend, kind, target, value, where):
    b = linattn.get_backend(backend)
    dtype = _dtype_for(b, kind)
    p = _nan_problem(kind, target, float(value), where, seed=11, square=not _serves_n_ne_m(b, kind, dtype))
    state = p["s0"] is not None
    inputs = dict(q=p["q"], k=p["k"], v=p["v"], mask=p["mask"], decay=p["decay"], initial_state=p["s0"])
    do = p["do"]
    dS = _rand(2, 4, 5, 3, seed=13) if state else None
    sdt = torch.float64 if dtype == torch.float64 else torch.float32

    def run_with(name):
        def run(q, k, v, mask=None, decay=None, initial_state=None):
            cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
            out = _call(cast(q), cast(k), cast(v), cast(mask), backend=name, causal=p["causal"], decay=cast(decay),
                        initial_state=None if initial_state is None else initial_state.to(sdt),
                        output_final_state=state)
            return (out.o, out.final_state) if state else (out, None)
        return run

    def run_struct(q, k, v, mask=None, decay=None, initial_state=None):
        return _structural(q, k, v, mask, p["causal"], decay, 1.0, initial_state, state)

    got = _bad_sets(run_with(backend), inputs, do, dS)
    ref = _bad_sets(run_with("reference"), inputs, do, dS) if dtype == torch.float64 else \
        _bad_sets(lambda **kw: run_with("reference")(**{n: t.double() for n, t in kw.items()}), inputs, do, dS)
    low = _bad_sets(run_struct, inputs, do, dS)
    assert set(got) == set(ref) == set(low)
    if not (target == "mask" and where == "last" and p["causal"]):  # above the diagonal: masked out
        assert any(bool(s.any()) for s in low.values()), "the bad value reached nothing: the case tests nothing"
    for name in got:
        missing = low[name] & ~got[name]
        extra = got[name] & ~ref[name]
        assert not missing.any(), (
            f"{name}: {int(missing.sum())} entries that read the bad value are finite (silently dropped), "
            f"first at {missing.nonzero()[0].tolist()}")
        assert not extra.any(), (
            f"{name}: {int(extra.sum())} entries are non-finite where even the dense reference is finite, "
            f"first at {extra.nonzero()[0].tolist()}")


@pytest.mark.parametrize("backend", NAMES)
def test_nan_pins_exactly_where_oracles_agree(backend):
    """Non-causal problems, a bad key at position 0, a bad query in the last row: the
    structural and reference sets coincide, so the backend's must equal them."""
    b = linattn.get_backend(backend)
    for kind in _kinds(b):
        for target, where in (("k", "first"), ("v", "first"), ("q", "last"), ("do", "last")):
            p = _nan_problem(kind, target, NAN, where, seed=3, square=not _serves_n_ne_m(b, kind, _dtype_for(b, kind)))
            state = p["s0"] is not None
            inputs = dict(q=p["q"], k=p["k"], v=p["v"], mask=p["mask"], decay=p["decay"], initial_state=p["s0"])
            dS = _rand(2, 4, 5, 3, seed=13) if state else None

            def run(name, kind=kind):
                dtype = _dtype_for(linattn.get_backend(name), kind)

                def f(q, k, v, mask=None, decay=None, initial_state=None):
                    c = lambda t: None if t is None else t.to(dtype)  # noqa: E731
                    out = _call(c(q), c(k), c(v), c(mask), backend=name, causal=p["causal"], decay=c(decay),
                                initial_state=None if initial_state is None else initial_state.to(
                                    torch.float64 if dtype == torch.float64 else torch.float32),
                                output_final_state=state)
                    return (out.o, out.final_state) if state else (out, None)
                return f

            got = _bad_sets(run(backend), inputs, p["do"], dS)
            ref = _bad_sets(run("reference"), inputs, p["do"], dS)
            low = _bad_sets(lambda **kw: _structural(kw["q"], kw["k"], kw["v"], kw.get("mask"), p["causal"],
                                                    kw.get("decay"), 1.0, kw.get("initial_state"), state),
                            inputs, p["do"], dS)
            for name in got:
                if torch.equal(low[name], ref[name]):
                    assert torch.equal(got[name], ref[name]), f"{kind} {target}@{where}: {name} differs from the reference"


# -- 4. float16 overflow: detected, reported with advice ------------------------------------


def _fp16_backends():
    return [b.name for b in BACKENDS if torch.float16 in b.dtypes]


@pytest.mark.parametrize("backend", _fp16_backends())
def test_float16_overflow_warns_with_advice(backend):
    b = linattn.get_backend(backend)
    q, k, v = (t.float() for t in _qkv(N=7, M=7, seed=5))
    kind = "causal" if "causal" in b.mask_kinds else sorted(b.mask_kinds)[0]
    kw = dict(causal=True) if kind == "causal" else ({"mask": torch.ones(7, 7, dtype=torch.float16)} if kind.startswith("dense") else {})
    big = [(t * 200).half().requires_grad_() for t in (q, k, v)]  # |o| ~ 200^3 · 5 > 65504
    with pytest.warns(Float16OverflowWarning, match=r"(?s)entries of o are inf/NaN.*q = q / q.norm\(dim=-1, keepdim=True\)"):
        o = _call(*big, backend=backend, **kw)
    assert not torch.isfinite(o).all()
    # the advice works: normalising q and k per row keeps the same problem finite
    qn, kn = (t / t.norm(dim=-1, keepdim=True) for t in big[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", Float16OverflowWarning)
        o = _call(qn, kn, big[2], backend=backend, **kw)
    assert torch.isfinite(o).all()


@pytest.mark.parametrize("backend", _fp16_backends())
def test_float16_gradient_overflow_warns(backend):
    b = linattn.get_backend(backend)
    kw = dict(causal=True) if "causal" in b.mask_kinds else {}
    q, k, v = ((t * 12).half().requires_grad_() for t in (x.float() for x in _qkv(N=7, M=7, seed=5)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Float16OverflowWarning)
        o = _call(q, k, v, backend=backend, **kw)  # o itself is finite
    assert torch.isfinite(o).all()
    with pytest.warns(Float16OverflowWarning, match="gradients dq, dk, dv"):
        (o.float() * 3000).sum().backward()


@pytest.mark.parametrize("backend", _fp16_backends())
def test_float16_no_warning_when_fine_or_when_inputs_are_bad(backend):
    """No false alarms: a finite result, a bfloat16 one, or an overflow that an Inf input explains."""
    b = linattn.get_backend(backend)
    kw = dict(causal=True) if "causal" in b.mask_kinds else {}
    q, k, v = (t.float() for t in _qkv(N=7, M=7, seed=5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Float16OverflowWarning)
        _call(q.half(), k.half(), v.half(), backend=backend, **kw)
        if torch.bfloat16 in b.dtypes:
            _call((q * 200).bfloat16(), (k * 200).bfloat16(), (v * 200).bfloat16(), backend=backend, **kw)
        qi = q.half().clone()
        qi[0, 0, 3, 1] = INF
        o = _call(qi, k.half(), v.half(), backend=backend, **kw)
    assert not torch.isfinite(o[0, 0, 3]).any()


def test_float16_check_can_be_turned_off(monkeypatch):
    import linattn._api as api

    monkeypatch.setattr(api, "CHECK_FLOAT16_OVERFLOW", False)
    q, k, v = ((t.float() * 200).half() for t in _qkv(seed=5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Float16OverflowWarning)
        _call(q, k, v)


# -- 5. layouts: non-contiguous, stride-0 (expanded), permuted -------------------------------


def _layouts(B, H, Hkv, N, M, D, E, dtype, seed):
    """Yield (name, q, k, v, mask, decay, s0) views with hostile strides and the same values."""
    q, k, v = _qkv(B, H, Hkv, N, M, D, E, dtype=dtype, seed=seed)
    mask = _rand(B, H, N, M, dtype=dtype, seed=seed + 3)
    decay = torch.linspace(0.01, 1.2, H, dtype=dtype)
    s0 = _rand(B, H, D, E, dtype=torch.float64 if dtype == torch.float64 else torch.float32, seed=seed + 4)
    yield "contiguous", q, k, v, mask, decay, s0
    # [B, N, H, D] storage viewed as [B, H, N, D] (the layout projections produce)
    yield ("permuted (B, N, H, D storage)",
           q.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3), k.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3),
           v.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3), mask.transpose(-1, -2).contiguous().transpose(-1, -2),
           decay, s0.transpose(-1, -2).contiguous().transpose(-1, -2))
    # every other element of a twice-as-long buffer (last dim stride 2) and a flipped-then-flipped copy
    def strided(t):
        buf = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        buf[..., ::2] = t
        return buf[..., ::2]
    yield "last-dim stride 2", strided(q), strided(k), strided(v), strided(mask), strided(decay[None])[0], strided(s0)
    # stride 0: expanded along batch and, for k/v, along length; a [1, 1, N, M] mask expanded
    yield ("stride 0 (expanded)", q[:1].expand(B, -1, -1, -1), k[:1, :, :1].expand(B, -1, M, -1),
           v[:1].expand(B, -1, -1, -1), mask[:1, :1].expand(B, H, -1, -1), decay[:1].expand(H), s0[:1].expand(B, -1, -1, -1))


def _layout_cases():
    cases = []
    for b in BACKENDS:
        for kind in _kinds(b):
            cases.append(pytest.param(b.name, kind, id=f"{b.name}-{kind}"))
    return cases


@pytest.mark.parametrize("backend, kind", _layout_cases())
def test_hostile_layouts_give_the_contiguous_answer(backend, kind):
    b = linattn.get_backend(backend)
    dtype = _dtype_for(b, kind)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    interp = os.environ.get("TRITON_INTERPRET") == "1" and backend.startswith("triton")
    B, H, Hkv, N, D, E = (2, 4, 2, 19, 6, 5) if interp else (2, 4, 2, 67, 12, 7)
    M = N if kind not in ("none", "dense") or not _serves_n_ne_m(b, kind, dtype) else N - 4
    for name, q, k, v, mask, decay, s0 in _layouts(B, H, Hkv, N, M, D, E, dtype, seed=21):
        kw = {}
        if kind.startswith("dense"):
            kw["mask"] = mask.detach().requires_grad_(b.mask_grad)
        if kind.endswith("causal"):
            kw["causal"] = True
        if kind.endswith("decay"):
            kw["decay"] = decay.detach().requires_grad_(b.slopes_grad)
        state = kind in ("causal", "decay") and b.state
        if state:
            kw["initial_state"] = s0.detach().requires_grad_()
            kw["output_final_state"] = True
        ins = [t.detach().requires_grad_() for t in (q, k, v)]
        out = _call(*ins, backend=backend, **kw)
        o, st = (out.o, out.final_state) if state else (out, None)
        loss = (o.double() * _rand(*o.shape, seed=1)).sum() + (0 if st is None else (st.double() * _rand(*st.shape, seed=2)).sum())
        leaves = ins + [kw[n] for n in ("mask", "decay", "initial_state") if n in kw and kw[n].requires_grad]
        grads = torch.autograd.grad(loss, leaves)
        result = [o] + ([st] if st is not None else []) + list(grads)
        # the float64 reference on contiguous copies
        ref_kw = {n: (t.detach().double().contiguous().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t)
                  for n, t in kw.items()}
        ref_ins = [t.detach().double().contiguous().requires_grad_() for t in (q, k, v)]
        rout = _call(*ref_ins, backend="reference", **ref_kw)
        ro, rst = (rout.o, rout.final_state) if state else (rout, None)
        rloss = (ro * _rand(*ro.shape, seed=1)).sum() + (0 if rst is None else (rst * _rand(*rst.shape, seed=2)).sum())
        rleaves = ref_ins + [ref_kw[n] for n in ("mask", "decay", "initial_state") if n in ref_kw and ref_kw[n].requires_grad]
        rgrads = torch.autograd.grad(rloss, rleaves)
        expect = [ro] + ([rst] if rst is not None else []) + list(rgrads)
        labels = ["o"] + (["final_state"] if st is not None else []) + ["dq", "dk", "dv"] + \
            [n for n in ("dmask", "ddecay", "dinitial_state") if n[1:] in kw and kw[n[1:]].requires_grad]
        for lab, r, e in zip(labels, result, expect):
            scale = e.abs().max().item() or 1.0
            torch.testing.assert_close(r.double(), e, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                       msg=lambda m, lab=lab, name=name: f"{backend} {kind} {name}: {lab}: {m}")


# -- 6. every failure the fuzz campaigns found stays pinned ----------------------------------


def _failure_files():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return sorted((root / "fuzz" / "failures").glob("*.json"))


@pytest.mark.parametrize("path", _failure_files(), ids=lambda p: p.stem)
def test_fuzz_failure_replays(path):
    """fuzz/failures/*.json: "fixed" ones must pass again; the others are known and explained
    (their notes say why) and stay expected failures until fixed."""
    import json
    import sys

    root = str(path.parent.parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from fuzz.campaign import replay

    entry = json.loads(path.read_text())
    b = linattn.get_backend(entry["backend"])
    if b.available() is not None:
        pytest.skip(f"{b.name}: {b.available()}")
    ok, msg = replay(path)
    if entry.get("status") != "fixed":
        if ok:
            pytest.xfail(f"[{entry.get('status')}] passes now: mark it fixed. {entry.get('notes', '')[:200]}")
        pytest.xfail(f"[{entry.get('status')}] {entry.get('notes', '')[:300]}")
    assert ok, msg


def test_dslopes_terms_survive_subnormal_decay():
    """Pinned from fuzz/failures/triton-backward-6ceb3a045d.json: at s = 745 (λ = exp(-s) =
    2^-1074 in float64) the squared problem behind the band's root-sum-square T has λ² = 0,
    so T of dslopes came out 0 and the band shrank to 2·u_out. T must lie between the two
    Cauchy–Schwarz bounds, |ds|/sqrt(n) <= T <= Σ|terms| (n expanded terms), on that head
    and on an ordinary one."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from fuzz.problems import StrangeProblem
    from linattn.testing.reference import _as_float64, evaluate, oracle_fn

    p = StrangeProblem(B=1, H=2, Hkv=2, N=40, M=40, D=1, E=16, dtype="float64", device="cpu", mask_kind="decay",
                       mask_shape="BHNM", mask_values="real", slopes="zero", scale=0.5, initial_state=True,
                       final_state=True, grads=("q", "k", "v", "slopes", "initial_state"), cu_seqlens=None,
                       seed=1554267903, q_exp=-150, k_exp=141, v_exp=150, slope_values=(745.0, 0.5))
    ev = evaluate(p)
    ds, T = ev.oracle["dslopes"].abs(), ev.terms["dslopes"]
    absd = _as_float64(p.tensors).map(lambda name, x: x if name == "slopes" else x.abs())
    l1 = p.replace(scale=abs(p.scale)).run(oracle_fn, absd)["dslopes"].abs()  # Σ x·|t|·λ^x, no cancellation
    n = p.B * (p.N * p.M * p.D * p.E + 2 * p.N * p.D * p.E + p.D * p.E)
    assert bool((ds > 0).all()), ds
    assert bool((ds / n ** 0.5 <= T).all()) and bool((T <= l1 * (1 + 1e-12)).all()), (ds, T, l1)


def test_triton_dense_float64_is_refused_not_crashed():
    """Pinned from fuzz/failures/triton-linearity_mask-face5592a8.json: backend 'triton' sends
    dense masks to triton_dense, which has no float64 kernels. It used to raise a TypeError
    from inside the call; it must be refused up front, naming the backends that can."""
    b = linattn.get_backend("triton")
    if b.available() is not None:
        pytest.skip(f"triton: {b.available()}")
    q = _rand(1, 2, 5, 3)
    _raises(linattn.UnsupportedRequest, ["backend 'triton' cannot serve", "float64", "Backends that can", "reference"],
            lambda: linear_attention(q, q, q, _rand(5, 5), backend="triton"))
    o = linear_attention(q, q, q, causal=True, backend="triton")  # float64 without a dense mask: served
    torch.testing.assert_close(o, linear_attention(q, q, q, causal=True, backend="reference"))


def test_triton_chunk_n_ne_m_is_refused_not_crashed():
    """Pinned from fuzz/failures/triton-forward-f8ead1664b.json: a non-causal problem with
    N != M and no dense mask reached the chunk kernels, which raised ValueError mid-call."""
    b = linattn.get_backend("triton")
    if b.available() is not None:
        pytest.skip(f"triton: {b.available()}")
    q, k = _rand(1, 1, 13, 8, dtype=torch.float32), _rand(1, 1, 44, 8, dtype=torch.float32, seed=1)
    _raises(linattn.UnsupportedRequest, ["backend 'triton' cannot serve", "N != M", "Backends that can"],
            lambda: linear_attention(q, k, k, backend="triton"))


@pytest.mark.parametrize("backend", [b.name for b in BACKENDS if torch.float16 in b.dtypes
                                     and "dense" in b.mask_kinds and b.mask_grad])
def test_float16_mask_gradient_overflow_warns(backend):
    """Pinned from fuzz/failures/blocked_indexed-backward-eaa77d9547.json: dmask = dP ⊙ A
    overflowed float16 with finite o and finite dq, dk, dv, and nothing said so."""
    q, k, v = (t.float() for t in _qkv(B=1, H=4, Hkv=2, N=31, M=31, D=1, E=1, seed=0))
    q, k = (q * 8).half().requires_grad_(), (k * 512).half().requires_grad_()
    v = v.half().requires_grad_()
    mask = (_rand(1, 4, 31, 31, seed=3) * 0.5).half().requires_grad_()
    o = _call(q, k, v, mask, backend=backend)
    with pytest.warns(Float16OverflowWarning, match="dmask"):
        (o.float() * 30).sum().backward()
    assert not torch.isfinite(mask.grad).all()


def test_fuzz_cuda_family_uses_the_emulator_without_a_gpu():
    """`python -m fuzz --family cuda` on a CPU: the emulator (LINATTN_CUDA_EMULATE=1, set by
    fuzz/__main__.py before linattn is imported) makes backend cuda available on the CPU,
    with the emulator's problem sizes."""
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the family runs on it")
    root = Path(__file__).resolve().parent.parent
    code = ("import fuzz.__main__ as m; m._setup_triton(['cuda']); import os; "
            "from fuzz.campaign import family_backends, _device_for, _emulated; "
            "ok, missing = family_backends('cuda'); "
            "print(os.environ['LINATTN_CUDA_EMULATE'], [b.name for b in ok], missing, "
            "[_device_for('cuda', b) for b in ok], _emulated('cuda'))")
    env = {k: v for k, v in os.environ.items() if k != "LINATTN_CUDA_EMULATE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    if "the emulator" in line:  # no g++ / CUDA headers here: the reason is given, not a crash
        assert "['cuda']" not in line
        return
    assert line == "1 ['cuda'] [] ['cpu'] True", line
