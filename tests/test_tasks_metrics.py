"""Task metrics on hand-made predictions: right, wrong, partially right, malformed, missing <answer>."""

import pytest

from workflow_scripts.tasks import load_task_class
from workflow_scripts.tasks.qa import token_f1


def score(task, prediction, gold):
    return load_task_class(task).score(prediction, gold)


def ans(body, cot=True):
    return ("<explanation>\nbecause\n</explanation>\n" if cot else "") + f"<answer>\n{body}\n</answer>"


# ---------------------------------------------------------------------------------------------- VT
VT_GOLD = {"names": ["ABCDE", "FGHIJ", "KLMNO", "PQRST", "UVWXY"], "value": 12345}


@pytest.mark.parametrize("prediction, expected", [
    (ans("ABCDE FGHIJ KLMNO PQRST UVWXY"), 1.0),
    (ans("VAR ABCDE, VAR FGHIJ, VAR KLMNO, VAR PQRST, VAR UVWXY"), 1.0),   # prefixes/commas tolerated
    (ans("uvwxy pqrst klmno fghij abcde"), 1.0),                          # case-insensitive, any order
    (ans("ABCDE FGHIJ KLMNO"), 3 / 5),                                    # partial
    (ans("ABCDE FGHIJ KLMNO PQRST UVWXY ZZZZZ AAAAA BBBBB CCCCC DDDDD"), 5 / 10),  # extra names
    (ans("QQQQQ RRRRR"), 0.0),                                            # wrong
    ("The variables are ABCDE and FGHIJ", 2 / 9),   # no <answer>: whole text, so THE/VARIABLES/ARE/AND count
    ("<answer>ABCDE FGHIJ KLMNO PQRST UVWXY", 1.0),                       # unterminated answer block
    ("", 0.0),
    (ans(""), 0.0),
])
def test_vt_metric(prediction, expected):
    assert score("ruler_vt", prediction, VT_GOLD) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- CWE
CWE_WORDS = ["apple", "river", "stone", "cloud", "lamp", "horse", "violin", "maple", "tiger", "ocean"]
CWE_GOLD = {"words": CWE_WORDS}


def numbered(words):
    return "\n".join(f"{i}. {w}" for i, w in enumerate(words, 1))


@pytest.mark.parametrize("prediction, expected", [
    (ans(numbered(CWE_WORDS)), 1.0),
    (ans(numbered([w.upper() for w in reversed(CWE_WORDS)])), 1.0),       # order and case do not matter
    (ans(numbered(CWE_WORDS[:5])), 0.5),                                  # half of them
    (ans(numbered(CWE_WORDS[:5] + ["bread", "chair", "glove", "sugar", "wheel"])), 5 / 15),
    (ans(numbered(["bread", "chair"])), 0.0),
    (numbered(CWE_WORDS), 0.0),                                           # no <answer>: 0 (paper)
    (ans(", ".join(CWE_WORDS)), 0.0),                                     # not numbered lines
    (ans(""), 0.0),
])
def test_cwe_metric(prediction, expected):
    assert score("ruler_cwe", prediction, CWE_GOLD) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- MCQ
@pytest.mark.parametrize("task", ["qa_quality", "qa_toefl"])
@pytest.mark.parametrize("prediction, gold, expected", [
    (ans("B"), "B", 1.0),
    (ans("b"), "B", 1.0),
    (ans("C, A"), "AC", 1.0),                        # sorted letters
    (ans("Question about document 4: D"), "D", 1.0),  # a "Question ...:" label is dropped
    (ans("A"), "AC", 0.0),                           # partial multi-answer is wrong (exact match)
    (ans("AB"), "A", 0.0),
    (ans("B. most of them are accessible"), "B", 0.0),  # strict: letters A-D inside words count
    ("B", "B", 0.0),                                 # no <answer>
    (ans(""), "B", 0.0),
    (ans("none"), "B", 0.0),
])
def test_mcq_metric(task, prediction, gold, expected):
    assert score(task, prediction, {"letters": gold}) == expected


# ---------------------------------------------------------------------------------------------- SQuAD
def test_token_f1_is_set_based_and_rounded():
    assert token_f1("Rhea", "Rhea Castellan") == 0.67
    assert token_f1("the the salt salt", "salt") == 1.0               # set-based, articles removed
    assert token_f1("The Salt Trade.", "salt trade") == 1.0           # case, punctuation
    assert token_f1("about to and or", "x") == 0.0                     # stop words only


