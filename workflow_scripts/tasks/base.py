"""Shared machinery for tasks: chat-templated rendering, token counting and exact length control.

Length rule (paper v3 §3.4): every final prompt — after the model's chat template — has between
``min_fraction`` (0.95) and 100 % of the target length in the model's own tokenizer. Generators *measure*
the final prompt; per-item token counts are only used to jump close to the target, then the final text is
tokenised and corrected until it lands in the window.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .prompt import PromptSpec, render

MIN_FRACTION = 0.95


# Calibration samples (V-S / FlexPrefill budgets, workflow_scripts/calibrate.py) use sample ids CALIBRATION_OFFSET + i;
# evaluation samples use 0 .. samples - 1. Synthetic tasks draw a fresh sample from the id; tasks over a finite
# question pool (QA) take calibration questions from the end of the pool (``Task.pool_index``).
CALIBRATION_OFFSET = 10**6


class LengthError(ValueError):
    """A sample cannot be made to fit the requested length window.

    ``kind`` says why: ``"fixed"`` (the prompt without filler is already too long), ``"filler"`` (all filler
    items are not enough), ``"granularity"`` (the items are too coarse to land inside the window) or, for QA,
    ``"pool"`` (fewer usable questions at this length than the sample id asks for).
    """

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.kind = kind


# Approximate GPT-2-style pre-tokenisation: pieces never straddle a boundary of this split in byte-level BPE
# tokenizers, so summing cached per-piece counts gives a close (for our own BPE tokenizers: exact) estimate.
_PIECE_RE = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")


# A cut between a word character and a single space/newline followed by a word character: a pre-token
# boundary for GPT-2/Qwen/Llama-3-style regex pre-tokenizers. Each cut is still verified before use.
_CUT = re.compile(r"(?<=\w)[ \n](?=\w)")
_PARALLEL_PIECES = max(1, min(4, os.cpu_count() or 1))


def wants_bos(tokenizer, chat_template_used: bool) -> bool:
    """Whether prompts need the tokenizer's BOS prepended by us: the tokenizer asks for one
    (``add_bos_token``, e.g. Gemma and Llama tokenizers) and no chat template is applied (a template that
    wants BOS writes it itself). Prompts are tokenised with ``add_special_tokens=False`` everywhere, so the
    BOS must be part of the text."""
    if chat_template_used or not getattr(tokenizer, "bos_token", None):
        return False
    if getattr(tokenizer, "add_bos_token", False):
        return True
    # some tokenizer classes (e.g. Qwen2Tokenizer) drop the key: read the folder's tokenizer_config.json
    cfg = Path(str(getattr(tokenizer, "name_or_path", ""))) / "tokenizer_config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("add_bos_token") is True


class Renderer:
    """Applies the chat template of a HF tokenizer and counts tokens (``add_special_tokens=False``).

    ``count``/``count_many``/``count_split`` are exact. ``estimate``/``estimate_many`` are fast approximations
    (sums of cached per-piece counts) used by generators to decide how much filler to take; final prompts are
    always measured exactly. ``cache`` lets tasks memoise tokenizer-dependent data for the whole job.
    """

    def __init__(self, tokenizer, use_chat_template: bool = True, bos: bool | None = None, prefill: str = ""):
        self.tokenizer = tokenizer
        self.use_chat_template = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.bos = wants_bos(tokenizer, self.use_chat_template) if bos is None else bool(bos)
        self.prefill = prefill or ""
        self._pieces: dict[str, int] = {}
        self._overhead: int | None = None
        self.cache: dict = {}        # memo for tasks (e.g. token counts of dataset documents), per tokenizer

    def final(self, user_prompt: str) -> str:
        """The text the model reads: the user turn (chat template when used), the tokenizer's BOS in front
        when ``bos`` and the text does not start with it, then ``prefill`` (the opened assistant answer)."""
        text = user_prompt
        if self.use_chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user_prompt}], tokenize=False, add_generation_prompt=True
            )
        if self.bos:
            tok = self.tokenizer.bos_token
            if not tok:
                raise ValueError("bos: the tokenizer has no BOS token")
            if not text.startswith(tok):
                text = tok + text
        return text + self.prefill

    def _fast_backend(self):
        """The Rust tokenizer when calling it directly gives exactly what ``tokenizer(texts,
        add_special_tokens=False)`` gives (no truncation/padding configured, same special-token splitting);
        ``encode_batch_fast`` skips offset tracking, which roughly halves the time of counting."""
        bt = getattr(self.tokenizer, "backend_tokenizer", None)
        if bt is None or not hasattr(bt, "encode_batch_fast"):
            return None
        try:
            if bt.truncation is not None or bt.padding is not None:
                return None
            if bt.encode_special_tokens != bool(getattr(self.tokenizer, "split_special_tokens", False)):
                return None
        except AttributeError:
            return None
        return bt

    def count(self, text: str) -> int:
        return self.count_many([text])[0]

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        bt = self._fast_backend()
        if bt is not None:
            return [len(e.ids) for e in bt.encode_batch_fast(list(texts), add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def count_split(self, text: str, min_chars: int = 40000) -> int:
        """Exact token count of a long text, tokenised in parallel pieces (one per CPU core, at most 4).

        The text is cut between a word character and a single space or newline followed by a word character.
        A cut is used only if it is additive in this tokenizer on the text around it, for two window sizes:
        ``count(left + right) == count(left) + count(right)``; a candidate failing that is skipped (a few are
        tried), and without any usable cut — or for short texts, or without a Rust backend — the text is
        counted in one piece. Generators use this for their measurements; ``count`` (one piece) stays the
        reference that ``make_data`` checks every stored prompt with.
        """
        bt = self._fast_backend()
        if bt is None or len(text) < min_chars or _PARALLEL_PIECES < 2:
            return self.count(text)
        cuts = []
        for k in range(1, _PARALLEL_PIECES):
            start = k * len(text) // _PARALLEL_PIECES
            for tries, m in enumerate(_CUT.finditer(text, start)):
                if tries >= 4 or m.start() > start + 5000:
                    break
                if self._additive_at(bt, text, m.start()):
                    cuts.append(m.start())
                    break
        if not cuts:
            return self.count(text)
        bounds = [0] + cuts + [len(text)]
        pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
        return sum(len(e.ids) for e in bt.encode_batch_fast(pieces, add_special_tokens=False))

    @staticmethod
    def _additive_at(bt, text: str, cut: int) -> bool:
        windows = []
        for w in (48, 400):
            left, right = text[max(0, cut - w):cut], text[cut:cut + w]
            windows += [left + right, left, right]
        c = [len(e.ids) for e in bt.encode_batch_fast(windows, add_special_tokens=False)]
        return c[0] == c[1] + c[2] and c[3] == c[4] + c[5]

    # ------------------------------------------------------------------ fast estimates
    def _learn(self, split: list[list[str]]) -> None:
        known = self._pieces
        new = sorted({p for ps in split for p in ps if p not in known})
        if new:
            known.update(zip(new, self.count_many(new)))

    def estimate_many(self, texts: Sequence[str]) -> list[int]:
        """Approximate token counts: sum of cached counts of the pre-tokenisation pieces of each text."""
        split = [_PIECE_RE.findall(t) for t in texts]
        self._learn(split)
        get = self._pieces.__getitem__
        return [sum(map(get, ps)) for ps in split]

    def estimate(self, text: str) -> int:
        return self.estimate_many([text])[0]

    def template_overhead(self) -> int:
        """Tokens the chat template adds around a user prompt (measured once)."""
        if self._overhead is None:
            probe = "Hello there."
            self._overhead = self.count(self.final(probe)) - self.count(probe)
        return self._overhead

    def estimate_prompt(self, user_prompt: str) -> int:
        """Approximate token count of ``final(user_prompt)``."""
        return self.estimate(user_prompt) + self.template_overhead()


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


def window(target: int, min_fraction: float = MIN_FRACTION) -> tuple[int, int]:
    """The accepted token range ``[low, target]`` of a final prompt."""
    return math.ceil(min_fraction * target - 1e-9), int(target)


def fit_items(
    renderer: Renderer,
    build: Callable[[list[int]], str],
    item_tokens: Sequence[float],
    target: int,
    min_fraction: float = MIN_FRACTION,
    swappable: bool = False,
    fixed_tokens: float | None = None,
) -> tuple[list[int], str, int]:
    """Choose filler items so that the final prompt ``renderer.final(build(items))`` fits the length window.

    ``item_tokens[i]`` is the approximate (separator included) token count of filler item ``i``; estimates
    may be off by a constant factor (it is learnt from the measurements). Items are taken as a prefix
    ``[0, n)``: cumulative counts jump close to a point just below the target, the final text is measured and
    ``n`` is corrected (secant steps, then bisection on measured lengths) — typically one or two measurements
    of the full prompt. When the window is narrower than one item (short targets) and ``swappable`` is true,
    one included item is exchanged for a longer unused one. ``fixed_tokens``, an estimate of the final prompt
    without filler, saves measuring that prompt (worth it when the fixed part is large); the fixed part is then
    measured only if the estimate says it does not fit or the filler prefix collapses to nothing.
    Returns ``(items, final_text, measured_tokens)`` with ``min_fraction*target <= tokens <= target``.
    """
    cum = list(itertools.accumulate(item_tokens, initial=0))
    n_max = len(item_tokens)
    low, target = window(target, min_fraction)
    aim = target - (target - low) / 4          # leave room for estimate errors, stay near the top
    cache: dict[Any, tuple[str, int]] = {}

    def measure(key) -> int:                   # key: an int n (prefix) or a tuple of item ids
        if key not in cache:
            items = list(range(key)) if isinstance(key, int) else list(key)
            text = renderer.final(build(items))
            cache[key] = (text, renderer.count_split(text))
        return cache[key][1]

    def result(key):
        items = list(range(key)) if isinstance(key, int) else list(key)
        return items, cache[key][0], cache[key][1]

    def too_long_fixed(base: int):
        return LengthError(f"the fixed part of the prompt alone has {base} tokens > target {target}", "fixed")

    if fixed_tokens is None or fixed_tokens > target:
        base = measure(0)
        if base > target:
            raise too_long_fixed(base)
    else:
        base = fixed_tokens

    def best_n_for(budget: float) -> int:      # largest n with cum[n] <= budget
        lo, hi = 0, n_max
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cum[mid] <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    scale = 1.0                                 # measured tokens per estimated token of filler
    lo, hi = 0, n_max + 1                       # prefix lo is known to be short; prefix hi is too long
    n = best_n_for(aim - base)
    while True:
        tokens = measure(n)
        if low <= tokens <= target:
            return result(n)
        if n == 0 and tokens > target:
            raise too_long_fixed(tokens)
        if tokens > target:
            hi = n
        else:
            lo = n
        if hi - lo <= 1:
            break
        if cum[n] > 0 and tokens > base:
            scale = (tokens - base) / cum[n]
        guess = best_n_for((aim - base) / scale)
        if not lo < guess < hi:
            guess = (lo + hi) // 2
        n = guess

    have = measure(lo)
    if lo == 0 and have > target:
        raise too_long_fixed(have)
    if lo >= n_max:
        raise LengthError(f"ran out of filler: {have} tokens < {low} ({min_fraction:.0%} of {target}) "
                          f"with all {n_max} items", "filler")
    if swappable and lo > 0:
        # exchange one included item i for an unused longer item j so the length gains [low-have, target-have]
        need_lo, need_hi = low - have, target - have
        mid = (need_lo + need_hi) / 2
        pairs = []
        for i in range(lo):
            ti = item_tokens[i]
            for j in range(lo, n_max):
                d = item_tokens[j] - ti
                if need_lo <= d <= need_hi:
                    pairs.append((abs(d - mid), i, j))
        pairs.sort()
        for _, i, j in pairs[:8]:
            key = tuple(j if k == i else k for k in range(lo))
            if low <= measure(key) <= target:
                return result(key)
    raise LengthError(f"cannot land within [{low}, {target}] tokens: item granularity too coarse "
                      f"({have} tokens with {lo} items, too long with {hi})", "granularity")


class Task:
    """Base class. Subclasses set ``name``, ``version``, ``defaults`` and implement ``build``/``score``."""

    name: str = ""
    version: str = "1"           # bump when generation or scoring changes
    defaults: dict[str, Any] = {}
    uses_datasets: bool = False  # True for tasks that read natural datasets from ``datasets_dir``

    def __init__(self, renderer: Renderer, length: int, mode: str, seed: int = 43,
                 datasets_dir: str | None = None, reserved: int = 0, **params):
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
        self.reserved = int(reserved)       # evaluation samples 0 .. reserved-1 that calibration must not reuse

    def pool_index(self, sample_id: int, pool_size: int) -> int:
        """Index into a finite question pool of ``pool_size`` for ``sample_id``: evaluation sample i asks
        question i; calibration sample ``CALIBRATION_OFFSET + c`` asks question ``pool_size - 1 - c`` (from the
        end, so it never coincides with one of the ``reserved`` evaluation questions). Raises LengthError (kind
        "pool") when the pool is too small."""
        where = f"at length {self.length}"
        if sample_id >= CALIBRATION_OFFSET:
            c = sample_id - CALIBRATION_OFFSET
            index = pool_size - 1 - c
            if index < self.reserved:
                raise LengthError(f"{self.name}: calibration sample {c} would reuse an evaluation question: only "
                                  f"{pool_size} questions are usable {where}, {self.reserved} evaluation samples "
                                  f"+ {c + 1} calibration samples requested (lower samples or "
                                  "calibration.samples)", "pool")
            return index
        if sample_id >= pool_size:
            raise LengthError(f"{self.name}: sample {sample_id} requested but only {pool_size} questions are "
                              f"usable {where}", "pool")
        return sample_id

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
