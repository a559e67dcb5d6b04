"""``python -m fuzz``: run fuzz campaigns, or replay recorded failures. See ``fuzz/__init__.py``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget per family (default: 10 unless --examples is given)")
    p.add_argument("--examples", type=int, default=None, help="example budget per family")
    p.add_argument("--family", default="torch", choices=["torch", "triton", "cuda", "all"])
    p.add_argument("--seed", type=int, default=0, help="campaign seed (each round derives its own)")
    p.add_argument("--backends", nargs="*", default=None, help="only these backends of the family")
    p.add_argument("--round-examples", type=int, default=20, help="examples per Hypothesis round")
    p.add_argument("--no-database", action="store_true", help="do not read or write fuzz/hypothesis-db")
    p.add_argument("--json", default=None, help="write the campaign summary here")
    p.add_argument("--replay", nargs="*", default=None, metavar="FAILURE_JSON",
                   help="re-run recorded failures instead of fuzzing")
    p.add_argument("--replay-all", action="store_true", help="re-run every fuzz/failures/*.json")
    return p


def _setup_triton(families) -> None:
    """On a machine without a GPU the Triton kernels run under the interpreter and the CUDA
    kernels through their CPU emulator; both are chosen by environment variables read when
    linattn is imported, so they are set here, before it is."""
    import torch

    if torch.cuda.is_available():
        return
    if "triton" in families and "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"
    if "cuda" in families and "LINATTN_CUDA_EMULATE" not in os.environ:
        os.environ["LINATTN_CUDA_EMULATE"] = "1"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        raise SystemExit(f"--minutes must be > 0, got {args.minutes}")
    if args.examples is not None and args.examples <= 0:
        raise SystemExit(f"--examples must be > 0, got {args.examples}")
    families = ["torch", "triton", "cuda"] if args.family == "all" else [args.family]

    if args.replay is not None or args.replay_all:
        from pathlib import Path

        paths = [Path(p) for p in (args.replay or [])]
        if args.replay_all:
            paths += sorted((Path(__file__).parent / "failures").glob("*.json"))
        fams = {json.loads(p.read_text()).get("family", "torch") for p in paths}
        _setup_triton(fams)
        from .campaign import replay

        bad = 0
        for p in paths:
            ok, msg = replay(p)
            status = json.loads(p.read_text()).get("status", "open")
            print(f"{'PASS' if ok else 'FAIL'} [{status}] {p}: {msg.splitlines()[0] if ok else ''}")
            if not ok:
                print("   " + msg.replace("\n", "\n   "))
                bad += 1
        return 1 if bad else 0

    _setup_triton(families)
    from .campaign import Campaign

    minutes = args.minutes if (args.minutes is not None or args.examples is not None) else 10.0
    summary = {}
    failed = False
    for fam in families:
        c = Campaign(fam, seed=args.seed, minutes=minutes, examples=args.examples,
                     round_examples=args.round_examples, backends=args.backends,
                     use_database=not args.no_database)
        names = [b.name for b in c.backends]
        print(f"[fuzz] family {fam}: backends {names or 'none'}"
              + (f"; unavailable: {dict(c.missing)}" if c.missing else ""), flush=True)
        t0 = time.time()
        stats = c.run()
        summary[fam] = dict(stats.as_dict(), backends=names, unavailable=dict(c.missing), seed=args.seed,
                            minutes_budget=minutes, examples_budget=args.examples,
                            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)))
        failed |= bool(stats.failures or stats.errors)
    _print_summary(summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if failed else 0


def _print_summary(summary: dict) -> None:
    print("\n== fuzz summary ==")
    print(f"{'family':8s} {'backend':18s} {'examples':>9s} {'skipped':>8s} {'worst err/band':>15s}  worst case")
    for fam, s in summary.items():
        if not s["backends"]:
            print(f"{fam:8s} {'-':18s} {'-':>9s} {'-':>8s} {'-':>15s}  unavailable: {s['unavailable']}")
        for b in s["backends"]:
            w = s["worst"].get(b)
            print(f"{fam:8s} {b:18s} {s['examples'].get(b, 0):9d} {s['skipped'].get(b, 0):8d} "
                  f"{(w[0] if w else float('nan')):15.3g}  {(w[1] + ':' + w[2] + ' ' + w[3]) if w else ''}")
        print(f"{fam:8s} total {s['total_examples']} examples in {s['seconds'] / 60:.1f} min, "
              f"{s['overflow_reported']} float16 overflows reported, "
              f"{len(s['failures'])} failures, {len(s['errors'])} errors")
        for fid, n in s.get("known", {}).items():
            print(f"    known issue {fid}: matched {n} examples (fuzz/failures/{fid}.json)")
        for f in s["failures"]:
            print(f"    failure: {f}")


if __name__ == "__main__":
    sys.exit(main())
