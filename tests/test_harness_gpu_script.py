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
