"""Where LINATTN_TRITON_FP32_DOT=f16x3 goes wrong on a GPU (run 28: 9 of 11 float32 harness cells).

1. common.dot in f16x3 alone, in a small kernel: a [BN, K] @ b [K, BM] (b given transposed, as the
   dense kernels pass tl.trans(k)) against float64, for the tile shapes the dense kernels use.
2. Failing harness problems through linattn with f16x3 and with tf32x3: error and where it sits.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from linattn.backends.triton import common  # noqa: E402


@triton.jit
def _k(a, b, c, BN: tl.constexpr, K: tl.constexpr, BM: tl.constexpr, TRANS: tl.constexpr, PREC: tl.constexpr):
    o_n, o_k, o_m = tl.arange(0, BN), tl.arange(0, K), tl.arange(0, BM)
    x = tl.load(a + o_n[:, None] * K + o_k[None, :])
    if TRANS:
        y = tl.trans(tl.load(b + o_m[:, None] * K + o_k[None, :]))  # b stored [BM, K]
    else:
        y = tl.load(b + o_k[:, None] * BM + o_m[None, :])  # b stored [K, BM]
    r = common.dot(x, y, PREC, False)
    tl.store(c + o_n[:, None] * BM + o_m[None, :], r)


def part1():
    g = torch.Generator(device="cuda").manual_seed(0)
    for BN, K, BM in ((64, 64, 64), (128, 64, 64), (64, 32, 16), (64, 64, 32), (16, 16, 16), (128, 16, 64)):
        for trans in (True, False):
            for prec in ("f16x3", "tf32x3"):
                a = torch.randn(BN, K, generator=g, device="cuda")
                b = torch.randn(BM, K, generator=g, device="cuda") if trans else torch.randn(K, BM, generator=g, device="cuda")
                c = torch.empty(BN, BM, device="cuda")
                _k[(1,)](a, b, c, BN, K, BM, trans, prec)
                want = a.double() @ (b.double().T if trans else b.double())
                err = (c.double() - want).abs().max().item() / want.abs().max().item()
                print(f"dot {prec:6s} BN={BN:3d} K={K:3d} BM={BM:3d} trans={trans}: rel err {err:.2e}", flush=True)


def part2():
    import linattn
    cases = [  # (B, H, Hkv, N, D, E, mask shape or None, causal)
        (2, 4, 2, 255, 64, 16, None, False),
        (3, 8, 4, 256, 64, 32, (1, 8, 256, 256), True),
        (1, 8, 4, 7, 48, 32, None, True),
    ]
    g = torch.Generator(device="cuda").manual_seed(1)
    for B, H, Hkv, N, D, E, ms, causal in cases:
        q = torch.randn(B, H, N, D, generator=g, device="cuda", dtype=torch.float64)
        k = torch.randn(B, Hkv, N, D, generator=g, device="cuda", dtype=torch.float64)
        v = torch.randn(B, Hkv, N, E, generator=g, device="cuda", dtype=torch.float64)
        m = None if ms is None else torch.randn(*ms, generator=g, device="cuda", dtype=torch.float64)
        want = linattn.linear_attention(q, k, v, m, causal=causal, backend="reference")
        for prec in ("tf32x3", "f16x3"):
            os.environ["LINATTN_TRITON_FP32_DOT"] = prec
            o = linattn.linear_attention(q.float(), k.float(), v.float(), None if m is None else m.float(), causal=causal,
                                         backend="triton_dense").double()
            d = (o - want).abs()
            bad = (d > 1e-3 * want.abs().max()).nonzero()
            print(f"B{B} H{H}/{Hkv} N{N} D{D} E{E} mask={ms} causal={causal} {prec}: rel err "
                  f"{d.max().item() / want.abs().max().item():.2e}, finite={torch.isfinite(o).all().item()}, "
                  f"bad entries {bad.shape[0]}, first {bad[:4].tolist()}", flush=True)
        os.environ.pop("LINATTN_TRITON_FP32_DOT", None)


if __name__ == "__main__":
    os.environ["LINATTN_TRITON_AUTOTUNE"] = "0"
    part1()
    part2()
