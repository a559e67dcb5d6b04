"""FLOP and byte counts per form, mask kind and pass: what every time is divided by.

Counts are per call, summed over the batch and the query heads. A multiply-add counts
as 2 FLOPs; only matrix products are counted (mask multiplies, decay factors and the
exponentials of softmax are elementwise and left out, as in Triton's attention tutorial).

Quadratic form (reference, blocked variants, flash-style kernels, softmax attention),
per head with P the number of (query, key) pairs that carry weight::

    P   = N·M                       none, dense
    P   = N(N+1)/2                  causal, decay (the lower triangle; N == M)
    fwd = 2·P·D  (A = q kᵀ)  +  2·P·E  (o = (A ⊙ W) v)
    bwd = 2·P·(3D + 2E)      recompute A, dP = do vᵀ, dv = Pᵀ do, dq = dA k, dk = dAᵀ q

so for D == E backward is 2.5× forward (Triton's tutorial uses the same 2.5), and
forward+backward is 3.5× forward.

Chunked linear-time form, chunk size C (default 64), per head, chunk lengths c_t::

    P_intra = Σ_t c_t (c_t + 1) / 2            causal, decay (0 for no mask)
    fwd = 2·P_intra·(D + E)  +  4·N·D·E          intra-chunk tile; q S and kᵀ v across chunks
    bwd = 2·P_intra·(3D + 2E) + 10·N·D·E         intra as above; recompute S, dq, dS, dk, dv

Recurrent form (one token at a time): fwd = 4·N·D·E, bwd = 10·N·D·E (the chunked form
with no intra-chunk tile). A decode step is the recurrent form with N = 1.

Bytes: each input read once and each output written once, in its storage dtype — the
least traffic any implementation can have (HBM ↔ SM on a GPU, DRAM ↔ cache on a CPU)::

    fwd  reads q, k, v, mask, slopes, initial state      writes o, final state
    bwd  reads q, k, v, mask, slopes, do                 writes dq, dk, dv
"""
from __future__ import annotations

from dataclasses import dataclass

from .shapes import Shape

__all__ = ["FORMS", "PASSES", "Counts", "flops", "bytes_moved", "count", "pairs"]

FORMS = ("quadratic", "chunked", "recurrent")
PASSES = ("fwd", "fwd+bwd")
_CAUSAL = ("causal", "decay", "dense+causal", "dense+decay")


@dataclass(frozen=True)
class Counts:
    flops: float
    bytes: float
    form: str

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte."""
        return self.flops / self.bytes if self.bytes else float("inf")


def _check(form: str, pass_: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")


def pairs(shape: Shape) -> int:
    """(query, key) pairs with weight, per head: N·M, or the lower triangle when causal."""
    N = shape.N
    return N * (N + 1) // 2 if shape.mask in _CAUSAL else N * N


def _intra_pairs(N: int, C: int, causal: bool) -> int:
    if not causal:
        return 0
    full, rest = divmod(N, C)
    return full * C * (C + 1) // 2 + rest * (rest + 1) // 2


def flops(shape: Shape, *, form: str, pass_: str, chunk: int = 64) -> float:
    """Matrix-product FLOPs of one call (forward, or forward plus backward)."""
    _check(form, pass_)
    heads = shape.B * shape.H
    N, D, E = shape.N, shape.D, shape.E
    if shape.decode or form == "recurrent":
        fwd, bwd = 4 * N * D * E, 10 * N * D * E
    elif form == "quadratic":
        P = pairs(shape)
        fwd, bwd = 2 * P * (D + E), 2 * P * (3 * D + 2 * E)
    else:  # chunked
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        P = _intra_pairs(N, chunk, shape.mask in _CAUSAL)
        fwd = 2 * P * (D + E) + 4 * N * D * E
        bwd = 2 * P * (3 * D + 2 * E) + 10 * N * D * E
    per_head = fwd if pass_ == "fwd" else fwd + bwd
    return float(heads * per_head)


def bytes_moved(shape: Shape, *, pass_: str) -> float:
    """Bytes of one call if every input is read once and every output written once."""
    _check("quadratic", pass_)
    it = shape.torch_dtype.itemsize
    st = 8 if shape.dtype == "float64" else 4  # the state is float32 (float64 for float64)
    B, H, Hkv, N, D, E = shape.B, shape.H, shape.kv_heads, shape.N, shape.D, shape.E
    q, k, v, o = B * H * N * D, B * Hkv * N * D, B * Hkv * N * E, B * H * N * E
    mask = N * N if shape.mask.startswith("dense") else 0  # the seed's [1, 1, N, N]
    slopes = H * 4 if shape.mask.endswith("decay") else 0
    state = B * H * D * E * st if shape.decode else 0
    fwd = (q + k + v + mask + o) * it + slopes + 2 * state  # state read and written
    if pass_ == "fwd":
        return float(fwd)
    bwd = (q + k + v + mask + o) * it + slopes + (q + k + v) * it  # reads q k v mask do; writes dq dk dv
    return float(fwd + bwd)


def count(shape: Shape, *, form: str, pass_: str, chunk: int = 64) -> Counts:
    return Counts(
        flops=flops(shape, form=form, pass_=pass_, chunk=chunk),
        bytes=bytes_moved(shape, pass_=pass_),
        form=form,
    )
