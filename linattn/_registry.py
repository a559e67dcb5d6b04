"""The backend registry: what each implementation can do, and how `backend="auto"` picks.

Every implementation of the operator is a :class:`Backend`: a function with the internal
contract below plus a declaration of what it supports. The public entry point
(:func:`linattn.linear_attention`) validates the inputs once, describes the call as a
:class:`Request`, and asks the registry for a backend that can serve it.

Internal contract of ``Backend.fn`` (inputs are already validated and normalised)::

    fn(q, k, v, mask, *, causal, decay, scale, initial_state, output_final_state)
        -> (o, final_state or None)

A backend that declares ``varlen=True`` also takes ``cu_seqlens=`` (int64 [S+1], B == 1,
state [S, H, D, E]); for the others the public API loops over the packed sequences.

    q     [B, H,   N, D]        k [B, Hkv, M, D]        v [B, Hkv, M, E]
    mask  [B|1, H|1, N, M] or None   (always 4-D, same dtype as q)
    causal: bool  (True whenever decay is given)
    decay:  [H] slopes >= 0, or None
    scale:  float
    initial_state [B, H, D, E] in the state dtype, or None (only with causal/decay
                  and no dense mask)
    output_final_state: bool (same condition)

The state dtype is float64 for float64 inputs and float32 otherwise. Gradients flow
through autograd: a backend either composes differentiable torch operations or wraps
its kernels in a ``torch.autograd.Function``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

__all__ = [
    "Backend",
    "Request",
    "MASK_KINDS",
    "LINEAR_KINDS",
    "register_backend",
    "get_backend",
    "list_backends",
    "select_backend",
    "capable_backends",
    "BackendUnavailable",
    "UnsupportedRequest",
]

#: Every mask kind a request can have. "dense+decay" means a dense mask times the decay mask.
MASK_KINDS = ("none", "dense", "causal", "decay", "dense+causal", "dense+decay")
#: Kinds that admit a linear-time (chunked / recurrent) evaluation.
LINEAR_KINDS = ("none", "causal", "decay")
ALL_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


class UnsupportedRequest(ValueError):
    """A backend was asked for something it cannot do."""


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine (no GPU, no Triton, no nvcc, ...)."""


@dataclass(frozen=True)
class Request:
    """What one call asks for, independent of the tensors' values."""

    device: str  # torch.device.type: "cpu", "cuda", ...
    dtype: torch.dtype
    B: int
    H: int
    Hkv: int
    N: int
    M: int
    D: int
    E: int
    mask_kind: str  # one of MASK_KINDS
    mask_shape: Optional[tuple] = None  # 4-D shape of the dense mask, if any
    state: bool = False  # initial_state given or final state requested
    grad_mask: bool = False
    grad_slopes: bool = False
    varlen: bool = False  # packed sequences described by cu_seqlens (B == 1)

    @property
    def dense(self) -> bool:
        return self.mask_kind.startswith("dense")

    @property
    def causal(self) -> bool:
        return self.mask_kind in ("causal", "decay", "dense+causal", "dense+decay")

    @property
    def decay(self) -> bool:
        return self.mask_kind.endswith("decay")

    @property
    def gqa(self) -> bool:
        return self.Hkv != self.H


