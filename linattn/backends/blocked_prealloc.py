"""Blocked, preallocated (the seed's third variant): every buffer allocated once, then reused.

Read ``blocked.py`` and ``blocked_indexed.py`` first; the algorithm is the same::

    o_i = scale · Σ_j ((q_i k_jᵀ) ⊙ W_ij) v_j

``blocked_indexed.py`` already pads the sequences so every tile has one shape. But each
tile still creates fresh tensors: the scores, the mask tile, the decay factor, the
product with v. An allocator hands those out and takes them back thousands of times.
Since every tile has the same shape, one buffer per role is enough, allocated before the
loops and overwritten in place inside them, with ``out=`` products and ``op_`` updates:

    before the loops   qb [nI, B·Hkv, bn·G, D]   kb, vb [nJ, B·Hkv, bm, D|E]   ob like qb
                       A  [B·Hkv, bn·G, bm]      (scores of one tile)
                       F  [1, Hkv, bn, G, bm]    (decay / causal factor)   dist [bn, 1, bm]
                       Mt [Bm, Hkv|1, bn, G|1, bm] (mask tile)  W = Mt ⊙ F
    in the loops       torch.bmm(q_i, k_jᵀ, out=A);  A ⊙= W;  o_i.baddbmm_(A, v_j)

Layout: tile by tile
--------------------
The inputs are copied once into *tile-major* buffers, ``qb[i]`` being the whole query
tile i for every batch and head group, contiguous, zero-padded past N. So every ``out=``
target and every in-place update is a contiguous block and torch never needs a hidden
temporary to make one. (The GQA grouping, where the G query heads of a kv head become
extra rows of the tile, is explained in ``_tiles.py``.)

The backward reuses the same idea: scores and ``dP = do vᵀ`` go into two buffers, P and dA
share a third, and once dq/dk/dv are done the score buffer is overwritten by dW = dP ⊙ A
for the mask and slope gradients. Padded rows and columns are zero and contribute
nothing (see ``blocked_indexed.py``); dM is written only for the real part of a tile.

The price is readability -- the seed rated this variant "medium" -- and, on a CPU, a
small gain at most: PyTorch's caching allocators already recycle tile-sized blocks. What
this form buys is the shape of a kernel: a fixed working set known before the first tile.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .._registry import Backend
from ._tiles import (
    ceil_to,
    check_block,
    compute_inputs,
    close_backward,
    first_order_only,
    mask_groups,
    run_public,
    slopes_groups,
    state_forward,
    tile_is_empty,
    wanted,
)

__all__ = ["blocked_prealloc_linear_attention", "blocked_prealloc_forward", "BACKEND"]

DEFAULT_BLOCK = 256


# -- copying into and out of tile-major buffers (once, outside the loops) -------------


def _load_tiles(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Copy ``src`` [B, Hkv, L, *X] (any strides and dtype) into zeroed ``dst`` [n, B, Hkv, blk, *X]."""
    blk = dst.shape[3]
    L = src.shape[2]
    full, rem = divmod(L, blk)
    d = dst.movedim(0, 2)  # (B, Hkv, n, blk, *X), a view
    if full:
        d[:, :, :full].copy_(src[:, :, : full * blk].unflatten(2, (full, blk)))
    if rem:
        d[:, :, full, :rem].copy_(src[:, :, full * blk :])
    return dst


