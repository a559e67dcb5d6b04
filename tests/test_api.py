"""The public API: validation messages, dispatch, zero-size problems, the registry."""
import pytest
import torch

import linattn


def _qkv(B=2, H=4, Hkv=2, N=7, M=7, D=5, E=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(B, H, N, D, generator=g, dtype=dtype),
        torch.randn(B, Hkv, M, D, generator=g, dtype=dtype),
        torch.randn(B, Hkv, M, E, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(q=torch.randn(2, 4, 7)), ValueError, "q must have rank 4, got shape (2, 4, 7)"),
        (dict(k=torch.randn(2, 3, 7, 5, dtype=torch.float64), v=torch.randn(2, 3, 7, 3, dtype=torch.float64)),
         ValueError, "must divide"),
        (dict(v=torch.randn(2, 2, 7, 3, dtype=torch.float32)), TypeError, "share one dtype"),
        (dict(q=torch.randint(0, 3, (2, 4, 7, 5))), TypeError, "got torch.int64"),
        (dict(mask=torch.randn(3, 1, 7, 7, dtype=torch.float64)), ValueError, "does not broadcast"),
        (dict(mask=torch.randn(7, 7, dtype=torch.float32)), TypeError, "q's dtype"),
        (dict(decay=torch.ones(3, dtype=torch.float64)), ValueError, "shape [H]=[4], got (3,)"),
        (dict(decay=-torch.ones(4)), ValueError, ">= 0"),
        (dict(output_final_state=True), ValueError, "need a causal or decay mask"),
        (dict(causal=True, initial_state=torch.zeros(2, 4, 5, 4)), ValueError, "(2, 4, 5, 3), got (2, 4, 5, 4)"),
        (dict(causal=1), TypeError, "causal must be a bool"),
        (dict(scale="2"), TypeError, "scale must be a real number"),
        (dict(backend="nope"), ValueError, "unknown backend 'nope'"),
    ],
)
def test_bad_input_names_expected_and_got(kwargs, exc, words):
    q, k, v = _qkv()
    args = dict(q=q, k=k, v=v)
    for name in ("q", "k", "v"):
        if name in kwargs:
            args[name] = kwargs.pop(name)
    with pytest.raises(exc) as info:
        linattn.linear_attention(args["q"], args["k"], args["v"], **kwargs)
    assert words in str(info.value)


def test_causal_needs_square():
    q, k, v = _qkv(N=5, M=7)
    with pytest.raises(ValueError, match="N=5"):
        linattn.linear_attention(q, k, v, causal=True)


def test_unsupported_backend_names_capable_ones():
    q, k, v = _qkv()
    fake = linattn.Backend(name="_only_causal_test", fn=None, description="test", mask_kinds=frozenset({"causal"}))
    linattn.register_backend(fake, replace=True)
    with pytest.raises(linattn.UnsupportedRequest) as info:
        linattn.linear_attention(q, k, v, backend="_only_causal_test")
    assert "Backends that can" in str(info.value) and "reference" in str(info.value)


@pytest.mark.parametrize("shape", [(0, 4, 7, 5), (2, 4, 0, 5)])
def test_zero_size_queries_give_empty_output(shape):
    q, k, v = _qkv()
    q = torch.randn(*shape, dtype=torch.float64)
    kk = k[: shape[0]]
    vv = v[: shape[0]]
    o = linattn.linear_attention(q, kk, vv)
    assert o.shape == (shape[0], 4, shape[2], 3)


def test_zero_keys_give_zeros():
    q, _, _ = _qkv()
    k = torch.randn(2, 2, 0, 5, dtype=torch.float64)
    v = torch.randn(2, 2, 0, 3, dtype=torch.float64)
    o = linattn.linear_attention(q, k, v)
    assert o.shape == (2, 4, 7, 3) and bool((o == 0).all())


def test_state_split_equals_whole_reference():
    q, k, v = _qkv(N=9, M=9)
    s = linattn.tnl_slopes(4, dtype=torch.float64)
    o, S = linattn.linear_attention(q, k, v, decay=s, output_final_state=True, backend="reference")
    o1, S1 = linattn.linear_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], decay=s, output_final_state=True, backend="reference")
    o2, S2 = linattn.linear_attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], decay=s, initial_state=S1,
                                      output_final_state=True, backend="reference")
    torch.testing.assert_close(torch.cat([o1, o2], 2), o)
    torch.testing.assert_close(S2, S)


def test_tnl_slopes_canonical():
    s = linattn.tnl_slopes(8, layer=0, n_layers=2)
    expected = torch.tensor([2 ** (-8 * (h + 1) / 8) * (1 + 1e-5) for h in range(8)])
    torch.testing.assert_close(s, expected)
    last = linattn.tnl_slopes(8, layer=1, n_layers=2)
    torch.testing.assert_close(last, torch.full((8,), 0.0) + expected / (1 + 1e-5) * 1e-5)
    assert linattn.tnl_slopes(12).shape == (12,)


def test_slopes_checked_once_until_modified_in_place():
    """The value check of the slopes (a device sync) runs once per tensor and version: a slopes
    tensor modified in place, or a new tensor, is checked again."""
    from linattn import _api

    q = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    s = torch.tensor([0.1, 0.2], dtype=torch.float64)
    linattn.linear_attention(q, q, q, decay=s)
    seen = _api._CHECKED_SLOPES[id(s)]
    assert seen[0]() is s and seen[1] == s._version
    s[1] = float("inf")  # in place: the version counter moves
    with pytest.raises(ValueError, match=r"finite and >= 0.*s\[1\]=inf"):
        linattn.linear_attention(q, q, q, decay=s)
    p = torch.nn.Parameter(torch.tensor([0.1, 0.2], dtype=torch.float64))
    linattn.linear_attention(q, q, q, decay=p)
    with torch.no_grad():
        p.sub_(1.0)  # an optimizer step
    with pytest.raises(ValueError, match=r"s\[0\]=-0.9"):
        linattn.linear_attention(q, q, q, decay=p)
