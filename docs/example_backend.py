"""An external backend in one file: masked linear attention with ``torch.einsum``.

Validate it with the harness, by import path::

    linattn verify docs.example_backend:attention
    python -c "from linattn.testing import check_backend; print(check_backend('docs.example_backend:attention').status)"

Anything with :func:`linattn.linear_attention`'s signature (without ``backend=``) is a
backend. This one materialises the N×M scores (like the reference) but is written from
the formula alone, in the input's dtype promoted to float32 for halves. It declares what
it serves with a ``supports`` attribute — no packed sequences (``cu_seqlens``) — so
those requests are reported as skipped, never as passed; it could equally raise
``NotImplementedError``.
"""
import torch


def attention(q, k, v, mask=None, *, causal=False, decay=None, scale=1.0, initial_state=None,
              output_final_state=False, cu_seqlens=None):
    """o[b,h,i] = scale · Σ_j (q[b,h,i]·k[b,g,j]) W[b,h,i,j] v[b,g,j],  g = h // (H / Hkv).

    q [B, H, N, D], k [B, Hkv, M, D], v [B, Hkv, M, E], mask broadcastable to
    [B, H, N, M]; decay [H] (implies causal); initial_state [B, H, D, E].
    Returns o [B, H, N, E] (q's dtype), or (o, final_state [B, H, D, E]).
    """
    if cu_seqlens is not None:
        raise NotImplementedError("packed sequences")
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    g = H // Hkv
    qw = q.to(wide)
    kw = k.to(wide).repeat_interleave(g, dim=1)  # [B, H, M, D]
    vw = v.to(wide).repeat_interleave(g, dim=1)  # [B, H, M, E]
    i = torch.arange(N, device=q.device)[:, None]
    j = torch.arange(M, device=q.device)[None, :]
    W = torch.ones(N, M, dtype=wide, device=q.device)
    if causal or decay is not None:
        W = W * (j <= i)
    if decay is not None:
        dist = (i - j).clamp(min=0).to(wide)  # [N, M]
        W = W * torch.exp(-decay.to(wide)[:, None, None] * dist)  # [H, N, M]
    if mask is not None:
        W = W * mask.to(wide)
    scores = torch.einsum("bhnd,bhmd->bhnm", qw, kw) * W  # [B, H, N, M]
    o = scale * torch.einsum("bhnm,bhme->bhne", scores, vw)
    final = None
    if initial_state is not None or output_final_state:
        lam_q = lam_k = lam_n = None
        if decay is not None:
            s = decay.to(wide)[None, :, None, None]  # [1, H, 1, 1]
            t = torch.arange(N, device=q.device, dtype=wide)[None, None, :, None]
            lam_q, lam_k, lam_n = torch.exp(-s * (t + 1)), torch.exp(-s * (N - 1 - t)), torch.exp(-s * N)
        if initial_state is not None:
            s0 = initial_state.to(wide)
            qs = qw if lam_q is None else qw * lam_q
            o = o + scale * torch.einsum("bhnd,bhde->bhne", qs, s0)
        if output_final_state:
            ks = kw if lam_k is None else kw * lam_k
            final = torch.einsum("bhmd,bhme->bhde", ks, vw)
            if initial_state is not None:
                final = final + (s0 if lam_n is None else lam_n * s0)
    o = o.to(q.dtype)
    return (o, final) if output_final_state else o


def supports(request):
    """What this backend serves (a linattn.Request): everything but packed sequences."""
    if request.varlen:
        return "packed sequences (cu_seqlens) are not implemented"
    return True


attention.supports = supports