def _store_tiles(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Copy the real rows of ``src`` [n, B, Hkv, blk, *X] into ``dst`` [B, Hkv, L, *X] (any strides)."""
    blk = src.shape[3]
    L = dst.shape[2]
    full, rem = divmod(L, blk)
    s = src.movedim(0, 2)  # (B, Hkv, n, blk, *X)
    if full:
        dst[:, :, : full * blk].unflatten(2, (full, blk)).copy_(s[:, :, :full])
    if rem:
        dst[:, :, full * blk :].copy_(s[:, :, full, :rem])
    return dst


def _grouped(x: torch.Tensor, Hkv: int) -> torch.Tensor:
    """[B, H, N, X] -> [B, Hkv, N, G, X], a view when x is contiguous (always for our outputs)."""
    B, H, N, X = x.shape
    return x.reshape(B, Hkv, H // Hkv, N, X).transpose(2, 3)


# -- the mask factors of one tile, written into preallocated buffers ------------------


class _Weights:
    """Buffers for one tile's W = mask ⊙ F, refilled in place for every tile."""

    def __init__(self, mask, decay, causal, Hkv, G, bn, bm, dtype, device):
        self.causal, self.bn, self.bm = causal, bn, bm
        self.mg = None if mask is None else mask_groups(mask, Hkv)  # (Bm, Hkv|1, N, G|1, M)
        self.sg = None if decay is None else slopes_groups(decay, Hkv, dtype)  # (1, Hkv, 1, G, 1)
        a = torch.arange(bn, device=device, dtype=dtype)
        b = torch.arange(bm, device=device, dtype=dtype)
        self.local = (a[:, None] - b[None, :])[:, None, :]  # (bn, 1, bm): a - b
        self.dist = torch.empty_like(self.local)  # (bn, 1, bm): i - j of the current tile
        self.future = torch.empty(self.local.shape, dtype=torch.bool, device=device)  # j > i
        # 0-d tensors for i0 - j0 and 0: a Python number given to add/lt would be wrapped
        # into a fresh tensor on every call (fill_ and masked_fill_ take numbers as they are).
        self.offset = torch.zeros((), dtype=dtype, device=device)
        self.zero = torch.zeros((), dtype=dtype, device=device)
        self.F = self.Mt = self.W = None
        if decay is not None:
            self.F = torch.empty(1, Hkv, bn, G, bm, dtype=dtype, device=device)
        elif causal:
            self.F = torch.empty(1, 1, bn, 1, bm, dtype=dtype, device=device)
        if mask is not None:
            Bm, Hg, _, Gg, _ = self.mg.shape
            self.Mt = torch.empty(Bm, Hg, bn, Gg, bm, dtype=dtype, device=device)
            if self.F is not None:
                shape = torch.broadcast_shapes(self.Mt.shape, self.F.shape)
                self.W = torch.empty(shape, dtype=dtype, device=device)

    def fill(self, i0: int, j0: int):
        """Write the tile at rows i0.., columns j0.. into the buffers; return (W, F) (None = ones)."""
        bn, bm = self.bn, self.bm
        crosses = j0 + bm - 1 > i0
        F = None
        if self.sg is not None:
            torch.add(self.local, self.offset.fill_(i0 - j0), out=self.dist)  # (bn, 1, bm)
            if crosses:
                torch.lt(self.dist, self.zero, out=self.future)
                self.dist.clamp_(min=0)
            torch.mul(self.sg, self.dist, out=self.F)  # (1, Hkv, bn, G, bm)
            self.F.neg_().exp_()  # exp(-s (i - j))
            if crosses:
                self.F.masked_fill_(self.future, 0.0)
            F = self.F
        elif self.causal and crosses:
            torch.add(self.local, self.offset.fill_(i0 - j0), out=self.dist)
            torch.lt(self.dist, self.zero, out=self.future)
            self.F.fill_(1.0).masked_fill_(self.future.view(self.F.shape), 0.0)  # (1, 1, bn, 1, bm)
            F = self.F
        if self.Mt is None:
            return F, F
        N, M = self.mg.shape[2], self.mg.shape[4]
        rn, rm = min(bn, N - i0), min(bm, M - j0)
        if rn < bn or rm < bm:
            self.Mt.zero_()  # an edge tile: the part past N or M stays zero
        self.Mt[:, :, :rn, :, :rm].copy_(self.mg[:, :, i0 : i0 + rn, :, j0 : j0 + rm])
        if F is None:
            return self.Mt, None
        torch.mul(self.Mt, F, out=self.W)
        return self.W, F


# -- the operator ---------------------------------------------------------------------


class _BlockedPrealloc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, decay, S0, causal, scale, want_final, bn, bm):
        B, H, N, D = q.shape
        Hkv, M, E = k.shape[1], k.shape[2], v.shape[3]
        G, BH = H // Hkv, B * Hkv
        nI, nJ = ceil_to(N, bn) // bn, ceil_to(M, bm) // bm
        cdt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        z = dict(dtype=cdt, device=q.device)

        # -- every buffer, allocated once
        qb = _load_tiles(torch.zeros(nI, B, Hkv, bn, G, D, **z), _grouped(q, Hkv))
        kb = _load_tiles(torch.zeros(nJ, B, Hkv, bm, D, **z), k)
        vb = _load_tiles(torch.zeros(nJ, B, Hkv, bm, E, **z), v)
        qb, kb, vb = qb.view(nI, BH, bn * G, D), kb.view(nJ, BH, bm, D), vb.view(nJ, BH, bm, E)
        ob = torch.zeros(nI, BH, bn * G, E, **z)  # (nI, B·Hkv, bn·G, E)
        A = torch.empty(BH, bn * G, bm, **z)  # (B·Hkv, bn·G, bm): one tile of scores
        A5 = A.view(B, Hkv, bn, G, bm)
        wts = _Weights(mask, decay, causal, Hkv, G, bn, bm, cdt, q.device)

        # -- the loops: no allocation from here on
        for i in range(nI):
            for j in range(nJ):
                if tile_is_empty(causal, i * bn, bn, j * bm):
                    break  # every later key block is in the future too
                W, _ = wts.fill(i * bn, j * bm)
                torch.bmm(qb[i], kb[j].transpose(1, 2), out=A)  # A = q_i k_jᵀ
                if W is not None:
                    A5.mul_(W)  # P = A ⊙ W
                ob[i].baddbmm_(A, vb[j])  # o_i += P v_j

        o = torch.empty(B, H, N, E, **z)
        _store_tiles(_grouped(o, Hkv), ob.view(nI, B, Hkv, bn, G, E)).mul_(scale)
        if S0 is not None or want_final:
            qc, kc, vc, _ = compute_inputs(q, k, v)
            o_state, final = state_forward(qc, kc, vc, decay, S0, scale, want_final)
            if o_state is not None:
                o.add_(o_state)
        else:
            final = None
        ctx.save_for_backward(q, k, v, mask, decay, S0)
        ctx.config = (causal, scale, bn, bm)
        ctx.set_materialize_grads(False)
        return o.to(q.dtype), final

    @staticmethod
    @first_order_only("blocked_prealloc")
    @once_differentiable
    def backward(ctx, do, dSN):
        q, k, v, mask, decay, S0 = ctx.saved_tensors
        causal, scale, bn, bm = ctx.config
        want = wanted(ctx.needs_input_grad)
        B, H, N, D = q.shape
        Hkv, M, E = k.shape[1], k.shape[2], v.shape[3]
        G, BH = H // Hkv, B * Hkv
        nI, nJ = ceil_to(N, bn) // bn, ceil_to(M, bm) // bm
        cdt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        z = dict(dtype=cdt, device=q.device)
        dq = dk = dv = dM = ds = None

        if do is not None and want & {"q", "k", "v", "mask", "slopes"}:
            # -- every buffer, allocated once
            qb = _load_tiles(torch.zeros(nI, B, Hkv, bn, G, D, **z), _grouped(q, Hkv)).view(nI, BH, bn * G, D)
            dob = _load_tiles(torch.zeros(nI, B, Hkv, bn, G, E, **z), _grouped(do, Hkv)).view(nI, BH, bn * G, E)
            dob.mul_(scale)  # do·scale: the scale of o moves onto do
            kb = _load_tiles(torch.zeros(nJ, B, Hkv, bm, D, **z), k).view(nJ, BH, bm, D)
            vb = _load_tiles(torch.zeros(nJ, B, Hkv, bm, E, **z), v).view(nJ, BH, bm, E)
            dqb = torch.zeros_like(qb) if "q" in want else None  # (nI, B·Hkv, bn·G, D)
            dkb = torch.zeros_like(kb) if "k" in want else None  # (nJ, B·Hkv, bm, D)
            dvb = torch.zeros_like(vb) if "v" in want else None  # (nJ, B·Hkv, bm, E)
            A = torch.empty(BH, bn * G, bm, **z)  # scores, later dW
            dP = torch.empty_like(A)  # do_i v_jᵀ
            T = torch.empty_like(A)  # P, then dA, then dW ⊙ F, then dW ⊙ W ⊙ dist
            five = (B, Hkv, bn, G, bm)
            A5, dP5, T5 = A.view(five), dP.view(five), T.view(five)
            wts = _Weights(mask, decay, causal, Hkv, G, bn, bm, cdt, q.device)
            if "mask" in want:
                dM = torch.zeros(mask.shape, dtype=mask.dtype, device=mask.device)
                dMg = mask_groups(dM, Hkv)  # (Bm, Hkv|1, N, G|1, M): tiles land in place
                dMt = torch.empty_like(wts.Mt)  # (Bm, Hkv|1, bn, G|1, bm)
                sum_dims = [d for d in range(5) if dMt.shape[d] == 1 and five[d] != 1]
            if "slopes" in want:
                ds = torch.zeros(1, Hkv, 1, G, 1, **z)
                ds_t = torch.empty_like(ds)

            # -- the loops: no allocation from here on
            for i in range(nI):
                i0 = i * bn
                for j in range(nJ):
                    j0 = j * bm
                    if tile_is_empty(causal, i0, bn, j0):
                        break
                    W, F = wts.fill(i0, j0)
                    torch.bmm(qb[i], kb[j].transpose(1, 2), out=A)  # A = q_i k_jᵀ
                    torch.bmm(dob[i], vb[j].transpose(1, 2), out=dP)  # dP = do_i v_jᵀ
                    if dvb is not None:
                        P = A if W is None else torch.mul(A5, W, out=T5).view(A.shape)
                        dvb[j].baddbmm_(P.transpose(1, 2), dob[i])  # dv_j += Pᵀ do_i
                    if dqb is not None or dkb is not None:
                        dA = dP if W is None else torch.mul(dP5, W, out=T5).view(A.shape)
                        if dqb is not None:
                            dqb[i].baddbmm_(dA, kb[j])  # dq_i += dA k_j
                        if dkb is not None:
                            dkb[j].baddbmm_(dA.transpose(1, 2), qb[i])  # dk_j += dAᵀ q_i
                    if dM is None and ds is None:
                        continue
                    A.mul_(dP)  # A now holds dW = dP ⊙ A
                    if dM is not None:
                        g = A5 if F is None else torch.mul(A5, F, out=T5)
                        if sum_dims:
                            torch.sum(g, dim=sum_dims, keepdim=True, out=dMt)
                            g = dMt
                        rn, rm = min(bn, N - i0), min(bm, M - j0)
                        dMg[:, :, i0 : i0 + rn, :, j0 : j0 + rm].copy_(g[:, :, :rn, :, :rm])
                    if ds is not None:
                        torch.mul(A5, W, out=T5).mul_(wts.dist)  # dW ⊙ W ⊙ (i - j)
                        torch.sum(T5, dim=(0, 2, 4), keepdim=True, out=ds_t)
                        ds.sub_(ds_t)  # ds -= Σ (i - j) dW W

            if dqb is not None:
                dq = _store_tiles(torch.empty(B, Hkv, N, G, D, **z), dqb.view(nI, B, Hkv, bn, G, D))
                dq = dq.transpose(2, 3).reshape(B, H, N, D)  # (B, H, N, D)
            if dkb is not None:
                dk = _store_tiles(torch.empty(B, Hkv, M, D, **z), dkb.view(nJ, B, Hkv, bm, D))
            if dvb is not None:
                dv = _store_tiles(torch.empty(B, Hkv, M, E, **z), dvb.view(nJ, B, Hkv, bm, E))
            ds = None if ds is None else ds.reshape(H)

        return close_backward(q, k, v, mask, decay, S0, do, dSN, scale, want, dq, dk, dv, dM, ds)


