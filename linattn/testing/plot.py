"""The error plot: measured error against N, one panel per dtype, with the bands drawn in.

Top row: every measured relative error (dots, one colour per backend) and the band it was
held to (grey ticks), against N, log-log. Bottom row: the same errors as a fraction of
their band, with the line at 1 where a backend would fail. Uses matplotlib's Agg backend
(no display needed).
"""
from __future__ import annotations

import math

__all__ = ["plot_errors"]

_DTYPES = ("float16", "bfloat16", "float32", "float64")


def plot_errors(reports, path: str, *, title: str = "linattn verify: error vs N") -> str:
    """Write the PNG to ``path`` from BackendReports; return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = {}
    for r in reports:
        for p in r.properties:
            for m in p.measurements:
                if m["error"] is None or not math.isfinite(m["band"]):
                    continue
                pts.setdefault(m["dtype"], []).append((r.backend, m))
    dts = [d for d in _DTYPES if d in pts] or ["float32"]
    fig, axes = plt.subplots(2, len(dts), figsize=(4.2 * len(dts), 7), squeeze=False)
    backends = sorted({b for v in pts.values() for b, _ in v})
    cmap = plt.get_cmap("tab10")
    colour = {b: cmap(i % 10) for i, b in enumerate(backends)}
    for c, dt in enumerate(dts):
        top, bot = axes[0][c], axes[1][c]
        rows = pts.get(dt, [])
        # top: agreement with float64 only (metamorphic comparisons have no single x64 error)
        agree = [(b, m) for b, m in rows if m["property"] in ("forward", "backward") and m["error"] > 0]
        if agree:
            top.scatter([m["N"] for _, m in agree], [m["band"] for _, m in agree], marker="_", s=60,
                        color="0.55", label="band", zorder=1)
        for b in backends:
            sel = [m for bb, m in agree if bb == b]
            if sel:
                top.scatter([m["N"] for m in sel], [m["error"] for m in sel], s=8, color=colour[b],
                            label=b, zorder=2)
            sel = [m for bb, m in rows if bb == b]
            if sel:  # exact agreement (error 0) drawn on the bottom edge
                bot.scatter([m["N"] for m in sel], [min(max(m["fraction"], 1e-4), 1e2) for m in sel], s=8,
                            color=colour[b], label=b)
        bot.axhline(1.0, color="red", lw=1, label="band (error/band = 1)")
        if agree:
            vals = [m["error"] for _, m in agree] + [m["band"] for _, m in agree]
            lo, hi = max(min(vals) / 3, 1e-19), min(max(vals) * 3, 1e2)
            top.set_ylim(lo, hi)
        bot.set_ylim(5e-5, 1e2)
        for ax in (top, bot):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("N")
            ax.grid(True, which="both", alpha=0.2)
        top.set_title(dt)
        top.set_ylabel("relative error vs float64 (forward, backward)")
        bot.set_ylabel("error / band, every property (0 at the bottom)")
        if c == 0:
            top.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
