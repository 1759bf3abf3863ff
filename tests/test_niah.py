"""RULER NIAH: generator invariants, exact length control and hand-made metric cases."""

from __future__ import annotations

import re

import pytest

from workflow_scripts.tasks.base import Renderer
from workflow_scripts.tasks.niah import NIAH

GOLD = {"keys": ["aaaa1111-bbbb2222-cccc3333-dddd4444", "eeee5555-ffff6666-gggg7777-hhhh8888"],
        "values": ["v1v1v1v1-w2w2w2w2-x3x3x3x3-y4y4y4y4", "zz99zz99-yy88yy88-xx77xx77-ww66ww66"]}
K1, K2 = GOLD["keys"]
V1, V2 = GOLD["values"]


@pytest.mark.parametrize("prediction, expected", [
    (f"<answer>\n1. The answer for {K1} is {V1}.\n2. The answer for {K2} is {V2}.\n</answer>", 1.0),
    # whole text is used when there is no <answer> block; optional colon after "is"; case/space tolerant value
    (f"1. The answer for {K1} is: {V1.upper()}\n2. the answer for {K2} is   {V2}.", 1.0),
    # one value wrong
    (f"<answer>1. The answer for {K1} is {V1}.\n2. The answer for {K2} is {V1}.</answer>", 0.5),
    # swapped order: the index must match the asked key's position
    (f"<answer>1. The answer for {K2} is {V2}.\n2. The answer for {K1} is {V1}.</answer>", 0.0),
    # key mistyped
    (f"<answer>1. The answer for {K1[:-1]}x is {V1}.\n2. The answer for {K2} is {V2}.</answer>", 0.5),
    # malformed lines (no number)
    (f"<answer>The answer for {K1} is {V1}. The answer for {K2} is {V2}.</answer>", 0.0),
    # answer block present but wrong; correct text outside the block does not count
    (f"1. The answer for {K1} is {V1}.\n<answer>nothing</answer>", 0.0),
    ("", 0.0),
])
def test_niah_metric_hand_cases(prediction, expected):
    assert NIAH.score(prediction, GOLD) == pytest.approx(expected)


@pytest.mark.parametrize("length", [1024, 2048, 4096])
def test_niah_generator_invariants_and_length(tiny_tokenizer, length):
    renderer = Renderer(tiny_tokenizer)
    task = NIAH(renderer, length, "direct")
    for i in range(4):
        s = task.build(i)
        # measured, not estimated: re-tokenise the final (chat-templated) prompt independently
        n = len(tiny_tokenizer(s.prompt, add_special_tokens=False)["input_ids"])
        assert n == s.input_tokens
        assert 0.95 * length <= n <= length
        assert s.prompt.startswith("<|im_start|>user\n") and s.prompt.endswith("<|im_start|>assistant\n")
        context = s.prompt.split("<context>\n", 1)[1].split("\n</context>", 1)[0]
        statements = re.findall(r"The value for key (\S+) is: (\S+)\.", context)
        keys = [k for k, _ in statements]
        assert len(keys) == len(set(keys)), "keys must be unique"
        for k, v in zip(s.gold["keys"], s.gold["values"]):
            assert context.count(k) == 1 and context.count(v) == 1, "each needle appears exactly once"
            assert (k, v) in statements
        assert len(statements) == 4 + s.meta["num_distractors"]
        # the reference answer scores 1 and the question lists the keys in order
        assert NIAH.score(f"<answer>\n{s.answer}\n</answer>", s.gold) == 1.0
        assert "Extract the values for the following keys: " + ", ".join(s.gold["keys"]) in s.prompt


def test_niah_same_question_across_lengths_and_seeds(tiny_tokenizer):
    r = Renderer(tiny_tokenizer)
    a = NIAH(r, 1024, "direct").build(3)
    b = NIAH(r, 4096, "direct").build(3)
    assert a.gold == b.gold                          # sample i is the same question at every length
    assert NIAH(r, 1024, "direct").build(3).prompt == a.prompt   # deterministic
    assert NIAH(r, 1024, "direct", seed=7).build(3).gold != a.gold
    assert NIAH(r, 1024, "direct").build(4).gold != a.gold


def test_niah_modes_differ_only_in_instructions(tiny_tokenizer):
    r = Renderer(tiny_tokenizer)
    cot = NIAH(r, 2048, "cot").build(0)
    direct = NIAH(r, 2048, "direct").build(0)
    assert "<explanation>" in cot.prompt and "<explanation>" not in direct.prompt
    assert cot.gold == direct.gold


def test_niah_rejects_too_short_target(tiny_tokenizer):
    from workflow_scripts.tasks.base import LengthError

    with pytest.raises(LengthError, match="fixed part"):
        NIAH(Renderer(tiny_tokenizer), 300, "direct").build(0)
