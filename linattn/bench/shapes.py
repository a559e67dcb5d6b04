"""The shape registry: every problem the benchmark suites time, and the profiles that pick them.

A :class:`Shape` is one problem size and mask kind, independent of the backend that runs
it. Shapes come in *families*: the members of a family differ only in N, so a plot of
time against N per family is a scaling curve (``linattn plot``).

Profiles select a subset (``--linattn-shapes=PROFILE`` or ``LINATTN_BENCH_SHAPES``):

=========  =====================================================================
``smoke``  tiny, awkward sizes (N=65, D=48, E=60, GQA); one timed round. The default
           when pytest runs without ``--benchmark-only``: every benchmark runs and
           checks its answer, quickly.
``cpu``    small float32 problems for a 2-core CPU (a few minutes in all): N sweeps
           128..1024, the seed's example at batch 1, a decode step.
``quick``  the GPU set gpu/bench.py runs inside its time budget.
``gpu``    the full registry for one GPU: the seed's example, TransNormerLLM training
           shapes, N sweeps to 32768, long sequences, decode.
``all``    every shape.
=========  =====================================================================

TransNormerLLM training shapes follow the released configurations (head dim 128):
385M: d_model 1024, 8 heads; 1B: 2048, 16 heads; 7B: 4096, 32 heads. Their attention is
masked by the decay (per-head slopes from :func:`linattn.tnl_slopes`), trained in bf16.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from .._registry import MASK_KINDS, Request

__all__ = [
    "Shape",
    "SHAPES",
    "PROFILES",
    "select_shapes",
    "default_profile",
    "make_inputs",
    "Inputs",
]

PROFILES = ("smoke", "cpu", "quick", "gpu", "all")
# The suites run shapes in the order of SHAPES below (every target of a shape in a row),
# so a run cut short by its deadline loses the last ones: the N sweeps come last.
_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class Shape:
    """One benchmark problem.

    ``q [B, H, N, D]``, ``k [B, Hkv, N, D]``, ``v [B, Hkv, N, E]``; a dense mask is the
    seed's broadcast 0/1 mask ``[1, 1, N, N]``. ``decode=True`` means one new token
    (N = 1) against a recurrent state ``[B, H, D, E]`` carrying the past.
    """

    name: str  # family name; members of a family differ only in N
    B: int
    H: int
    N: int
    D: int
    E: int
    mask: str  # one of linattn's MASK_KINDS
    dtype: str = "float32"
    Hkv: Optional[int] = None  # None: as many k/v heads as q heads
    decode: bool = False
    profiles: frozenset = field(default_factory=frozenset)
    note: str = ""

    def __post_init__(self):
        if self.mask not in MASK_KINDS:
            raise ValueError(f"Shape {self.name}: mask must be one of {MASK_KINDS}, got {self.mask!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"Shape {self.name}: dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.H % self.kv_heads:
            raise ValueError(f"Shape {self.name}: Hkv={self.kv_heads} must divide H={self.H}")
        if self.decode and (self.N != 1 or self.mask not in ("causal", "decay")):
            raise ValueError(
                f"Shape {self.name}: decode means N=1 with a causal or decay state, got N={self.N}, mask={self.mask!r}"
            )
        bad = set(self.profiles) - set(PROFILES)
        if bad:
            raise ValueError(f"Shape {self.name}: unknown profiles {sorted(bad)}; expected some of {PROFILES}")

    @property
    def kv_heads(self) -> int:
        return self.H if self.Hkv is None else self.Hkv

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def id(self) -> str:
        """Readable test id: ``tnl-1b-B4-H16-N2048-D128-E128-decay-bf16``."""
        heads = f"H{self.H}" if self.Hkv is None else f"H{self.H}kv{self.Hkv}"
        dt = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}[self.dtype]
        return f"{self.name}-B{self.B}-{heads}-N{self.N}-D{self.D}-E{self.E}-{self.mask}-{dt}"

    def request(self, device: str, *, grad: bool = False) -> Request:
        """The :class:`linattn.Request` a backend is asked to serve for this shape."""
        return Request(
            device=device,
            dtype=self.torch_dtype,
            B=self.B, H=self.H, Hkv=self.kv_heads, N=self.N, M=self.N, D=self.D, E=self.E,
            mask_kind=self.mask,
            mask_shape=(1, 1, self.N, self.N) if self.mask.startswith("dense") else None,
            state=self.decode,
        )


def _family(name, Ns, profiles, **kw) -> list[Shape]:
    return [Shape(name=name, N=n, profiles=frozenset(profiles), **kw) for n in Ns]


_P_GPU = ("gpu", "all")
_P_QUICK = ("quick", "gpu", "all")

SHAPES: list[Shape] = [
    # -- smoke: awkward sizes, every mask family, GQA, decode
    Shape("smoke", B=1, H=2, Hkv=1, N=65, D=48, E=60, mask="decay", profiles=frozenset({"smoke"})),
    Shape("smoke", B=1, H=2, N=65, D=48, E=60, mask="dense", profiles=frozenset({"smoke"})),
    Shape("smoke", B=1, H=2, N=63, D=1, E=48, mask="causal", profiles=frozenset({"smoke"})),
    Shape("smoke-decode", B=2, H=2, Hkv=1, N=1, D=48, E=60, mask="decay", decode=True,
          profiles=frozenset({"smoke"})),
    # -- the seed's README example: B16 H12 N1024 D64, a dense 0/1 mask [1, 1, N, N], float32
    Shape("seed", B=16, H=12, N=1024, D=64, E=64, mask="dense", profiles=frozenset(_P_QUICK),
          note="the seed's README example"),
    Shape("seed-b1", B=1, H=12, N=1024, D=64, E=64, mask="dense", profiles=frozenset({"cpu", "all"}),
          note="the seed's example at batch 1, sized for a CPU"),
    # -- CPU scaling families (float32, one batch of 4 heads)
    *_family("cpu-decay", (128, 256, 512, 1024), ("cpu", "all"), B=1, H=4, D=64, E=64, mask="decay"),
    *_family("cpu-dense", (128, 256, 512, 1024), ("cpu", "all"), B=1, H=4, D=64, E=64, mask="dense"),
    Shape("cpu-decode", B=4, H=8, N=1, D=64, E=64, mask="decay", decode=True,
          profiles=frozenset({"cpu", "all"})),
    # -- TransNormerLLM training shapes (bf16, decay)
    Shape("tnl-385m", B=8, H=8, N=2048, D=128, E=128, mask="decay", dtype="bfloat16",
          profiles=frozenset(_P_GPU), note="385M: d_model 1024, 8 heads"),
    Shape("tnl-1b", B=4, H=16, N=2048, D=128, E=128, mask="decay", dtype="bfloat16",
          profiles=frozenset(_P_QUICK), note="1B: d_model 2048, 16 heads"),
    Shape("tnl-7b", B=2, H=32, N=2048, D=128, E=128, mask="decay", dtype="bfloat16",
          profiles=frozenset(_P_GPU), note="7B: d_model 4096, 32 heads"),
    Shape("tnl-7b-8k", B=1, H=32, N=8192, D=128, E=128, mask="decay", dtype="bfloat16",
          profiles=frozenset(_P_GPU), note="7B at 8K context"),
    Shape("tnl-d64", B=4, H=32, N=2048, D=64, E=64, mask="decay", dtype="bfloat16",
          profiles=frozenset(_P_GPU), note="d_model 2048 split into 32 heads of 64"),
    Shape("tnl-gqa", B=4, H=16, Hkv=4, N=2048, D=128, E=128, mask="decay", dtype="bfloat16",
          profiles=frozenset(_P_GPU), note="GQA, 4 query heads per k/v head"),
    # -- long sequences
    Shape("long", B=1, H=8, N=32768, D=128, E=128, mask="decay", dtype="bfloat16",
          profiles=frozenset(_P_QUICK), note="32K tokens"),
    Shape("long-causal", B=1, H=8, N=32768, D=128, E=128, mask="causal", dtype="bfloat16",
          profiles=frozenset(_P_GPU)),
    # -- decode: one token against the state, 7B heads
    Shape("decode", B=16, H=32, N=1, D=128, E=128, mask="decay", dtype="bfloat16", decode=True,
          profiles=frozenset(_P_QUICK), note="7B decode step, batch 16"),
    Shape("decode-fp32", B=16, H=32, N=1, D=128, E=128, mask="decay", decode=True,
          profiles=frozenset(_P_GPU)),
    # -- GPU scaling families: TransNormerLLM-1B heads, bf16, decay; and the seed's dense mask in fp32
    *_family("sweep-decay", (1024, 4096), _P_QUICK, B=4, H=16, D=128, E=128, mask="decay", dtype="bfloat16"),
    *_family("sweep-decay", (512, 2048, 8192, 16384, 32768), _P_GPU, B=4, H=16, D=128, E=128,
             mask="decay", dtype="bfloat16"),
    *_family("sweep-dense", (1024, 4096), _P_QUICK, B=4, H=12, D=64, E=64, mask="dense"),
    *_family("sweep-dense", (512, 2048, 8192), _P_GPU, B=4, H=12, D=64, E=64, mask="dense"),
]


def default_profile() -> str:
    """``LINATTN_BENCH_SHAPES`` if set, else ``gpu`` with a CUDA device and ``cpu`` without."""
    env = os.environ.get("LINATTN_BENCH_SHAPES")
    if env:
        return env
    return "gpu" if torch.cuda.is_available() else "cpu"


def select_shapes(profile: str, *, names: Optional[Iterable[str]] = None) -> list[Shape]:
    """Shapes of ``profile`` (one of :data:`PROFILES`), optionally only the named families.

    ``names`` filters by family name (``seed``, ``tnl-1b``, ...); an unknown name raises.
    """
    if profile not in PROFILES:
        raise ValueError(f"shape profile must be one of {PROFILES}, got {profile!r}")
    out = [s for s in SHAPES if profile == "all" or profile in s.profiles]
    if names:
        wanted = set(names)
        known = {s.name for s in SHAPES}
        unknown = wanted - known
        if unknown:
            raise ValueError(f"unknown shape families {sorted(unknown)}; known: {sorted(known)}")
        out = [s for s in out if s.name in wanted]
    return out


@dataclass
class Inputs:
    """The tensors of one problem, in linattn's layout."""

    q: torch.Tensor  # [B, H, N, D]
    k: torch.Tensor  # [B, Hkv, N, D]
    v: torch.Tensor  # [B, Hkv, N, E]
    mask: Optional[torch.Tensor]  # [1, 1, N, N] or None
    slopes: Optional[torch.Tensor]  # [H] float32, or None
    causal: bool
    state: Optional[torch.Tensor]  # [B, H, D, E] (decode only)
    do: torch.Tensor  # [B, H, N, E], the upstream gradient for backward passes

    def grad_leaves(self) -> tuple:
        return tuple(t for t in (self.q, self.k, self.v) if t.requires_grad)


