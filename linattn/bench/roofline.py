"""Rooflines: the fastest a call could possibly run on this machine, from FLOPs and bytes.

    t_roofline = max(FLOPs / peak_FLOP_rate(dtype), bytes / peak_bandwidth)
    fraction   = t_roofline / t_measured          (1.0 = at the roof)

The peaks come from one of two places, recorded with every result:

* **measured** (preferred): a large square matrix product in the benchmark's dtype
  (torch's defaults, so float32 means true FP32 unless TF32 was enabled) and a
  device-to-device copy (read + write bytes), on the device the suite runs on. These
  are rates the hardware demonstrably reaches from PyTorch.
* **datasheet**: the vendor's dense (no sparsity) peaks for a few known cards, below.
  On a CPU there is no datasheet bandwidth; the compute peak is estimated from
  /proc/cpuinfo as cores × clock × fp32 FLOP per cycle (2 FMA pipes × SIMD lanes × 2).

A Triton kernel may use TF32 for float32 inputs; against a measured FP32 roof its
fraction can then exceed 1, which says exactly that.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

__all__ = [
    "Card",
    "CARDS",
    "Roofline",
    "card_for",
    "measure_matmul_rate",
    "measure_copy_bandwidth",
    "get_roofline",
]


@dataclass(frozen=True)
class Card:
    """Datasheet peaks (dense): FLOP/s per dtype name, bytes/s of main memory."""

    name: str
    flops: dict
    bandwidth: Optional[float]
    memory_bytes: Optional[float] = None
    source: str = ""


_T = 1e12
CARDS: dict[str, Card] = {
    "H100 SXM": Card(
        "H100 SXM",
        {"bfloat16": 989.4 * _T, "float16": 989.4 * _T, "tf32": 494.7 * _T, "float32": 66.9 * _T, "float64": 66.9 * _T},
        3.35e12, 80e9, "NVIDIA H100 datasheet (SXM5, dense tensor-core peaks; FP64 tensor core)",
    ),
    "H100 PCIe": Card(
        "H100 PCIe",
        {"bfloat16": 756.5 * _T, "float16": 756.5 * _T, "tf32": 378 * _T, "float32": 51.2 * _T, "float64": 51.2 * _T},
        2.0e12, 80e9, "NVIDIA H100 datasheet (PCIe, dense)",
    ),
    "H200": Card(
        "H200",
        {"bfloat16": 989.4 * _T, "float16": 989.4 * _T, "tf32": 494.7 * _T, "float32": 66.9 * _T, "float64": 66.9 * _T},
        4.8e12, 141e9, "NVIDIA H200 datasheet (SXM, dense); same compute as H100 SXM, HBM3e",
    ),
}


def _cpu_datasheet() -> Card:
    """The CPU running this process: cores × clock × FLOP/cycle; no bandwidth figure."""
    model, mhz, flags = "CPU", None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "CPU":
                    model = val.strip()
                elif key == "cpu MHz" and mhz is None:
                    mhz = float(val)
                elif key == "flags" and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # fp32 FLOP per cycle per core: 2 FMA pipes × lanes × 2 (a fused multiply-add is 2 FLOPs)
    lanes = 16 if "avx512f" in flags else (8 if "avx2" in flags and "fma" in flags else 4)
    per_cycle = 2 * lanes * 2
    flops = None
    if mhz:
        f32 = cores * mhz * 1e6 * per_cycle
        flops = {"float32": f32, "float64": f32 / 2, "bfloat16": f32, "float16": f32}
    return Card(
        f"CPU ({model}, {cores} cores)", flops or {}, None, None,
        f"estimated: {cores} cores × {mhz} MHz × {per_cycle} fp32 FLOP/cycle; no datasheet bandwidth",
    )


def card_for(device) -> Card:
    """The datasheet card for ``device`` (CPU: estimated from /proc/cpuinfo)."""
    device = torch.device(device)
    if device.type != "cuda":
        return _cpu_datasheet()
    name = torch.cuda.get_device_name(device)
    if "H200" in name:
        return CARDS["H200"]
    if "H100" in name:
        return CARDS["H100 PCIe" if "PCIe" in name else "H100 SXM"]
    return Card(name, {}, None, None, "no datasheet entry")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, reps: int) -> float:
    fn()  # warm-up (cuBLAS heuristics, page faults)
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


def measure_matmul_rate(device, dtype: torch.dtype, *, n: Optional[int] = None, reps: int = 5) -> float:
    """FLOP/s of an ``n × n × n`` matrix product in ``dtype`` on ``device`` (best of ``reps``).

    Random data (not zeros: tensor cores draw less power on zeros and run faster).
    Default n: 8192 on a GPU (4096 for float32/float64), 1024 on a CPU.
    """
    device = torch.device(device)
    if n is None:
        n = (8192 if dtype in (torch.float16, torch.bfloat16) else 4096) if device.type == "cuda" else 1024
    if n < 1:
        raise ValueError(f"matrix size n must be >= 1, got {n}")
    g = torch.Generator(device=device).manual_seed(0) if device.type == "cuda" else None
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    t = _best_seconds(lambda: a @ b, device, reps)
    return 2.0 * n ** 3 / t


def measure_copy_bandwidth(device, *, nbytes: Optional[int] = None, reps: int = 5) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read plus bytes written.

    Default size: 1 GiB on a GPU (far beyond its L2), 128 MiB on a CPU (beyond its caches).
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = 2 ** 30 if device.type == "cuda" else 2 ** 27
    if nbytes < 4:
        raise ValueError(f"nbytes must be >= 4, got {nbytes}")
    x = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    y = torch.empty_like(x)
    t = _best_seconds(lambda: y.copy_(x), device, reps)
    return 2.0 * x.numel() * 4 / t


@dataclass
class Roofline:
    """Peak rates for one device, and where each came from ("measured" or "datasheet")."""

    device: str
    card: str
    flops: dict = field(default_factory=dict)  # dtype name -> FLOP/s
    bandwidth: Optional[float] = None  # bytes/s
    flops_source: dict = field(default_factory=dict)  # dtype name -> "measured" | "datasheet"
    bandwidth_source: str = "none"
    datasheet: dict = field(default_factory=dict)  # the card's entry, for reference

    def bound(self, flops: float, nbytes: float, dtype: str) -> tuple[Optional[float], str]:
        """``(t_roofline seconds, "compute" | "memory")``; ``(None, why)`` when a peak is unknown."""
        peak = self.flops.get(dtype)
        if not peak or not self.bandwidth:
            return None, "unknown"
        t_c, t_m = flops / peak, nbytes / self.bandwidth
        return (t_c, "compute") if t_c >= t_m else (t_m, "memory")

    def fraction(self, flops: float, nbytes: float, dtype: str, seconds: float) -> Optional[float]:
        t, _ = self.bound(flops, nbytes, dtype)
        if t is None or seconds <= 0:
            return None
        return t / seconds

    def as_dict(self) -> dict:
        return asdict(self)


def get_roofline(device, dtypes=("float32",), *, measure: bool = True) -> Roofline:
    """The roofline for ``device``: measured peaks when ``measure`` (else the datasheet).

    A measurement that fails (out of memory, unsupported dtype) falls back to the
    datasheet entry for that number, and the source says so.
    """
    device = torch.device(device)
    card = card_for(device)
    rl = Roofline(
        device=str(device), card=card.name,
        datasheet={"flops": dict(card.flops), "bandwidth": card.bandwidth, "source": card.source},
    )
    dt_map = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
    for name in dtypes:
        if name not in dt_map:
            raise ValueError(f"dtype must be one of {sorted(dt_map)}, got {name!r}")
        rate, src = None, "none"
        if measure:
            try:
                rate, src = measure_matmul_rate(device, dt_map[name]), "measured"
            except (RuntimeError, torch.OutOfMemoryError) as e:  # pragma: no cover - device specific
                src = f"measurement failed ({type(e).__name__}); datasheet"
        if rate is None and card.flops.get(name):
            rate, src = card.flops[name], ("datasheet" if src == "none" else src)
        if rate is not None:
            rl.flops[name] = rate
            rl.flops_source[name] = src
    bw, src = None, "none"
    if measure:
        try:
            bw, src = measure_copy_bandwidth(device), "measured"
        except (RuntimeError, torch.OutOfMemoryError) as e:  # pragma: no cover - device specific
            src = f"measurement failed ({type(e).__name__}); datasheet"
    if bw is None and card.bandwidth:
        bw, src = card.bandwidth, ("datasheet" if src == "none" else src)
    rl.bandwidth, rl.bandwidth_source = bw, src
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rl
