"""Backward variants of the chunk kernels (one launch or two, tiles, stages) and fla 0.6.0, in one process.

    python3 gpu/chunk_fuse_ab.py     # bf16 decay, issue 5's four shapes; medians of interleaved repeats
    AB_SHAPES=1 AB_VARIANTS="base:;s1:bwd_stages=1" python3 gpu/chunk_fuse_ab.py

Each variant is timed REPEATS times in turn (A B C A B C ...), the median reported, so a
drift of the card's clocks hits every variant alike.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import triton  # noqa: E402

import triton_chunk as tc  # noqa: E402

SHAPES = [("B4-H16-N8192-D128", 4, 16, 8192, 128), ("B8-H16-N2048-D128", 8, 16, 2048, 128),
          ("B1-H16-N32768-D128", 1, 16, 32768, 128), ("B8-H32-N2048-D64", 8, 32, 2048, 64)]
VARIANTS = {"two": dict(bwd_fuse=-1), "fused": dict(bwd_fuse=1), "fused-w8": dict(bwd_fuse=1, bwd_warps=8),
            "two-dkv-w8": dict(bwd_fuse=-1, bwd_dkv_warps=8)}
if os.environ.get("AB_VARIANTS"):  # "name:k=v,k=v;name2:k=v" (an empty list after the colon: defaults)
    VARIANTS = {}
    for item in os.environ["AB_VARIANTS"].split(";"):
        name, _, kvs = item.partition(":")
        VARIANTS[name.strip()] = {k.strip(): int(v) for k, v in (kv.split("=") for kv in kvs.split(",") if kv.strip())}
REPEATS = int(os.environ.get("AB_REPEATS", "3"))
tc.FLA = tc._import_fla()
print("card", torch.cuda.get_device_name(), "fla", tc.FLA is not None, flush=True)


def bench(fn, grad_to_none=None):
    return triton.testing.do_bench(fn, warmup=10, rep=50, grad_to_none=grad_to_none, return_mode="median")


for name, B, H, N, D in SHAPES[: int(os.environ.get("AB_SHAPES", "4"))]:
    q, k, v, do, s = tc.inputs(B, H, N, D)
    calls = {}
    for vn, cfg in VARIANTS.items():
        fwd, fwdbwd, xs = tc.ours_calls(q, k, v, do, s, cfg)
        fwdbwd()
        calls[vn] = (fwdbwd, xs)
    x = [t.transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v)]
    dot_ = do.transpose(1, 2).contiguous()

    def ffb():
        tc.fla_fn(*x, s)[0].backward(dot_)

    if tc.FLA is not None:
        ffb()
        calls["fla"] = (ffb, x)
    torch.cuda.synchronize()
    times = {vn: [] for vn in calls}
    for _ in range(REPEATS):
        for vn, (fn, xs) in calls.items():
            times[vn].append(bench(fn, xs))
    med = {vn: statistics.median(t) for vn, t in times.items()}
    fla = med.get("fla")
    print(f"{name} fwd+bwd ms: " + ", ".join(f"{vn} {m:.3f}" + (f" ({fla / m:.3f}x fla)" if fla and vn != "fla" else "")
                                          for vn, m in med.items()), flush=True)
