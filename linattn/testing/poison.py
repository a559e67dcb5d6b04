"""Fill uninitialised memory with NaN, so a backend that leaves output unwritten fails.

``torch.empty`` returns whatever the allocator had; often zeros, so a kernel that forgets
a tile can pass by luck. Inside :func:`poisoned` every floating tensor made by
``torch.empty``, ``torch.empty_like``, ``torch.empty_strided`` or ``Tensor.new_empty`` is
filled with NaN first (fla's test suite does the same in its conftest). Only Python-level
calls are affected; memory allocated inside C++/CUDA extensions is not.
"""
from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["poisoned", "POISON"]

POISON = float("nan")


def _fill(t):
    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not t.is_meta:
        with torch.no_grad():
            t.fill_(POISON)
    return t


def _wrap(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return _fill(fn(*args, **kwargs))

    wrapper._linattn_poison = fn
    return wrapper


@contextlib.contextmanager
def poisoned(enabled: bool = True):
    """Within the block, uninitialised float tensors start as NaN."""
    if not enabled or getattr(torch.empty, "_linattn_poison", None) is not None:
        yield
        return
    saved = {name: getattr(torch, name) for name in ("empty", "empty_like", "empty_strided")}
    saved_method = torch.Tensor.new_empty
    try:
        for name, fn in saved.items():
            setattr(torch, name, _wrap(fn))
        torch.Tensor.new_empty = _wrap(saved_method)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)
        torch.Tensor.new_empty = saved_method
