"""HuggingFace transformers integration: our attention function (``attention``), the per-run context object
(``session``), pluggable executors (``executors``), the cell -> methods builder (``build``) and the greedy
decode loop (``generate``). Importing this package does not import transformers."""

from .attention import ATTN_IMPLEMENTATION, enable, is_enabled, register

__all__ = ["ATTN_IMPLEMENTATION", "enable", "is_enabled", "register"]
