"""Registration of our attention with transformers (``AttentionInterface`` + ``AttentionMaskInterface``).

After :func:`register` any HF model whose attention layers dispatch through ``AttentionInterface`` (Qwen2,
Llama, Mistral, ... — the standard ``modeling_*`` layout) can be loaded with
``attn_implementation=ATTN_IMPLEMENTATION`` (or switched with :func:`enable`) and runs unchanged:

* inside an active :class:`~sparse_kernels.hf.session.SparseSession` every layer call goes to
  ``session.attend`` (the layer is ``module.layer_idx``; the phase, methods, cache and executor live in the
  session);
* outside a session it is exactly transformers' SDPA path (same function, same masks — the mask interface is
  registered with ``sdpa_mask``, so left-padded batches are masked correctly).

Only APIs present in transformers 5.17 and 5.19 are used.
"""

from __future__ import annotations

ATTN_IMPLEMENTATION = "sparse_frontier"

_registered = False


def sparse_frontier_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [B, H, Lq, D], key/value [B, Hkv, Lk, D] (not repeated);
    returns (output [B, Lq, H, D], None)."""
    from .session import active_session

    session = active_session()
    if session is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if kwargs.get("sliding_window") is not None or getattr(module, "sliding_window", None) is not None:
        raise NotImplementedError("sliding-window attention layers are not supported by the sparse session")
    if dropout:
        raise NotImplementedError("attention dropout is not supported (inference only)")
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    out = session.attend(module, query, key, value, scale)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the attention function and its (SDPA) mask function under :data:`ATTN_IMPLEMENTATION`."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.masking_utils import sdpa_mask

        AttentionInterface.register(ATTN_IMPLEMENTATION, sparse_frontier_attention)
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
        _registered = True
    return ATTN_IMPLEMENTATION


def enable(model):
    """Switch a loaded model to our attention implementation (registers it first). Returns the model."""
    register()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


def is_enabled(model) -> bool:
    return getattr(model.config, "_attn_implementation", None) == ATTN_IMPLEMENTATION


__all__ = ["ATTN_IMPLEMENTATION", "register", "enable", "is_enabled", "sparse_frontier_attention"]
