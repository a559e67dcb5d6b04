"""Blocked, indexed (the seed's second variant): tiles by block index over padded buffers.

Read ``blocked.py`` first; the algorithm is the same, tile for tile::

    o_i = scale · Σ_j ((q_i k_jᵀ) ⊙ W_ij) v_j

What changes is how a tile is found. ``blocked.py`` lets ``torch.split`` hand out the
blocks, so the last one is shorter and every loop carries the block's own length. Here
the sequences are first padded with zero rows up to a multiple of the block size,

    N -> Np = ceil(N / bn) · bn        M -> Mp = ceil(M / bm) · bm

after which every tile has the same shape and tile (i, j) is just the slice
``[i·bn, (i+1)·bn) × [j·bm, (j+1)·bm)`` -- the form a GPU kernel uses, where a program
is launched per block index and reads its tile at a computed offset.

Why zero padding is safe, and how it stays out of the results
--------------------------------------------------------------
A zero query row has zero scores, so its padded output row is zero; a zero key row has
zero scores, so padded columns add nothing to any real row. In the backward, a padded
``do`` row is zero too, so padded rows and columns contribute nothing to the gradients of
real positions nor to dM or ds (every such term carries a factor of A or dP, both zero
there). The padded rows of o, dq, dk and dv are sliced off at the end.

The dense mask is *not* padded (that would copy all N×M of it): the few edge tiles that
reach past N or M are zero-filled tile by tile (``_tiles.mask_tile``), and dM is written
only for the real part of each tile. The causal/decay factor of a tile is computed from
its offsets as before; its values over the padding are finite and multiply zeros.

Everything else (GQA layout, tile math, state terms, the hand-written backward that
recomputes scores per tile) is shared with the other blocked variants; see ``_tiles.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .._registry import Backend
from ._tiles import (
    add_opt,
    ceil_to,
    check_block,
    compute_inputs,
    close_backward,
    first_order_only,
    from_groups,
    mask_groups,
    mask_tile,
    pad_dim,
    run_public,
    slopes_groups,
    state_forward,
    tile_backward,
    tile_is_empty,
    tile_weights,
    to_groups,
    wanted,
)

__all__ = ["blocked_indexed_linear_attention", "blocked_indexed_forward", "BACKEND"]

DEFAULT_BLOCK = 256


class _BlockedIndexed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, decay, S0, causal, scale, want_final, bn, bm):
        B, H, N, D = q.shape
        Hkv, M, E = k.shape[1], k.shape[2], v.shape[3]
        G = H // Hkv
        Np, Mp = ceil_to(N, bn), ceil_to(M, bm)
        qc, kc, vc, cdt = compute_inputs(q, k, v)
        qp = pad_dim(to_groups(qc, Hkv), 2, Np)  # (B, Hkv, Np, G, D)
        kp, vp = pad_dim(kc, 2, Mp), pad_dim(vc, 2, Mp)  # (B, Hkv, Mp, D), (B, Hkv, Mp, E)
        mg = None if mask is None else mask_groups(mask, Hkv)  # (Bm, Hkv|1, N, G|1, M), unpadded
        sg = None if decay is None else slopes_groups(decay, Hkv, cdt)  # (1, Hkv, 1, G, 1)

        op = qp.new_zeros(B, Hkv, Np, G, E)  # (B, Hkv, Np, G, E)
        for i in range(Np // bn):
            i0 = i * bn
            q_i = qp[:, :, i0 : i0 + bn].reshape(B, Hkv, bn * G, D)  # (B, Hkv, bn*G, D)
            o_i = op[:, :, i0 : i0 + bn].view(B, Hkv, bn * G, E)  # a view: accumulate in place
            for j in range(Mp // bm):
                j0 = j * bm
                if tile_is_empty(causal, i0, bn, j0):
                    break  # every later key block is in the future too
                k_j, v_j = kp[:, :, j0 : j0 + bm], vp[:, :, j0 : j0 + bm]  # (B, Hkv, bm, D|E)
                m_ij = None if mg is None else mask_tile(mg, i0, bn, j0, bm, cdt)
                W, _, _ = tile_weights(m_ij, causal, sg, i0, bn, j0, bm, cdt, q.device)
                A = q_i @ k_j.transpose(-1, -2)  # (B, Hkv, bn*G, bm)
                if W is not None:
                    A = (A.view(B, Hkv, bn, G, bm) * W).view(A.shape)  # P = A ⊙ W
                o_i += A @ v_j  # (B, Hkv, bn*G, E)
        o = from_groups(op[:, :, :N]) * scale  # (B, H, N, E): padded rows dropped

        o_state, final = state_forward(qc, kc, vc, decay, S0, scale, want_final)
        o = add_opt(o, o_state)
        ctx.save_for_backward(q, k, v, mask, decay, S0)
        ctx.config = (causal, scale, bn, bm)
        ctx.set_materialize_grads(False)
        return o.to(q.dtype), final

    @staticmethod
    @first_order_only("blocked_indexed")
    @once_differentiable
    def backward(ctx, do, dSN):
        q, k, v, mask, decay, S0 = ctx.saved_tensors
        causal, scale, bn, bm = ctx.config
        want = wanted(ctx.needs_input_grad)
        B, H, N, D = q.shape
        Hkv, M, E = k.shape[1], k.shape[2], v.shape[3]
        G = H // Hkv
        Np, Mp = ceil_to(N, bn), ceil_to(M, bm)
        qc, kc, vc, cdt = compute_inputs(q, k, v)
        dq = dk = dv = dM = ds = None

        tiles_want = want & {"q", "k", "v", "mask", "slopes"}
        if do is not None and tiles_want:
            qp = pad_dim(to_groups(qc, Hkv), 2, Np)  # (B, Hkv, Np, G, D)
            dop = pad_dim(to_groups(do.to(cdt) * scale, Hkv), 2, Np)  # (B, Hkv, Np, G, E)
            kp, vp = pad_dim(kc, 2, Mp), pad_dim(vc, 2, Mp)
            mg = None if mask is None else mask_groups(mask, Hkv)
            sg = None if decay is None else slopes_groups(decay, Hkv, cdt)
            dqp = torch.zeros_like(qp) if "q" in want else None  # (B, Hkv, Np, G, D)
            dkp = torch.zeros_like(kp) if "k" in want else None  # (B, Hkv, Mp, D)
            dvp = torch.zeros_like(vp) if "v" in want else None  # (B, Hkv, Mp, E)
            if "mask" in want:
                dM = torch.zeros(mask.shape, dtype=mask.dtype, device=mask.device)  # unpadded
                dMg = mask_groups(dM, Hkv)  # the same view as mg: tiles land in place
            ds = q.new_zeros(Hkv, G, dtype=cdt) if "slopes" in want else None

            for i in range(Np // bn):
                i0 = i * bn
                rn = min(bn, N - i0)  # real rows of this block
                q_i = qp[:, :, i0 : i0 + bn].reshape(B, Hkv, bn * G, D)  # (B, Hkv, bn*G, D)
                do_i = dop[:, :, i0 : i0 + bn].reshape(B, Hkv, bn * G, E)  # (B, Hkv, bn*G, E)
                for j in range(Mp // bm):
                    j0 = j * bm
                    if tile_is_empty(causal, i0, bn, j0):
                        break
                    rm = min(bm, M - j0)  # real columns of this block
                    k_j, v_j = kp[:, :, j0 : j0 + bm], vp[:, :, j0 : j0 + bm]
                    m_ij = None if mg is None else mask_tile(mg, i0, bn, j0, bm, cdt)
                    W, F, dist = tile_weights(m_ij, causal, sg, i0, bn, j0, bm, cdt, q.device)
                    g_q, g_k, g_v, g_M, g_s = tile_backward(
                        q_i, k_j, v_j, do_i, W, F, dist, G=G, want=tiles_want,
                        mask_shape=None if m_ij is None else m_ij.shape,
                    )
                    if g_q is not None:
                        dqp[:, :, i0 : i0 + bn] += g_q.view(B, Hkv, bn, G, D)
                    if g_k is not None:
                        dkp[:, :, j0 : j0 + bm] += g_k
                    if g_v is not None:
                        dvp[:, :, j0 : j0 + bm] += g_v
                    if g_M is not None:  # only the real part of the tile exists in dM
                        dMg[:, :, i0 : i0 + rn, :, j0 : j0 + rm].copy_(g_M[:, :, :rn, :, :rm])
                    if g_s is not None:
                        ds += g_s
            dq = None if dqp is None else from_groups(dqp[:, :, :N])  # (B, H, N, D)
            dk = None if dkp is None else dkp[:, :, :M]  # (B, Hkv, M, D)
            dv = None if dvp is None else dvp[:, :, :M]  # (B, Hkv, M, E)
            ds = None if ds is None else ds.reshape(H)

        return close_backward(q, k, v, mask, decay, S0, do, dSN, scale, want, dq, dk, dv, dM, ds)


def blocked_indexed_forward(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
    initial_state=None, output_final_state=False,
    block_size=DEFAULT_BLOCK, block_size_n: Optional[int] = None, block_size_m: Optional[int] = None,
):
    """The backend contract (inputs already validated; see ``linattn._registry``)."""
    bn = check_block("block_size_n", block_size if block_size_n is None else block_size_n)
    bm = check_block("block_size_m", block_size if block_size_m is None else block_size_m)
    return _BlockedIndexed.apply(q, k, v, mask, decay, initial_state, causal, scale,
                                 bool(output_final_state), bn, bm)


def blocked_indexed_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    causal: bool = False,
    decay: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    block_size: int = DEFAULT_BLOCK,
    block_size_n: Optional[int] = None,
    block_size_m: Optional[int] = None,
):
    """Masked linear attention by block indices over padded buffers; the same call as
    :func:`linattn.linear_attention` plus block sizes. Any N and M are accepted (the
    padding is internal).

    Args:
        q, k, v, mask, causal, decay, scale, initial_state, output_final_state, cu_seqlens:
            as in :func:`linattn.linear_attention` (q `[B, H, N, D]`, k `[B, Hkv, M, D]`,
            v `[B, Hkv, M, E]`, mask broadcastable to `[B|1, H|1, N, M]`).
        block_size (int): tile edge for both queries and keys. Default: `256`.
        block_size_n, block_size_m (int, optional): query / key tile edges, overriding
            `block_size`. Default: `None`.

    Returns:
        `o` `[B, H, N, E]`, or ``LinearAttentionOutput(o, final_state)``.
    """
    check_block("block_size", block_size)
    blocks = dict(
        block_size_n=check_block("block_size_n", block_size if block_size_n is None else block_size_n),
        block_size_m=check_block("block_size_m", block_size if block_size_m is None else block_size_m),
    )
    return run_public(
        "blocked_indexed", blocked_indexed_forward, q, k, v, mask, causal=causal, decay=decay,
        scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        cu_seqlens=cu_seqlens, blocks=blocks,
    )


BACKEND = Backend(
    name="blocked_indexed",
    fn=blocked_indexed_forward,
    description="tiles by block index over zero-padded buffers (seed variant 2); tiled backward",
    double_backward=False,
    auto_rank={"cpu": 21, "cuda": 61},
)
