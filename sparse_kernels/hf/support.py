"""Which transformers attention features the sparse session implements, decided from a checkpoint's
config.json alone (import-light: no torch, no transformers), so the study validation can reject a model
before any job starts.

Supported (``attention.py`` / ``session.py``): causal decoder-only models whose attention layers dispatch
through transformers' ``AttentionInterface`` with full-attention and sliding-window layers (``layer_types``
``full_attention`` / ``sliding_attention``, or a model-wide ``sliding_window``), logit soft-capping, QK-norm,
any query scaling, any head_dim, GQA / MQA.

Not supported, each named by :func:`unsupported_features`: encoder-decoder models, chunked attention
(Llama 4's ``attention_chunk_size``), attention sinks (gpt-oss), ALiBi position biases, multi-head latent
attention (DeepSeek V2/V3's ``kv_lora_rank``: value and key head sizes differ), and layer types other than
full / sliding attention (linear attention, state-space or recurrent layers of hybrid models).
"""

from __future__ import annotations

import json
from pathlib import Path

SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")
# model_type -> feature, for families whose config does not show the feature in a generic key
UNSUPPORTED_MODEL_TYPES = {
    "gpt_oss": "attention sinks (learned per-head sink logits)",
    "bloom": "ALiBi position biases",
    "mpt": "ALiBi position biases",
    "falcon_mamba": "state-space (Mamba) layers",
    "mamba": "state-space (Mamba) layers",
    "mamba2": "state-space (Mamba) layers",
    "rwkv": "recurrent (RWKV) layers",
}


def _text_config(cfg: dict) -> dict:
    """The language model's part of a multimodal config (``text_config``), else the config itself."""
    inner = cfg.get("text_config")
    return inner if isinstance(inner, dict) else cfg


def unsupported_features(cfg: dict) -> list[str]:
    """Human-readable names of the attention features of a config.json dict that the session lacks."""
    out = []
    if cfg.get("is_encoder_decoder"):
        out.append("encoder-decoder attention")
    t = _text_config(cfg)
    mt = str(t.get("model_type") or cfg.get("model_type") or "")
    if mt in UNSUPPORTED_MODEL_TYPES:
        out.append(UNSUPPORTED_MODEL_TYPES[mt])
    if t.get("attention_chunk_size"):
        out.append(f"chunked attention (attention_chunk_size={t['attention_chunk_size']})")
    if t.get("alibi"):
        out.append("ALiBi position biases")
    if t.get("kv_lora_rank"):
        out.append("multi-head latent attention (kv_lora_rank)")
    types = t.get("layer_types") or []
    other = sorted({str(x) for x in types} - set(SUPPORTED_LAYER_TYPES))
    if other:
        out.append(f"layer types {other} (supported: {', '.join(SUPPORTED_LAYER_TYPES)})")
    return out


def check_checkpoint(path: str | Path) -> list[str]:
    """:func:`unsupported_features` of a checkpoint folder's config.json ([] when it has none)."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return []
    return unsupported_features(json.loads(p.read_text()))


__all__ = ["SUPPORTED_LAYER_TYPES", "unsupported_features", "check_checkpoint"]
