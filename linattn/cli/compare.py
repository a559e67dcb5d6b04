"""``linattn compare``: the seed's table, measured on this machine.

    linattn compare                                   # dense 0/1 mask, B=1 H=4 N=1024 D=64, float32
    linattn compare --mask decay --N 8192 --oracle chunked --json results.json
    python -m linattn compare --mask dense --N 4096 --backend reference --backend blocked

For every registered backend (unavailable ones, and those that cannot serve the request,
are listed with the reason), it reports for the forward pass and for forward+backward:

* **error**: max |x - x₆₄| / max |x₆₄| against the float64 oracle on the same inputs
  (``--oracle``, default ``reference``; for a long sequence the N×N float64 reference may
  not fit, and a linear-time backend in float64 serves as the oracle instead). For
  forward+backward it is the largest of those over the gradients of q, k, v (and of the
  mask / slopes when they require grad).
* **time**: median wall time of ``--repeats`` runs after one untimed run; forward runs
  under ``torch.no_grad()`` (inference), forward+backward builds the graph and calls
  ``torch.autograd.grad`` with a fixed random cotangent.
* **peak memory**: the most memory the pass holds on top of its inputs.
* time and memory **relative to** ``reference`` (×ref).

How peak memory is measured
---------------------------
Each (backend, pass) runs in a **fresh subprocess**, which builds the inputs and the
cotangent, runs the pass once untimed (warm-up: lazy imports, thread pools, scratch
buffers, kernel compilation), then measures a second run:

* on CUDA, ``torch.cuda.max_memory_allocated() - memory_allocated()`` after
  ``reset_peak_memory_stats()`` (the caching allocator's own, exact accounting);
* on CPU torch keeps no allocator statistics, so the operating system's are used: the
  peak resident set is reset (``/proc/self/clear_refs``, Linux >= 4.0), the current RSS
  read as the baseline, the pass run, and the peak (``VmHWM``) read again. The
  difference is the most memory the pass held at once on top of its inputs, as the
  kernel saw it, page-exact. Two things keep freed memory from hiding in the baseline:
  the fresh process (nothing cached from another backend) and ``MALLOC_MMAP_THRESHOLD_``
  set for the workers, which makes glibc map every buffer over 128 KiB on its own and
  unmap it on free, so RSS follows the live tensors (and ``malloc_trim(0)`` before the
  baseline returns free heap pages, which could otherwise be released mid-run and
  offset real growth). Where ``clear_refs`` is not
  available, the growth of ``getrusage().ru_maxrss`` over a run after a tiny warm-up is
  reported instead (the JSON says which method was used). torch.profiler's memory
  events were not used: their peak needs a replay of every alloc/free and misses
  allocations made outside torch's allocator.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

DTYPES = ("float16", "bfloat16", "float32", "float64")
MASKS = ("dense", "causal", "decay", "none")


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="error, time and peak memory of every backend relative to the reference",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--mask", choices=MASKS, default="dense",
                   help="dense: the seed's random 0/1 mask [1, 1, N, N]; causal; decay: canonical "
                        "TransNormerLLM slopes; none (default: dense)")
    p.add_argument("--B", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--H", type=int, default=4, help="heads (default 4)")
    p.add_argument("--N", type=int, default=1024, help="sequence length (default 1024)")
    p.add_argument("--D", type=int, default=64, help="head dim of q, k and v (default 64)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="default float32")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per pass; the median is shown (default 3)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu)")
    p.add_argument("--backend", action="append", default=None, metavar="NAME",
                   help="only these backends (repeatable); reference is always measured for ×ref")
    p.add_argument("--oracle", default="reference", metavar="NAME",
                   help="backend evaluated in float64 as the error oracle (default reference)")
    p.add_argument("--no-error", action="store_true", help="skip the float64 oracle and the error column")
    p.add_argument("--no-mask-grad", action="store_true",
                   help="the dense mask does not require grad (default: it does, as in the seed)")
    p.add_argument("--slopes-grad", action="store_true", help="the decay slopes require grad")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per backend and pass (default 1800)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--worker", default=None, help=argparse_suppress())
    p.set_defaults(func=run)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


# -- the measurement, inside one fresh process ----------------------------------------


def _inputs(spec, dtype=None):
    """The problem of ``spec``, deterministic in its seed, each tensor built in its dtype."""
    import torch

    import linattn

    dt = getattr(torch, dtype or spec["dtype"])
    dev = spec["device"]
    B, H, N, D = spec["B"], spec["H"], spec["N"], spec["D"]
    g = torch.Generator(device="cpu").manual_seed(spec.get("seed", 0))

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=getattr(torch, spec["dtype"])).to(dev).to(dt)

    q, k, v = randn(B, H, N, D), randn(B, H, N, D), randn(B, H, N, D)
    do = randn(B, H, N, D)
    mask = decay = None
    causal = False
    if spec["mask"] == "dense":
        mask = torch.randint(0, 2, (1, 1, N, N), generator=g).to(dev).to(dt)
    elif spec["mask"] == "causal":
        causal = True
    elif spec["mask"] == "decay":
        decay = linattn.tnl_slopes(H).to(dev).to(dt)
    leaves = [q, k, v]
    if mask is not None and spec["mask_grad"]:
        leaves.append(mask)
    if decay is not None and spec["slopes_grad"]:
        leaves.append(decay)
    return q, k, v, mask, causal, decay, do, leaves


def _rss_bytes():
    """(current, peak) resident set of this process in bytes, from /proc/self/status."""
    with open("/proc/self/status") as f:
        text = f.read()
    vals = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            vals[key] = int(rest.split()[0]) * 1024  # kB
    return vals["VmRSS"], vals["VmHWM"]


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give glibc's free heap memory back to the OS (no-op where there is no glibc)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _maxrss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def _worker(spec) -> dict:
    """Run one (backend, pass) and return its time, peak memory and (optionally) outputs."""
    import torch

    import linattn

    name, mode = spec["backend"], spec["mode"]
    dtype = "float64" if spec.get("oracle") else spec["dtype"]
    q, k, v, mask, causal, decay, do, leaves = _inputs(spec, dtype)
    cuda = spec["device"].startswith("cuda")

    def call(q, k, v, mask, decay):
        return linattn.linear_attention(q, k, v, mask, causal=causal, decay=decay, backend=name)

    def once():
        if mode == "fwd":
            with torch.no_grad():
                return call(q, k, v, mask, decay), None
        for t in leaves:
            t.requires_grad_(True)
        o = call(q, k, v, mask, decay)
        grads = torch.autograd.grad(o, leaves, do)
        for t in leaves:
            t.requires_grad_(False)
        return o.detach(), grads

    if cuda:
        once()  # warm-up: kernels compiled, allocator primed; then the peak counter is reset
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        o, grads = once()
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - base
        how = "cuda.max_memory_allocated"
    elif _reset_peak_rss():
        once()  # warm-up: one-time costs (lazy imports, thread pools, scratch buffers)
        import gc

        gc.collect()
        _malloc_trim()  # free heap pages leave the baseline, so later frees cannot offset growth
        _reset_peak_rss()
        base, _ = _rss_bytes()
        t0 = time.perf_counter()
        o, grads = once()
        first = time.perf_counter() - t0
        peak = _rss_bytes()[1] - base
        how = "VmHWM - VmRSS (peak reset via clear_refs)"
    else:
        # no way to reset the peak: warm up on a tiny problem only, then ru_maxrss growth
        n0 = min(8, q.shape[2])
        small = [t[..., :n0, :].detach().clone().requires_grad_() for t in (q, k, v)]
        m0 = None if mask is None else mask[..., :n0, :n0].contiguous()
        o0 = call(*small, m0, decay)
        o0.sum().backward()
        del small, o0
        base = _maxrss_bytes()
        t0 = time.perf_counter()
        o, grads = once()
        first = time.perf_counter() - t0
        peak = _maxrss_bytes() - base
        how = "ru_maxrss growth"

    times = []
    if not spec.get("oracle"):
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            once()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    out = {"time_s": statistics.median(times) if times else first, "first_s": first,
           "peak_bytes": max(int(peak), 0), "memory_measure": how}
    if spec.get("save"):
        torch.save({"o": o.cpu(), "grads": [g.cpu() for g in grads] if grads else []}, spec["save"])
    return out


def _run_worker(spec, timeout) -> dict:
    cmd = [sys.executable, "-m", "linattn", "compare", "--worker", json.dumps(spec)]
    env = dict(os.environ)
    # A fixed mmap threshold turns off glibc's dynamic one, so every large buffer is
    # mmap'ed and given back on free: the resident set then follows the live tensors.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        msg = lines[-1] if lines else f"exit status {proc.returncode}"
        if proc.returncode < 0:
            msg = f"killed by signal {-proc.returncode} (out of memory?)"
        return {"error": msg[:300]}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": "no result from the worker"}


# -- the table ------------------------------------------------------------------------


def _rel_max_error(x, x64) -> float:
    import torch

    denom = float(x64.abs().max()) if x64.numel() else 0.0
    err = float((x.double() - x64.double()).abs().max()) if x64.numel() else 0.0
    return err / denom if denom > 0 else err


def _machine(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _fmt(x, kind):
    if x is None:
        return "-"
    if kind == "err":
        return f"{x:.1e}"
    if kind == "time":
        return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"
    if kind == "ratio":
        return f"{x:.2f}x"
    return _fmt_bytes(x)


class _Progress:
    """rich's progress bar when installed, plain lines otherwise."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        try:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                               TimeElapsedColumn())
            self._p.start()
            self._task = self._p.add_task("compare", total=total)
        except ImportError:
            self._p = None

    def step(self, what: str):
        if self._p is not None:
            self._p.update(self._task, description=what)
        else:
            print(f"[{self.done + 1}/{self.total}] {what} ...", flush=True)

    def advance(self):
        self.done += 1
        if self._p is not None:
            self._p.advance(self._task)

    def close(self):
        if self._p is not None:
            self._p.stop()


