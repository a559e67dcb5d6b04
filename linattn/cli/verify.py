"""``linattn verify``: run the harness on every available backend (or an external one).

    linattn verify                                  # every available backend, CPU, dev profile
    linattn verify docs.example_backend:attention  # an external backend by import path
    linattn verify --backend chunked --dtype float32 --profile ci --out reports/
    linattn verify --mutants --profile ci           # the broken backends must all FAIL

Prints a progress display and the conformance matrix (backend × property: pass/fail,
worst error as a fraction of its band, examples run), writes ``verify.json``,
``verify.md`` and ``verify_errors.png`` to ``--out``, and exits 1 if any property fails
(with ``--mutants``: if any mutant is *not* rejected). Failures print the exact
reproduction: the shrunk ``Problem(...)`` and Hypothesis' ``@reproduce_failure`` blob.
"""
from __future__ import annotations

import os
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("verify", help="run the verification harness and print the conformance matrix",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("external", nargs="?", metavar="module:function",
                   help="an external backend: a callable with linear_attention's signature")
    p.add_argument("--backend", action="append", default=None, metavar="NAME",
                   help="registered backend to check (repeatable); default: every available one")
    p.add_argument("--device", action="append", default=None, help="device type (repeatable); default: cpu")
    p.add_argument("--dtype", action="append", default=None,
                   help="float16, bfloat16, float32, float64 (repeatable); default: all")
    p.add_argument("--property", action="append", default=None, dest="props",
                   help="property to run (repeatable); default: all")
    p.add_argument("--profile", default=None, choices=["dev", "ci", "thorough"],
                   help="Hypothesis profile (default: $LINATTN_PROFILE or dev)")
    p.add_argument("--max-examples", type=int, default=None, help="examples per property")
    p.add_argument("--max-n", type=int, default=None, help="largest sequence length drawn")
    p.add_argument("--mutants", action="store_true", help="check the deliberately broken backends instead")
    p.add_argument("--out", default="reports", help="folder for verify.json / verify.md / verify_errors.png")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.set_defaults(func=run)


def _targets(args):
    from .._registry import list_backends
    from ..testing.mutants import MUTANTS

    if args.mutants:
        return [(name, b) for name, b in MUTANTS.items()], []
    if args.external:
        return [(args.external, args.external)], []
    chosen, skipped = [], []
    names = args.backend
    for b in list_backends():
        if names and b.name not in names:
            continue
        why = b.available()
        if why is not None:
            skipped.append((b.name, why))
            continue
        if args.device and not (set(args.device) & set(b.devices)):
            skipped.append((b.name, f"runs on {sorted(b.devices)}, not {args.device}"))
            continue
        chosen.append((b.name, b.name))
    if names:
        known = {b.name for b in list_backends()}
        for n in names:
            if n not in known:
                raise SystemExit(f"linattn verify: unknown backend {n!r}; registered: {sorted(known)}")
    return chosen, skipped


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ..testing.check import check_backend
    from ..testing.profiles import PROFILES, profile_from_env
    from ..testing.properties import PROPERTIES
    from ..testing.report import matrix_rows, verify_json, verify_markdown

    console = Console(stderr=False, width=None if sys.stdout.isatty() else 200)
    profile = args.profile or profile_from_env()
    devices = args.device or ["cpu"]
    props = args.props or list(PROPERTIES)
    for n in props:
        if n not in PROPERTIES:
            console.print(f"unknown property {n!r}; properties: {', '.join(PROPERTIES)}")
            return 2
    try:
        targets, unavailable = _targets(args)
    except ValueError as e:
        console.print(f"linattn verify: {e}")
        return 2
    per_prop = args.max_examples or PROFILES[profile]["max_examples"]
    narrow = {}
    if args.max_n:
        narrow["max_n"] = args.max_n
    settings = dict(profile=profile, devices=devices, dtypes=args.dtype or "all",
                    max_examples=per_prop, properties=len(props))
    console.print(f"[bold]linattn verify[/bold] — profile {profile}, {per_prop} examples per property, "
                  f"devices {devices}, dtypes {args.dtype or 'all'}")
    for name, why in unavailable:
        console.print(f"  [dim]{name}: not available here ({why})[/dim]")

    reports = []
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        overall = progress.add_task("all backends", total=len(targets) * len(props))
        for name, obj in targets:
            task = progress.add_task(f"{name}", total=len(props) * per_prop)
            done = [0]

            def on_property(pname, _task=task, _name=name):
                progress.update(_task, description=f"{_name}: {pname}")

            def on_example(_task=task):
                done[0] += 1
                progress.advance(_task)

            try:
                rep = check_backend(obj, devices=devices, dtypes=args.dtype, max_examples=args.max_examples,
                                    profile=profile, properties=props, on_property=on_property,
                                    on_example=on_example, fail_fast=args.mutants, **narrow)
            except ValueError as e:
                console.print(f"[red]{name}: {e}[/red]")
                return 2
            rep.backend = name
            reports.append(rep)
            progress.update(task, completed=len(props) * per_prop,
                            description=f"{name}: {rep.status} ({rep.seconds:.0f}s)")
            progress.advance(overall, len(props))

    header, rows = matrix_rows(reports)
    table = Table(title="conformance matrix (worst error/band, examples)", show_lines=False)
    for h in header:
        table.add_column(h, overflow="fold")
    for row in rows:
        styled = []
        for c in row:
            s = str(c)
            if s.startswith("FAIL") or s == "FAIL":
                s = f"[red]{s}[/red]"
            elif s.startswith("pass"):
                s = f"[green]{s}[/green]"
            elif s.startswith("skip"):
                s = f"[dim]{s}[/dim]"
            styled.append(s)
        table.add_row(*styled)
    console.print(table)

    failed = [(r, p) for r in reports for p in r.properties if p.status == "fail"]
    if not args.mutants:
        for r, p in failed:
            console.rule(f"[red]{r.backend} — {p.property} FAILED")
            console.print(p.message, markup=False, highlight=False)
            if p.reproduction:
                console.print(p.reproduction, markup=False, highlight=False)

    os.makedirs(args.out, exist_ok=True)
    jpath = os.path.join(args.out, "verify.json")
    mpath = os.path.join(args.out, "verify.md")
    with open(jpath, "w") as f:
        f.write(verify_json(reports, settings=settings))
    with open(mpath, "w") as f:
        f.write(verify_markdown(reports, settings=settings))
    written = [jpath, mpath]
    if not args.no_plot:
        from ..testing.plot import plot_errors

        written.append(plot_errors(reports, os.path.join(args.out, "verify_errors.png")))
    console.print(f"wrote {', '.join(written)} in {time.perf_counter() - t0:.0f}s")

    if args.mutants:
        survivors = [r.backend for r in reports if r.status != "fail"]
        for r in reports:
            caught = next((p for p in r.properties if p.status == "fail"), None)
            how = (f"rejected by {caught.property} after {caught.first_failure_example} examples, "
                   f"{caught.first_failure_seconds:.1f}s" if caught and caught.first_failure_seconds is not None
                   else "NOT REJECTED")
            console.print(f"  {r.backend:34s} {how}")
        if survivors:
            console.print(f"[red]mutants not rejected: {survivors}[/red]")
            return 1
        console.print("[green]every mutant rejected[/green]")
        return 0
    if failed:
        console.print(f"[red]{len(failed)} failing (backend, property) pairs[/red]")
        return 1
    if not any(p.status == "pass" for r in reports for p in r.properties):
        console.print("[yellow]nothing ran: every property was skipped[/yellow]")
        return 1
    console.print("[green]all properties pass[/green]")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(None))
