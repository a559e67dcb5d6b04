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
        ("slopes: NaN / +Inf / negative", _raised(call("slopes NaN"))),
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


def main() -> int:
    H = _suite()
    names = H.NAMES
    table = {n: rows(H, n) for n in names}
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
    return 1 if silent else 0


if __name__ == "__main__":
    sys.exit(main())