def _request(spec):
    import torch

    from .._registry import Request

    kind = spec["mask"]
    return Request(
        device=spec["device"].split(":")[0], dtype=getattr(torch, spec["dtype"]),
        B=spec["B"], H=spec["H"], Hkv=spec["H"], N=spec["N"], M=spec["N"], D=spec["D"], E=spec["D"],
        mask_kind=kind, mask_shape=(1, 1, spec["N"], spec["N"]) if kind == "dense" else None,
        grad_mask=kind == "dense" and spec["mask_grad"], grad_slopes=kind == "decay" and spec["slopes_grad"],
    )


def run(args) -> int:
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))), flush=True)
        return 0
    import torch

    from .._registry import list_backends

    for name in ("B", "H", "N", "D", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = dict(mask=args.mask, B=args.B, H=args.H, N=args.N, D=args.D, dtype=args.dtype, device=device,
                repeats=args.repeats, mask_grad=not args.no_mask_grad, slopes_grad=args.slopes_grad, seed=0)
    req = _request(spec)

    chosen, skipped = [], []
    for b in list_backends():
        if args.backend and b.name not in args.backend and b.name != "reference":
            continue
        why = b.unsupported(req)
        (skipped if why else chosen).append((b.name, why))
    names = [n for n, _ in chosen]

    tmp = tempfile.mkdtemp(prefix="linattn-compare-")
    steps = len(names) * 2 + (0 if args.no_error else 1)
    bar = _Progress(steps)
    rows, oracle, oracle_error = {}, None, None
    try:
        if not args.no_error:
            bar.step(f"oracle: {args.oracle} in float64")
            path = os.path.join(tmp, "oracle.pt")
            res = _run_worker(dict(spec, backend=args.oracle, mode="fwdbwd", oracle=True, save=path), args.timeout)
            oracle = torch.load(path) if "error" not in res else None
            oracle_error = res.get("error")
            bar.advance()
        for name in names:
            row = rows.setdefault(name, {})
            for mode in ("fwd", "fwdbwd"):
                bar.step(f"{name}: {'forward' if mode == 'fwd' else 'forward+backward'}")
                path = os.path.join(tmp, f"{name}.pt") if (mode == "fwdbwd" and oracle is not None) else None
                res = _run_worker(dict(spec, backend=name, mode=mode, save=path), args.timeout)
                row[mode] = res
                if path and "error" not in res:
                    got = torch.load(path)
                    row["err_fwd"] = _rel_max_error(got["o"], oracle["o"])
                    row["err_bwd"] = max((_rel_max_error(g, g64) for g, g64 in zip(got["grads"], oracle["grads"])),
                                         default=None)
                    os.remove(path)
                bar.advance()
    finally:
        bar.close()

    ref = rows.get("reference", {})

    def ratio(name, mode, key):
        a, b = rows[name].get(mode, {}).get(key), ref.get(mode, {}).get(key)
        return None if a is None or not b else a / b

    table = []
    for name in names:
        r = rows[name]
        table.append({
            "backend": name,
            "err_fwd": r.get("err_fwd"), "time_fwd_s": r["fwd"].get("time_s"), "time_fwd_x": ratio(name, "fwd", "time_s"),
            "mem_fwd_bytes": r["fwd"].get("peak_bytes"), "mem_fwd_x": ratio(name, "fwd", "peak_bytes"),
            "err_bwd": r.get("err_bwd"), "time_fwdbwd_s": r["fwdbwd"].get("time_s"),
            "time_fwdbwd_x": ratio(name, "fwdbwd", "time_s"),
            "mem_fwdbwd_bytes": r["fwdbwd"].get("peak_bytes"), "mem_fwdbwd_x": ratio(name, "fwdbwd", "peak_bytes"),
            "failed": "; ".join(f"{m}: {r[m]['error']}" for m in ("fwd", "fwdbwd") if "error" in r[m]) or None,
        })

    shape = (f"mask={args.mask} B={args.B} H={args.H} N={args.N} D={args.D} {args.dtype} on {device}"
             + (", mask requires grad" if args.mask == "dense" and spec["mask_grad"] else "")
             + (", slopes require grad" if args.mask == "decay" and spec["slopes_grad"] else ""))
    _print_table(table, skipped, shape, args, oracle_error if not args.no_error else None)
    if args.json:
        doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(device), "problem": spec,
               "oracle": None if args.no_error else args.oracle, "rows": table,
               "skipped": [{"backend": n, "reason": w} for n, w in skipped]}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.json}")
    return 1 if any(r["failed"] for r in table) else 0


