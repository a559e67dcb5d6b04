"""Print the hostile-input table (docs/results-fuzz.md): every class of hostile input, the
behaviour observed on every backend that runs here, none silent.

    python -m fuzz.hostile_table                       # the backends that run on this CPU
    TRITON_INTERPRET=1 LINATTN_CUDA_EMULATE=1 python -m fuzz.hostile_table   # + triton, cuda

Each cell is *observed*: the representative call is made on that backend and the cell
shows the exception and the start of its message, or the outcome of the check that the
answer is right (the checks are the ones of tests/test_hostile_inputs.py).
"""
from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _suite():
    spec = importlib.util.spec_from_file_location("hostile_suite", ROOT / "tests" / "test_hostile_inputs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_CURRENT = [""]  # the backend whose row is being made: its name is masked in messages


def _raised(fn) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0].replace(f"'{_CURRENT[0]}'", "'<name>'")
        return f"{type(e).__name__}: “{msg[:52]}…”"
    return "**no error (silent!)**"


def _raised_each(fns) -> str:
    """Every call must raise; the cell shows the first message and the count."""
    cells = [_raised(f) for f in fns]
    silent = [c for c in cells if "silent" in c]
    if silent:
        return f"**no error (silent!)** in {len(silent)} of {len(cells)}"
    kinds = {c.split(":", 1)[0] for c in cells}
    return cells[0] + (f" ({len(cells)}/{len(cells)})" if len(kinds) == 1 else f" (types: {sorted(kinds)})")


def _passes(fn, ok: str) -> str:
    import pytest

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except pytest.skip.Exception as e:
        return "n/a: " + str(e).split(" ", 1)[-1][:40]
    except (Exception, pytest.fail.Exception) as e:  # noqa: BLE001  (pytest's Failed is a BaseException)
        first = (str(e).splitlines() or [""])[0]
        return f"**FAIL** {type(e).__name__}: {first[:60]}"
    return ok


