"""The six sparse-attention methods of the study: name -> class (see docs/methods.md)."""

from __future__ import annotations

from .ada_snapkv import AdaSnapKV
from .block_sparse import BlockSparse
from .flexprefill import FlexPrefill
from .quest import Quest, QuestState
from .snapkv import SnapKV
from .vertical_slash import VerticalSlash

METHOD_CLASSES = {
    "vertical_slash": VerticalSlash,
    "flexprefill": FlexPrefill,
    "block_sparse": BlockSparse,
    "snapkv": SnapKV,
    "ada_snapkv": AdaSnapKV,
    "quest": Quest,
}


def build_method(name: str, **kwargs):
    """Instantiate a method by name with its hyperparameters (e.g. ratio=10, nominal_length=16384)."""
    try:
        cls = METHOD_CLASSES[name]
    except KeyError:
        raise KeyError(f"unknown sparse method {name!r}; known: {sorted(METHOD_CLASSES)}") from None
    return cls(**kwargs)


__all__ = ["METHOD_CLASSES", "build_method", "VerticalSlash", "FlexPrefill", "BlockSparse", "SnapKV", "AdaSnapKV",
           "Quest", "QuestState"]