def blocked_prealloc_forward(
    q, k, v, mask=None, *, causal=False, decay=None, scale=1.0,
    initial_state=None, output_final_state=False,
    block_size=DEFAULT_BLOCK, block_size_n: Optional[int] = None, block_size_m: Optional[int] = None,
):
    """The backend contract (inputs already validated; see ``linattn._registry``)."""
    bn = check_block("block_size_n", block_size if block_size_n is None else block_size_n)
    bm = check_block("block_size_m", block_size if block_size_m is None else block_size_m)
    return _BlockedPrealloc.apply(q, k, v, mask, decay, initial_state, causal, scale,
                                  bool(output_final_state), bn, bm)


def blocked_prealloc_linear_attention(
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
    """Masked linear attention with every tile buffer allocated once; the same call as
    :func:`linattn.linear_attention` plus block sizes. Any N and M are accepted.

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
        "blocked_prealloc", blocked_prealloc_forward, q, k, v, mask, causal=causal, decay=decay,
        scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        cu_seqlens=cu_seqlens, blocks=blocks,
    )


BACKEND = Backend(
    name="blocked_prealloc",
    fn=blocked_prealloc_forward,
    description="every tile buffer allocated once and reused in place (seed variant 3); tiled backward",
    double_backward=False,
    auto_rank={"cpu": 22, "cuda": 62},
)
