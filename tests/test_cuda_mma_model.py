"""The CPU emulator's model of tensor-core arithmetic, and why the kernels keep mma chains short.

On Hopper an ``mma.sync`` with float32 accumulation computes its k products exactly, aligns
them and the accumulator c to the largest exponent keeping 2 bits below the float32 ulp
(the rest is truncated), and rounds the exact sum of the aligned terms toward zero
(Khattak & Mikaitis 2025; Fasi et al. 2021 for earlier GPUs). ``csrc/emu/emu.h`` models
that by default (``LINATTN_CUDA_EMU_MMA=rz``); ``rn`` is an idealised unit that rounds the
exact sum to nearest. These tests pin the model on hand-made vectors, show the biased
~n·u error of a long chain into one accumulator (the H200 failure of the v2 float32
kernel), and that the v3 scheme (short chains into zeroed fragments, float32 adds
between them) removes it.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from linattn.backends.cuda import emulator

EMU_WHY = emulator.unavailable()
pytestmark = pytest.mark.skipif(EMU_WHY is not None, reason=f"emulator unavailable: {EMU_WHY}")
HW = emulator.mma_mode() == "rz"
needs_hw_model = pytest.mark.skipif(not HW, reason="LINATTN_CUDA_EMU_MMA=rn in this process")

U = 2.0 ** -24  # float32 unit roundoff
ONE_UP = 1.0 + 2.0 ** -23  # the float32 after 1.0


def _rn(c, a, b):
    """c + sum a_i b_i rounded once to nearest float32 (the 'rn' model)."""
    exact = float(c) + sum(float(x) * float(y) for x, y in zip(a, b))
    return float(torch.tensor(exact, dtype=torch.float64).float())


@needs_hw_model
def test_final_rounding_is_toward_zero():
    # 1 + 0.75 ulp: to nearest 1 + ulp, toward zero 1
    a, b = [1.5 * 2.0 ** -12], [2.0 ** -12]
    assert _rn(1.0, a, b) == ONE_UP
    assert emulator.mma_block(1.0, a, b) == 1.0
    # negative side: -(1 + 0.75 ulp) -> -1
    assert emulator.mma_block(-1.0, [-1.5 * 2.0 ** -12], [2.0 ** -12]) == -1.0


@needs_hw_model
def test_two_extra_alignment_bits_then_truncation():
    # four products of 2^-25 (a quarter ulp of 1 each) survive the alignment: exactly 1 + ulp
    assert emulator.mma_block(1.0, [2.0 ** -13] * 4, [2.0 ** -12] * 4) == ONE_UP
    # eight products of 1.5 * 2^-26 (3/16 ulp each) fall below the 2^-25 grid and are
    # truncated to nothing, while their exact sum is 1.5 ulp (to nearest: 1 + 2 ulp)
    a, b = [1.5 * 2.0 ** -13] * 8, [2.0 ** -13] * 8
    assert _rn(1.0, a, b) == 1.0 + 2.0 ** -22
    assert emulator.mma_block(1.0, a, b) == 1.0
    # a product far below c's exponent is dropped entirely
    assert emulator.mma_block(1.0, [2.0 ** -20], [2.0 ** -20]) == 1.0


@needs_hw_model
def test_exact_products_and_large_c_untouched():
    # c alone is returned exactly; products of 11-bit significands are exact
    assert emulator.mma_block(0.1, [], []) == float(torch.tensor(0.1).float())
    a = [1.0 + 2.0 ** -10]  # tf32: 10 fraction bits
    assert emulator.mma_block(0.0, a, a) == (1.0 + 2.0 ** -10) ** 2


@needs_hw_model
def test_zero_products_do_not_set_the_alignment():
    """Pinned from the cuda fuzz campaign (seed 302): the model dropped zero products but then
    read the kept products' exponents at the compacted index, i.e. from other pairs (a zero
    gives exponent ~0), so tiny products were truncated to an O(1) grid. A causal tile or a
    tf32 low part of 0 makes such zeros everywhere."""
    tiny = 2.0 ** -30
    a = [0.0, 1.5 * tiny, 0.0, 1.25 * tiny]
    b = [1.0, tiny, 1.0, tiny]
    exact = (1.5 + 1.25) * tiny * tiny  # exactly representable: the sum loses nothing
    assert emulator.mma_block(0.0, a, b) == exact
    assert emulator.mma_block(0.0, [1.0, 0.0, tiny], [0.0, 1.0, tiny]) == tiny * tiny


def test_rn_mode_in_a_subprocess():
    """The idealised unit rounds the same vectors to nearest."""
    code = ("from linattn.backends.cuda import emulator as e\n"
            "assert e.mma_mode() == 'rn'\n"
            "print(e.mma_block(1.0, [1.5 * 2.0 ** -12], [2.0 ** -12]))\n")
    env = dict(os.environ, LINATTN_CUDA_EMU_MMA="rn")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.split()[-1]) == ONE_UP


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to tf32 (10 fraction bits), nearest, ties away (cvt.rna)."""
    u = x.float().view(torch.int32)
    u = (u + 0x1000) & ~0x1FFF
    return u.view(torch.float32)