def rows(H, backend: str):
    import torch

    b = H.linattn.get_backend(backend)
    _CURRENT[0] = backend
    bc = lambda name: H.BAD_CALLS[name]  # noqa: E731

    def call(name):
        make, _, _ = bc(name)
        q, k, v, kw = make()
        return lambda: H.linear_attention(q, k, v, backend=backend, **kw)

    def varlen(name):
        kw = dict(H.BAD_VARLEN[name][0])
        kw.setdefault("causal", True)
        return lambda: H.linear_attention(H._Q1, H._K1, H._V1, backend=backend, **kw)

    kinds = H._kinds(b)
    out = [
        ("rank: q of rank 3", _raised(call("q rank 3"))),
        ("shape: batch of k differs", _raised(call("batch mismatch"))),
        ("shape: D of k differs", _raised(call("D mismatch"))),
        ("head ratio: Hkv=3 with H=4", _raised(call("Hkv does not divide H"))),
        ("dtype: int64 q", _raised(call("int q"))),
        ("dtype: bool q", _raised(call("bool q"))),
        ("dtype: complex q, k, v", _raised(call("complex q,k,v"))),
        ("dtype: mixed (f64 q, f32 k)", _raised(call("mixed dtypes"))),
        ("device: k on meta, q on cpu", _raised(call("mixed devices"))),
        ("device: all on meta", _raised(lambda: H.linear_attention(H._meta(1, 4, 9, 5), H._meta(1, 2, 9, 5),
                                                                    H._meta(1, 2, 9, 3), backend=backend))),
        ("mask: [6, 7] for N=M=7", _raised(call("mask wrong N"))),
        ("mask: int32", _raised(call("mask int"))),
        ("slopes: NaN / +Inf / negative", _raised_each([call("slopes NaN"), call("slopes +Inf"), call("slopes negative")])),
        ("slopes: wrong length", _raised(call("slopes wrong length"))),
        ("state: wrong shape", _raised(call("state wrong shape"))),
        ("state: int32", _raised(call("state int"))),
        ("state: on meta", _raised(call("state on meta"))),
        ("cu_seqlens: unsorted", _raised(varlen("cu_seqlens unsorted"))),
        ("cu_seqlens: past N", _raised(varlen("cu_seqlens past N"))),
        ("cu_seqlens: float32", _raised(varlen("cu_seqlens float"))),
        ("cu_seqlens: on meta", _raised(varlen("cu_seqlens on meta"))),
        ("options: scale=NaN", _raised(call("scale NaN"))),
        ("mask kind the backend lacks", _passes(lambda: H.test_unservable_request_names_capable_backends(backend),
                                                "UnsupportedRequest naming the capable backends ✓")),
        ("zero-size B, H, N, M, D, E (+grads)", _passes(
            lambda: [H.test_zero_size_exact_answer_and_gradients(backend, d) for d in H.ZERO_DIMS],
            f"exact: empty / zeros, exact grads ✓ ({len(kinds)} kinds)")),
    ]
    # NaN / Inf: every input, value and placement, bracketed between the two oracles
    n = 0

    def nan_all():
        nonlocal n
        for kind in kinds:
            for target in H.NAN_TARGETS:
                for value in ("nan", "inf", "-inf"):
                    for where in ("first", "last", "mid"):
                        if target == "mask" and not kind.startswith("dense"):
                            continue
                        if target == "initial_state" and kind not in ("causal", "decay"):
                            continue
                        H.test_nan_inf_propagation_is_bracketed(backend, kind, target, value, where)
                        n += 1
        H.test_nan_pins_exactly_where_oracles_agree(backend)

    res = _passes(nan_all, "")
    out.append(("NaN / ±Inf in q, k, v, mask, state, do", res or f"structural ⊆ got ⊆ reference ✓ ({n} cases)"))
    if torch.float16 in b.dtypes:
        out.append(("float16 overflow, finite inputs", _passes(
            lambda: (H.test_float16_overflow_warns_with_advice(backend), H.test_float16_gradient_overflow_warns(backend),
                     H.test_float16_no_warning_when_fine_or_when_inputs_are_bad(backend)),
            "Float16OverflowWarning + advice (fwd and bwd) ✓")))
    else:
        out.append(("float16 overflow, finite inputs", "n/a (no float16)"))
    out.append(("non-contiguous / stride-0 / permuted", _passes(
        lambda: [H.test_hostile_layouts_give_the_contiguous_answer(backend, kd) for kd in kinds],
        "= float64 reference (values + grads) ✓")))
    return out


def decode_rows(H, backend: str):
    """decode_step, the other public entry point with backends (torch, triton)."""
    from linattn import decode_step

    _CURRENT[0] = backend

    def call(name):
        make, _, _ = H.BAD_DECODE[name]
        q, k, v, s, kw = make()
        kw = dict(kw)
        kw.setdefault("backend", backend)
        return lambda: decode_step(q, k, v, s, **kw)

    def slopes(bad):
        s = H.torch.tensor([0.1, bad, 0.1, 0.1])
        return lambda: decode_step(H._q, H._k, H._v, H._S, decay=s, backend=backend)

    def nan_all():
        n = 0
        for target in ("q", "k", "v", "state"):
            for value in ("nan", "inf", "-inf"):
                H.test_decode_step_nan_inf_propagate_like_the_reference(backend, target, value)
                n += 1
        return n

    n_nan = [0]

    def nan_count():
        n_nan[0] = nan_all()

    return [
        ("rank: q of rank 2", _raised(call("q rank 2"))),
        ("shape: two tokens", _raised(call("q two tokens"))),
        ("shape: D of k differs", _raised(call("D mismatch"))),
        ("head ratio: Hkv=3 with H=4", _raised(call("Hkv does not divide H"))),
        ("dtype: int64 q", _raised(call("q int"))),
        ("dtype: complex q", _raised(call("q complex"))),
        ("dtype: mixed (f32 q, f64 k)", _raised(call("mixed dtypes"))),
        ("state: wrong shape", _raised(call("state wrong shape"))),
        ("state: float16 / int64 / a list", _raised_each([call("state half"), call("state int"), call("state a list")])),
        ("device: state on meta", _raised(call("state on meta"))),
        ("slopes: NaN / +Inf / -Inf / negative", _raised_each([slopes(H.NAN), slopes(H.INF), slopes(-H.INF), slopes(-0.5)])),
        ("slopes: wrong length / int32", _raised_each([call("slopes wrong length"), call("slopes int")])),
        ("options: scale=NaN / backend / inplace", _raised_each([call("scale NaN"), call("unknown backend"),
                                                                 call("inplace not bool")])),
        ("zero-size B, H, D, E", _passes(lambda: [H.test_decode_step_zero_size(backend, d) for d in H.DECODE_ZERO],
                                         "exact: empty / zeros ✓ (4 dims)")),
        ("NaN / ±Inf in q, k, v, state", (lambda r: r or f"= reference's non-finite set ✓ ({n_nan[0]} cases)")(
            _passes(nan_count, ""))),
        ("float16 overflow, finite inputs", _passes(lambda: H.test_decode_step_float16_overflow_warns_with_advice(backend),
                                                    "Float16OverflowWarning + advice ✓")),
        ("non-contiguous / stride-0 / permuted", _passes(lambda: H.test_decode_step_hostile_layouts(backend),
                                                         "= contiguous answer ✓")),
    ]


