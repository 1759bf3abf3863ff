"""RULER needle-in-a-haystack with several needles (paper spec §3.1). Low dispersion, low scope.

The context is a shuffled list of "The value for key K is: V." sentences; ``num_needles`` of them are the
needles, the rest are distractors of the same form with fresh keys. Keys and values are 4 groups of 8
characters from [a-z0-9] joined by "-" (35 characters). The model must return, for each asked key in order,
a numbered line "i. The answer for <key> is <value>.".

Metric: per-line exact match. Lines are read from the ``<answer>`` block (the whole output when there is
none); a line counts when its number, its key and its value (lowercased, whitespace squashed) all match.
Sample score = fraction of needles answered correctly.
"""

from __future__ import annotations

import random
import re
import string

from .base import Sample, Task, fit_items
from .prompt import PromptSpec, extract_answer

_ALPHABET = string.ascii_lowercase + string.digits
_LINE_RE = re.compile(r"^\s*(\d+)\s*[.:)]\s*the answer for\s+(\S+)\s+is\s*:?\s*(.+?)\s*$", re.IGNORECASE)


def _code(rng: random.Random) -> str:
    c = "".join(rng.choices(_ALPHABET, k=32))
    return f"{c[:8]}-{c[8:16]}-{c[16:24]}-{c[24:]}"


def _sentence(key: str, value: str) -> str:
    return f"The value for key {key} is: {value}."


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".").strip()


class NIAH(Task):
    name = "ruler_niah"
    version = "2"   # 2: faster code drawing (rng.choices), estimated distractor sizes
    defaults = {"num_needles": 4}

    def spec(self, keys: list[str]) -> PromptSpec:
        n = len(keys)
        return PromptSpec(
            intro=("You will read a long list of key-value statements. Some keys are asked about; "
                   "find the value stated for each of them."),
            question="Extract the values for the following keys: " + ", ".join(keys),
            answer_format=(f"Write {n} numbered lines, one per key in the order asked, each exactly like "
                           "'1. The answer for <key> is <value>.'"),
            bullets=("Each asked key appears exactly once in the context.",
                     "Copy keys and values exactly, character by character."),
            multi=True,
        )

    def _mean_tokens(self) -> float:
        """Mean token count of one distractor sentence (with its separator), measured once per task."""
        if getattr(self, "_mean", None) is None:
            rng = random.Random(self.seed)
            probe = [" " + _sentence(_code(rng), _code(rng)) for _ in range(128)]
            self._mean = sum(self.renderer.count_many(probe)) / len(probe)
        return self._mean

    def build(self, sample_id: int) -> Sample:
        rng = self.rng(sample_id)
        n_needles = int(self.params["num_needles"])
        used: set[str] = set()

        def fresh() -> str:
            while True:
                c = _code(rng)
                if c not in used:
                    used.add(c)
                    return c

        keys = [fresh() for _ in range(n_needles)]
        values = [fresh() for _ in range(n_needles)]
        needles = [_sentence(k, v) for k, v in zip(keys, values)]
        order_seed = rng.getrandbits(64)
        spec = self.spec(keys)

        # Distractors: enough for the target by an estimate of their size. Short contexts count every
        # distractor exactly (so swapping one for a longer one can land a narrow window); long ones use the
        # mean size of a distractor (the fit corrects the estimate with the measured prompt).
        mean = self._mean_tokens()
        n_est = int(self.length / mean * 1.1) + 16
        distractors = [_sentence(fresh(), fresh()) for _ in range(n_est)]
        if n_est <= 512:
            counts = self.renderer.count_many([" " + s for s in distractors])
        else:
            counts = [mean] * n_est

        def build_prompt(items: list[int]) -> str:
            sentences = needles + [distractors[i] for i in items]
            random.Random(order_seed).shuffle(sentences)
            return self.prompt(spec, " ".join(sentences))

        items, text, tokens = fit_items(self.renderer, build_prompt, counts, self.length, swappable=True,
                                        fixed_tokens=self.renderer.estimate_prompt(build_prompt([])))
        answer = "\n".join(f"{i + 1}. The answer for {k} is {v}." for i, (k, v) in enumerate(zip(keys, values)))
        return Sample(sample_id, text, tokens, answer, {"keys": keys, "values": values},
                      {"num_distractors": len(items)})

    @staticmethod
    def score(prediction: str, gold: dict) -> float:
        keys, values = gold["keys"], gold["values"]
        block = extract_answer(prediction)
        text = prediction if block is None else block
        found: dict[int, tuple[str, str]] = {}
        for line in (text or "").splitlines():
            m = _LINE_RE.match(line)
            if m:
                found.setdefault(int(m.group(1)), (m.group(2).strip().lower(), _norm(m.group(3))))
        correct = sum(
            1 for i, (k, v) in enumerate(zip(keys, values), start=1)
            if found.get(i) == (k.lower(), _norm(v))
        )
        return correct / len(keys)
