"""Shared memory Triton allocates for the f16x3 dense kernels, compiled for sm_90 without a GPU.

    python gpu/f16x3_smem.py [part nparts] > rows.jsonl

Compiles each (kernel kind, channel tiles, tile config) to PTX (ptxas is skipped: the shared
memory size is known before it) and prints one JSON row with Triton's figure and
``dense_fwd.smem_estimate``'s 4-byte count beside it. With Triton 3.6.0 on 2026-11-27:
219 configs (forward, forward causal, dq with dM, dk-only, joint dk/dv, fused; tiles 64..256),
every one at or below the estimate (largest ratio 1.000, dq (128,64,8,3) at D = E = 64):
docs/f16x3-smem-sm90.jsonl. So the estimate may keep pruning f16x3 configs.
"""
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import triton  # noqa: E402
import triton.compiler.compiler as _cc  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import CUDABackend  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from linattn.backends.triton import dense_bwd as Bk  # noqa: E402
from linattn.backends.triton import dense_fwd as F  # noqa: E402

_add = CUDABackend.add_stages


def _no_cubin(self, stages, options, *a, **kw):
    _add(self, stages, options, *a, **kw)
    stages.pop("cubin", None)


CUDABackend.add_stages = _no_cubin
_CAP = {}


def _capture(self, src, metadata_group, hash):  # noqa: A002 - Triton's name
    for name, path in metadata_group.items():
        if name.endswith(".json") and not name.startswith("__grp"):
            with open(path) as f:
                _CAP["md"] = json.load(f)
    raise RuntimeError("captured")


_cc.CompiledKernel.__init__ = _capture

KINDS = {  # name: (kernel, flags, rows name, cols name, smem_estimate kind)
    "fwd": (F._dense_fwd_kernel, dict(HAS_MASK=True, CAUSAL=False, DECAY=False), "BN", "BM", "fwd"),
    "fwd_causal": (F._dense_fwd_kernel, dict(HAS_MASK=True, CAUSAL=True, DECAY=True), "BN", "BM", "fwd"),
    "dq": (Bk._dense_bwd_dq_kernel, dict(HAS_MASK=True, CAUSAL=False, DECAY=False, NEED_DQ=True, NEED_DM=True,
                                         NEED_DS=False), "BN", "BM", "dq"),
    "dkdv1": (Bk._dense_bwd_dkdv_kernel, dict(HAS_MASK=True, CAUSAL=False, DECAY=False, NEED_DK=True,
                                              NEED_DV=False), "BM", "BN", "dkdv1"),
    "dkdv": (Bk._dense_bwd_dkdv_kernel, dict(HAS_MASK=True, CAUSAL=True, DECAY=True, NEED_DK=True,
                                             NEED_DV=True), "BM", "BN", "dkdv"),
    "fused": (Bk._dense_bwd_fused_kernel, dict(HAS_MASK=True, CAUSAL=True, DECAY=True, NEED_DQ=True, NEED_DS=True,
                                               NEED_DK=True, NEED_DV=True), "BP", "BW", "fused"),
}
CONFIGS = [(128, 64, 4, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 1),
           (16, 16, 2, 1), (64, 64, 4, 3), (64, 32, 4, 3)]
TILES = [(64, 64), (128, 64), (64, 256), (128, 128), (256, 256)]
POINTERS = ("q", "k", "v", "m", "o", "s", "do", "dq", "dk", "dv", "dm", "ds")


def shared(fn, const, warps, stages):
    names = fn.arg_names
    sig = {n: "constexpr" if n in const else "*fp32" if n in POINTERS else "fp32" if n == "scale" else "i32"
           for n in names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in const.items()})
    _CAP.clear()
    try:
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    except RuntimeError as e:
        if "captured" not in str(e):
            raise
    return _CAP["md"]["shared"]


def main():
    part, nparts = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (0, 1)
    for name, (BD, BE), cfg in list(itertools.product(KINDS, TILES, CONFIGS))[part::nparts]:
        fn, flags, rows, cols, kind = KINDS[name]
        r, c, w, st = cfg
        row = dict(kind=name, BD=BD, BE=BE, cfg=cfg, triton=triton.__version__)
        try:
            row["shared"] = shared(fn, dict(BD=BD, BE=BE, PRECISION="f16x3", UPCAST=False, **flags, **{rows: r, cols: c}),
                                   w, st)
            row["estimate"] = F.smem_estimate(kind, 4, r, c, BD, BE, st)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
