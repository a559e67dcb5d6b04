"""The thing under test: a registered backend, a :class:`linattn.Backend` object, or any
callable with :func:`linattn.linear_attention`'s signature (an external backend).

An external backend is ``fn(q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
initial_state=None, output_final_state=False, cu_seqlens=None)`` returning ``o`` or
``(o, final_state)``. It may carry attributes:

* ``supports(request) -> bool | str | None`` — ``True``/``None``: it serves the
  :class:`linattn.Request`; ``False`` or a string (the reason): it does not, and the
  example is reported as skipped;
* ``double_backward = True`` — it supports gradients of gradients (gradgradcheck runs);

and it may raise ``NotImplementedError`` for a request it does not serve (also skipped,
never counted as passed). ``"module:function"`` names such a callable by import path.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from .. import _registry
from .._api import linear_attention
from .._registry import Backend, UnsupportedRequest, get_backend
from .problem import Problem, ProblemTensors, Skip

__all__ = ["Target", "as_target", "load_callable"]


@contextlib.contextmanager
def _registered(backend: Backend):
    """Make ``backend`` reachable by name for the duration of one call (mutants, user
    Backend objects), without leaving it in the registry for ``backend="auto"``."""
    present = _registry._REGISTRY.get(backend.name)
    if present is backend:
        yield
        return
    _registry._REGISTRY[backend.name] = backend
    try:
        yield
    finally:
        if present is None:
            _registry._REGISTRY.pop(backend.name, None)
        else:
            _registry._REGISTRY[backend.name] = present


def _public(backend: Backend) -> Callable:
    def fn(q, k, v, mask=None, **kw):
        with _registered(backend):
            return linear_attention(q, k, v, mask, backend=backend.name, **kw)

    fn.__name__ = backend.name
    return fn


@dataclass
class Target:
    """A backend under test, with what it says it supports."""

    name: str
    fn: Callable  # linear_attention's signature, without backend=
    backend: Optional[Backend] = None
    supports: Optional[Callable] = None
    double_backward: bool = False
    external: bool = False

    def unsupported(self, problem: Problem) -> Optional[str]:
        """Why this target does not serve ``problem`` (None when it does)."""
        req = problem.request()
        if self.backend is not None:
            return self.backend.unsupported(req)
        if self.supports is not None:
            r = self.supports(req)
            if r is True or r is None:
                return None
            if r is False:
                return "supports() returned False"
            return str(r)
        return None

    def check(self, problem: Problem) -> None:
        why = self.unsupported(problem)
        if why is not None:
            raise Skip(why)

    def __call__(self, *args, **kwargs):
        try:
            return self.fn(*args, **kwargs)
        except UnsupportedRequest as e:
            raise Skip(str(e)) from None

    def run(self, problem: Problem, tensors: Optional[ProblemTensors] = None, **kw):
        """``problem.run(self)`` after checking the declaration (raises Skip)."""
        self.check(problem)
        return problem.run(self, tensors, **kw)


def load_callable(spec: str) -> Callable:
    """Import ``"package.module:function"`` (``function`` may be dotted)."""
    if ":" not in spec:
        raise ValueError(f"expected 'module:function', got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path and "" not in sys.path:  # the console script: allow local modules
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"cannot import module {mod_name!r} from {spec!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {mod_name!r} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable, got {type(obj).__name__}")
    return obj


def as_target(obj) -> Target:
    """A :class:`Target` from a registry name, ``"module:function"``, a Backend or a callable."""
    if isinstance(obj, Target):
        return obj
    if isinstance(obj, Backend):
        return Target(obj.name, _public(obj), backend=obj, double_backward=obj.double_backward)
    if isinstance(obj, str):
        if ":" in obj:
            fn = load_callable(obj)
            t = as_target(fn)
            t.name = obj
            return t
        b = get_backend(obj)
        return Target(b.name, functools.partial(linear_attention, backend=b.name), backend=b,
                      double_backward=b.double_backward)
    if callable(obj):
        sup = getattr(obj, "supports", None)
        if sup is not None and not callable(sup):
            raise TypeError(f"{obj!r}.supports must be callable(request) -> bool | str, got {type(sup).__name__}")
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
        mod = getattr(obj, "__module__", None)
        return Target(f"{mod}:{name}" if mod else name, obj, supports=sup,
                      double_backward=bool(getattr(obj, "double_backward", False)), external=True)
    raise TypeError(
        f"expected a backend name, 'module:function', a linattn.Backend or a callable, got {type(obj).__name__}"
    )
