"""``linattn plot results.json --out DIR``: charts from a saved pytest-benchmark run.

Writes, for the families of shapes that vary in N (one panel per family, pass, mask and
dtype; one line per backend or baseline):

* ``time.png``      median time per call against N, log-log;
* ``memory.png``    peak extra memory per call against N, log-log;
* ``roofline.png``  fraction of the roofline against N, plus a bar panel for the shapes
  timed at a single N (training shapes, decode).

``--combined`` draws the three as rows of one ``bench.png`` instead (one file to bring
back from a GPU machine); ``--table`` also prints every result as a Markdown table.
The title names the device and the date from the JSON.
"""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="turn a saved pytest-benchmark JSON into PNG charts (time, memory, roofline fraction)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("results", help="JSON written by pytest --benchmark-json (or a --benchmark-save file)")
    p.add_argument("--out", required=True, help="directory for the PNG files (created if missing)")
    p.add_argument("--combined", action="store_true", help="one bench.png with all three charts as rows")
    p.add_argument("--prefix", default="", help="prefix for the file names, e.g. 'h100-'")
    p.add_argument("--dpi", type=int, default=110)
    p.add_argument("--table", action="store_true", help="also print a Markdown table of every result")
    p.set_defaults(func=run)


def _colors(targets):
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    ordered = sorted(targets, key=lambda t: (not t.startswith("linattn:"), t))
    return {t: cmap(i % 20) for i, t in enumerate(ordered)}


def _label(target: str) -> str:
    return target.split(":", 1)[1] if target.startswith("linattn:") else target


def _panel_title(key) -> str:
    family, pass_, mask, dtype = key
    return f"{family} · {pass_} · {mask} · {dtype}"


def _curve_panel(ax, by_target, colors, metric: str) -> bool:
    """Draw one family's curves; return whether anything was drawn."""
    drawn = False
    for target, rs in sorted(by_target.items()):
        xs, ys = [], []
        for r in rs:
            if metric == "time":
                y = r.median_s * 1e3
            elif metric == "memory":
                y = None if r.peak_mem_bytes is None else max(r.peak_mem_bytes, 1) / 2 ** 20
            else:
                y = r.roofline_fraction
            if y is not None:
                xs.append(r.N)
                ys.append(y)
        if xs:
            style = "-o" if target.startswith("linattn:") else "--s"
            ax.plot(xs, ys, style, color=colors[target], label=_label(target), markersize=4, linewidth=1.4)
            drawn = True
    ax.set_xscale("log", base=2)
    if metric in ("time", "memory"):
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("N (sequence length)")
    ax.set_ylabel({"time": "median time per call (ms)", "memory": "peak extra memory (MiB)",
                   "roofline": "fraction of roofline"}[metric])
    ax.grid(True, which="both", alpha=0.3)
    return drawn


def _bar_panel(ax, singles, colors) -> None:
    """Roofline fraction of shapes timed at one N: groups = shape/pass, bars = targets."""
    groups = sorted({(r.shape, r.pass_) for r in singles})
    targets = sorted({r.target for r in singles}, key=lambda t: (not t.startswith("linattn:"), t))
    width = 0.8 / max(len(targets), 1)
    for j, t in enumerate(targets):
        xs, ys = [], []
        for i, g in enumerate(groups):
            for r in singles:
                if (r.shape, r.pass_) == g and r.target == t and r.roofline_fraction is not None:
                    xs.append(i + (j - (len(targets) - 1) / 2) * width)
                    ys.append(r.roofline_fraction)
        if xs:
            ax.bar(xs, ys, width=width, color=colors[t], label=_label(t))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{s.split('-B')[0]}\n{p}" for s, p in groups], fontsize=7)
    ax.set_ylabel("fraction of roofline")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("shapes at a single N", fontsize=9)


def _split(results):
    from ..bench.results import series

    all_series = series(results.records)
    curves = {k: v for k, v in all_series.items() if len({r.N for rs in v.values() for r in rs}) >= 2}
    singles = [r for k, v in all_series.items() if k not in curves for rs in v.values() for r in rs]
    return curves, singles


def _figure(curves, singles, colors, metrics, title):
    import matplotlib.pyplot as plt

    keys = sorted(curves)
    ncols = max(len(keys), 1) + (1 if "roofline" in metrics and singles else 0)
    nrows = len(metrics)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False)
    for row, metric in enumerate(metrics):
        for col, key in enumerate(keys):
            ax = axes[row][col]
            if not _curve_panel(ax, curves[key], colors, metric):
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(_panel_title(key), fontsize=9)
        if not keys:
            axes[row][0].text(0.5, 0.5, "no shape family varies in N", ha="center", va="center",
                              transform=axes[row][0].transAxes)
        for col in range(len(keys) or 1, ncols):
            ax = axes[row][col]
            if metric == "roofline" and singles:
                _bar_panel(ax, singles, colors)
            else:
                ax.axis("off")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center",
               ncol=min(len(labels), 6) or 1, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    rows_legend = (len(labels) + 5) // 6
    fig.tight_layout(rect=(0, 0.03 + 0.03 * rows_legend / nrows, 1, 0.96))
    return fig


def make_plots(results_path, out_dir, *, combined: bool = False, prefix: str = "", dpi: int = 110) -> list:
    """Write the charts for ``results_path`` into ``out_dir``; return the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..bench.results import load

    results = load(results_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves, singles = _split(results)
    colors = _colors({r.target for r in results.records})
    written = []
    if combined:
        fig = _figure(curves, singles, colors, ("time", "memory", "roofline"), results.title)
        path = out / f"{prefix}bench.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)
        return written
    for metric, sub in (("time", "time vs N"), ("memory", "peak memory vs N"), ("roofline", "fraction of roofline")):
        fig = _figure(curves, singles, colors, (metric,), f"{sub} — {results.title}")
        path = out / f"{prefix}{metric}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)
    return written


def run(args) -> int:
    try:
        written = make_plots(args.results, args.out, combined=args.combined, prefix=args.prefix, dpi=args.dpi)
    except (FileNotFoundError, ValueError) as e:
        print(f"linattn plot: {e}", file=sys.stderr)
        return 2
    for p in written:
        print(p)
    if args.table:
        from ..bench.results import load, markdown_table

        print(markdown_table(load(args.results).records))
    return 0