@pytest.mark.parametrize("prediction, expected", [
    (ans("Rhea Castellan"), 1.0),
    (ans("Rhea"), 0.67),
    (ans("in 1935"), 1.0),                 # max over golds: "in 1935" is the second gold answer
    (ans("1935"), 0.67),                   # {1935} vs {in, 1935}: P=1, R=.5
    (ans("Tove Marr"), 0.0),
    ("Rhea Castellan", 0.0),               # no <answer>
    (ans(""), 0.0),
    ("<answer>Rhea Castellan", 1.0),       # unterminated block
])
def test_squad_metric(prediction, expected):
    gold = {"answers": ["Rhea Castellan", "in 1935"]}
    assert score("qa_squad", prediction, gold) == expected


# ---------------------------------------------------------------------------------------------- stories
RET_GOLD = {"answers": ["the salt marsh", "Ilse Varga", "polished copper lantern", "the windmill"],
            "kinds": ["location", "character", "item", "location"], "chapters": [3, 1, 7, 2]}


@pytest.mark.parametrize("prediction, expected", [
    (ans("1. the salt marsh\n2. Ilse Varga\n3. polished copper lantern\n4. the windmill"), 1.0),
    (ans("1. Salt Marsh.\n2) ilse  varga\n3: a polished copper lantern\n4. The windmill"), 1.0),  # normalised
    (ans("1. the salt marsh\n2. Tomas Brenner\n3. polished copper lantern\n4. the mill"), 0.5),
    (ans("2. Ilse Varga\n1. the salt marsh"), 0.5),                       # numbers decide, not order
    (ans("the salt marsh\nIlse Varga"), 0.0),                              # unnumbered lines
    ("1. the salt marsh\n2. Ilse Varga", 0.5),                              # no <answer>: whole text
    (ans("1. polished copper lantern"), 0.0),                              # wrong line number
    (ans(""), 0.0),
])
def test_story_retrieval_metric(prediction, expected):
    assert score("story_retrieval", prediction, RET_GOLD) == expected


MH_GOLD = {"item": "engraved porcelain candlestick", "chapter": 4, "target_item": "tiny oak flute",
           "target_chapter": 5}


@pytest.mark.parametrize("prediction, expected", [
    (ans("engraved porcelain candlestick"), 1.0),
    (ans("An Engraved porcelain candlestick."), 1.0),
    (ans("engraved porcelain"), 0.0),              # partial is wrong (exact match)
    (ans("tiny oak flute"), 0.0),
    ("engraved porcelain candlestick", 0.0),       # no <answer>: 0 (the paper drops such samples)
    (ans(""), 0.0),                                # empty: 0 (the paper drops such samples)
])
def test_story_multihop_metric(prediction, expected):
    assert score("story_multihop", prediction, MH_GOLD) == expected


FILT_GOLD = {"chapters": [5, 17, 42]}


@pytest.mark.parametrize("prediction, expected", [
    (ans("5, 17, 42"), 1.0),
    (ans("Chapter 42, Chapter 5 and Chapter 17"), 1.0),
    (ans("5, 17"), 2 / 3),
    (ans("5, 17, 42, 50"), 3 / 4),
    (ans("Chapter 5 (not 6 or 7)"), 1 / 3),        # "Chapter N" mentions take precedence over integers
    (ans("none"), 0.0),
    ("5, 17, 42", 0.0),                            # no <answer>
])
def test_story_filtering_metric(prediction, expected):
    assert score("story_filtering", prediction, FILT_GOLD) == pytest.approx(expected)


@pytest.mark.parametrize("task", ["ruler_vt", "ruler_cwe", "qa_squad", "qa_quality", "qa_toefl",
                                  "story_retrieval", "story_multihop", "story_filtering"])
def test_scores_are_in_unit_interval_for_garbage(task):
    gold = {"ruler_vt": VT_GOLD, "ruler_cwe": CWE_GOLD, "qa_squad": {"answers": ["x y"]},
            "qa_quality": {"letters": "A"}, "qa_toefl": {"letters": "A"}, "story_retrieval": RET_GOLD,
            "story_multihop": MH_GOLD, "story_filtering": FILT_GOLD}[task]
    for pred in ["", "<answer></answer>", "<answer>", "</answer>", "<answer>\n\n\n</answer>", "x" * 1000,
                 "<explanation>only</explanation>", None]:
        s = score(task, pred, gold)
        assert 0.0 <= s <= 1.0
