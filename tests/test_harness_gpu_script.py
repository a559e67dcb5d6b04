"""gpu/harness_gpu.py's planning and drawing, without a GPU (the script itself runs on one).

``--selftest`` draws every (backend, property, dtype) cell's problems in all phases at the
sizes the GPU run uses and checks each is a valid Problem its backend declares it serves,
that the worker plan covers every cell exactly once and that the long-N list stays at
N >= 16384. Run in a subprocess: the script sets environment defaults at import.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_harness_gpu_selftest(device):
    env = dict(os.environ, HARNESS_DEVICE=device, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "gpu", "harness_gpu.py"), "--selftest"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 problems" in r.stdout.splitlines()[-1]


def test_harness_gpu_cpu_run_cells_repros_fails(tmp_path):
    """A short CPU run (the Triton interpreter) of two selected cells: only they are run, the
    repro is its cell's first problem, and a broken cell keeps going until HARNESS_MAX_FAILS
    failures, every one recorded. (~80 s on a loaded 2-core machine.) Needs Triton (the
    tox env ``triton`` has it; ``py`` does not)."""
    pytest.importorskip("triton")
    import json

    broken = "triton/forward/float16"
    env = dict(os.environ, PYTHONPATH=ROOT, OUT=str(tmp_path), HARNESS_DEVICE="cpu", TRITON_INTERPRET="1",
               LINATTN_CUDA_EMULATE="1", OMP_NUM_THREADS="1", HARNESS_WORKERS="2", HARNESS_BUDGET_S="75",
               HARNESS_MAX_FAILS="2", HARNESS_TEST_BREAK=broken, HARNESS_LONG_N="0",
               HARNESS_CELLS=f"triton/backward/float16,{broken}")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "gpu", "harness_gpu.py")], capture_output=True,
                       text=True, env=env, timeout=300)
    out = r.stdout + r.stderr
    d = json.load(open(tmp_path / "harness_gpu.json"))
    cells = {f"{c['backend']}/{c['property']}/{c['dtype']}": c for c in d["cells"]}
    assert set(cells) == {"triton/backward/float16", broken}, out
    b = cells[broken]
    assert b["status"] == "FAIL" and b["fails"] == 2 and len(b["failures"]) == 2, out
    assert b["failures"][0]["problem"] != b["failures"][1]["problem"], out
    assert r.returncode == 1, out  # a FAIL cell
    first = {}
    for name in sorted(os.listdir(tmp_path / "harness_parts")):
        if name.endswith(".jsonl"):
            for line in open(tmp_path / "harness_parts" / name):
                e = json.loads(line)
                if e["ev"] == "start":
                    first.setdefault("/".join(e["cell"]), e["problem"])
    assert "seed=150573592" in first["triton/backward/float16"], first  # run 10's repro, shrunk for the CPU
    assert cells["triton/backward/float16"]["run"] >= 1, out


def test_harness_gpu_bad_cells():
    env = dict(os.environ, PYTHONPATH=ROOT, HARNESS_DEVICE="cpu", HARNESS_CELLS="triton/backward/fp16")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "gpu", "harness_gpu.py")], capture_output=True,
                       text=True, env=env, timeout=200)
    assert r.returncode == 2 and "dtype must be one of" in r.stdout and "'fp16'" in r.stdout, r.stdout + r.stderr
