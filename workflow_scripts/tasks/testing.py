"""Helpers for tests and benchmarks: real BPE tokenizers trained on the tasks' own text (memoised per process)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def corpus_tokenizer(vocab_size: int, n_lines: int = 12000, seed: int = 0):
    """A byte-level BPE tokenizer with a ChatML template, trained on ``tokenizer_corpus(n_lines, seed)``."""
    from ..tokenizer import train_tokenizer
    from .corpus import tokenizer_corpus

    return train_tokenizer(tokenizer_corpus(n_lines, seed), vocab_size=vocab_size)
