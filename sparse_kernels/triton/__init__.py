"""Triton kernels for the sparse-attention methods (see docs/kernels.md).

Dispatch API (import-light: importing this package does not import triton)::

    from sparse_kernels import triton as sk_triton
    sk_triton.available(device)          # True on CUDA with triton installed (or under TRITON_INTERPRET=1)
    ex = sk_triton.get_executor("auto", device)   # "triton" | "reference" | "auto"
    ex.prefill_attention(q, k, v, selection, scale=None)   # BlockSelection / VerticalSlashSelection
    ex.kv_compressed_attention(q, k, v, kv_selection, scale=None)
    ex.quest_attention(q, k, v, quest_selection, scale=None)
    ex.dense_attention(q, k, v, key_padding_mask=None, scale=None)
    ex.masked_decode(q, k, v, valid, scale=None)   # triton only: suffix-valid cache [B, Hkv, Lk]

The executor functions have the reference executors' signatures (``sparse_kernels.reference``). Method-side
GPU helpers (selection without host round trips): :func:`quest_select`, :func:`page_bounds`,
:func:`snapkv_compress`, :func:`vs_layout`, :func:`block_layout`, and :func:`accelerate` (a method object
whose selection step uses them).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import SimpleNamespace

EXECUTOR_NAMES = ("reference", "triton", "auto")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device=None) -> bool:
    """Whether the Triton executors can run on ``device`` (default: any CUDA device): triton importable and
    either a CUDA device or the Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors, tests only)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda":
            return torch.cuda.is_available()
        return _interpreting()
    return torch.cuda.is_available() or _interpreting()


def default_executor_name(device) -> str:
    """"triton" on CUDA devices when available, else "reference"."""
    import torch

    dev = torch.device(device)
    return "triton" if dev.type == "cuda" and available(dev) else "reference"


def get_executor(name: str = "auto", device=None) -> SimpleNamespace:
    """Namespace with ``prefill_attention``, ``kv_compressed_attention``, ``quest_attention``,
    ``dense_attention`` and ``name`` (plus ``masked_decode`` for "triton"). ``"auto"`` picks "triton" on CUDA
    (see :func:`default_executor_name`); ``"triton"`` raises if unavailable on ``device``."""
    if name not in EXECUTOR_NAMES:
        raise ValueError(f"unknown executor {name!r}; known: {EXECUTOR_NAMES}")
    if name == "auto":
        name = default_executor_name(device if device is not None else "cpu")
    if name == "triton":
        if not available(device):
            raise RuntimeError(f"triton executor unavailable on device {device!r} (needs CUDA + triton, or "
                               "TRITON_INTERPRET=1 for CPU tests)")
        mod = importlib.import_module(".executors", __name__)
    else:
        mod = importlib.import_module("..reference", __name__)
    ns = SimpleNamespace(name=name, prefill_attention=mod.prefill_attention,
                         kv_compressed_attention=mod.kv_compressed_attention,
                         quest_attention=mod.quest_attention, dense_attention=mod.dense_attention)
    if name == "triton":
        ns.masked_decode = mod.masked_decode
    return ns


_LAZY = {
    "prefill_attention": ".executors", "kv_compressed_attention": ".executors", "quest_attention": ".executors",
    "dense_attention": ".executors", "masked_decode": ".executors",
    "TileLayout": ".prefill", "block_layout": ".prefill", "causal_layout": ".prefill", "tile_attention": ".prefill",
    "vs_layout": ".vertical_slash", "vs_attention": ".vertical_slash",
    "gathered_decode": ".decode", "dense_decode": ".decode",
    "page_bounds": ".quest", "quest_select": ".quest", "group_union": ".quest",
    "accelerate": ".methods",
    "window_scores": ".snapkv", "snapkv_token_scores": ".snapkv", "snapkv_compress": ".snapkv",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["available", "default_executor_name", "get_executor", "EXECUTOR_NAMES", *_LAZY]