def _chain_dot(a: torch.Tensor, b: torch.Tensor, stretch: int) -> float:
    """sum_i a_i b_i in 3xTF32 through the emulated mma, 8 terms per instruction as the
    kernels' m16n8k8; with stretch = 0 one chain into one accumulator (v2), otherwise a
    fresh zero accumulator every `stretch` terms, added to the total in float32 (v3)."""
    ahi = _tf32(a)
    alo = _tf32(a - ahi)
    bhi = _tf32(b)
    blo = _tf32(b - bhi)
    total = torch.zeros((), dtype=torch.float32)
    acc = 0.0
    n = a.numel()
    for k0 in range(0, n, 8):
        if stretch and k0 % stretch == 0 and k0:
            total = total + torch.tensor(acc, dtype=torch.float32)
            acc = 0.0
        s = slice(k0, k0 + 8)
        acc = emulator.mma_block(acc, alo[s].tolist(), bhi[s].tolist())
        acc = emulator.mma_block(acc, ahi[s].tolist(), blo[s].tolist())
        acc = emulator.mma_block(acc, ahi[s].tolist(), bhi[s].tolist())
    total = total + torch.tensor(acc, dtype=torch.float32)
    return float(total)


@needs_hw_model
def test_long_chains_carry_a_biased_error_short_chains_do_not():
    """Dot products of length 1024 (the seed's N): the v2 chain loses ~n·u/2 relative to
    the size of its partial sums, always toward zero; the v3 stretches of 32 do not."""
    g = torch.Generator().manual_seed(0)
    n, trials = 1024, 12
    err_long, err_short, err_f32 = [], [], []
    for _ in range(trials):
        # positive terms: partial sums grow linearly, which shows the bias plainly
        a = torch.rand(n, generator=g, dtype=torch.float64).float()
        b = torch.rand(n, generator=g, dtype=torch.float64).float()
        exact = float((a.double() * b.double()).sum())
        err_long.append((_chain_dot(a, b, 0) - exact) / exact)
        err_short.append((_chain_dot(a, b, 32) - exact) / exact)
        err_f32.append((float(torch.cumsum(a * b, 0)[-1]) - exact) / exact)  # float32 recursive sum
    long_mean = sum(err_long) / trials
    assert all(e < 0 for e in err_long), err_long  # always toward zero
    assert long_mean < -40 * U, (long_mean / U, "expected a bias of tens of u")
    assert max(abs(e) for e in err_short) < 8 * U, [e / U for e in err_short]
    assert max(abs(e) for e in err_short) < abs(long_mean) / 5
    # the short chains are about as good as float32 recursive summation
    assert max(abs(e) for e in err_short) < 4 * max(max(abs(e) for e in err_f32), 2 * U)
