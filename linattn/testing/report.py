"""Reports: the conformance matrix (backend × property), as text, Markdown and JSON.

Each cell is ``pass`` / ``FAIL`` / ``skip`` with the worst error as a fraction of its band
and the number of examples run, e.g. ``pass 0.31 (25)``; a fraction <= 1 is inside the band.
"""
from __future__ import annotations

import json
import platform
from typing import Iterable

import torch

__all__ = ["cell", "matrix_rows", "backend_markdown", "verify_markdown", "verify_json", "machine"]


def machine() -> dict:
    info = dict(python=platform.python_version(), torch=torch.__version__, platform=platform.platform(),
                processor=platform.processor() or platform.machine())
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        info["triton"] = None
    try:
        import hypothesis

        info["hypothesis"] = hypothesis.__version__
    except Exception:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def cell(p) -> str:
    """One matrix cell for a PropertyReport."""
    if p.status == "skip":
        return "skip"
    frac = "-" if p.worst_fraction is None else f"{p.worst_fraction:.2g}"
    word = "pass" if p.status == "pass" else "FAIL"
    return f"{word} {frac} ({p.examples})"


def matrix_rows(reports: Iterable) -> tuple:
    """(header, rows) of the conformance matrix: one row per property, one column per
    backend (properties outnumber backends, so this reads best on a screen)."""
    reports = list(reports)
    props = []
    for r in reports:
        for p in r.properties:
            if p.property not in props:
                props.append(p.property)
    header = ["property"] + [r.backend for r in reports]
    rows = []
    for n in props:
        row = [n]
        for r in reports:
            by = {p.property: p for p in r.properties}
            row.append(cell(by[n]) if n in by else "")
        rows.append(row)
    rows.append(["overall"] + [r.status.upper() if r.status == "fail" else r.status for r in reports])
    return header, rows


def _md_table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _failures_md(reports) -> str:
    out = []
    for r in reports:
        for p in r.properties:
            if p.status == "fail":
                out.append(f"### {r.backend} — {p.property}\n\n```\n{p.message.strip()}\n```\n")
                if p.reproduction:
                    out.append(f"```\n{p.reproduction.strip()}\n```\n")
    return "\n".join(out)


def _skips_md(reports) -> str:
    out = []
    for r in reports:
        for p in r.properties:
            if p.status == "skip" and p.message:
                out.append(f"- {r.backend} / {p.property}: {p.message.splitlines()[0][:200]}")
            elif p.skipped:
                reasons = "; ".join(f"{k} (x{v})" for k, v in list(p.skip_reasons.items())[:3])
                out.append(f"- {r.backend} / {p.property}: {p.skipped} examples skipped — {reasons}")
    return "\n".join(out)


def backend_markdown(report) -> str:
    return verify_markdown([report])


def verify_markdown(reports, *, settings: dict | None = None) -> str:
    reports = list(reports)
    header, rows = matrix_rows(reports)
    parts = ["# linattn verify — conformance matrix", ""]
    if settings:
        parts.append("Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        parts.append("")
    parts += [
        "Each cell: status, worst error as a fraction of its tolerance band (<= 1 passes), "
        "(examples run). Bands: see docs/harness.md.",
        "",
        _md_table(header, rows),
        "",
    ]
    fails = _failures_md(reports)
    if fails:
        parts += ["## Failures", "", fails]
    skips = _skips_md(reports)
    if skips:
        parts += ["## Skipped", "", skips, ""]
    parts += ["## Machine", "", "```", json.dumps(machine(), indent=1), "```", ""]
    return "\n".join(parts)


def verify_json(reports, *, settings: dict | None = None, measurements: bool = True) -> str:
    return json.dumps(dict(settings=settings or {}, machine=machine(),
                           backends=[r.as_dict(measurements) for r in reports]), indent=1, default=str)
