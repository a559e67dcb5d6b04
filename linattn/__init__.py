"""linattn: masked linear attention, every way to compute it, and the harness that proves it.

    import linattn
    o = linattn.linear_attention(q, k, v, mask, causal=False, decay=None, backend="auto")

See ``linattn.testing`` for the verification harness (strategies, bands, check_backend).
"""
from ._api import (
    LinearAttentionOutput,
    flash_linear_attention,
    linear_attention,
    normal_linear_attention,
    state_dtype,
    validate,
)
from ._registry import (
    Backend,
    BackendUnavailable,
    Request,
    UnsupportedRequest,
    capable_backends,
    get_backend,
    list_backends,
    register_backend,
    select_backend,
)
from .slopes import alibi_slopes, tnl_slopes
from ._decode import DecodeOutput, decode_step

__version__ = "0.1.0"

__all__ = [
    "linear_attention",
    "normal_linear_attention",
    "flash_linear_attention",
    "LinearAttentionOutput",
    "validate",
    "state_dtype",
    "Backend",
    "Request",
    "BackendUnavailable",
    "UnsupportedRequest",
    "register_backend",
    "get_backend",
    "list_backends",
    "capable_backends",
    "select_backend",
    "tnl_slopes",
    "alibi_slopes",
    "decode_step",
    "DecodeOutput",
]
