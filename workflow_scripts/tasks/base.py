"""Shared machinery for tasks: chat-templated rendering, token counting and exact length control.

Length rule (paper v3 §3.4): every final prompt — after the model's chat template — has between
``min_fraction`` (0.95) and 100 % of the target length in the model's own tokenizer. Generators *measure*
the final prompt; per-item token counts are only used to jump close to the target, then the final text is
tokenised and corrected until it lands in the window.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .prompt import PromptSpec, render

MIN_FRACTION = 0.95


class LengthError(ValueError):
    """A sample cannot be made to fit the requested length window."""


class Renderer:
    """Applies the chat template of a HF tokenizer and counts tokens (``add_special_tokens=False``)."""

    def __init__(self, tokenizer, use_chat_template: bool = True):
        self.tokenizer = tokenizer
        self.use_chat_template = bool(use_chat_template and getattr(tokenizer, "chat_template", None))

    def final(self, user_prompt: str) -> str:
        if not self.use_chat_template:
            return user_prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_prompt}], tokenize=False, add_generation_prompt=True
        )

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


@dataclass
class Sample:
    sample_id: int
    prompt: str            # final text fed to the model (chat template applied)
    input_tokens: int      # measured length of ``prompt``
    answer: str            # reference content of the answer section (also a training target)
    gold: dict             # what the metric needs
    meta: dict = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "prompt": self.prompt,
            "input_tokens": self.input_tokens,
            "answer": self.answer,
            "gold": json.dumps(self.gold, sort_keys=True),
            "meta": json.dumps(self.meta, sort_keys=True),
        }


def fit_items(
    renderer: Renderer,
    build: Callable[[list[int]], str],
    item_tokens: Sequence[int],
    target: int,
    min_fraction: float = MIN_FRACTION,
    swappable: bool = False,
) -> tuple[list[int], str, int]:
    """Choose filler items so that the final prompt ``renderer.final(build(items))`` fits the length window.

    ``item_tokens[i]`` is the approximate (separator included) token count of filler item ``i``. Items are
    taken as a prefix ``[0, n)``: cumulative counts jump close to the target, then the final text is measured
    and ``n`` is corrected (bisection on measured lengths). When the window is narrower than one item
    (short targets) and ``swappable`` is true, one included item is exchanged for a longer unused one.
    Returns ``(items, final_text, measured_tokens)`` with ``min_fraction*target <= tokens <= target``.
    """
    cum = [0]
    for t in item_tokens:
        cum.append(cum[-1] + t)
    n_max = len(item_tokens)
    low = int(min_fraction * target + 0.999999)
    cache: dict[tuple[int, ...], tuple[str, int]] = {}

    def measure(items: list[int]) -> int:
        key = tuple(items)
        if key not in cache:
            text = renderer.final(build(list(items)))
            cache[key] = (text, renderer.count(text))
        return cache[key][1]

    def result(items: list[int]):
        return list(items), cache[tuple(items)][0], cache[tuple(items)][1]

    base = measure([])
    if base > target:
        raise LengthError(f"the fixed part of the prompt alone has {base} tokens > target {target}")

    def best_n_for(budget: int) -> int:      # largest n with cum[n] <= budget
        lo, hi = 0, n_max
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cum[mid] <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    lo, hi = 0, n_max + 1            # prefix lo is known to fit; prefix hi is too long (or past the filler)
    n = best_n_for(target - base)
    while True:
        tokens = measure(list(range(n)))
        if low <= tokens <= target:
            return result(list(range(n)))
        if tokens > target:
            hi = n
            guess = best_n_for(cum[n] - (tokens - target))   # drop items covering the excess
        else:
            lo = n
            guess = best_n_for(cum[n] + (target - tokens))   # add items covering the deficit
        if hi - lo <= 1:
            break
        if not lo < guess < hi:
            guess = (lo + hi) // 2
        n = guess

    have = measure(list(range(lo)))
    if lo >= n_max:
        raise LengthError(f"ran out of filler: {have} tokens < {low} ({min_fraction:.0%} of {target}) "
                          f"with all {n_max} items")
    if swappable and lo > 0:
        # exchange one included item i for an unused longer item j so the length gains [low-have, target-have]
        need_lo, need_hi = low - have, target - have
        pairs = sorted(
            ((item_tokens[j] - item_tokens[i], i, j) for i in range(lo) for j in range(lo, n_max)
             if need_lo <= item_tokens[j] - item_tokens[i] <= need_hi),
            key=lambda p: abs(p[0] - (need_lo + need_hi) / 2),
        )
        for _, i, j in pairs[:8]:
            items = [j if k == i else k for k in range(lo)]
            if low <= measure(items) <= target:
                return result(items)
    raise LengthError(f"cannot land within [{low}, {target}] tokens: item granularity too coarse "
                      f"({have} tokens with {lo} items, too long with {hi})")


class Task:
    """Base class. Subclasses set ``name``, ``version``, ``defaults`` and implement ``build``/``score``."""

    name: str = ""
    version: str = "1"           # bump when generation or scoring changes
    defaults: dict[str, Any] = {}
    uses_datasets: bool = False  # True for tasks that read natural datasets from ``datasets_dir``

    def __init__(self, renderer: Renderer, length: int, mode: str, seed: int = 43,
                 datasets_dir: str | None = None, **params):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"task {self.name}: unknown parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(self.defaults)}")
        self.renderer = renderer
        self.length = int(length)
        self.mode = mode
        self.seed = int(seed)
        self.datasets_dir = datasets_dir      # where natural datasets (QA files) live; None = task default
        self.params = {**self.defaults, **params}

    def rng(self, sample_id: int) -> random.Random:
        """Per-sample RNG: sample i draws the same question at every length (paper: Random(43 + i))."""
        return random.Random(self.seed + sample_id)

    def prompt(self, spec: PromptSpec, context: str) -> str:
        return render(spec, context, self.mode)

    def build(self, sample_id: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def score(prediction: str, gold: dict) -> float:  # pragma: no cover - abstract
        raise NotImplementedError
