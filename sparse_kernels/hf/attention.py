"""Registration of our attention with transformers (``AttentionInterface`` + ``AttentionMaskInterface``).

After :func:`register` any HF model whose attention layers dispatch through ``AttentionInterface`` (Qwen2,
Llama, Mistral, ... — the standard ``modeling_*`` layout) can be loaded with
``attn_implementation=ATTN_IMPLEMENTATION`` (or switched with :func:`enable`) and runs unchanged:

* inside an active :class:`~sparse_kernels.hf.session.SparseSession` every layer call goes to
  ``session.attend`` (the layer is ``module.layer_idx``; the phase, methods, cache and executor live in the
  session);
* sliding-window layers (``sliding_window``) and logit soft-capping (``softcap``, Gemma 2) are passed on to
  the session (:class:`~sparse_kernels.hf.session.LayerKind`); query scaling comes from the layer
  (``scaling``: Gemma's ``query_pre_attn_scalar``), QK-norm and RoPE are already applied by the model's
  projections, and kv heads are never repeated (GQA / MQA);
* outside a session it is exactly transformers' SDPA path (same function, same masks — the mask interface is
  registered with ``sdpa_mask``, so left-padded batches are masked correctly).

Only APIs present in transformers 5.17 and 5.19 are used.
"""

from __future__ import annotations

ATTN_IMPLEMENTATION = "sparse_frontier"

# attention-function arguments of transformers models that the session does not implement (the study
# validation, ``workflow_scripts.model_support``, rejects such models before any cell runs)
UNSUPPORTED_KWARGS = {"s_aux": "attention sinks (s_aux)", "sinks": "attention sinks"}

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
    if dropout:
        raise NotImplementedError("attention dropout is not supported (inference only)")
    for name in UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"{type(module).__name__}: {UNSUPPORTED_KWARGS[name]} is not supported by "
                                      "the sparse session")
    window = kwargs.get("sliding_window")
    if window is None:
        window = getattr(module, "sliding_window", None)
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    out = session.attend(module, query, key, value, scale, window=window, softcap=kwargs.get("softcap"))
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
