"""compute-sanitizer memcheck on the chunk kernels' run-10/11 faults (issue 5).

    compute-sanitizer --tool memcheck python3 gpu/chunk_sanitize.py [i ...]

Runs the problems the GPU harness found (a bfloat16 forward at D = 65, E = 17 that faults, a
float16 dslopes 64x its band at N = 7, D = 17, E = 60) through backend ``triton`` with its
defaults, one after the other, synchronising after each so a report names its kernel.
"""
import sys

import torch

import linattn
from linattn.testing import Problem

PROBLEMS = [
    Problem(B=2, H=2, Hkv=1, N=2039, M=2039, D=65, E=17, dtype='bfloat16', device='cuda', mask_kind='decay',
            mask_shape='11NM', mask_values='binary', slopes='mixed', scale=1.0, initial_state=False, final_state=False,
            grads=(), cu_seqlens=None, seed=1925797963),
    Problem(B=3, H=2, Hkv=2, N=7, M=7, D=17, E=60, dtype='float16', device='cuda', mask_kind='decay',
            mask_shape='BHNM', mask_values='binary', slopes='mixed', scale=2.0, initial_state=True, final_state=False,
            grads=('q', 'k', 'v', 'slopes', 'initial_state'), cu_seqlens=None, seed=150573592),
    Problem(B=1, H=2, Hkv=2, N=4095, M=4095, D=48, E=64, dtype='float16', device='cuda', mask_kind='decay',
            mask_shape='BHNM', mask_values='real', slopes='tnl', scale=0.5, initial_state=False, final_state=True,
            grads=('q', 'k', 'v', 'slopes'), cu_seqlens=None, seed=449940552),
]


def fn(*a, **k):
    return linattn.linear_attention(*a, backend="triton", **k)


if __name__ == "__main__":
    which = [int(x) for x in sys.argv[1:]] or range(len(PROBLEMS))
    for i in which:
        p = PROBLEMS[i]
        print("problem", i, p.describe(), flush=True)
        t = p.tensors
        print("  slopes", t.slopes.tolist() if t.slopes is not None else None, flush=True)
        try:
            p.run(fn)
            torch.cuda.synchronize()
            print("  ran", flush=True)
        except Exception as e:  # noqa: BLE001
            print("  error", type(e).__name__, str(e)[:300], flush=True)
            break
