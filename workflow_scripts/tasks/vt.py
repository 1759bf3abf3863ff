"""RULER variable tracking (paper spec §3.2). High dispersion, low scope.

``num_chains`` chains of ``num_hops + 1`` variables: the first variable of a chain is assigned a 5-digit value
("VAR ABCDE = 12345."), every next one the previous variable ("VAR FGHIJ = VAR ABCDE."). Chains have distinct
values and all variable names are distinct 5-letter uppercase strings. The statements are shuffled together
with copies of one fixed noise passage (five short clauses, our own wording), joined by spaces. The question
asks which variables end up holding the value of chain 0.

Length control: the number of noise passages is the filler (one passage is a few dozen tokens, inside the
5 % window from 1K tokens up).

Metric: intersection over union of name sets. The answer section (or the whole output when there is none)
is upper-cased, "VAR " prefixes are removed and the names are the alphanumeric words.
"""

from __future__ import annotations

import random
import re
import string

from .base import Sample, Task, fit_items
from .prompt import PromptSpec, extract_answer

NOISE = "The river bends to the east. The hills stay quiet. The lamps are lit. Nobody hurries. The day goes on."
_WORD_RE = re.compile(r"[A-Z0-9]+")
_VAR_RE = re.compile(r"\bVAR\s+")


def chains(rng: random.Random, num_chains: int, num_hops: int) -> tuple[list[list[str]], list[int]]:
    """Distinct variable names per chain and one distinct value per chain (drawn in this order)."""
    used: set[str] = set()
    names: list[list[str]] = []
    for _ in range(num_chains):
        chain = []
        while len(chain) < num_hops + 1:
            name = "".join(rng.choices(string.ascii_uppercase, k=5))
            if name not in used and name != "VAR":
                used.add(name)
                chain.append(name)
        names.append(chain)
    values = rng.sample(range(10000, 99999), num_chains)
    return names, values


def statements(names: list[list[str]], values: list[int]) -> list[str]:
    out = []
    for chain, value in zip(names, values):
        out.append(f"VAR {chain[0]} = {value}.")
        out += [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])]
    return out


def iou(pred: set, gold: set) -> float:
    union = pred | gold
    return len(pred & gold) / len(union) if union else 0.0


class VariableTracking(Task):
    name = "ruler_vt"
    version = "1"
    defaults = {"num_chains": 8, "num_hops": 4}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key in ("num_chains", "num_hops"):
            if not (isinstance(self.params[key], int) and self.params[key] >= 1):
                raise ValueError(f"task {self.name}: {key} must be an integer >= 1, got {self.params[key]!r}")

    @staticmethod
    def spec(value: int, n_vars: int) -> PromptSpec:
        return PromptSpec(
            intro=("You will read a text in which variables are assigned numbers or other variables, hidden "
                   "among repeated filler sentences. Follow the assignments to find which variables hold a value."),
            question=(f"Which variables are assigned the value {value}, either directly or through a chain of "
                      "assignments from other variables?"),
            answer_format="List the variable names separated by single spaces, without the word VAR.",
            bullets=(f"Exactly {n_vars} variables hold the value.",
                     "A variable assigned another variable takes that variable's value."),
        )

    def build(self, sample_id: int) -> Sample:
        rng = self.rng(sample_id)
        names, values = chains(rng, self.params["num_chains"], self.params["num_hops"])
        order_seed = rng.getrandbits(64)
        stmts = statements(names, values)
        spec = self.spec(values[0], len(names[0]))
        noise_tokens = self.renderer.estimate(" " + NOISE)
        n_noise = int(self.length / max(noise_tokens, 1) * 1.2) + 8

        def build_prompt(items: list[int]) -> str:
            pieces = stmts + [NOISE] * len(items)
            random.Random(order_seed).shuffle(pieces)
            return self.prompt(spec, " ".join(pieces))

        items, text, tokens = fit_items(self.renderer, build_prompt, [noise_tokens] * n_noise, self.length,
                                        fixed_tokens=self.renderer.estimate_prompt(build_prompt([])))
        gold = {"names": names[0], "value": values[0]}
        meta = {"num_noise": len(items), "num_chains": len(names), "num_hops": len(names[0]) - 1}
        return Sample(sample_id, text, tokens, " ".join(names[0]), gold, meta)

    @staticmethod
    def score(prediction: str, gold: dict) -> float:
        block = extract_answer(prediction)
        text = prediction if block is None else block
        words = set(_WORD_RE.findall(_VAR_RE.sub(" ", (text or "").upper())))
        return iou(words, set(gold["names"]))
