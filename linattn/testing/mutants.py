"""Deliberately broken backends: how we measure that the harness can catch real bugs.

Each mutant is a :class:`linattn.Backend` built on one small tiled implementation
(:func:`tiled_forward`, tiles of C = 16 queries × 16 keys, autograd for the gradients)
with exactly one defect switched on — the bugs that tiled and chunked kernels really
have. None of them is registered: pass one to :func:`linattn.testing.check_backend`
(or ``linattn verify --mutants``). Under the ``ci`` profile every one must be rejected;
``properties/test_mutants.py`` checks that and ``docs/results-harness.md`` records how
many examples and seconds each took.

    off_by_one_block_edge     the last key of every interior key tile is skipped
    dropped_partial_block     N // C query tiles and M // C key tiles (floor, not ceil):
                              the last partial tile is never computed (its rows stay
                              uninitialised: NaN under the harness' poisoning)
    mask_grad_not_summed      dM for a mask broadcast over heads takes head 0 instead of
                              the sum over heads
    gqa_grad_not_summed       dk, dv of a k/v head take its first query head instead of
                              the sum over its group
    decay_off_by_one          W = exp(-s (i - j + 1)) instead of exp(-s (i - j))
    tf32_float32              float32 products take TF32 operands (10 mantissa bits), in
                              the forward and the backward
    future_token_leak         the last query of each tile also sees the next key
    final_state_not_carried   the final state holds only the last tile's keys (no decayed
                              earlier state, no initial state)
    mask_grad_sign            dM has the wrong sign where the mask is negative
    scale_not_in_backward     scale multiplies o, but the gradients ignore it
    initial_state_not_decayed o_i += q_i S0 without λ^(i+1)
    varlen_state_leak         packed sequences: the state runs on across sequence borders
"""
from __future__ import annotations

from typing import Optional

import torch

from .._registry import Backend
from ..backends._common import compute_dtype, effective_mask, expand_kv, state_dtype

__all__ = ["MUTANTS", "tiled_forward", "mutant", "REQUIRED"]

C = 16  # tile size of the mutants


# ---------------------------------------------------------------- defect helpers
def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32 (10 explicit mantissa bits), to nearest, ties away."""
    if x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    bits = (bits + 0x1000) & ~0x1FFF
    return bits.view(torch.float32)


class _TF32Matmul(torch.autograd.Function):
    """a @ b with TF32 operands, forward and backward (as a TF32 tensor core would)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _round_tf32(a) @ _round_tf32(b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = _round_tf32(g)
        return g @ _round_tf32(b).transpose(-1, -2), _round_tf32(a).transpose(-1, -2) @ g


def _mm(a, b, tf32: bool):
    return _TF32Matmul.apply(a, b) if (tf32 and a.dtype == torch.float32) else a @ b


class _ExpandHeadsNoGroupSum(torch.autograd.Function):
    """k/v [B, Hkv, M, X] -> [B, H, M, X]; the backward takes the group's first head."""

    @staticmethod
    def forward(ctx, x, H):
        ctx.G = H // x.shape[1]
        return x.repeat_interleave(ctx.G, dim=1)

    @staticmethod
    def backward(ctx, g):
        return g[:, :: ctx.G].contiguous(), None


class _MaskNoHeadSum(torch.autograd.Function):
    """mask4 [B|1, H|1, N, M] -> [B, H, N, M]; the backward sums over B but takes head 0."""

    @staticmethod
    def forward(ctx, m, shape):
        ctx.mshape = m.shape
        return m.expand(shape).clone()

    @staticmethod
    def backward(ctx, g):
        if ctx.mshape[1] == 1 and g.shape[1] != 1:
            g = g[:, :1]
        if ctx.mshape[0] == 1 and g.shape[0] != 1:
            g = g.sum(0, keepdim=True)
        return g, None


class _SignFlipGradWhereNegative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m):
        ctx.save_for_backward(m)
        return m.clone()

    @staticmethod
    def backward(ctx, g):
        (m,) = ctx.saved_tensors
        return torch.where(m < 0, -g, g)


class _ScaleNoGrad(torch.autograd.Function):
    """o * scale in the forward; the backward passes the gradient unscaled."""

    @staticmethod
    def forward(ctx, o, scale):
        return o * scale

    @staticmethod
    def backward(ctx, g):
        return g, None


# ---------------------------------------------------------------- the tiled implementation
def _decay_tile(slopes, i0, n, j0, m, dtype, shift: int):
    i = torch.arange(i0, i0 + n, device=slopes.device)[:, None]
    j = torch.arange(j0, j0 + m, device=slopes.device)[None, :]
    dist = (i - j + shift).clamp(min=0).to(dtype)
    keep = (j <= i).to(dtype)
    return torch.exp(-slopes.to(dtype)[None, :, None, None] * dist) * keep  # (1, H, n, m)


