"""The prompt skeleton shared by every task (paper spec §3.0), in two modes.

* ``cot``: the paper's format — the model explains inside ``<explanation>`` and then answers inside
  ``<answer>``. Meant for instruction-tuned models.
* ``direct``: the model answers inside ``<answer>`` only. Meant for small models such as the project's
  reference models, which cannot follow a chain-of-thought format.

The wording is our own; the structure (intro, question before and after the context, numbered
instructions, response structure, "Important" bullets) follows the paper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromptSpec:
    intro: str                      # what the task is about
    question: str                   # question(s), stated before and after the context
    answer_format: str              # how the answer section must look
    bullets: tuple[str, ...] = field(default_factory=tuple)  # task-specific "Important" bullets
    multi: bool = False             # several questions -> <questions> tags


def render(spec: PromptSpec, context: str, mode: str) -> str:
    qtag = "questions" if spec.multi else "question"
    parts = [
        spec.intro,
        f"The {'questions are' if spec.multi else 'question is'} given both before and after the context.",
        "",
        f"<{qtag}>\n{spec.question}\n</{qtag}>",
        "",
        f"<context>\n{context}\n</context>",
        "",
        f"<{qtag}_repeated>\n{spec.question}\n</{qtag}_repeated>",
        "",
    ]
    if mode == "cot":
        parts += [
            "Instructions:",
            "1. First explain your reasoning inside <explanation></explanation> tags.",
            f"2. Then give the answer inside <answer></answer> tags. {spec.answer_format}",
            "",
            "Your response must have this structure:",
            "<explanation>\n...\n</explanation>\n<answer>\n...\n</answer>",
        ]
    elif mode == "direct":
        parts += [
            "Instructions:",
            f"1. Give only the answer inside <answer></answer> tags, without any explanation. {spec.answer_format}",
            "",
            "Your response must have this structure:",
            "<answer>\n...\n</answer>",
        ]
    else:
        raise ValueError(f"unknown prompt mode {mode!r} (expected 'cot' or 'direct')")
    bullets = list(spec.bullets) + [
        "Be concise.",
        "Put nothing but the answer in the answer section.",
    ]
    parts += ["", "Important:"] + [f"- {b}" for b in bullets]
    return "\n".join(parts)


_ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """Content of the first ``<answer>`` block (an unterminated block runs to the end), else None."""
    m = _ANSWER_RE.search(text or "")
    return None if m is None else m.group(1).strip()
