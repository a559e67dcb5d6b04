"""Ours (the library's defaults) against fla 0.6.0 on issue 5's four shapes, one process.

    python3 gpu/chunk_final.py     # bf16 decay; prints ms and the speed-ups; fla autotunes on its first call per shape
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import triton  # noqa: E402

import triton_chunk as tc  # noqa: E402

SHAPES = [("B4-H16-N8192-D128", 4, 16, 8192, 128), ("B8-H16-N2048-D128", 8, 16, 2048, 128),
          ("B1-H16-N32768-D128", 1, 16, 32768, 128), ("B8-H32-N2048-D64", 8, 32, 2048, 64)]
tc.FLA = tc._import_fla()
print("card", torch.cuda.get_device_name(), "fla", tc.FLA is not None, flush=True)


def bench(fn, grad_to_none=None):
    return triton.testing.do_bench(fn, warmup=10, rep=60, grad_to_none=grad_to_none, return_mode="median")


ONLY = [x for x in os.environ.get("CHUNK_FINAL_ONLY", "").split(",") if x]  # shape names, e.g. B1-H16-N32768-D128
for name, B, H, N, D in SHAPES[: int(os.environ.get("CHUNK_FINAL_SHAPES", "4"))]:
    if ONLY and name not in ONLY:
        continue
    q, k, v, do, s = tc.inputs(B, H, N, D)
    fwd, fwdbwd, xs = tc.ours_calls(q, k, v, do, s)
    fwdbwd()
    ours = (bench(fwd), bench(fwdbwd, xs))
    x = [t.transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v)]
    dot_ = do.transpose(1, 2).contiguous()

    def ffwd():
        with torch.no_grad():
            return tc.fla_fn(*x, s)

    def ffb():
        tc.fla_fn(*x, s)[0].backward(dot_)

    ffb()
    torch.cuda.synchronize()
    fl = (bench(ffwd), bench(ffb, x))
    print(f"{name}: ours fwd {ours[0]:.3f} fwd+bwd {ours[1]:.3f} | fla fwd {fl[0]:.3f} fwd+bwd {fl[1]:.3f} | "
          f"speed-up fwd {fl[0] / ours[0]:.2f}x fwd+bwd {fl[1] / ours[1]:.2f}x", flush=True)
