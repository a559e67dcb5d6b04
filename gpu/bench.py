#!/usr/bin/env python3
"""Run the benchmark suite on a GPU machine; write the JSON and a chart into $OUT.

    OUT=/tmp/out python3 gpu/bench.py            # ~120 s: the "quick" shape profile
    LINATTN_BENCH_ALLOW_CPU=1 LINATTN_BENCH_SHAPES=smoke python3 gpu/bench.py   # dry run, no GPU
    LINATTN_BENCH_SHAPES=gpu LINATTN_BENCH_BUDGET=540 python3 gpu/bench.py   # the full registry

What it does, each step guarded so one failure is reported and the rest still runs:

1. makes fla and lightning_attn importable (wheels in .whl/ installed offline into
   /tmp/site unless gpu/run_all.sh did it already);
2. runs ``pytest benchmarks --benchmark-only`` on the chosen profile with a deadline a
   little inside the budget (cases past it are skipped, so the JSON is always written),
   measured matmul/copy rooflines, ``--benchmark-json=$OUT/bench.json``;
3. draws ``$OUT/bench.png`` (time, peak memory and roofline fraction; one file, since
   the device tool brings back at most 8);
4. prints the failures (from a JUnit report), then a compact table: median time,
   TFLOP/s, roofline fraction and bound, peak memory, per shape, pass and target.

Files under $OUT: bench.json, bench.png. The pytest log stays in /tmp/linattn-bench.log
and its tail is printed when pytest fails.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("OUT") or "/tmp/linattn-out")
BUDGET = float(os.environ.get("LINATTN_BENCH_BUDGET", "120"))
PROFILE = os.environ.get("LINATTN_BENCH_SHAPES", "quick")
LOG = Path("/tmp/linattn-bench.log")
JUNIT = Path("/tmp/linattn-bench-junit.xml")
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def env_with_site() -> dict:
    env = dict(os.environ)
    paths = [str(ROOT)]
    if Path("/tmp/site").is_dir():
        paths.append("/tmp/site")
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for part in paths for p in part.split(os.pathsep) if p))
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ensure_baselines() -> None:
    wheels = sorted(glob.glob(str(ROOT / ".whl" / "*.whl")))
    if not wheels or Path("/tmp/site").is_dir():
        return
    say(f"installing {len(wheels)} wheel(s) offline into /tmp/site")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
             "--no-cache-dir", "--upgrade", "--target", "/tmp/site", *wheels],
            check=True, timeout=60,
        )
    except Exception as e:  # the baselines are optional: report and go on
        say(f"wheel install failed ({type(e).__name__}: {e}); baselines will be skipped")


def run_suite(env: dict) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    json_path = OUT / "bench.json"
    # leave ~25 s for startup, plotting and the table
    deadline = max(BUDGET - 25 - (time.monotonic() - T0), 10)
    cmd = [
        sys.executable, "-m", "pytest", str(ROOT / "benchmarks"), "--benchmark-only",
        "-q", "-p", "no:cacheprovider", "-o", "addopts=--strict-markers",
        f"--linattn-shapes={PROFILE}", f"--linattn-deadline={deadline:.0f}",
        f"--benchmark-json={json_path}", f"--junitxml={JUNIT}",
        "--benchmark-columns=median,min,rounds", "--benchmark-sort=name", "-rfE",
    ]
    say("running: " + " ".join(cmd[1:]))
    try:
        with open(LOG, "w") as log:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=deadline + 40)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = 124
        say("pytest overran its deadline and was killed")
    say(f"pytest exited with {rc}")
    if rc not in (0, 1):  # 1 = some benchmark failed, reported below
        print(LOG.read_text()[-4000:] if LOG.exists() else "(no log)")
    return rc


def plot(env: dict) -> None:
    json_path = OUT / "bench.json"
    if not json_path.exists():
        say("no bench.json: nothing to plot")
        return
    try:
        out = subprocess.run(
            [sys.executable, "-m", "linattn", "plot", str(json_path), "--out", str(OUT), "--combined"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
        )
        say(f"plot: {out.stdout.strip() or out.stderr.strip()[-500:]}")
    except Exception as e:
        say(f"plot failed: {type(e).__name__}: {e}")


def failures() -> list:
    if not JUNIT.exists():
        return []
    out = []
    try:
        for case in ET.parse(JUNIT).getroot().iter("testcase"):
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    msg = (el.get("message") or "").strip().splitlines()
                    out.append((case.get("name"), tag, msg[0][:160] if msg else ""))
    except ET.ParseError as e:
        out.append(("junit", "error", f"unreadable JUnit report: {e}"))
    return out


def table() -> None:
    path = OUT / "bench.json"
    fails = failures()
    if fails:
        print(f"\n{len(fails)} benchmark(s) failed:")
        for name, tag, msg in fails:
            print(f"  {tag:7s} {name}: {msg}")
    if not path.exists():
        print("\nno results (bench.json missing)")
        return
    data = json.loads(path.read_text())
    m = (data.get("machine_info") or {}).get("linattn") or {}
    rl = m.get("roofline") or {}
    print(f"\ndevice: {m.get('device_name')}  torch {m.get('torch')}  triton {m.get('triton')}  {m.get('date')}")
    if rl:
        peaks = ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s ({rl['flops_source'].get(k)})" for k, v in rl.get("flops", {}).items())
        bw = rl.get("bandwidth")
        print(f"roofline: {peaks}; bandwidth {bw / 1e12 if bw else float('nan'):.2f} TB/s ({rl.get('bandwidth_source')})")
    rows = []
    for b in data.get("benchmarks", []):
        e = b.get("extra_info") or {}
        if "shape" not in e:
            continue
        frac = e.get("roofline_fraction")
        mem = e.get("peak_mem_bytes")
        rows.append((
            e["shape"], e["pass"], e["backend"], b["stats"]["median"] * 1e3, e.get("tflops") or 0.0,
            "-" if frac is None else f"{frac:.2f}", (e.get("roofline_bound") or "-")[:3],
            "-" if mem is None else f"{mem / 2**20:.0f}",
        ))
    rows.sort()
    print(f"\n{'shape':44s} {'pass':7s} {'target':20s} {'ms':>9s} {'TFLOP/s':>8s} {'roof':>5s} {'bnd':>4s} {'MiB':>7s}")
    for r in rows:
        print(f"{r[0][:44]:44s} {r[1]:7s} {r[2][:20]:20s} {r[3]:9.3f} {r[4]:8.2f} {r[5]:>5s} {r[6]:>4s} {r[7]:>7s}")
    print(f"{len(rows)} timed, {len(fails)} failed; JSON {path}, chart {OUT / 'bench.png'}")


def main() -> int:
    try:
        import torch

        if torch.cuda.is_available():
            say(f"{torch.cuda.get_device_name()} torch {torch.__version__}, profile {PROFILE}, budget {BUDGET:.0f}s")
        elif os.environ.get("LINATTN_BENCH_ALLOW_CPU") == "1":  # dry run of this script without a GPU
            say(f"no CUDA device; dry run on the CPU, profile {PROFILE}")
        else:
            say("no CUDA device: this script is for a GPU machine (use `pytest benchmarks --benchmark-only` here)")
            return 1
    except Exception as e:
        say(f"torch unusable: {type(e).__name__}: {e}")
        return 1
    ensure_baselines()
    env = env_with_site()
    rc = run_suite(env)
    plot(env)
    table()
    return 0 if rc in (0, 1) else rc


if __name__ == "__main__":
    sys.exit(main())