def _print_table(table: dict, names: list) -> list:
    classes = [c for c, _ in table[names[0]]]
    print("| hostile input | behaviour observed | backends |")
    print("|---|---|---|")
    for i, c in enumerate(classes):
        groups: dict = {}
        for n in names:  # the same behaviour up to the backend's own name in its message
            groups.setdefault(table[n][i][1].replace(f"'{n}'", "'<name>'"), []).append(n)
        for cell, members in groups.items():
            who = f"all {len(names)}" if len(members) == len(names) else ", ".join(f"`{m}`" for m in members)
            print(f"| {c} | {cell} | {who} |")
    silent = [(n, c) for n in names for c, cell in table[n] if "silent" in cell or "FAIL" in cell]
    print(f"\n{len(classes)} classes x {len(names)} backends; silent or failing cells: {silent or 'none'}")
    return silent


def main() -> int:
    H = _suite()
    names = H.NAMES
    print(f"linear_attention: backends {names}\n")
    silent = _print_table({n: rows(H, n) for n in names}, names)
    print(f"\ndecode_step: backends {H.DECODE_BACKENDS}\n")
    silent += _print_table({n: decode_rows(H, n) for n in H.DECODE_BACKENDS}, H.DECODE_BACKENDS)
    print("\nGPU only (not observable here; gpu/fuzz_gpu.py, results in docs/results-fuzz.md):\n")
    print("| hostile input | check | backends |")
    print("|---|---|---|")
    for c, chk, who in GPU_ONLY:
        print(f"| {c} | {chk} | {who} |")
    return 1 if silent else 0


#: The classes only a GPU can show: out-of-bounds and racy memory accesses on awkward shapes
#: (the interpreter and the emulator index with Python/C++ bounds of their own), 64-bit
#: offsets past 2^31 elements (too large for this CPU), and what the real extension declines.
GPU_ONLY = [
    ("awkward shapes: out-of-bounds / uninitialised reads", "compute-sanitizer memcheck, fwd + bwd, 7 problems",
     "`triton`, `triton_dense`, `cuda`"),
    ("awkward shapes: shared-memory races", "compute-sanitizer racecheck, fwd + bwd", "`cuda`"),
    ("element count past 2^31 (64-bit offsets)", "rows of o, dq, dk, dv against float64 sums",
     "`triton` (chunk), `triton_dense`, `cuda`"),
    ("float32 on a real GPU", "served (3xTF32, FMAs for short contractions; 15/15 cases and every harness "
     "cell inside the bands on an H200); LINATTN_CUDA_FP32=0 declines it with UnsupportedRequest naming the "
     "capable backends", "`cuda`"),
]


if __name__ == "__main__":
    sys.exit(main())
