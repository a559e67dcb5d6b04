"""A whole linear-attention problem: its settings, its tensors, and how to run it.

A :class:`Problem` is a small frozen record of *settings* (shapes, dtype, device, mask
kind and broadcast shape, slopes kind, scale, state, which inputs need gradients, packed
sequence offsets) plus one integer ``seed``. Its tensors are built from the seed with a
``torch.Generator`` on the CPU in float64, rounded once to the problem's dtype and moved
to its device, so ``repr(problem)`` is an exact reproduction::

    >>> p = Problem(B=1, H=2, Hkv=1, N=17, M=17, D=5, E=3, mask_kind="decay", seed=7)
    >>> out = p.run(my_backend)              # Outcome: o, final_state, dq, dk, ...

Inputs are drawn at magnitudes that keep every quantity O(1)..O(sqrt(N)) in float16:
``q, k ~ N(0, 1/sqrt(D))`` elementwise (so ``q·k`` is O(1)), ``v ~ N(0, 1)``, the
upstream gradients ``do`` and ``d(final_state)`` ~ N(0, 1).

``run(fn)`` calls ``fn`` with :func:`linattn.linear_attention`'s signature (without
``backend=``) and back-propagates ``do`` (and ``d(final_state)``) into every input listed
in ``grads``, returning an :class:`Outcome` — a dict of the quantities the harness
compares: ``o``, ``final_state``, ``dq``, ``dk``, ``dv``, ``dmask``, ``dslopes``,
``dinitial_state``.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._registry import Request
from ..backends._common import state_dtype

__all__ = [
    "Problem",
    "ProblemTensors",
    "Outcome",
    "ContractViolation",
    "Skip",
    "DTYPES",
    "MASK_SHAPES",
    "SLOPE_KINDS",
    "GRAD_INPUTS",
    "QUANTITIES",
]

DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
#: Broadcast shapes of the dense mask: "BHNM" is the full 4-D shape, "NM" a 2-D mask,
#: "HNM" a 3-D mask (taken as [1, H, N, M]).
MASK_SHAPES = ("BHNM", "1HNM", "B1NM", "11NM", "NM", "HNM")
#: How the decay slopes are drawn (see ``Problem._slopes``).
SLOPE_KINDS = ("tnl", "zero", "tiny", "moderate", "large", "mixed")
#: Inputs that may require grad.
GRAD_INPUTS = ("q", "k", "v", "mask", "slopes", "initial_state")
#: Every quantity an Outcome may hold, with the input each gradient belongs to.
QUANTITIES = ("o", "final_state", "dq", "dk", "dv", "dmask", "dslopes", "dinitial_state")
_GRAD_NAME = {"q": "dq", "k": "dk", "v": "dv", "mask": "dmask", "slopes": "dslopes",
              "initial_state": "dinitial_state"}


class ContractViolation(AssertionError):
    """The backend returned something of the wrong type, shape or dtype."""


class Skip(Exception):
    """The backend does not serve this request (declared, or NotImplementedError)."""


def _dtype_name(dtype) -> str:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        return dtype
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype}")


@dataclass
class ProblemTensors:
    """The tensors of one problem (inputs plus the upstream gradients)."""

    q: torch.Tensor  # [B, H, N, D]
    k: torch.Tensor  # [B, Hkv, M, D]
    v: torch.Tensor  # [B, Hkv, M, E]
    mask: Optional[torch.Tensor]  # broadcastable to [B, H, N, M] (2-, 3- or 4-D)
    slopes: Optional[torch.Tensor]  # [H]
    initial_state: Optional[torch.Tensor]  # [B or S, H, D, E]
    do: torch.Tensor  # [B, H, N, E]
    dfinal: Optional[torch.Tensor]  # [B or S, H, D, E]
    cu_seqlens: Optional[torch.Tensor]  # int64 [S + 1]

    def map(self, f: Callable[[str, torch.Tensor], torch.Tensor]) -> "ProblemTensors":
        """A copy with ``f(name, t)`` applied to every float tensor present."""
        kw = {}
        for fld in dataclasses.fields(self):
            t = getattr(self, fld.name)
            kw[fld.name] = t if (t is None or fld.name == "cu_seqlens") else f(fld.name, t)
        return ProblemTensors(**kw)


class Outcome(dict):
    """Quantity name -> detached tensor (``o``, ``final_state``, ``dq``, ...)."""

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in self.items())
        return f"Outcome({inner})"


@dataclass(frozen=True)
class Problem:
    """One problem, reproducible from its fields alone (``repr`` is a reproduction).

    Shapes: ``q [B, H, N, D]``, ``k [B, Hkv, M, D]``, ``v [B, Hkv, M, E]``, ``o [B, H, N, E]``.
    ``mask_kind`` is one of :data:`linattn._registry.MASK_KINDS`; ``mask_shape`` one of
    :data:`MASK_SHAPES` and ``mask_values`` ``"real"`` (N(0,1), negatives included) or
    ``"binary"`` (0/1). ``slopes`` is one of :data:`SLOPE_KINDS`. ``cu_seqlens`` (packed
    sequences, B == 1, causal/decay only) is a tuple of offsets from 0 to N.
    """

    B: int = 1
    H: int = 1
    Hkv: int = 1
    N: int = 1
    M: int = 1
    D: int = 1
    E: int = 1
    dtype: str = "float64"
    device: str = "cpu"
    mask_kind: str = "none"
    mask_shape: str = "BHNM"
    mask_values: str = "real"
    slopes: str = "tnl"
    scale: float = 1.0
    initial_state: bool = False
    final_state: bool = False
    grads: tuple = ()
    cu_seqlens: Optional[tuple] = None
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        object.__setattr__(self, "grads", tuple(g for g in GRAD_INPUTS if g in self.grads))
        for g in self.grads:
            if g == "mask" and not self.dense:
                raise ValueError(f"grads names 'mask' but mask_kind is {self.mask_kind!r}")
            if g == "slopes" and not self.decay:
                raise ValueError(f"grads names 'slopes' but mask_kind is {self.mask_kind!r}")
            if g == "initial_state" and not self.initial_state:
                raise ValueError("grads names 'initial_state' but initial_state is False")
        if self.state and (not self.causal or self.dense):
            raise ValueError(
                f"initial/final state needs a causal or decay mask and no dense mask, got {self.mask_kind!r}"
            )
        if self.cu_seqlens is not None and (not self.causal or self.dense or self.B != 1):
            raise ValueError(f"cu_seqlens needs B == 1 and causal/decay, got B={self.B}, {self.mask_kind!r}")
        if self.H % max(self.Hkv, 1):
            raise ValueError(f"Hkv must divide H, got H={self.H}, Hkv={self.Hkv}")
        if self.causal and self.N != self.M:
            raise ValueError(f"causal/decay problems need N == M, got N={self.N}, M={self.M}")
        if self.cu_seqlens is not None:
            object.__setattr__(self, "cu_seqlens", tuple(int(c) for c in self.cu_seqlens))

    # -- what kind of request this is
    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

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
    def state(self) -> bool:
        return self.initial_state or self.final_state

    @property
    def n_seq(self) -> int:
        return self.B if self.cu_seqlens is None else len(self.cu_seqlens) - 1

    def mask_shape_4d(self) -> Optional[tuple]:
        if not self.dense:
            return None
        B, H, N, M = self.B, self.H, self.N, self.M
        return {
            "BHNM": (B, H, N, M), "1HNM": (1, H, N, M), "B1NM": (B, 1, N, M),
            "11NM": (1, 1, N, M), "NM": (1, 1, N, M), "HNM": (1, H, N, M),
        }[self.mask_shape]

    def request(self) -> Request:
        """The :class:`linattn.Request` this problem makes (what ``Backend.unsupported`` sees)."""
        return Request(
            device=self.device, dtype=self.torch_dtype,
            B=self.B, H=self.H, Hkv=self.Hkv, N=self.N, M=self.M, D=self.D, E=self.E,
            mask_kind=self.mask_kind, mask_shape=self.mask_shape_4d(), state=self.state,
            grad_mask="mask" in self.grads, grad_slopes="slopes" in self.grads,
            varlen=self.cu_seqlens is not None,
        )

    def replace(self, **changes) -> "Problem":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """A short readable id, e.g. ``B2-H4/2-N63-M63-D48-E60-bfloat16-decay``."""
        parts = [f"B{self.B}", f"H{self.H}/{self.Hkv}", f"N{self.N}", f"M{self.M}", f"D{self.D}",
                 f"E{self.E}", self.dtype, self.mask_kind]
        if self.dense:
            parts.append(f"{self.mask_shape}:{self.mask_values}")
        if self.decay:
            parts.append(f"slopes:{self.slopes}")
        if self.state:
            parts.append("state" + ("0" if self.initial_state else "") + ("N" if self.final_state else ""))
        if self.cu_seqlens is not None:
            parts.append(f"varlen{list(self.cu_seqlens)}")
        if self.grads:
            parts.append("grad:" + ",".join(self.grads))
        return "-".join(parts)

    def repro(self, call: str = "fn") -> str:
        """Python that rebuilds this exact problem and runs ``call`` on it."""
        return (
            "from linattn.testing import Problem\n"
            f"problem = {self!r}\n"
            f"outcome = problem.run({call})   # tensors: problem.tensors; oracle: problem.oracle()"
        )

    # -- tensors
    @functools.cached_property
    def tensors(self) -> ProblemTensors:
        """Built once from ``seed`` (CPU float64 generator), rounded to dtype, moved to device."""
        return self._build()

    def _slopes(self, g: torch.Generator) -> torch.Tensor:
        from ..slopes import tnl_slopes

        H = self.H
        u = torch.rand(H, generator=g, dtype=torch.float64)

        def kind_values(kind: str) -> torch.Tensor:
            if kind == "tnl":
                L = 2 + int(torch.randint(0, 24, (1,), generator=g))
                layer = int(torch.randint(0, L, (1,), generator=g))
                return tnl_slopes(H, layer=layer, n_layers=L, dtype=torch.float64)
            if kind == "zero":
                return torch.zeros(H, dtype=torch.float64)
            if kind == "tiny":  # 1e-6 .. 1e-3: decay barely visible
                return 10.0 ** (-6 + 3 * u)
            if kind == "moderate":  # 0.01 .. 1
                return 10.0 ** (-2 + 2 * u)
            if kind == "large":  # 2 .. 30: W underflows a few steps off the diagonal
                return 2 + 28 * u
            raise ValueError(f"slopes must be one of {SLOPE_KINDS}, got {kind!r}")

        if self.slopes != "mixed":
            return kind_values(self.slopes)
        options = [kind_values(k) for k in ("tnl", "zero", "tiny", "moderate", "large")]
        pick = torch.randint(0, len(options), (H,), generator=g)
        return torch.stack(options)[pick, torch.arange(H)]

    def _build(self) -> ProblemTensors:
        g = torch.Generator().manual_seed(int(self.seed))
        f64 = torch.float64
        B, H, Hkv, N, M, D, E = self.B, self.H, self.Hkv, self.N, self.M, self.D, self.E

        def randn(*shape):
            return torch.randn(*shape, generator=g, dtype=f64)

        qk_std = float(D) ** -0.25 if D > 0 else 1.0
        q = randn(B, H, N, D) * qk_std
        k = randn(B, Hkv, M, D) * qk_std
        v = randn(B, Hkv, M, E)
        mask = None
        if self.dense:
            shape4 = self.mask_shape_4d()
            shape = {"NM": (N, M), "HNM": (H, N, M)}.get(self.mask_shape, shape4)
            if self.mask_values == "binary":
                p = 0.2 + 0.6 * float(torch.rand((), generator=g, dtype=f64))
                mask = (torch.rand(*shape, generator=g, dtype=f64) < p).to(f64)
            elif self.mask_values == "real":
                mask = randn(*shape)
            else:
                raise ValueError(f"mask_values must be 'real' or 'binary', got {self.mask_values!r}")
        slopes = self._slopes(g) if self.decay else None
        S = self.n_seq
        s0 = randn(S, H, D, E) if self.initial_state else None
        do = randn(B, H, N, E)
        dfinal = randn(S, H, D, E) if self.final_state else None
        cu = torch.tensor(self.cu_seqlens, dtype=torch.int64) if self.cu_seqlens is not None else None

        X, sdt = self.torch_dtype, state_dtype(self.torch_dtype)
        dev = torch.device(self.device)
        cast = {"slopes": sdt, "initial_state": sdt, "dfinal": sdt}
        t = ProblemTensors(q, k, v, mask, slopes, s0, do, dfinal, cu)
        t = t.map(lambda name, x: x.to(cast.get(name, X)).to(dev))
        if t.cu_seqlens is not None:
            t.cu_seqlens = t.cu_seqlens.to(dev)
        return t

    # -- running a backend
    def call_kwargs(self, t: ProblemTensors) -> dict:
        kw = dict(
            causal=self.mask_kind in ("causal", "dense+causal"),
            decay=t.slopes,
            scale=self.scale,
            initial_state=t.initial_state,
            output_final_state=self.final_state,
        )
        if t.cu_seqlens is not None:
            kw["cu_seqlens"] = t.cu_seqlens
        return kw

    def run(self, fn: Callable, tensors: Optional[ProblemTensors] = None, *, grads: bool = True,
            create_graph: bool = False) -> Outcome:
        """Call ``fn`` on this problem and back-propagate; return the :class:`Outcome`.

        ``fn`` has :func:`linattn.linear_attention`'s signature without ``backend=`` and
        returns ``o`` or ``(o, final_state)``. ``tensors`` overrides the problem's own
        (for transformed problems). Raises :class:`ContractViolation` for a result of the
        wrong shape or dtype, and :class:`Skip` for ``NotImplementedError``.
        """
        t = self.tensors if tensors is None else tensors
        names = self.grads if grads else ()
        leaves = {}

        def leaf(name, x):
            if name in names:
                x = x.detach().clone().requires_grad_(True)
                leaves[name] = x
            return x

        q, k, v = leaf("q", t.q), leaf("k", t.k), leaf("v", t.v)
        mask = leaf("mask", t.mask) if t.mask is not None else None
        tl = dataclasses.replace(t, q=q, k=k, v=v, mask=mask,
                                 slopes=leaf("slopes", t.slopes) if t.slopes is not None else None,
                                 initial_state=leaf("initial_state", t.initial_state)
                                 if t.initial_state is not None else None)
        try:
            out = fn(q, k, v, mask, **self.call_kwargs(tl))
        except NotImplementedError as e:
            raise Skip(f"NotImplementedError: {e}") from None
        o, final = self._split(out, t)
        res = Outcome(o=o.detach())
        if final is not None:
            res["final_state"] = final.detach()
        if leaves:
            outs, gouts = [o], [t.do.to(o.dtype)]
            if final is not None and t.dfinal is not None:
                outs.append(final)
                gouts.append(t.dfinal.to(final.dtype))
            pairs = [(o_, g_) for o_, g_ in zip(outs, gouts) if o_.requires_grad]
            if not pairs:
                raise ContractViolation(
                    f"inputs {list(leaves)} require grad but the backend's outputs are not "
                    "connected to them (detached result)"
                )
            got = torch.autograd.grad(
                [p[0] for p in pairs], list(leaves.values()), [p[1] for p in pairs],
                allow_unused=True, create_graph=create_graph,
            )
            for (name, x), gx in zip(leaves.items(), got):
                if gx is None:  # not connected: the gradient the backend claims is zero
                    gx = torch.zeros_like(x)
                if tuple(gx.shape) != tuple(x.shape):
                    raise ContractViolation(
                        f"gradient for {name} has shape {tuple(gx.shape)}, expected {tuple(x.shape)}"
                    )
                res[_GRAD_NAME[name]] = gx if create_graph else gx.detach()
        return res

    def _split(self, out, t: ProblemTensors):
        B, H, N, E, D = self.B, self.H, self.N, self.E, self.D
        if self.final_state:
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ContractViolation(
                    f"output_final_state=True must return (o, final_state), got {type(out).__name__}"
                )
            o, final = out
        else:
            if isinstance(out, (tuple, list)):
                if len(out) != 2 or out[1] is not None:
                    raise ContractViolation(
                        f"output_final_state=False must return o (or (o, None)), got a {type(out).__name__} "
                        f"of length {len(out)}"
                    )
                out = out[0]
            o, final = out, None
        if not isinstance(o, torch.Tensor):
            raise ContractViolation(f"o must be a tensor, got {type(o).__name__}")
        if tuple(o.shape) != (B, H, N, E):
            raise ContractViolation(f"o must have shape [B, H, N, E] = {(B, H, N, E)}, got {tuple(o.shape)}")
        if o.dtype != t.q.dtype:
            raise ContractViolation(f"o must have q's dtype {t.q.dtype}, got {o.dtype}")
        if final is not None:
            want = (self.n_seq, H, D, E)
            if not isinstance(final, torch.Tensor) or tuple(final.shape) != want:
                got = tuple(final.shape) if isinstance(final, torch.Tensor) else type(final).__name__
                raise ContractViolation(f"final_state must have shape {want}, got {got}")
            sdt = state_dtype(t.q.dtype)
            if final.dtype != sdt:
                raise ContractViolation(f"final_state must be {sdt}, got {final.dtype}")
        return o, final

    # -- the float64 oracle and the error model (see linattn.testing.reference / bands)
    def oracle(self) -> Outcome:
        """The float64 reference outcome (cached)."""
        return self.evaluation.oracle

    @functools.cached_property
    def evaluation(self):
        from .reference import evaluate

        return evaluate(self)

    def numel_work(self) -> int:
        """B·H·N·M·(D+E): the reference's work, used to bound problem sizes."""
        return self.B * self.H * self.N * self.M * (self.D + self.E)

