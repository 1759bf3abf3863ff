"""The six sparse-attention methods of the study (see docs/methods.md); registered in sparse_kernels/registry.py."""

from __future__ import annotations

from collections.abc import Mapping

from .. import registry

from .ada_snapkv import AdaSnapKV
from .block_sparse import BlockSparse
from .flexprefill import FlexPrefill
from .quest import Quest, QuestState
from .snapkv import SnapKV
from .vertical_slash import VerticalSlash

class _Classes(Mapping):
    """``{name: class}`` of every registered sparse method (sparse_kernels/registry.py), always current."""

    def __getitem__(self, name):
        if name not in registry.METHODS or registry.METHODS[name].cls is None:
            raise KeyError(name)
        return registry.METHODS[name].method_class()

    def __iter__(self):
        return (n for n, m in registry.METHODS.items() if m.cls is not None)

    def __len__(self):
        return sum(1 for _ in self)


METHOD_CLASSES: Mapping[str, type] = _Classes()


def build_method(name: str, **kwargs):
    """Instantiate a registered method by name with its hyperparameters (e.g. ratio=10, nominal_length=16384)."""
    try:
        cls = METHOD_CLASSES[name]
    except KeyError:
        raise KeyError(f"unknown sparse method {name!r}; known: {sorted(METHOD_CLASSES)}") from None
    return cls(**kwargs)


__all__ = ["METHOD_CLASSES", "build_method", "VerticalSlash", "FlexPrefill", "BlockSparse", "SnapKV", "AdaSnapKV",
           "Quest", "QuestState"]
