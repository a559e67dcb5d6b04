"""Build and load the CUDA extension on first use, or say why it cannot run here.

The sources in ``csrc/`` are compiled with ``torch.utils.cpp_extension.load`` (ninja) for
the compute capability of the GPU actually present (``-gencode arch=compute_XY,code=sm_XY``,
e.g. sm_90 on Hopper), at ``-O3`` without ``--use_fast_math`` (``expf`` in the decay factor
and the float32 sums stay IEEE-exact to the last ulp the math library gives). The build is
cached in ``$TORCH_EXTENSIONS_DIR/linattn_cuda_smXY`` or, when that is unset, in
``~/.cache/linattn/torch_extensions/<torch version>/linattn_cuda_smXY``; torch rebuilds it
when a source changes. The first call pays the compile (about a minute); later processes
load the cached library.

``unavailable()`` never builds anything and is cheap enough for every dispatch; it says
"torch built without CUDA", "no CUDA device", "nvcc not found" or "ninja not found", or
repeats the error of a build that failed in this process.
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Optional

import torch

__all__ = ["unavailable", "load", "CSRC", "SOURCES", "build_directory", "nvcc_path", "arch_flag"]

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("binding.cpp", "kernels_f32.cu", "kernels_f16.cu", "kernels_bf16.cu")

_lock = threading.Lock()
_modules: dict = {}  # extension name -> module
_loaded: dict = {}  # device index -> module (the fast path of load)
_build_error: Optional[str] = None
_nvcc: Optional[str] = "unset"
_ninja: Optional[bool] = None


def nvcc_path() -> Optional[str]:
    """The nvcc torch would use: $CUDA_HOME/bin/nvcc, else the one on PATH (None if none)."""
    global _nvcc
    if _nvcc == "unset":
        found = None
        for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
            if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
                found = os.path.join(home, "bin", "nvcc")
                break
        if found is None:
            found = shutil.which("nvcc")
        if found is None and os.path.isfile("/usr/local/cuda/bin/nvcc"):
            found = "/usr/local/cuda/bin/nvcc"
        _nvcc = found
    return _nvcc


def _ninja_found() -> bool:
    """Whether ninja runs; asked once per process. (torch's ``is_ninja_available`` starts a
    ``ninja --version`` subprocess, 2-4 ms: asked on every call, as before, it cost each
    forward two of them, which the GPU timing of run 6 counted as kernel time.)"""
    global _ninja
    if _ninja is None:
        from torch.utils.cpp_extension import is_ninja_available

        _ninja = bool(is_ninja_available())
    return _ninja


def unavailable() -> Optional[str]:
    """None when the extension can be built and run here; otherwise the reason."""
    if _loaded:  # built and loaded in this process: nothing left to ask
        return None
    if torch.version.cuda is None:
        return "torch built without CUDA (torch.version.cuda is None)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if nvcc_path() is None:
        return "nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
    if not _ninja_found():
        return "ninja not found (pip install ninja)"
    if _build_error is not None:
        return f"the extension failed to build: {_build_error}"
    return None


def arch_flag(device: torch.device) -> tuple[str, str]:
    """``("90", "-gencode=arch=compute_90,code=sm_90")`` for the GPU at ``device``."""
    major, minor = torch.cuda.get_device_capability(device)
    cc = f"{major}{minor}"
    return cc, f"-gencode=arch=compute_{cc},code=sm_{cc}"


def build_directory(name: str) -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        path = Path(root) / name
    else:
        tag = f"torch{torch.__version__}-cu{torch.version.cuda}".replace("+", "_")
        path = Path.home() / ".cache" / "linattn" / "torch_extensions" / tag / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(device: Optional[torch.device] = None, *, verbose: Optional[bool] = None):
    """The compiled extension for ``device``'s GPU, building it on first use.

    Raises :class:`linattn.BackendUnavailable` with the reason when it cannot be had.
    """
    global _build_error
    from ..._registry import BackendUnavailable

    if _loaded:  # the per-call path: no environment checks, no capability query
        idx = device.index if device is not None and device.index is not None else torch.cuda.current_device()
        module = _loaded.get(idx)
        if module is not None:
            return module
    why = unavailable()
    if why is not None:
        raise BackendUnavailable(f"linattn cuda backend: {why}")
    if device is None or device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cc, gencode = arch_flag(device)
    name = f"linattn_cuda_sm{cc}"
    with _lock:
        if name in _modules:
            _loaded[device.index] = _modules[name]
            return _modules[name]
        from torch.utils.cpp_extension import load as cpp_load

        if verbose is None:
            verbose = os.environ.get("LINATTN_CUDA_VERBOSE", "0") == "1"
        try:
            module = cpp_load(
                name=name,
                sources=[str(CSRC / s) for s in SOURCES],
                extra_include_paths=[str(CSRC)],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", gencode, "-lineinfo"],
                build_directory=str(build_directory(name)),
                verbose=verbose,
            )
        except Exception as e:  # compiler errors, missing headers, ...
            text = str(e).strip().splitlines()
            _build_error = f"{type(e).__name__}: {text[-1] if text else ''}"
            raise BackendUnavailable(
                f"linattn cuda backend: building {name} failed ({_build_error}); "
                "set LINATTN_CUDA_VERBOSE=1 to see the compiler output"
            ) from e
        _modules[name] = module
        _loaded[device.index] = module
        return module
