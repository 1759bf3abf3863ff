"""RULER common-words extraction (paper spec §3.3). Low dispersion, high scope.

Vocabulary: the nouns, adjectives and verbs of the ``wonderwords`` package, deduplicated and sorted, shuffled
with the task RNG (``Random(seed)``), hyphenated words removed — 8063 words with wonderwords 2.2.0.

Per sample the vocabulary is shuffled with the sample RNG; the first ``num_common`` words are the common
words (each repeated ``common_freq`` times), the others are rare words (each ``rare_freq`` times). The number
of rare words is the largest that fits the length window (prefix search on measured prompts, like the
paper's binary search); all occurrences are shuffled and written as a numbered list "1. word", one per line.

Length control: one rare word adds ``rare_freq`` short lines (~15 tokens at 3×), inside the 5 % window from
1K tokens up. The common words alone take ``num_common × common_freq`` lines (300 with the paper's values,
~2K tokens with our BPE tokenizers): for short targets set ``common_freq`` lower or to "auto" (docs/tasks.md).

Metric: intersection over union of the word set read from the numbered lines of the answer section (lower
case) with the set of common words; 0 without an answer section.
"""

from __future__ import annotations

import functools
import random
import re

from .base import LengthError, Sample, Task, fit_items
from .prompt import PromptSpec, extract_answer
from .vt import iou

AUTO_MAX_FREQ = 30
_LINE_RE = re.compile(r"^\s*\d+\s*[.:)]\s*(.+?)\s*$")