def tiled_forward(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0, initial_state=None,
    output_final_state=False, defect: Optional[str] = None,
):
    """The operator in C×C tiles (internal backend contract), with one optional defect."""
    B, H, N, D = q.shape
    Hkv, M, E = k.shape[1], k.shape[2], v.shape[-1]
    cdt = compute_dtype(q.dtype)
    sdt = state_dtype(q.dtype)
    tf32 = defect == "tf32_float32"
    if defect == "gqa_grad_not_summed" and Hkv != H:
        kx, vx = _ExpandHeadsNoGroupSum.apply(k, H), _ExpandHeadsNoGroupSum.apply(v, H)
    else:
        kx, vx = expand_kv(k, H), expand_kv(v, H)
    qc, kc, vc = q.to(cdt), kx.to(cdt), vx.to(cdt)
    if mask is not None:
        if defect == "mask_grad_not_summed":
            mask = _MaskNoHeadSum.apply(mask, (B, H, N, M))
        elif defect == "mask_grad_sign":
            mask = _SignFlipGradWhereNegative.apply(mask)
    shift = 1 if defect == "decay_off_by_one" else 0

    ceil = (lambda n: n // C) if defect == "dropped_partial_block" else (lambda n: -(-n // C))
    n_qt, n_kt = ceil(N), ceil(M)
    rows = []
    for a in range(n_qt):
        i0, i1 = a * C, min(N, (a + 1) * C)
        acc = torch.zeros(B, H, i1 - i0, E, dtype=cdt, device=q.device)
        for b in range(n_kt):
            j0, j1 = b * C, min(M, (b + 1) * C)
            if causal and j0 > i1 - 1:
                break
            if defect == "off_by_one_block_edge" and b + 1 < n_kt:
                j1 -= 1  # the tile's last key is lost
            m_tile = None if mask is None else mask[:, :, i0:i1, j0:j1]
            if decay is not None:
                W = _decay_tile(decay, i0, i1 - i0, j0, j1 - j0, cdt, shift)
                if m_tile is not None:
                    W = W * m_tile.to(cdt)
            else:
                W = effective_mask(i1 - i0, j1 - j0, m_tile, causal, None, cdt, q.device, i0, j0)
            A = _mm(qc[:, :, i0:i1], kc[:, :, j0:j1].transpose(-1, -2), tf32)  # [B, H, bn, bm]
            P = A if W is None else A * W
            acc = acc + _mm(P, vc[:, :, j0:j1], tf32)  # [B, H, bn, E]
        if defect == "future_token_leak" and causal and i1 - i0 == C and i1 < M:
            # the tile's last query also reads key i1 (one step in its future), weight 1
            leak = (qc[:, :, i1 - 1] * kc[:, :, i1]).sum(-1, keepdim=True) * vc[:, :, i1]  # [B, H, E]
            if mask is not None:
                leak = leak * mask[:, :, i1 - 1, i1, None].to(cdt)
            acc = torch.cat([acc[:, :, :-1], acc[:, :, -1:] + leak[:, :, None]], dim=2)
        rows.append(acc)
    if n_qt * C < N or not rows:  # rows never computed: left as they were allocated
        rows.append(torch.empty(B, H, N - n_qt * C, E, dtype=cdt, device=q.device))
    o = torch.cat(rows, dim=2)
    if defect == "scale_not_in_backward":
        o = _ScaleNoGrad.apply(o, scale)
    else:
        o = o * scale

    final = None
    if initial_state is not None or output_final_state:
        s_h = None if decay is None else decay.to(sdt)[None, :, None, None]  # [1, H, 1, 1]

        def lam(t):  # λ^t = exp(-s t); never (exp(-s))^t, whose error grows like t·u
            return torch.exp(-s_h * t)
        if initial_state is not None:
            t = torch.arange(N, device=q.device, dtype=sdt)[None, None, :, None] + 1
            qs = q.to(sdt)
            if s_h is not None and defect != "initial_state_not_decayed":
                qs = qs * lam(t)  # q_i λ^(i+1)
            o = o + (_mm(qs, initial_state.to(sdt), tf32) * scale).to(cdt)
        if output_final_state:
            j = torch.arange(M, device=q.device, dtype=sdt)[None, None, :, None]
            ks = kx.to(sdt) if s_h is None else kx.to(sdt) * lam(M - 1 - j)  # k_j λ^(N-1-j)
            if defect == "final_state_not_carried":
                first = ((M - 1) // C) * C  # only the last tile's keys
                final = _mm(ks[:, :, first:].transpose(-1, -2), vx.to(sdt)[:, :, first:], tf32)
            else:
                final = _mm(ks.transpose(-1, -2), vx.to(sdt), tf32)
                if initial_state is not None:
                    s0 = initial_state.to(sdt)
                    final = final + (s0 if s_h is None else lam(N) * s0)
    return o.to(q.dtype), final


def _varlen_leak(q, k, v, mask=None, *, causal=False, decay=None, scale=1.0, initial_state=None,
                 output_final_state=False, cu_seqlens=None):
    """Native 'varlen' that runs the packed sequences as one: the state leaks across borders."""
    if cu_seqlens is None:
        return tiled_forward(q, k, v, mask, causal=causal, decay=decay, scale=scale,
                             initial_state=initial_state, output_final_state=output_final_state)
    o, _ = tiled_forward(q, k, v, mask, causal=causal, decay=decay, scale=scale,
                         initial_state=None if initial_state is None else initial_state[:1],
                         output_final_state=False)
    if not output_final_state:
        return o, None
    states = []
    bounds = cu_seqlens.tolist()
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        _, s = tiled_forward(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, causal=causal, decay=decay,
                             scale=scale, initial_state=None if initial_state is None else initial_state[i:i + 1],
                             output_final_state=True)
        states.append(s)
    return o, torch.cat(states, 0)


def mutant(defect: str) -> Backend:
    """The tiled backend with ``defect`` switched on (``defect=None``: the correct one)."""
    if defect == "varlen_state_leak":
        fn = _varlen_leak
    else:
        def fn(q, k, v, mask=None, **kw):
            return tiled_forward(q, k, v, mask, defect=defect, **kw)
    return Backend(
        name=f"mutant:{defect}" if defect else "mutant:none",
        fn=fn,
        description=f"tiled C={C} with defect {defect!r}",
        double_backward=False,
        varlen=defect == "varlen_state_leak",
        auto_rank={},
    )


#: The defects the issue names; all must be rejected under the ci profile.
REQUIRED = (
    "off_by_one_block_edge",
    "dropped_partial_block",
    "mask_grad_not_summed",
    "gqa_grad_not_summed",
    "decay_off_by_one",
    "tf32_float32",
    "future_token_leak",
    "final_state_not_carried",
    "mask_grad_sign",
)
EXTRA = ("scale_not_in_backward", "initial_state_not_decayed", "varlen_state_leak")
MUTANTS = {d: mutant(d) for d in REQUIRED + EXTRA}



def measure_mutants(profile: str = "ci", pinned: bool = True, defects=None) -> list:
    """Run check_backend on each mutant (fail_fast); return one row per mutant:
    (defect, rejected, property, quantity, examples to first failure, seconds to first
    failure, seconds in all including shrinking, the shrunk problem)."""
    from .check import check_backend

    rows = []
    for defect in defects or MUTANTS:
        rep = check_backend(MUTANTS[defect], profile=profile, fail_fast=True, pinned=pinned, keep_measurements=False)
        bad = next((p for p in rep.properties if p.status == "fail"), None)
        before = sum(p.examples for p in rep.properties if p is not bad)  # examples of earlier properties
        before_s = sum(p.seconds for p in rep.properties if p is not bad)
        if bad is None:
            rows.append((defect, False, "-", "-", before, None, rep.seconds, ""))
            continue
        qty = ""
        for line in bad.message.splitlines():
            parts = line.split()
            if parts and parts[0] in ("o", "final_state", "dq", "dk", "dv", "dmask", "dslopes", "dinitial_state"):
                qty = parts[0]
                break
        first = bad.message.splitlines()[0] if bad.message else ""
        shrunk = first.split(" failed on ", 1)[1] if " failed on " in first else first[:80]
        rows.append((defect, True, bad.property, qty or "(error)", before + (bad.first_failure_example or 0),
                     before_s + (bad.first_failure_seconds or 0.0), rep.seconds, shrunk))
    return rows


if __name__ == "__main__":  # python -m linattn.testing.mutants [--no-pinned]
    import sys

    pinned = "--no-pinned" not in sys.argv
    print(f"| mutant | rejected | by property | quantity | examples to rejection | seconds to rejection | "
          f"seconds incl. shrinking | shrunk problem |  (ci profile, pinned examples {'on' if pinned else 'off'})")
    print("|---|---|---|---|---|---|---|---|")
    for d, ok, prop, qty, n, s, total, shrunk in measure_mutants(pinned=pinned):
        print(f"| {d} | {'yes' if ok else '**NO**'} | {prop} | {qty} | {n} | "
              f"{'-' if s is None else f'{s:.1f}'} | {total:.1f} | `{shrunk}` |", flush=True)