def make_inputs(shape: Shape, device, *, requires_grad: bool = False, seed: int = 0) -> Inputs:
    """Random inputs for ``shape`` on ``device`` (never zeros).

    q and k are scaled by ``D**-0.5`` so that outputs stay O(1) in low precision, as the
    seed recommends for float16; the slopes are the canonical TransNormerLLM ones (layer
    0 of 24). The numbers come from a generator on ``device`` (fast for large shapes), so
    they are reproducible per device type.
    """
    from ..slopes import tnl_slopes

    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    dt = shape.torch_dtype
    B, H, Hkv, N, D, E = shape.B, shape.H, shape.kv_heads, shape.N, shape.D, shape.E

    def rnd(*size, scale=1.0):
        t = torch.randn(*size, generator=g, device=device, dtype=torch.float32) * scale
        return t.to(dt).requires_grad_(requires_grad)

    q = rnd(B, H, N, D, scale=D ** -0.5)  # (B, H, N, D)
    k = rnd(B, Hkv, N, D, scale=D ** -0.5)  # (B, Hkv, N, D)
    v = rnd(B, Hkv, N, E)  # (B, Hkv, N, E)
    mask = None
    if shape.mask.startswith("dense"):
        mask = torch.randint(0, 2, (1, 1, N, N), generator=g, device=device).to(dt)  # (1, 1, N, N)
    slopes = tnl_slopes(H, 0, 24, device=device) if shape.mask.endswith("decay") else None
    state = None
    if shape.decode:
        sdt = torch.float64 if dt == torch.float64 else torch.float32
        state = (torch.randn(B, H, D, E, generator=g, device=device) * 0.1).to(sdt)  # (B, H, D, E)
    do = torch.randn(B, H, N, E, generator=g, device=device).to(dt)  # (B, H, N, E)
    causal = shape.mask in ("causal", "decay", "dense+causal", "dense+decay")  # decay implies causal
    return Inputs(q, k, v, mask, slopes, causal, state, do)