@functools.lru_cache(maxsize=None)
def _raw_words() -> tuple[str, ...]:
    """Sorted unique nouns + adjectives + verbs of wonderwords."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from wonderwords import random_word as rw
    lists = rw._default_categories
    words = lists[rw.Defaults.NOUNS] + lists[rw.Defaults.ADJECTIVES] + lists[rw.Defaults.VERBS]
    return tuple(sorted(set(w.strip() for w in words if w.strip())))


@functools.lru_cache(maxsize=8)
def vocabulary(seed: int) -> tuple[str, ...]:
    """The task vocabulary: shuffled with ``Random(seed)``, hyphenated words removed."""
    words = list(_raw_words())
    random.Random(seed).shuffle(words)
    return tuple(w for w in words if "-" not in w)


def _norm(word: str) -> str:
    return " ".join(word.lower().split()).strip(".,;'\"")


class CommonWords(Task):
    name = "ruler_cwe"
    version = "1"
    defaults = {"num_common": 10, "common_freq": 30, "rare_freq": 3}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key in self.defaults:
            v = self.params[key]
            if key == "common_freq" and v == "auto":
                continue
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                extra = " or 'auto'" if key == "common_freq" else ""
                raise ValueError(f"task {self.name}: {key} must be an integer >= 1{extra}, got {v!r}")
        if self.params["common_freq"] != "auto" and self.params["common_freq"] <= self.params["rare_freq"]:
            raise ValueError(f"task {self.name}: common_freq must be larger than rare_freq")

    def common_freq(self) -> int:
        """``common_freq``, or with "auto" the largest value <= 30 whose common-word lines take at most
        40 % of the target length (estimated), and at least rare_freq + 1."""
        f = self.params["common_freq"]
        if f != "auto":
            return f
        words = vocabulary(self.seed)
        word_tok, _, line_tok = self._estimates(0)
        n_lines = self.params["num_common"] * AUTO_MAX_FREQ
        numbers = self.renderer.estimate_many([str(i) for i in range(1, n_lines + 1)])
        per_line = sum(word_tok.values()) / len(words) + line_tok + sum(numbers) / n_lines
        fit = int(0.4 * self.length / (self.params["num_common"] * per_line))
        return max(min(fit, AUTO_MAX_FREQ), self.params["rare_freq"] + 1)

    def spec(self, common_freq: int | None = None) -> PromptSpec:
        p = dict(self.params)
        p["common_freq"] = common_freq if common_freq is not None else p["common_freq"]
        return PromptSpec(
            intro="You will read a long numbered list of words. Some words occur much more often than the others.",
            question=(f"Which {p['num_common']} words occur most often in the list? Each of them occurs "
                      f"{p['common_freq']} times; every other word occurs {p['rare_freq']} times."),
            answer_format=f"Write {p['num_common']} numbered lines, one word per line, like '1. word'.",
            bullets=("The order of the words in your answer does not matter.",
                     "Write the words in lower case, exactly as they appear in the list."),
        )

    def _estimates(self, max_lines: int):
        """Estimated tokens of " word" per vocabulary word, of the line numbers 0..max_lines and of "\n" + "."
        (memoised per task instance; numbers are extended on demand)."""
        if getattr(self, "_est", None) is None:
            words = vocabulary(self.seed)
            est = self.renderer.estimate_many
            self._est = (dict(zip(words, est([" " + w for w in words]))), [], est(["\n."])[0])
        numbers = self._est[1]
        if len(numbers) <= max_lines:
            numbers += self.renderer.estimate_many([str(i) for i in range(len(numbers), max_lines + 1)])
        return self._est

    def build(self, sample_id: int) -> Sample:
        p = dict(self.params)
        p["common_freq"] = self.common_freq()
        rng = self.rng(sample_id)
        words = list(vocabulary(self.seed))
        rng.shuffle(words)
        order_seed = rng.getrandbits(64)
        k = p["num_common"]
        common, rare = words[:k], words[k:]
        spec = self.spec(p["common_freq"])
        base_lines = k * p["common_freq"]

        # estimated tokens of rare word j: its rare_freq lines "\n{i}. word" (numbers of its own lines);
        # only as many rare words as can possibly fit are considered
        # a line takes at least 2 tokens (number and newline), so no more than length/2 lines can fit
        max_lines = min(base_lines + p["rare_freq"] * len(rare), base_lines + self.length // 2 + p["rare_freq"])
        word_tok, number_tok, line_tok = self._estimates(max_lines)
        item_tokens = []
        total = 0
        for j, w in enumerate(rare):
            first = base_lines + p["rare_freq"] * j + 1
            if first + p["rare_freq"] > max_lines:
                break
            t = sum(number_tok[i] for i in range(first, first + p["rare_freq"]))
            t += p["rare_freq"] * (word_tok[w] + line_tok)
            item_tokens.append(t)
            total += t
            if total > 1.2 * self.length + 64:
                break

        def build_prompt(items: list[int]) -> str:
            occ = [w for w in common for _ in range(p["common_freq"])]
            occ += [rare[j] for j in items for _ in range(p["rare_freq"])]
            random.Random(order_seed).shuffle(occ)
            return self.prompt(spec, "\n".join(f"{i}. {w}" for i, w in enumerate(occ, 1)))

        try:
            items, text, tokens = fit_items(self.renderer, build_prompt, item_tokens, self.length,
                                            fixed_tokens=self.renderer.estimate_prompt(build_prompt([])))
        except LengthError as e:
            if e.kind != "fixed":
                raise
            raise LengthError(f"{self.name}: {e}; the {k} x {p['common_freq']} common-word lines do not fit "
                              f"{self.length} tokens: lower task_params.ruler_cwe.common_freq (or set it to "
                              "'auto')", "fixed") from None
        answer = "\n".join(f"{i}. {w}" for i, w in enumerate(common, 1))
        gold = {"words": common}
        meta = {"num_rare": len(items), "common_freq": p["common_freq"], "rare_freq": p["rare_freq"]}
        return Sample(sample_id, text, tokens, answer, gold, meta)

    @staticmethod
    def score(prediction: str, gold: dict) -> float:
        block = extract_answer(prediction)
        if block is None:
            return 0.0
        pred = set()
        for line in block.splitlines():
            m = _LINE_RE.match(line)
            if m:
                pred.add(_norm(m.group(1)))
        pred.discard("")
        return iou(pred, {_norm(w) for w in gold["words"]})

