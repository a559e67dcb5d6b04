"""Reading a saved pytest-benchmark JSON (``--benchmark-json`` / ``--benchmark-save``).

Each linattn benchmark carries its description in ``extra_info`` (see
:func:`linattn.bench.runner.run_case`); :func:`load` flattens it together with the
timing statistics into one :class:`Record` per benchmark.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["Record", "Results", "load", "series", "markdown_table"]


@dataclass(frozen=True)
class Record:
    target: str  # "linattn:reference", "torch:sdpa", ...
    backend: str  # short name
    family: str
    shape: str
    pass_: str
    N: int
    mask: str
    dtype: str
    median_s: float
    min_s: float
    rounds: int
    peak_mem_bytes: Optional[int]
    flops: Optional[float]
    bytes: Optional[float]
    roofline_fraction: Optional[float]
    roofline_bound: Optional[str]
    extra: dict

    @property
    def series_key(self) -> tuple:
        """Records that differ only in N share a key: (family, pass, mask, dtype)."""
        return (self.family, self.pass_, self.mask, self.dtype)


@dataclass
class Results:
    records: list
    machine: dict  # machine_info["linattn"] (card, date, versions, roofline), or {}
    datetime: str

    @property
    def title(self) -> str:
        m = self.machine
        name = m.get("device_name") or "unknown device"
        date = m.get("date") or self.datetime[:16]
        rl = m.get("roofline") or {}
        card = rl.get("card")
        extra = f", torch {m['torch']}" if m.get("torch") else ""
        return f"{name}{f' ({card})' if card and card != name else ''} — {date}{extra}"


def load(path) -> Results:
    """Records of every linattn benchmark in ``path``; raise ValueError when there are none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark JSON not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise ValueError(
            f"{path} is not a pytest-benchmark JSON: expected a top-level 'benchmarks' list, "
            f"got keys {sorted(data)[:8] if isinstance(data, dict) else type(data).__name__}"
        )
    out = []
    for b in data["benchmarks"]:
        e = b.get("extra_info") or {}
        if "family" not in e or "N" not in e:
            continue  # not one of ours
        s = b["stats"]
        out.append(Record(
            target=e["target"], backend=e.get("backend", e["target"]), family=e["family"], shape=e["shape"],
            pass_=e["pass"], N=int(e["N"]), mask=e["mask"], dtype=e["dtype"],
            median_s=float(s["median"]), min_s=float(s["min"]), rounds=int(s["rounds"]),
            peak_mem_bytes=e.get("peak_mem_bytes"), flops=e.get("flops"), bytes=e.get("bytes"),
            roofline_fraction=e.get("roofline_fraction"), roofline_bound=e.get("roofline_bound"),
            extra=e,
        ))
    if not out:
        raise ValueError(
            f"{path} holds no linattn benchmarks (none has extra_info with 'family' and 'N'); "
            f"was it written by `pytest benchmarks --benchmark-only --benchmark-json=...`?"
        )
    machine = (data.get("machine_info") or {}).get("linattn") or {}
    return Results(out, machine, data.get("datetime", ""))


def series(records) -> dict:
    """``{series_key: {target: [records sorted by N]}}``."""
    out: dict = {}
    for r in records:
        out.setdefault(r.series_key, {}).setdefault(r.target, []).append(r)
    for by_target in out.values():
        for rs in by_target.values():
            rs.sort(key=lambda r: r.N)
    return out


def markdown_table(records) -> str:
    """One row per benchmark: shape, pass, target, median time, rate, roofline, memory."""
    head = "| shape | pass | target | median (ms) | GFLOP/s | roofline (bound) | peak MiB |\n|---|---|---|---:|---:|---:|---:|"
    rows = []
    for r in sorted(records, key=lambda r: (r.family, r.N, r.pass_, r.median_s)):
        rate = f"{r.flops / r.median_s / 1e9:.1f}" if r.flops and r.median_s else "-"
        roof = "-" if r.roofline_fraction is None else f"{r.roofline_fraction:.2f} ({(r.roofline_bound or '?')[:3]})"
        mem = "-" if r.peak_mem_bytes is None else f"{r.peak_mem_bytes / 2 ** 20:.1f}"
        name = r.target.split(":", 1)[1] if r.target.startswith("linattn:") else r.target
        rows.append(f"| {r.shape} | {r.pass_} | {name} | {r.median_s * 1e3:.3f} | {rate} | {roof} | {mem} |")
    return "\n".join([head, *rows])
