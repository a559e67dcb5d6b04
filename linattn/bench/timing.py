"""Timing helpers: synchronised calls, round counts, peak memory, machine description.

CUDA runs asynchronously: a call returns once its kernels are *queued*. Every timed
function here therefore ends with ``torch.cuda.synchronize()`` (pytest-benchmark then
times queue-to-finish with its wall clock), and :func:`time_fn` for scripts uses CUDA
events, which time the GPU's own stream.

Peak memory, reported beside every time:

* on CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
  what was allocated before the call: the extra memory one call needs at its peak
  (outputs, saved activations, gradients, workspaces from PyTorch's allocator);
* on the CPU there is no allocator counter, so the call runs once under the PyTorch
  profiler with ``profile_memory=True`` and we replay its allocation records in time
  order; the peak of the running sum is the same quantity: extra bytes of tensors the
  call holds at once. Memory malloc'd outside PyTorch's allocator (a BLAS workspace) is
  not seen. The method is recorded with the number.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
from typing import Callable, Optional

import torch

__all__ = [
    "synchronize",
    "synchronized",
    "choose_rounds",
    "time_fn",
    "peak_memory",
    "machine_info",
]


def synchronize(device) -> None:
    """Wait for every queued kernel on ``device`` (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synchronized(fn: Callable[[], object], device) -> Callable[[], None]:
    """``fn`` followed by a device synchronisation, returning nothing (what gets timed)."""
    device = torch.device(device)
    if device.type != "cuda":
        def run():
            fn()
        return run

    def run_cuda():
        fn()
        torch.cuda.synchronize(device)

    return run_cuda


def choose_rounds(once_s: float, *, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    """As many rounds as fit in ``budget_s`` given one call of ``once_s``, clamped."""
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}")
    if once_s <= 0:
        return max_rounds
    return int(min(max_rounds, max(min_rounds, math.floor(budget_s / once_s))))


def time_fn(fn: Callable[[], object], device, *, rounds: int = 10, warmup: int = 2) -> dict:
    """Time ``fn`` outside pytest: seconds per call as ``{"median", "min", "mean", "rounds"}``.

    CUDA: each round between two events on the current stream; CPU: ``perf_counter``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "mean": statistics.fmean(times), "rounds": rounds}


def _cpu_peak_profiler(fn: Callable[[], object]) -> Optional[int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:  # only CPU activity was profiled: every record is a host allocation
        cur += e.nbytes()  # negative for a free
        peak = max(peak, cur)
    return peak


def peak_memory(fn: Callable[[], object], device) -> tuple[Optional[int], str]:
    """Extra bytes one call of ``fn`` holds at its peak, and how that was measured."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base), "torch.cuda.max_memory_allocated"
    try:
        return _cpu_peak_profiler(fn), "torch.profiler allocation records (CPU)"
    except Exception as e:  # pragma: no cover - profiler internals differ across versions
        return None, f"unavailable ({type(e).__name__}: {e})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device) -> dict:
    """What the numbers were measured on: card, versions, CPU, date."""
    device = torch.device(device)
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": _cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["sms"] = p.multi_processor_count
        info["memory_bytes"] = p.total_memory
    return info
