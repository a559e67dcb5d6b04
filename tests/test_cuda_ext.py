"""Backend ``cuda``: the CUDA C++ extension, checked on a machine without a GPU.

Three layers of checks run here:

* the backend reports itself unavailable with a clear reason, calling it raises
  ``BackendUnavailable`` with that reason, and the rest of linattn is unaffected;
* when nvcc is installed, every kernel source compiles for sm_90 with torch's nvcc flags
  (skipped otherwise);
* the kernels themselves run under the CPU emulator (``csrc/emu``: 128 real threads per
  block meeting at barriers, NaN-filled shared memory, wmma emulated lane by lane) and are
  compared with the float64 reference on random data at awkward sizes — forward, every
  gradient, the state, determinism (skipped when g++ or the CUDA headers are missing).

The same kernels on a real GPU: gpu/cuda_ext.py (correctness, determinism, timings) and
gpu/cuda_sanitize.sh (compute-sanitizer memcheck and racecheck).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import linattn
import linattn.backends.cuda as cuda_pkg
from linattn.backends.cuda import BACKEND, emulator, loader
from linattn.backends.cuda.function import cuda_forward
from linattn.backends.reference import reference_forward

KNOWN_REASONS = ("torch built without CUDA", "no CUDA device", "nvcc not found", "ninja not found")
HAVE_GPU = torch.cuda.is_available() and torch.version.cuda is not None


# -- unavailable cleanly -------------------------------------------------------------------------

@pytest.mark.skipif(HAVE_GPU, reason="this machine has a CUDA device")
def test_unavailable_reason_is_clear():
    why = BACKEND.available()
    assert why is not None and any(r in why for r in KNOWN_REASONS), why
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(linattn.BackendUnavailable) as info:
        BACKEND.fn(q, q, q)
    assert why in str(info.value)
    with pytest.raises(linattn.UnsupportedRequest) as info:
        linattn.linear_attention(q, q, q, backend="cuda")
    assert why in str(info.value) and "reference" in str(info.value)


@pytest.mark.skipif(HAVE_GPU, reason="this machine has a CUDA device")
def test_rest_of_linattn_unaffected():
    q, k, v = torch.randn(2, 2, 7, 3), torch.randn(2, 1, 7, 3), torch.randn(2, 1, 7, 5)
    o = linattn.linear_attention(q, k, v, causal=True)  # auto picks a CPU backend
    ref, _ = reference_forward(q, k, v, causal=True)
    assert torch.allclose(o, ref, atol=1e-5, rtol=1e-5)
    assert not loader._modules  # nothing was built


def test_capabilities_declared():
    assert BACKEND.name == "cuda" and BACKEND.auto_rank == {"cuda": 5}
    halves = frozenset({torch.float16, torch.bfloat16})
    # float32 on by default since v4 (FFMA for short contractions); LINATTN_CUDA_FP32=0 turns it
    # off on GPUs, never under the CPU emulator
    fp32 = emulator.ENABLED or cuda_pkg.FP32_OPT_IN
    assert cuda_pkg.FP32_OPT_IN == (os.environ.get("LINATTN_CUDA_FP32", "1") != "0")
    assert BACKEND.dtypes == (halves | {torch.float32} if fp32 else halves)
    assert BACKEND.max_head_dim == 256 and BACKEND.state and BACKEND.mask_grad and BACKEND.slopes_grad
    assert "cuda" in BACKEND.devices


def test_build_directory_honours_torch_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert loader.build_directory("linattn_cuda_sm90") == tmp_path / "linattn_cuda_sm90"
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert ".cache/linattn/torch_extensions" in str(loader.build_directory("linattn_cuda_sm90"))


def test_every_kernel_file_explains_its_tiling():
    for name in ("masked_product.cuh", "mask_grad.cuh", "engine_mma.cuh", "mma.cuh", "engine_ffma.cuh",
                 "engine_wmma.cuh"):
        head = (loader.CSRC / name).read_text().split("#pragma once")[0]
        assert "Tiling" in head or "tile" in head.lower(), name
        assert len(head.splitlines()) >= 10, name


# -- the sources compile ---------------------------------------------------------------------------

NVCC = loader.nvcc_path()


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("src", [
    "kernels_f32.cu",  # the FFMA engine
    "kernels_bf16.cu",  # the wmma engine
    pytest.param("kernels_f16.cu", marks=pytest.mark.slow),  # the wmma engine again, for __half
])
def test_kernel_sources_compile_for_sm90(src, tmp_path):
    """nvcc -c for sm_90 with the flags torch.utils.cpp_extension adds; no warnings allowed."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    obj = tmp_path / (src + ".o")
    cmd = [NVCC, "-std=c++17", "-O3", "-gencode=arch=compute_90,code=sm_90", *COMMON_NVCC_FLAGS,
           "-I", str(loader.CSRC), "-c", str(loader.CSRC / src), "-o", str(obj)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{src} failed to compile:\n{out[-3000:]}"
    assert "warning" not in out.lower(), f"{src} compiled with warnings:\n{out[-3000:]}"
    assert obj.stat().st_size > 0


# -- the kernels, under the CPU emulator --------------------------------------------------------

EMU_WHY = emulator.unavailable()
needs_emu = pytest.mark.skipif(EMU_WHY is not None, reason=f"emulator unavailable: {EMU_WHY}")
#: normwise relative error allowed against float64 (a few times what rounding to the dtype costs)
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _problem(B, H, Hkv, N, M, D, E, mask_shape=None, decay=False, state=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = dict(
        q=torch.randn(B, H, N, D, generator=g, dtype=torch.float64),
        k=torch.randn(B, Hkv, M, D, generator=g, dtype=torch.float64),
        v=torch.randn(B, Hkv, M, E, generator=g, dtype=torch.float64),
    )
    if mask_shape is not None:
        p["mask"] = torch.randn(*mask_shape, generator=g, dtype=torch.float64)
    if decay:
        p["decay"] = torch.rand(H, generator=g, dtype=torch.float64) * 0.2 + 0.01
    if state:
        p["initial_state"] = torch.randn(B, H, D, E, generator=g, dtype=torch.float64)
    return p, g


def _run(fn, p, dtype, *, causal=False, scale=0.7, final=False, do=None, dfinal=None):
    """o (and final state) and the gradients of every input, computed by fn in dtype."""
    leaves = {n: t.detach().to(dtype if n != "decay" else torch.float32).requires_grad_() for n, t in p.items()}
    if dtype == torch.float64:
        leaves = {n: t.detach().clone().requires_grad_() for n, t in p.items()}
    q, k, v, mask4, causal_, decay, scale_, s0, _, _ = linattn.validate(
        leaves["q"], leaves["k"], leaves["v"], leaves.get("mask"), causal=causal, decay=leaves.get("decay"),
        scale=scale, initial_state=leaves.get("initial_state"), output_final_state=final)
    o, st = fn(q, k, v, mask4, causal=causal_, decay=decay, scale=scale_, initial_state=s0,
               output_final_state=final)
    loss = (o.double() * do).sum() + ((st.double() * dfinal).sum() if final else 0)
    loss.backward()
    grads = {n: t.grad for n, t in leaves.items()}
    return o, st, grads


def _emu(q, k, v, mask, **kw):
    return cuda_forward(q, k, v, mask, ops=emulator.get_ops(), **kw)


def _rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def _compare(p, dtype, *, causal=False, final=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    N, E = p["q"].shape[2], p["v"].shape[3]
    do = torch.randn(*p["q"].shape[:3], E, generator=g, dtype=torch.float64)
    dfinal = torch.randn(p["q"].shape[0], p["q"].shape[1], p["q"].shape[3], E, generator=g,
                         dtype=torch.float64) if final else None
    o, st, grads = _run(_emu, p, dtype, causal=causal, final=final, do=do, dfinal=dfinal)
    o64, st64, g64 = _run(reference_forward, p, torch.float64, causal=causal, final=final, do=do, dfinal=dfinal)
    assert o.dtype == dtype and o.shape == o64.shape
    errs = {"o": _rel(o, o64)}
    if final:
        assert st.dtype == torch.float32
        errs["final"] = _rel(st, st64)
    for n, gr in grads.items():
        assert gr is not None, n
        assert gr.shape == p[n].shape, (n, gr.shape, p[n].shape)
        errs["d" + n] = _rel(gr, g64[n])
    tol = TOL[dtype]
    # slopes gradients sum B*N*M terms of both signs: allow a looser, still meaningful bound
    bad = {n: e for n, e in errs.items() if not e <= (tol * 20 if n == "ddecay" else tol)}
    assert not bad, f"errors above {tol:g}: {bad} (all: {errs})"
    return errs


CASES = [
    # id, (B, H, Hkv, N, M, D, E), mask shape, causal, decay
    ("none-mqa-N1", (1, 2, 1, 1, 1, 1, 1), None, False, False),
    ("none-nm", (2, 2, 1, 2, 65, 48, 3), None, False, False),
    ("dense-1x1-gqa", (1, 4, 2, 63, 72, 64, 65), (63, 72), False, False),
    ("dense-BH", (2, 2, 2, 65, 65, 5, 7), (2, 2, 65, 65), False, False),
    ("dense-B1", (2, 3, 1, 67, 67, 9, 4), (2, 1, 67, 67), False, False),
    ("dense-1H", (1, 4, 2, 31, 130, 16, 16), (1, 4, 31, 130), False, False),
    ("causal-gqa", (1, 4, 2, 130, 130, 48, 17), None, True, False),
    ("decay-mqa", (2, 2, 1, 67, 67, 60, 20), None, True, True),
    ("dense+causal", (1, 2, 1, 65, 65, 3, 64), (1, 1, 65, 65), True, False),
    ("dense+causal-vec", (1, 2, 2, 136, 136, 48, 40), (1, 2, 136, 136), True, False),
    ("dense+decay-bh", (2, 2, 1, 66, 66, 33, 5), (2, 2, 66, 66), True, True),
]


@needs_emu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_emulated_kernels_match_float64(case, dtype):
    _, (B, H, Hkv, N, M, D, E), mshape, causal, decay = case
    if dtype != torch.float32 and case[0] in ("dense-BH", "dense-1H", "none-nm"):
        pytest.skip("covered in float32; keeps the emulated run short")
    p, _ = _problem(B, H, Hkv, N, M, D, E, mask_shape=mshape, decay=decay)
    _compare(p, dtype, causal=causal)


@needs_emu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("decay", [False, True], ids=["causal", "decay"])
def test_emulated_state(decay, dtype):
    p, _ = _problem(2, 4, 2, 65, 65, 7, 5, decay=decay, state=True)
    _compare(p, dtype, causal=True, final=True)


@needs_emu
@pytest.mark.parametrize("config,dtype", [("8x2", torch.float32), ("4x2", torch.float32), ("8x1", torch.float32),
                                          ("4x1", torch.float32), ("4x1", torch.bfloat16)],
                         ids=["8x2-f32", "4x2-f32", "8x1-f32", "4x1-f32", "4x1-bf16"])
def test_emulated_every_tile_configuration(config, dtype, monkeypatch):
    """Each (warps x buffers) configuration of the product kernel, forced: the single-buffer and
    4-warp paths otherwise run only when shared memory is short (large D)."""
    monkeypatch.setenv("LINATTN_CUDA_CONFIG", config)
    p, _ = _problem(1, 2, 1, 70, 70, 12, 9, mask_shape=(1, 2, 70, 70), decay=True)
    _compare(p, dtype, causal=True)


@needs_emu
@pytest.mark.parametrize("ffma", ["0", "1"], ids=["tf32x3-forced", "ffma-forced"])
def test_emulated_float32_engine_forced(ffma, monkeypatch):
    """Both float32 engines on every path (row and col mode, mask, decay, GQA, edges):
    LINATTN_CUDA_FP32_FFMA=1 runs FFMA where 3xTF32 would run and =0 the reverse."""
    monkeypatch.setenv("LINATTN_CUDA_FP32_FFMA", ffma)
    for shape in ((1, 4, 2, 70, 70, 12, 9), (1, 2, 1, 5, 5, 2, 3)):
        B, H, Hkv, N, M, D, E = shape
        p, _ = _problem(B, H, Hkv, N, M, D, E, mask_shape=(1, H, N, M), decay=True)
        _compare(p, torch.float32, causal=True)


@needs_emu
def test_emulated_presplit_engine_is_bitwise_v3(monkeypatch):
    """float32, DA <= 64: the block-split engine (Tf32x3SplitEngine) gives bitwise the results of
    v3's per-warp splits (LINATTN_CUDA_FP32_PRESPLIT=0) in row and col mode, with mask, decay, GQA."""
    p, _ = _problem(1, 4, 2, 70, 70, 64, 65, mask_shape=(1, 4, 70, 70), decay=True, seed=3)
    monkeypatch.setenv("LINATTN_CUDA_FP32_LOTRUNC", "0")  # v5's default truncates lo: not bitwise v3
    runs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("LINATTN_CUDA_FP32_PRESPLIT", flag)
        o, _, grads = _run(_emu, p, torch.float32, causal=True, do=torch.ones(1, 4, 70, 65, dtype=torch.float64))
        runs.append([o] + [grads[n] for n in ("q", "k", "v")])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@needs_emu
@pytest.mark.parametrize("case", ["mask-decay-gqa", "mask-rect", "causal-nomask"])
def test_emulated_v5_schedule_is_bitwise_v4(monkeypatch, case):
    """float32, DA <= 64: v5's tile schedule with rounded lo parts (Tf32x3SplitEarlyEngine,
    LINATTN_CUDA_FP32_LOTRUNC=0: next mask issued after the weighting, no end-of-tile barrier)
    gives bitwise the results of v4's schedule
    (LINATTN_CUDA_FP32_EARLYMASK=0) and of v3's per-warp splits (LINATTN_CUDA_FP32_PRESPLIT=0),
    in row and col mode, with and without a mask, ragged tile ends."""
    if case == "mask-decay-gqa":
        p, _ = _problem(1, 4, 2, 75, 75, 64, 33, mask_shape=(1, 4, 75, 75), decay=True, seed=5)
        causal = True
    elif case == "mask-rect":
        p, _ = _problem(2, 2, 2, 70, 101, 48, 64, mask_shape=(1, 1, 70, 101), seed=7)
        causal = False
    else:
        p, _ = _problem(2, 2, 1, 97, 97, 40, 24, seed=6)
        causal = True
    do = torch.randn(*p["q"].shape[:3], p["v"].shape[3], generator=torch.Generator().manual_seed(2),
                     dtype=torch.float64)
    runs = []
    for env in ({"LINATTN_CUDA_FP32_PRESPLIT": "0"}, {"LINATTN_CUDA_FP32_EARLYMASK": "0"},
                {"LINATTN_CUDA_FP32_EARLYMASK": "1", "LINATTN_CUDA_FP32_LOTRUNC": "0"}):
        for key in ("LINATTN_CUDA_FP32_PRESPLIT", "LINATTN_CUDA_FP32_EARLYMASK", "LINATTN_CUDA_FP32_LOTRUNC"):
            monkeypatch.delenv(key, raising=False)
        for k_, v_ in env.items():
            monkeypatch.setenv(k_, v_)
        o, _, grads = _run(_emu, p, torch.float32, causal=causal, do=do)
        runs.append([o] + [grads[n] for n in ("q", "k", "v")])
    for other in runs[:2]:
        assert all(torch.equal(a, b) for a, b in zip(runs[2], other))


@needs_emu
@pytest.mark.parametrize("case", ["mask-decay-gqa", "mask-rect"])
def test_emulated_ponce_is_bitwise_v5(monkeypatch, case):
    """float32, DA <= 64: v6's accumulation (each P fragment split once,
    LINATTN_CUDA_FP32_PONCE=1) gives bitwise v5's results in row and col mode."""
    if case == "mask-decay-gqa":
        p, _ = _problem(1, 4, 2, 75, 75, 64, 33, mask_shape=(1, 4, 75, 75), decay=True, seed=5)
        causal = True
    else:
        p, _ = _problem(2, 2, 2, 70, 101, 48, 64, mask_shape=(1, 1, 70, 101), seed=7)
        causal = False
    do = torch.randn(*p["q"].shape[:3], p["v"].shape[3], generator=torch.Generator().manual_seed(2),
                     dtype=torch.float64)
    runs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("LINATTN_CUDA_FP32_PONCE", flag)
        o, _, grads = _run(_emu, p, torch.float32, causal=causal, do=do)
        runs.append([o] + [grads[n] for n in ("q", "k", "v")])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert not any(torch.equal(x, torch.zeros_like(x)) for x in runs[1])


@needs_emu
def test_emulated_lotrunc_engine_accuracy(monkeypatch):
    """v5's default LINATTN_CUDA_FP32_LOTRUNC=1 (lo parts truncated by the mma instead of rounded):
    o and every gradient stay at float32 level under the Hopper tensor-core model, within
    TOL and within 3x the default engine's error on the same problem (its representation
    error is at most twice v4's), and it is deterministic."""
    p, _ = _problem(1, 4, 2, 75, 75, 64, 40, mask_shape=(1, 4, 75, 75), decay=True, seed=9)
    do = torch.randn(1, 4, 75, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    o64, _, g64 = _run(reference_forward, p, torch.float64, causal=True, do=do)
    errs = {}
    for flag in ("0", "1", "1"):
        monkeypatch.setenv("LINATTN_CUDA_FP32_LOTRUNC", flag)
        o, _, grads = _run(_emu, p, torch.float32, causal=True, do=do)
        e = {"o": _rel(o, o64), **{n: _rel(grads[n], g64[n]) for n in ("q", "k", "v", "mask")}}
        if flag in errs:
            assert e == errs[flag]  # deterministic
        errs[flag] = e
    for n, e in errs["1"].items():
        assert e < TOL[torch.float32], (n, errs)
        assert e <= 3 * errs["0"][n] + 1e-8, (n, errs)


def _tf32_rna_reference(u):
    """cvt.rna.tf32.f32 on float32 bit patterns (int64 array): NaN and inf unchanged, else
    round the magnitude to 10 fraction bits, ties away from zero (sign-magnitude bits)."""
    import numpy as np

    special = (u & 0x7F800000) == 0x7F800000
    mag = u & 0x7FFFFFFF
    low = mag & 0x1FFF
    up = low >= 0x1000
    r = (mag - low) + np.where(up, 0x2000, 0)
    return np.where(special, u, (u & 0x80000000) | r)


def test_fast_tf32_rounding_matches_cvt_rna():
    """mma.cuh's two-instruction hi rounding, (u + 0x1000) & 0xffffe000, is bitwise cvt.rna on
    every non-NaN float32: random patterns of every exponent, ties, carries into the exponent,
    subnormals, zeros, the largest floats (round to inf) and inf."""
    import numpy as np

    rng = np.random.default_rng(0)
    u = rng.integers(0, 2**32, size=2_000_000, dtype=np.int64)
    edge = []
    for e in (0, 1, 2, 100, 126, 127, 128, 253, 254):
        for m in (0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FEFFF, 0x7FF000, 0x7FFFFF):
            edge += [(e << 23) | m, 0x80000000 | (e << 23) | m]
    edge += [0x7F800000, 0xFF800000]
    u = np.concatenate([u, np.array(edge, dtype=np.int64)])
    u = u[(u & 0x7FFFFFFF) <= 0x7F800000]  # NaN excluded (split_tf32 relies on lo for NaN)
    fast = (u + 0x1000) & 0xFFFFE000
    assert np.array_equal(fast, _tf32_rna_reference(u))
    # the emulator's model of cvt.rna (emu.h) is the same rule
    assert np.array_equal(_tf32_rna_reference(u), np.where((u & 0x7F800000) == 0x7F800000, u,
                                                           (u + 0x1000) & 0xFFFFE000))


ONE_TERM_FAILURES = ("fuzz/failures/cuda-forward-658e448a67.json", "fuzz/failures/cuda-backward-3a49fd36dc.json")


@needs_emu
@pytest.mark.parametrize("path", ONE_TERM_FAILURES, ids=["forward", "backward"])
def test_emulated_one_term_fuzz_failures_pass(path):
    """The two problems of one term (N = M = D = 1) that 3xTF32 put 1.15-1.36x above the
    float32 band (22 of 24 bits) pass with FFMA for short contractions (the default)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, LINATTN_CUDA_EMULATE="1", OMP_NUM_THREADS="1")
    env.pop("LINATTN_CUDA_FP32_FFMA", None)
    res = subprocess.run([sys.executable, "-m", "fuzz", "--replay", path], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert "PASS" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]


@needs_emu
def test_emulated_head_dim_256_and_tile_edges():
    p, _ = _problem(1, 1, 1, 129, 129, 256, 256, mask_shape=(129, 129))
    _compare(p, torch.float32, causal=True)


@needs_emu
def test_emulated_expanded_and_noncontiguous_inputs():
    """A stride-0 (expanded) mask is read in place; transposed q/k/v are made contiguous."""
    g = torch.Generator().manual_seed(3)
    B, H, N, D, E = 2, 2, 33, 6, 5
    q = torch.randn(B, H, D, N, generator=g).transpose(-1, -2)
    k = torch.randn(B, H, D, N, generator=g).transpose(-1, -2)
    v = torch.randn(B, H, N, E, generator=g)
    base = torch.randn(N, N, generator=g)
    mask = base.expand(B, H, N, N)
    o, _ = _emu(q, k, v, mask)
    ref, _ = reference_forward(q.double(), k.double(), v.double(), mask.double())
    assert _rel(o, ref) < TOL[torch.float32]
    # mask gradient through an expanded view sums back onto the [N, N] leaf
    leaf = base.clone().requires_grad_()
    o, _ = _emu(q, k, v, leaf.expand(B, H, N, N))
    o.sum().backward()
    leaf64 = base.double().clone().requires_grad_()
    reference_forward(q.double(), k.double(), v.double(), leaf64.expand(B, H, N, N))[0].sum().backward()
    assert _rel(leaf.grad, leaf64.grad) < TOL[torch.float32]


@needs_emu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=lambda d: str(d)[6:])
def test_emulated_backward_is_deterministic(dtype):
    p, _ = _problem(2, 4, 1, 70, 70, 12, 9, mask_shape=(1, 1, 70, 70), decay=True)
    runs = []
    for _ in range(2):
        leaves = {n: t.detach().to(dtype if n != "decay" else torch.float32).requires_grad_() for n, t in p.items()}
        o, _ = _emu(leaves["q"], leaves["k"], leaves["v"], leaves["mask"], decay=leaves["decay"], causal=True)
        o.float().square().sum().backward()
        runs.append([o.detach()] + [leaves[n].grad for n in ("q", "k", "v", "mask", "decay")])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@needs_emu
def test_emulated_only_needed_gradients_are_computed(monkeypatch):
    calls = []
    ops = emulator.get_ops()
    real_mp, real_mg = ops.masked_product, ops.mask_slopes_grad
    monkeypatch.setattr(ops, "masked_product", lambda *a: calls.append(("mp", a[7])) or real_mp(*a))
    monkeypatch.setattr(ops, "mask_slopes_grad", lambda *a: calls.append(("mg",)) or real_mg(*a))
    q = torch.randn(1, 2, 9, 4, requires_grad=True)
    k, v = torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 3)
    mask = torch.randn(9, 9)
    o, _ = _emu(q, k, v, mask[None, None])
    o.sum().backward()
    assert calls == [("mp", False), ("mp", False)]  # forward, dq; no dk, dv, dmask


@needs_emu
def test_emulated_kernels_pass_the_harness_bands():
    """A few drawn problems through the public harness (forward and backward properties)."""
    from linattn.testing import check_backend

    def fn(q, k, v, mask=None, *, causal=False, decay=None, scale=1.0, initial_state=None,
           output_final_state=False):
        return cuda_forward(q, k, v, mask, causal=causal, decay=decay, scale=scale,
                            initial_state=initial_state, output_final_state=output_final_state,
                            ops=emulator.get_ops())

    backend = linattn.Backend(name="cuda_emulated", fn=fn, description="cuda kernels on the emulator",
                              devices=frozenset({"cpu"}), dtypes=BACKEND.dtypes, max_head_dim=256)
    rep = check_backend(backend, devices=("cpu",), max_examples=4,
                                        properties=["forward", "backward"], max_n=70, max_h=4, max_b=2)
    assert all(p.status == "pass" for p in rep.properties), [(p.property, p.status, p.message) for p in rep.properties]