def _print_table(table, skipped, shape, args, oracle_error):
    head = ["backend", "fwd err", "fwd time", "×ref", "fwd peak", "×ref",
            "f+b err", "f+b time", "×ref", "f+b peak", "×ref"]
    body = []
    for r in table:
        body.append([
            r["backend"], _fmt(r["err_fwd"], "err"), _fmt(r["time_fwd_s"], "time"), _fmt(r["time_fwd_x"], "ratio"),
            _fmt(r["mem_fwd_bytes"], "mem"), _fmt(r["mem_fwd_x"], "ratio"), _fmt(r["err_bwd"], "err"),
            _fmt(r["time_fwdbwd_s"], "time"), _fmt(r["time_fwdbwd_x"], "ratio"),
            _fmt(r["mem_fwdbwd_bytes"], "mem"), _fmt(r["mem_fwdbwd_x"], "ratio"),
        ])
    title = f"linattn compare: {shape}; error vs {args.oracle} in float64; median of {args.repeats}"
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for h in head:
            t.add_column(h, justify="left" if h == "backend" else "right")
        for row in body:
            t.add_row(*row)
        console = Console()
        if not console.is_terminal:
            console = Console(width=max(console.width, 150))
        console.print(t)
    except ImportError:
        print(title)
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        for row in [head] + body:
            print("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))))
    if oracle_error:
        print(f"oracle {args.oracle} failed: {oracle_error} (no error column; try --oracle chunked or --no-error)")
    for r in table:
        if r["failed"]:
            print(f"{r['backend']} failed: {r['failed']}")
    for name, why in skipped:
        print(f"skipped {name}: {why}")
