"""Benchmark support: shapes, FLOP/byte counts, rooflines, targets and timing helpers.

The suites live in ``benchmarks/`` (``pytest benchmarks --benchmark-only``); this package
holds everything they share, importable by scripts too::

    from linattn.bench import select_shapes, count, get_roofline, time_fn

* :mod:`.shapes`   — the shape registry and its profiles (smoke, cpu, quick, gpu, all)
* :mod:`.counts`   — FLOPs per form/mask/pass and bytes moved, with the formulas
* :mod:`.roofline` — datasheet cards, measured matmul rate and copy bandwidth
* :mod:`.targets`  — linattn backends and baselines (fla, lightning_attn, SDPA) as closures
* :mod:`.timing`   — synchronised timing, round counts, peak memory, machine info
* :mod:`.runner`   — one case end to end (check, time, record ``extra_info``)
* :mod:`.results`  — reading a saved pytest-benchmark JSON (used by ``linattn plot``)
"""
from .counts import Counts, bytes_moved, count, flops
from .roofline import CARDS, Card, Roofline, card_for, get_roofline, measure_copy_bandwidth, measure_matmul_rate
from .shapes import PROFILES, SHAPES, Shape, default_profile, make_inputs, select_shapes
from .timing import choose_rounds, machine_info, peak_memory, synchronize, synchronized, time_fn

__all__ = [
    "Shape", "SHAPES", "PROFILES", "select_shapes", "default_profile", "make_inputs",
    "Counts", "count", "flops", "bytes_moved",
    "Card", "CARDS", "Roofline", "card_for", "get_roofline", "measure_matmul_rate", "measure_copy_bandwidth",
    "synchronize", "synchronized", "choose_rounds", "time_fn", "peak_memory", "machine_info",
]
