"""Blocked (the seed's ``flash_linear_attention``): the reference cut into tiles with ``torch.split``.

Read ``reference.py`` first. There, one line does all the work::

    o = scale · ((q kᵀ) ⊙ W) v            with the scores q kᵀ and W of size N×M

From the reference to tiles
---------------------------
Row i of the output only needs row i of the scores, and a sum over j can be taken in
pieces. Cut the queries into row blocks of ``bn`` and the keys into column blocks of ``bm``:

    o_i = scale · Σ_j ((q_i k_jᵀ) ⊙ W_ij) v_j          (q_i: bn rows, k_j, v_j: bm rows)

Each term needs one bn×bm tile of scores, used and thrown away, so memory is
O(bn·bm) for the scores instead of O(N·M). The mask tile W_ij is the dense-mask tile
times the causal or decay factor of that tile, built on the spot from its position.

Two shortcuts come from the mask's structure:
  * causal/decay: a tile whose first key comes after its last query is all zeros; we skip
    it (and every later tile of the row), which halves the work.
  * decay: the factor exp(-s (i - j)) depends only on i - j, so a tile's factor is a small
    function of its offsets; no N×N decay matrix ever exists.

The backward pass, by hand
--------------------------
Autograd would keep every tile of scores alive for the backward (the reference's memory,
again). So this is a ``torch.autograd.Function`` that saves only q, k, v and the mask, and
recomputes each tile in the backward (the flash-attention trick)::

    A = q_i k_jᵀ     P = A ⊙ W     dP = do_i v_jᵀ
    dv_j += Pᵀ do_i      dA = dP ⊙ W      dq_i += dA k_j      dk_j += dAᵀ q_i
    dW = dP ⊙ A  ->  dM tile = dW ⊙ F (summed over the mask's broadcast dims)
                 ->  ds[h]  -= Σ (i - j) dW W

dM is written straight into a buffer shaped like the mask; each of its elements belongs
to one tile, so no N×N temporary is needed (the buffer is the gradient itself). Gradients
no input needs are not computed (``ctx.needs_input_grad``). Double backward is not
supported: a second backward raises.

What this variant is
--------------------
``torch.split`` hands out the blocks, so N and M need not be multiples of the block
size: the last block is just shorter, and nothing is padded. Compare
``blocked_indexed.py`` (padded buffers, block indices) and ``blocked_prealloc.py`` (every
buffer allocated once). GQA, the tile math and the recurrent-state terms are explained
in ``_tiles.py``. Float16/bfloat16 inputs are computed in float32 and rounded once.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .._registry import Backend
from ._tiles import (
    add_opt,
    check_block,
    compute_inputs,
    close_backward,
    first_order_only,
    from_groups,
    mask_groups,
    run_public,
    slopes_groups,
    state_forward,
    tile_backward,
    tile_is_empty,
    tile_weights,
    to_groups,
    wanted,
)

__all__ = ["blocked_linear_attention", "blocked_forward", "BACKEND"]

DEFAULT_BLOCK = 256


def _offsets(n: int, block: int):
    return range(0, n, block)


class _Blocked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, decay, S0, causal, scale, want_final, bn, bm):
        B, H, N, D = q.shape
        Hkv, M, E = k.shape[1], k.shape[2], v.shape[3]
        G = H // Hkv
        qc, kc, vc, cdt = compute_inputs(q, k, v)
        qg = to_groups(qc, Hkv)  # (B, Hkv, N, G, D)
        mg = None if mask is None else mask_groups(mask, Hkv)  # (Bm, Hkv|1, N, G|1, M)
        sg = None if decay is None else slopes_groups(decay, Hkv, cdt)  # (1, Hkv, 1, G, 1)

        k_blocks, v_blocks = kc.split(bm, dim=2), vc.split(bm, dim=2)
        m_rows = mg.split(bn, dim=2) if mg is not None else [None] * len(_offsets(N, bn))
        out_rows = []
        for i0, q_i, m_row in zip(_offsets(N, bn), qg.split(bn, dim=2), m_rows):
            rows = q_i.shape[2]
            q_i = q_i.reshape(B, Hkv, rows * G, D)  # (B, Hkv, bn*G, D)
            o_i = q_i.new_zeros(B, Hkv, rows * G, E)  # (B, Hkv, bn*G, E)
            m_tiles = m_row.split(bm, dim=4) if m_row is not None else [None] * len(k_blocks)
            for j0, k_j, v_j, m_ij in zip(_offsets(M, bm), k_blocks, v_blocks, m_tiles):
                if tile_is_empty(causal, i0, rows, j0):
                    break  # every later key block is in the future too
                cols = k_j.shape[2]
                m_ij = None if m_ij is None else m_ij.to(cdt)
                W, _, _ = tile_weights(m_ij, causal, sg, i0, rows, j0, cols, cdt, q.device)
                A = q_i @ k_j.transpose(-1, -2)  # (B, Hkv, bn*G, bm)
                if W is not None:
                    A = (A.view(B, Hkv, rows, G, cols) * W).view(A.shape)  # P = A ⊙ W
                o_i += A @ v_j  # (B, Hkv, bn*G, E)
            out_rows.append(o_i.view(B, Hkv, rows, G, E))
        o = from_groups(torch.cat(out_rows, dim=2)) * scale  # (B, H, N, E)

        o_state, final = state_forward(qc, kc, vc, decay, S0, scale, want_final)
        o = add_opt(o, o_state)
        ctx.save_for_backward(q, k, v, mask, decay, S0)
        ctx.config = (causal, scale, bn, bm)
        ctx.set_materialize_grads(False)
        return o.to(q.dtype), final

    @staticmethod
    @first_order_only("blocked")
    @once_differentiable
    def backward(ctx, do, dSN):
        q, k, v, mask, decay, S0 = ctx.saved_tensors
        causal, scale, bn, bm = ctx.config
        want = wanted(ctx.needs_input_grad)
        B, H, N, D = q.shape
        Hkv, M, E = k.shape[1], k.shape[2], v.shape[3]
        G = H // Hkv
        qc, kc, vc, cdt = compute_inputs(q, k, v)
        dq = dk = dv = dM = ds = None

        tiles_want = want & {"q", "k", "v", "mask", "slopes"}
        if do is not None and tiles_want:
            qg = to_groups(qc, Hkv)  # (B, Hkv, N, G, D)
            dog = to_groups(do.to(cdt) * scale, Hkv)  # (B, Hkv, N, G, E)
            mg = None if mask is None else mask_groups(mask, Hkv)
            sg = None if decay is None else slopes_groups(decay, Hkv, cdt)
            # Gradient buffers; the split blocks below are views into them.
            dqg = torch.zeros_like(qg) if "q" in want else None  # (B, Hkv, N, G, D)
            dk = torch.zeros_like(kc) if "k" in want else None  # (B, Hkv, M, D)
            dv = torch.zeros_like(vc) if "v" in want else None  # (B, Hkv, M, E)
            if "mask" in want:
                dM = torch.zeros(mask.shape, dtype=mask.dtype, device=mask.device)
                dMg = mask_groups(dM, Hkv)  # the same view as mg: tiles land in place
            ds = q.new_zeros(Hkv, G, dtype=cdt) if "slopes" in want else None

            n_rows, n_cols = len(_offsets(N, bn)), len(_offsets(M, bm))
            none_rows = [None] * n_rows
            k_blocks, v_blocks = kc.split(bm, dim=2), vc.split(bm, dim=2)
            dk_blocks = dk.split(bm, dim=2) if dk is not None else [None] * n_cols
            dv_blocks = dv.split(bm, dim=2) if dv is not None else [None] * n_cols
            rows_iter = zip(
                _offsets(N, bn), qg.split(bn, dim=2), dog.split(bn, dim=2),
                mg.split(bn, dim=2) if mg is not None else none_rows,
                dqg.split(bn, dim=2) if dqg is not None else none_rows,
                dMg.split(bn, dim=2) if dM is not None else none_rows,
            )
            for i0, q_i, do_i, m_row, dq_i, dM_row in rows_iter:
                rows = q_i.shape[2]
                q_i = q_i.reshape(B, Hkv, rows * G, D)  # (B, Hkv, bn*G, D)
                do_i = do_i.reshape(B, Hkv, rows * G, E)  # (B, Hkv, bn*G, E)
                m_tiles = m_row.split(bm, dim=4) if m_row is not None else [None] * n_cols
                dM_tiles = dM_row.split(bm, dim=4) if dM_row is not None else [None] * n_cols
                cols_iter = zip(_offsets(M, bm), k_blocks, v_blocks, m_tiles, dk_blocks, dv_blocks, dM_tiles)
                for j0, k_j, v_j, m_ij, dk_j, dv_j, dM_ij in cols_iter:
                    if tile_is_empty(causal, i0, rows, j0):
                        break
                    cols = k_j.shape[2]
                    m_ij = None if m_ij is None else m_ij.to(cdt)
                    W, F, dist = tile_weights(m_ij, causal, sg, i0, rows, j0, cols, cdt, q.device)
                    g_q, g_k, g_v, g_M, g_s = tile_backward(
                        q_i, k_j, v_j, do_i, W, F, dist, G=G, want=tiles_want,
                        mask_shape=None if m_ij is None else m_ij.shape,
                    )
                    if g_q is not None:
                        dq_i += g_q.view(dq_i.shape)
                    if g_k is not None:
                        dk_j += g_k
                    if g_v is not None:
                        dv_j += g_v
                    if g_M is not None:
                        dM_ij.copy_(g_M)  # each dM element belongs to exactly one tile
                    if g_s is not None:
                        ds += g_s
            dq = None if dqg is None else from_groups(dqg)  # (B, H, N, D)
            ds = None if ds is None else ds.reshape(H)

        return close_backward(q, k, v, mask, decay, S0, do, dSN, scale, want, dq, dk, dv, dM, ds)


def blocked_forward(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
    initial_state=None, output_final_state=False,
    block_size=DEFAULT_BLOCK, block_size_n: Optional[int] = None, block_size_m: Optional[int] = None,
):
    """The backend contract (inputs already validated; see ``linattn._registry``)."""
    bn = check_block("block_size_n", block_size if block_size_n is None else block_size_n)
    bm = check_block("block_size_m", block_size if block_size_m is None else block_size_m)
    return _Blocked.apply(q, k, v, mask, decay, initial_state, causal, scale,
                          bool(output_final_state), bn, bm)


def blocked_linear_attention(
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
    """Masked linear attention by ``torch.split`` tiles; the same call as
    :func:`linattn.linear_attention` plus block sizes.

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
        "blocked", blocked_forward, q, k, v, mask, causal=causal, decay=decay, scale=scale,
        initial_state=initial_state, output_final_state=output_final_state,
        cu_seqlens=cu_seqlens, blocks=blocks,
    )


BACKEND = Backend(
    name="blocked",
    fn=blocked_forward,
    description="the seed's torch.split tiling with a hand-written tiled backward; no N×N tensor",
    double_backward=False,
    auto_rank={"cpu": 20, "cuda": 60},
)