@dataclass(frozen=True)
class Backend:
    """One implementation of the operator and what it can do.

    ``available`` returns ``None`` when the backend can run on this machine, or a short
    reason why not ("triton is not installed", "no CUDA device").
    ``auto_rank`` orders backends for ``backend="auto"`` (lower is preferred) per device
    type; a device missing from the dict means "never pick automatically there".
    """

    name: str
    fn: Callable
    description: str
    devices: frozenset = frozenset({"cpu", "cuda"})
    dtypes: frozenset = ALL_DTYPES
    mask_kinds: frozenset = frozenset(MASK_KINDS)
    gqa: bool = True
    state: bool = True
    mask_grad: bool = True
    slopes_grad: bool = True
    n_ne_m: bool = True
    max_head_dim: Optional[int] = None
    double_backward: bool = False
    linear_time: bool = False
    varlen: bool = False  # takes cu_seqlens natively (else the API loops over sequences)
    auto_rank: dict = field(default_factory=dict)
    available: Callable[[], Optional[str]] = lambda: None
    #: Any further limit the fields above cannot express: ``constraint(req)`` returns why
    #: ``req`` is not served, or None (e.g. a composite backend whose kernels differ by kind).
    constraint: Optional[Callable[["Request"], Optional[str]]] = None

    def unsupported(self, req: Request) -> Optional[str]:
        """Why this backend cannot serve ``req`` (None when it can)."""
        reason = self.available()
        if reason is not None:
            return f"unavailable: {reason}"
        if req.device not in self.devices:
            return f"device {req.device!r} not in {sorted(self.devices)}"
        if req.dtype not in self.dtypes:
            return f"dtype {req.dtype} not in {sorted(str(d) for d in self.dtypes)}"
        if req.mask_kind not in self.mask_kinds:
            return f"mask kind {req.mask_kind!r} not in {sorted(self.mask_kinds)}"
        if req.gqa and not self.gqa:
            return f"GQA/MQA (H={req.H}, Hkv={req.Hkv}) not supported"
        if req.state and not self.state:
            return "initial_state / final state not supported"
        if req.grad_mask and not self.mask_grad:
            return "gradient with respect to the dense mask not supported"
        if req.grad_slopes and not self.slopes_grad:
            return "gradient with respect to the decay slopes not supported"
        if req.N != req.M and not self.n_ne_m:
            return f"N != M (N={req.N}, M={req.M}) not supported"
        if self.max_head_dim is not None and max(req.D, req.E) > self.max_head_dim:
            return f"head dims D={req.D}, E={req.E} exceed {self.max_head_dim}"
        if self.constraint is not None:
            return self.constraint(req)
        return None


_REGISTRY: dict[str, Backend] = {}
# Modules under linattn.backends that define a module-level ``BACKEND``; imported lazily.
_BUILTIN_MODULES = (
    "reference",
    "blocked",
    "blocked_indexed",
    "blocked_prealloc",
    "chunked",
    "recurrent",
    "triton",
    "cuda",
)
_loaded = False


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add ``backend`` to the registry (``replace=True`` to overwrite a name)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend expects a linattn.Backend, got {type(backend).__name__}")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        full = f"linattn.backends.{mod}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as e:  # a backend module not written yet
            if e.name == full:
                continue
            raise
        found = list(getattr(module, "BACKENDS", ()))
        if getattr(module, "BACKEND", None) is not None:
            found.insert(0, module.BACKEND)
        for backend in found:
            if backend.name not in _REGISTRY:
                register_backend(backend)


def list_backends() -> list[Backend]:
    """All registered backends, available on this machine or not."""
    _load_builtins()
    return list(_REGISTRY.values())


def get_backend(name: str) -> Backend:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; registered backends: {sorted(_REGISTRY)}"
        ) from None


def capable_backends(req: Request) -> list[Backend]:
    """Backends that can serve ``req`` on this machine, best first for ``auto``."""
    _load_builtins()
    ok = [b for b in _REGISTRY.values() if b.unsupported(req) is None]

    def key(b: Backend):
        rank = b.auto_rank.get(req.device)
        prefer_linear = req.mask_kind in LINEAR_KINDS and not b.linear_time
        return (rank is None, prefer_linear, rank if rank is not None else 0, b.name)

    return sorted(ok, key=key)


def select_backend(req: Request, name: str = "auto") -> Backend:
    """The backend that serves ``req``: the named one, or the best capable one."""
    if name == "auto":
        cands = [b for b in capable_backends(req) if b.auto_rank.get(req.device) is not None]
        if not cands:
            raise UnsupportedRequest(
                f"no registered backend can serve {describe(req)}; "
                f"reasons: {_reasons(req)}"
            )
        return cands[0]
    backend = get_backend(name)
    why = backend.unsupported(req)
    if why is not None:
        able = [b.name for b in capable_backends(req)]
        raise UnsupportedRequest(
            f"backend {name!r} cannot serve {describe(req)}: {why}. "
            f"Backends that can: {able if able else 'none on this machine'}"
        )
    return backend


def describe(req: Request) -> str:
    return (
        f"{req.mask_kind} mask, {str(req.dtype).replace('torch.', '')} on {req.device}, "
        f"B={req.B} H={req.H} Hkv={req.Hkv} N={req.N} M={req.M} D={req.D} E={req.E}"
        + (", with state" if req.state else "")
        + (", varlen" if req.varlen else "")
        + (", mask grad" if req.grad_mask else "")
        + (", slopes grad" if req.grad_slopes else "")
    )


def _reasons(req: Request) -> str:
    return "; ".join(f"{b.name}: {b.unsupported(req) or 'not ranked for auto'}" for b in _REGISTRY.values())
