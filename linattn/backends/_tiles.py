"""Tile math shared by the three blocked backends (blocked, blocked_indexed, blocked_prealloc).

The three files differ only in *how* they cut the sequence into tiles and where the tile
buffers come from; what happens inside one tile is the same, and lives here.

The grouped, token-major layout
-------------------------------
With GQA, query heads ``h = g_kv * G + g`` (``G = H // Hkv``) all read kv head ``g_kv``.
Instead of copying k and v to H heads we regroup the *queries*::

    q [B, H, N, D]  ->  qg [B, Hkv, N, G, D]  ->  one tile  q_i [B, Hkv, bn*G, D]

so that the G heads of a group are extra rows of one matrix. Every tile product is then a
plain batched matmul against the group's own k and v, and the sums over the heads of a
group (for dk and dv) fall out of the matmul for free::

    A_i,j  = q_i k_jᵀ            [B, Hkv, bn*G, bm]   (viewed as [B, Hkv, bn, G, bm])
    o_i   += (A ⊙ W) v_j         [B, Hkv, bn*G, E]
    dk_j  += dAᵀ q_i             [B, Hkv, bm, D]      (sums rows *and* heads of the group)

Mask tiles and decay tiles are shaped ``[*, *, bn, G|1, bm]`` to broadcast against A.

Per-tile gradients (DESIGN.md, "Gradients")
-------------------------------------------
    A = q kᵀ   P = A ⊙ W   dP = do vᵀ   dv = Pᵀ do   dA = dP ⊙ W   dq = dA k   dk = dAᵀ q
    dW = dP ⊙ A        dM = dW ⊙ F (F = causal or decay factor), summed to M's broadcast shape
    ds[h] = -Σ (i - j) dW W           (dW/ds = -(i - j) W for the decay factor)

The recurrent-state terms (initial_state in, final state out) are not tiled: they are
O(N·D·E) matrix products over the whole sequence, done once before/after the tile loops.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from ._common import compute_dtype, expand_kv, group_sum

__all__ = [
    "check_block", "ceil_to",
    "to_groups", "from_groups", "mask_groups", "slopes_groups",
    "tile_is_empty", "tile_distance", "tile_factor", "tile_weights", "tile_weight", "tile_backward",
    "state_forward", "state_backward",
    "compute_inputs", "add_opt", "wanted", "finish_grads", "run_public", "first_order_only",
    "pad_dim", "mask_tile",
]


def check_block(name: str, value) -> int:
    """A block size must be a positive int; say what arrived otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def ceil_to(n: int, block: int) -> int:
    """n rounded up to a multiple of block (the padded length)."""
    return -(-n // block) * block


# -- layout ---------------------------------------------------------------------------


def to_groups(x: torch.Tensor, Hkv: int) -> torch.Tensor:
    """[B, H, N, X] -> [B, Hkv, N, G, X] (contiguous): the G query heads of a group side by side."""
    B, H, N, X = x.shape
    G = H // Hkv
    return x.reshape(B, Hkv, G, N, X).transpose(2, 3).contiguous()  # (B, Hkv, N, G, X)


def from_groups(x: torch.Tensor) -> torch.Tensor:
    """[B, Hkv, N, G, X] -> [B, H, N, X]."""
    B, Hkv, N, G, X = x.shape
    return x.transpose(2, 3).reshape(B, Hkv * G, N, X).contiguous()  # (B, H, N, X)


def mask_groups(mask: torch.Tensor, Hkv: int) -> torch.Tensor:
    """A view of the mask [Bm, Hm, N, M] as [Bm, Hkv|1, N, G|1, M] (no copy).

    Writing into the same view of a buffer shaped like the mask lands every element in
    its place, which is how dM is accumulated without a transpose at the end.
    """
    Bm, Hm, N, M = mask.shape
    if Hm == 1:
        return mask[:, :, :, None, :]  # (Bm, 1, N, 1, M)
    return mask.view(Bm, Hkv, Hm // Hkv, N, M).transpose(2, 3)  # (Bm, Hkv, N, G, M)


def slopes_groups(decay: torch.Tensor, Hkv: int, dtype) -> torch.Tensor:
    """Slopes [H] -> [1, Hkv, 1, G, 1], to broadcast against a score tile."""
    H = decay.shape[0]
    return decay.detach().to(dtype).reshape(1, Hkv, 1, H // Hkv, 1)


# -- the mask factors of one tile -----------------------------------------------------


def tile_is_empty(causal: bool, i0: int, bn: int, j0: int) -> bool:
    """True when every key of the tile lies after every query (causal/decay: W == 0)."""
    return causal and j0 > i0 + bn - 1


def tile_distance(i0: int, bn: int, j0: int, bm: int, dtype, device) -> torch.Tensor:
    """[bn, 1, bm] of i - j for the tile's rows i0.. and columns j0.. (negative above the diagonal)."""
    i = torch.arange(i0, i0 + bn, device=device, dtype=dtype)
    j = torch.arange(j0, j0 + bm, device=device, dtype=dtype)
    return (i[:, None] - j[None, :])[:, None, :]  # (bn, 1, bm)


def tile_factor(dist: Optional[torch.Tensor], causal: bool, sg: Optional[torch.Tensor], crosses: bool):
    """The structural factor F of a tile: decay exp(-s (i-j)) ⊙ [j<=i], causal [j<=i], or None.

    ``dist`` is the tile's i - j ([bn, 1, bm]); ``sg`` the grouped slopes [1, Hkv, 1, G, 1].
    ``crosses`` says whether the tile touches the diagonal (only then is [j<=i] needed).
    The exponent is clamped at 0 so the discarded upper half never overflows.
    """
    if sg is not None:
        F = torch.exp(-sg * dist.clamp(min=0))  # (1, Hkv, bn, G, bm)
        return F * (dist >= 0) if crosses else F
    if causal and crosses:
        return (dist >= 0).to(dist.dtype)  # (bn, 1, bm)
    return None


def tile_weights(m, causal, sg, i0, bn, j0, bm, dtype, device):
    """Everything the mask contributes to the tile rows i0..i0+bn, columns j0..j0+bm.

    ``m`` is the dense-mask tile already in the compute dtype (or None).
    Returns ``(W, F, dist)``: the effective weight W = m ⊙ F, the structural factor F
    (causal/decay, None when it is all ones) and the distances i - j (None when unused).
    """
    crosses = j0 + bm - 1 > i0
    dist = None
    if sg is not None or (causal and crosses):
        dist = tile_distance(i0, bn, j0, bm, dtype, device)
    F = tile_factor(dist, causal, sg, crosses)
    return tile_weight(m, F), F, dist


def tile_weight(m: Optional[torch.Tensor], F: Optional[torch.Tensor]):
    """W = mask tile ⊙ F (either may be None; None means all ones)."""
    if m is None:
        return F
    return m if F is None else m * F


# -- the backward of one tile ---------------------------------------------------------


def tile_backward(q_i, k_j, v_j, do_i, W, F, dist, *, G, want, mask_shape=None):
    """Gradient contributions of one tile, its scores recomputed from q_i and k_j.

    q_i [B, Hkv, bn*G, D], k_j [B, Hkv, bm, D], v_j [B, Hkv, bm, E], do_i [B, Hkv, bn*G, E]
    (do already multiplied by scale); W and F broadcastable to [B, Hkv, bn, G, bm], dist
    [bn, 1, bm]. ``want`` is a set drawn from {"q", "k", "v", "mask", "slopes"}.
    Returns ``(dq_i, dk_j, dv_j, dM_tile, ds_tile)``, each None when not wanted; dM_tile
    is summed to ``mask_shape`` (the mask tile's broadcast shape), ds_tile is [Hkv, G].
    """
    A = q_i @ k_j.transpose(-1, -2)  # (B, Hkv, bn*G, bm)
    dP = do_i @ v_j.transpose(-1, -2)  # (B, Hkv, bn*G, bm)
    five = A.shape[:2] + (A.shape[2] // G, G, A.shape[3])  # (B, Hkv, bn, G, bm)
    dq_i = dk_j = dv_j = dM = ds = None
    if "v" in want:
        P = A if W is None else (A.view(five) * W).view(A.shape)
        dv_j = P.transpose(-1, -2) @ do_i  # (B, Hkv, bm, E): sums rows and heads of the group
    if "q" in want or "k" in want:
        dA = dP if W is None else (dP.view(five) * W).view(dP.shape)
        if "q" in want:
            dq_i = dA @ k_j  # (B, Hkv, bn*G, D)
        if "k" in want:
            dk_j = dA.transpose(-1, -2) @ q_i  # (B, Hkv, bm, D)
    if "mask" in want or "slopes" in want:
        dW = (dP * A).view(five)  # (B, Hkv, bn, G, bm): dL/dW
        if "mask" in want:
            dM = _sum_to(dW if F is None else dW * F, mask_shape)
        if "slopes" in want:
            ds = -(dist * dW * W).sum(dim=(0, 2, 4))  # (Hkv, G)
    return dq_i, dk_j, dv_j, dM, ds


def _sum_to(g: torch.Tensor, shape) -> torch.Tensor:
    dims = [d for d, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1]
    return g.sum(dim=dims, keepdim=True) if dims else g


# -- the recurrent-state terms (whole sequence, not tiled) ----------------------------


def _powers(decay, n: int, offset: int, dtype) -> torch.Tensor:
    """[1, H, n, 1] of λ^(t + offset), t = 0..n-1, λ = exp(-s)."""
    t = torch.arange(n, device=decay.device, dtype=dtype) + offset
    return torch.exp(-decay.detach().to(dtype)[None, :, None, None] * t[None, None, :, None])


def state_forward(q, k, v, decay, S0, scale, want_final):
    """The terms the state adds (causal/decay only), in the compute dtype.

        o_i   += scale · λ^(i+1) q_i S0            S_N = λ^N S0 + Σ_j λ^(N-1-j) k_jᵀ v_j

    q [B, H, N, D], k [B, Hkv, N, D], v [B, Hkv, N, E], S0 [B, H, D, E] or None.
    Returns ``(o_extra [B, H, N, E] or None, S_N [B, H, D, E] or None)``.
    """
    B, H, N, D = q.shape
    dt = q.dtype
    o_extra = final = None
    if S0 is not None:
        lq = 1 if decay is None else _powers(decay, N, 1, dt)  # λ^(i+1)
        o_extra = ((q * lq) @ S0.to(dt)) * scale  # (B, H, N, E)
    if want_final:
        lk = 1 if decay is None else _powers(decay, N, 0, dt).flip(2)  # λ^(N-1-j)
        final = (expand_kv(k, H) * lk).transpose(-1, -2) @ expand_kv(v, H)  # (B, H, D, E)
        if S0 is not None:
            lN = 1 if decay is None else torch.exp(-decay.detach().to(dt) * N)[None, :, None, None]
            final = final + lN * S0.to(dt)
    return o_extra, final


def state_backward(q, k, v, do, dSN, decay, S0, scale, *, need_ds, need_dS0):
    """Gradients of the state terms. ``do`` is the raw output gradient (not yet scaled).

    Returns ``(dq, dk, dv, ds [H] or None, dS0 or None)``; dq/dk/dv may be None when the
    terms are absent. All in the compute dtype; dk, dv summed over each group of heads.
    """
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    dt = q.dtype
    dq = dk = dv = ds = dS0 = None
    lam = decay is not None
    t = torch.arange(N, device=q.device, dtype=dt)
    if S0 is not None:
        S0 = S0.to(dt)
        lq = _powers(decay, N, 1, dt) if lam else 1  # (1, H, N, 1)
        dos = do * scale
        dq = (dos @ S0.transpose(-1, -2)) * lq  # (B, H, N, D)
        if need_dS0:
            dS0 = (q * lq).transpose(-1, -2) @ dos  # (B, H, D, E)
        if need_ds and lam:
            qS = ((q @ S0) * dos).sum(-1, keepdim=True)  # (B, H, N, 1)
            ds = -(qS * lq * (t + 1)[None, None, :, None]).sum(dim=(0, 2, 3))
    if dSN is not None:
        dSN = dSN.to(dt)
        ke, ve = expand_kv(k, H), expand_kv(v, H)
        lk = _powers(decay, N, 0, dt).flip(2) if lam else 1  # λ^(N-1-j)
        dk = group_sum((ve @ dSN.transpose(-1, -2)) * lk, Hkv)  # (B, Hkv, N, D)
        dv = group_sum((ke * lk) @ dSN, Hkv)  # (B, Hkv, N, E)
        if S0 is not None:
            lN = torch.exp(-decay.detach().to(dt) * N)[None, :, None, None] if lam else 1
            if need_dS0:
                dS0 = lN * dSN if dS0 is None else dS0 + lN * dSN
            if need_ds and lam:
                part = -(N * lN * S0 * dSN).sum(dim=(0, 2, 3))
                ds = part if ds is None else ds + part
        if need_ds and lam:
            kd = ((ke @ dSN) * ve).sum(-1, keepdim=True)  # (B, H, N, 1)
            part = -(kd * lk * (N - 1 - t)[None, None, :, None]).sum(dim=(0, 2, 3))
            ds = part if ds is None else ds + part
    return dq, dk, dv, ds, dS0


def compute_inputs(q, k, v):
    """q, k, v in the compute dtype (float32 for halves; a no-op otherwise)."""
    cdt = compute_dtype(q.dtype)
    return q.to(cdt), k.to(cdt), v.to(cdt), cdt


def add_opt(a, b):
    """a + b where either may be None."""
    if a is None:
        return b
    return a if b is None else a + b


# -- what the three variants share around their loops ---------------------------------

_INPUTS = ("q", "k", "v", "mask", "slopes", "state")


def wanted(needs_input_grad) -> set:
    """ctx.needs_input_grad (q, k, v, mask, slopes, initial_state, ...) as a set of names."""
    return {name for name, need in zip(_INPUTS, needs_input_grad) if need}


def finish_grads(inputs, grads):
    """Cast each gradient to its input's dtype (None stays None)."""
    return tuple(None if g is None else g.to(x.dtype) for x, g in zip(inputs, grads))


def close_backward(q, k, v, mask, decay, S0, do, dSN, scale, want, dq, dk, dv, dM, ds):
    """The end of every variant's backward: add the state terms' gradients (causal/decay
    with a state only), cast each gradient to its input's dtype, pad for the non-tensor
    arguments of ``apply``."""
    dS0 = None
    if S0 is not None or dSN is not None:
        qc, kc, vc, cdt = compute_inputs(q, k, v)
        B, H, N, _ = q.shape
        E = v.shape[-1]
        dos = torch.zeros_like(qc[..., :1]).expand(B, H, N, E) if do is None else do.to(cdt)
        s_q, s_k, s_v, s_s, dS0 = state_backward(
            qc, kc, vc, dos, dSN, decay, S0, scale,
            need_ds="slopes" in want, need_dS0="state" in want,
        )
        dq = add_opt(dq, s_q) if "q" in want else None
        dk = add_opt(dk, s_k) if "k" in want else None
        dv = add_opt(dv, s_v) if "v" in want else None
        ds = add_opt(ds, s_s) if "slopes" in want else None
    return finish_grads((q, k, v, mask, decay, S0), (dq, dk, dv, dM, ds, dS0)) + (None,) * 5


def run_public(backend_name, fn, q, k, v, mask, *, causal, decay, scale, initial_state,
               output_final_state, cu_seqlens, blocks):
    """The public function of a blocked variant: validate like ``linear_attention``, then
    call the variant's forward with its block sizes (``blocks``: keyword arguments)."""
    from functools import partial

    from .._api import LinearAttentionOutput, _is_empty, _varlen_loop, validate
    from .._registry import select_backend
    from .reference import reference_forward

    q, k, v, mask4, causal, decay, scale, s0, cu, req = validate(
        q, k, v, mask, causal=causal, decay=decay, scale=scale,
        initial_state=initial_state, output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
    )
    if _is_empty(req):
        f = reference_forward
    else:
        select_backend(req, backend_name)  # raises a clear error if the request is out of reach
        f = partial(fn, **blocks)
    kw = dict(causal=causal, decay=decay, scale=scale, output_final_state=bool(output_final_state))
    if cu is None:
        o, st = f(q, k, v, mask4, initial_state=s0, **kw)
    else:
        o, st = _varlen_loop(f, q, k, v, cu, s0, kw)
    return LinearAttentionOutput(o, st) if output_final_state else o


# -- padding (blocked_indexed, blocked_prealloc) --------------------------------------


def pad_dim(x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """``x`` with zeros appended along ``dim`` up to ``length`` (x itself when long enough).

    Zero rows are harmless: a zero query row or key row gives a zero score, so padded rows
    and columns add nothing to o, and their own gradients are sliced away at the end.
    """
    extra = length - x.shape[dim]
    if extra <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def mask_tile(mg: torch.Tensor, i0: int, bn: int, j0: int, bm: int, dtype) -> torch.Tensor:
    """The dense-mask tile [Bm, Hkv|1, bn, G|1, bm] of a padded grid, in ``dtype``.

    The mask itself is never padded (that would copy all N×M of it); the few edge tiles
    that reach past N or M are zero-filled here instead.
    """
    t = mg[:, :, i0 : i0 + bn, :, j0 : j0 + bm].to(dtype)  # (Bm, Hkv|1, rn, G|1, rm)
    if t.shape[2] < bn:
        t = pad_dim(t, 2, bn)
    if t.shape[4] < bm:
        t = pad_dim(t, 4, bm)
    return t


def first_order_only(name: str):
    """Decorate a hand-written ``backward``: refuse ``create_graph=True`` with a clear error.

    The backward is not itself differentiable (``double_backward=False`` in the registry).
    ``once_differentiable`` alone only objects when a cotangent requires grad; a plain
    ``grad(o.sum(), q, create_graph=True)`` would otherwise return a gradient silently
    detached from the graph.
    """
    import functools

    def wrap(backward):
        @functools.wraps(backward)
        def checked(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(
                    f"backend {name!r} has a first-order hand-written backward: double backward "
                    f"(create_graph=True) is not supported; use backend='reference' for it"
                )
            return backward(ctx, *grads)

        return checked

    return wrap
