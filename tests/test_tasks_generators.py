"""Generator invariants: answers correct by construction, checked by parsing the generated prompts."""

import collections
import re

import pytest

from workflow_scripts.tasks import load_task_class, story_words as W
from workflow_scripts.tasks.base import Renderer
from workflow_scripts.tasks.cwe import CommonWords, vocabulary
from workflow_scripts.tasks.testing import corpus_tokenizer
from workflow_scripts.tasks.vt import NOISE


@pytest.fixture(scope="module")
def renderer():
    return Renderer(corpus_tokenizer(2048))


def context_of(prompt: str) -> str:
    a = prompt.index("<context>\n") + len("<context>\n")
    return prompt[a:prompt.rindex("\n</context>")]


def question_of(prompt: str) -> str:
    m = re.search(r"<(questions?)>\n(.*?)\n</\1>", prompt, re.DOTALL)
    return m.group(2)


# ---------------------------------------------------------------------------------------------- VT
@pytest.mark.parametrize("length", [1024, 4096])
def test_vt_chain_resolves_to_gold(renderer, length):
    task = load_task_class("ruler_vt")(renderer, length, "cot")
    for i in range(3):
        s = task.build(i)
        ctx = context_of(s.prompt)
        assign = {}
        for name, rhs in re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", ctx):
            assert name not in assign, "a variable is assigned twice"
            assign[name] = rhs
        assert len(assign) == 8 * 5

        def resolve(n):
            rhs = assign[n]
            return int(rhs) if rhs.isdigit() else resolve(rhs[4:])

        values = {v for v in assign.values() if v.isdigit()}
        assert len(values) == 8 and all(10000 <= int(v) < 99999 for v in values)
        holders = sorted(n for n in assign if resolve(n) == s.gold["value"])
        assert holders == sorted(s.gold["names"]) and len(holders) == 5
        assert str(s.gold["value"]) in question_of(s.prompt)
        assert ctx.count(NOISE) == s.meta["num_noise"] > 0
        assert s.answer == " ".join(s.gold["names"])
        assert load_task_class("ruler_vt").score(f"<answer>{s.answer}</answer>", s.gold) == 1.0


# ---------------------------------------------------------------------------------------------- CWE
def test_cwe_vocabulary_matches_spec():
    v = vocabulary(43)
    assert len(v) == 8063 == len(set(v))                 # spec §3.3: 8063 with wonderwords 2.2.0
    assert not any("-" in w for w in v)
    assert set(vocabulary(44)) == set(v) and vocabulary(44) != v   # the task RNG only reorders


@pytest.mark.parametrize("length, params", [(1024, {"common_freq": "auto"}), (8192, {})])
def test_cwe_counts_are_exact(renderer, length, params):
    task = CommonWords(renderer, length, "cot", **params)
    freq = task.common_freq()
    for i in range(2):
        s = task.build(i)
        lines = context_of(s.prompt).split("\n")
        parsed = [re.fullmatch(r"(\d+)\. (.+)", ln) for ln in lines]
        assert all(parsed)
        assert [int(m.group(1)) for m in parsed] == list(range(1, len(lines) + 1))
        counts = collections.Counter(m.group(2) for m in parsed)
        assert sorted(w for w, c in counts.items() if c == freq) == sorted(s.gold["words"])
        assert len(s.gold["words"]) == 10
        rare = {w: c for w, c in counts.items() if w not in s.gold["words"]}
        assert set(rare.values()) == {3} and len(rare) == s.meta["num_rare"] > 0
        assert f"occurs {freq} times" in s.prompt
        assert CommonWords.score(f"<answer>\n{s.answer}\n</answer>", s.gold) == 1.0
    if params:
        assert freq < 30
    else:
        assert freq == 30


def test_cwe_too_short_for_paper_frequencies_says_what_to_change(renderer):
    with pytest.raises(ValueError, match="common_freq"):
        CommonWords(renderer, 1024, "cot").build(0)


# ---------------------------------------------------------------------------------------------- stories
def _template_regex(templates):
    out = []
    for t in templates:
        r = re.escape(t)
        for key, pat in {"P": re.escape(W.PROTAGONIST), "character": "(?P<character>[A-Z][a-z]+ [A-Z][a-z]+)",
                         "location": "(?P<location>the [^.,]+?)", "a_item": "an? (?P<item>[a-z ]+?)",
                         "sold": "(?P<sold>[a-z ]+?)", "event": "(?P<event>[^.]+?)"}.items():
            r = r.replace(re.escape("{" + key + "}"), pat, 1)
        out.append(re.compile("^" + r + "$"))
    return out


SALE_RE, BUY_RE = _template_regex(W.SALE), _template_regex(W.PURCHASE)
SCENE_RE, MEET_RE = _template_regex(W.SCENE), _template_regex(W.CHARACTER)
ITEM_RE = re.compile(r"\b(?:%s) (?:%s) (?:%s)\b" % ("|".join(W.ITEM_ADJECTIVES), "|".join(W.ITEM_MATERIALS),
                                                    "|".join(W.ITEM_TYPES)))


def parse_story(ctx: str, first: int = 1):
    """Independent reading of a narrative: per chapter its location, character, items bought and sold."""
    chapters = []
    for k, block in enumerate(ctx.split("\n\n"), first):
        head, body = block.split("\n", 1)
        assert head == f"Chapter {k}:"
        sentences = re.split(r"(?<=\.) ", body)
        info = {"location": set(), "character": set(), "bought": [], "sold": []}
        for sent in sentences:
            for regs, key in ((SCENE_RE, "location"), (MEET_RE, "character")):
                for r in regs:
                    m = r.match(sent)
                    if m:
                        info[key].add(m.group(key))
            sale = next((r.match(sent) for r in SALE_RE if r.match(sent)), None)
            buy = next((r.match(sent) for r in BUY_RE if r.match(sent)), None)
            items = ITEM_RE.findall(sent)
            if sale:
                assert items == [sale.group("sold")]
                info["sold"].append(sale.group("sold"))
            elif buy:
                assert items == [buy.group("item")]
                info["bought"].append(buy.group("item"))
            else:
                assert not items, f"an item outside purchase/sale sentences: {sent!r}"
        # every location/character mention in the chapter is the chapter's own
        assert len(info["location"]) == 1 and len(info["character"]) == 1
        assert {loc for loc in W.LOCATIONS if loc in block} == info["location"]
        chapters.append(info)
    return chapters


def check_inventory(chapters):
    held, bought_all = set(), []
    for ch in chapters:
        for item in ch["sold"]:
            assert item in held, "sold an item that was never bought or was already sold"
            held.remove(item)
        for item in ch["bought"]:
            held.add(item)
            bought_all.append(item)
    assert len(bought_all) == len(set(bought_all)), "an item is bought twice"
    pairs = [(next(iter(c["location"])), next(iter(c["character"]))) for c in chapters]
    assert len(pairs) == len(set(pairs)), "a (location, character) pair repeats"


@pytest.mark.parametrize("length", [1024, 8192])
def test_story_retrieval_correct_by_construction(renderer, length):
    task = load_task_class("story_retrieval")(renderer, length, "cot")
    for i in range(3):
        s = task.build(i)
        chapters = parse_story(context_of(s.prompt))
        check_inventory(chapters)
        assert all(len(c["bought"]) == 1 for c in chapters)
        assert len(chapters) == s.meta["num_chapters"]
        q = min(16, len(chapters))
        assert len(s.gold["answers"]) == q == len(set(s.gold["chapters"]))
        lines = question_of(s.prompt).split("\n")
        assert len(lines) == q
        for n, (line, c, kind, gold) in enumerate(zip(lines, s.gold["chapters"], s.gold["kinds"],
                                                      s.gold["answers"]), 1):
            assert line.startswith(f"{n}. ") and line.endswith(f"in chapter {c}?")
            ch = chapters[c - 1]
            truth = {"location": next(iter(ch["location"])), "character": next(iter(ch["character"])),
                     "item": ch["bought"][0]}[kind]
            assert gold == truth
        assert task.score(f"<answer>\n{s.answer}\n</answer>", s.gold) == 1.0
    if length == 8192:
        assert q == 16


@pytest.mark.parametrize("length", [1024, 8192])
def test_story_multihop_correct_by_construction(renderer, length):
    task = load_task_class("story_multihop")(renderer, length, "cot")
    for i in range(3):
        s = task.build(i)
        chapters = parse_story(context_of(s.prompt))
        check_inventory(chapters)
        target = re.search(r"before acquiring the (.+)\?", question_of(s.prompt)).group(1)
        t = next(k for k, c in enumerate(chapters) if target in c["bought"])
        assert t >= 1 and chapters[t - 1]["bought"] == [s.gold["item"]] == [s.answer]
        assert task.score(f"<answer>{s.answer}</answer>", s.gold) == 1.0


@pytest.mark.parametrize("length", [1024, 8192])
def test_story_filtering_correct_by_construction(renderer, length):
    task = load_task_class("story_filtering")(renderer, length, "cot")
    for i in range(3):
        s = task.build(i)
        chapters = parse_story(context_of(s.prompt))
        check_inventory(chapters)                  # no sale of an item whose purchase was removed
        without = [k for k, c in enumerate(chapters, 1) if not c["bought"]]
        assert without == s.gold["chapters"] and len(without) == 3
        assert all(len(c["bought"]) == 1 for k, c in enumerate(chapters, 1) if k not in without)
        assert "exactly 3 chapters" in question_of(s.prompt)
        assert task.score(f"<answer>{s.answer}</answer>", s.gold) == 1.0


def test_story_chapters_keep_their_core_when_trimmed(renderer):
    """Trimming for length removes only flavour sentences: every chapter keeps scene, meeting, purchase."""
    task = load_task_class("story_retrieval")(renderer, 2048, "direct")
    trimmed = [s for s in map(task.build, range(8)) if s.meta["num_optional"] < s.meta["num_optional_max"]]
    assert trimmed
    for s in trimmed:
        chapters = parse_story(context_of(s.prompt))
        assert all(c["location"] and c["character"] and c["bought"] for c in chapters)



def test_story_retrieval_kind_weights_steer_the_question_kinds(renderer):
    cls = load_task_class("story_retrieval")
    only_items = cls(renderer, 1024, "direct", kind_weights={"item": 1.0})
    for i in range(3):
        s = only_items.build(i)
        assert set(s.gold["kinds"]) == {"item"}
        assert all("Which item did" in line for line in question_of(s.prompt).splitlines() if line[:1].isdigit())
    mixed = cls(renderer, 1024, "direct", kind_weights={"item": 3, "location": 1, "character": 1})
    kinds = collections.Counter(k for i in range(40) for k in mixed.build(i).gold["kinds"])
    assert kinds["item"] > kinds["location"] + kinds["character"]        # ~3/5 items vs ~1/3 uniform
    # no weights and explicit None are the same draw (test_tasks_determinism pins the default's bytes)
    plain, explicit_none = cls(renderer, 1024, "direct"), cls(renderer, 1024, "direct", kind_weights=None)
    assert plain.build(5).prompt == explicit_none.build(5).prompt
    with pytest.raises(ValueError, match="kind_weights"):
        cls(renderer, 1024, "direct", kind_weights={"weapon": 1})


def test_story_first_chapter_renumbers_the_chapters_consistently(renderer):
    retrieval, filtering = load_task_class("story_retrieval"), load_task_class("story_filtering")
    task = retrieval(renderer, 1024, "direct", first_chapter=[20, 40])
    firsts = set()
    for i in range(6):
        s = task.build(i)
        first = int(re.match(r"Chapter (\d+):", context_of(s.prompt)).group(1))
        assert 20 <= first <= 40
        firsts.add(first)
        chapters = parse_story(context_of(s.prompt), first)       # consecutive headers from the drawn first
        check_inventory(chapters)
        lines = question_of(s.prompt).split("\n")
        for line, c, kind, gold in zip(lines, s.gold["chapters"], s.gold["kinds"], s.gold["answers"]):
            assert line.endswith(f"in chapter {c}?") and first <= c < first + len(chapters)
            ch = chapters[c - first]
            assert gold == {"location": next(iter(ch["location"])), "character": next(iter(ch["character"])),
                            "item": ch["bought"][0]}[kind]
        assert task.score(f"<answer>\n{s.answer}\n</answer>", s.gold) == 1.0
    assert len(firsts) >= 3                                         # drawn per sample
    f = filtering(renderer, 1024, "direct", first_chapter=37).build(0)
    chapters = parse_story(context_of(f.prompt), 37)
    assert [k for k, c in enumerate(chapters, 37) if not c["bought"]] == f.gold["chapters"]
    # the default numbers from 1, and an explicit 1 is the same sample (test_tasks_determinism pins its bytes)
    assert retrieval(renderer, 1024, "direct", first_chapter=1).build(3).prompt == \
        retrieval(renderer, 1024, "direct").build(3).prompt
    for bad in (0, [5, 2], [1], "7", True):
        with pytest.raises(ValueError, match="first_chapter"):
            retrieval(renderer, 1024, "direct", first_chapter=bad)


def test_story_retrieval_question_results_and_breakdown_classify_each_answer(renderer):
    cls = load_task_class("story_retrieval")
    s = cls(renderer, 2048, "direct").build(2)
    chapters = parse_story(context_of(s.prompt))
    gold, kinds, asked = s.gold["answers"], s.gold["kinds"], s.gold["chapters"]

    def fact(k: int, kind: str) -> str:                 # the kind's fact of chapter k (1-based), as written
        ch = chapters[k - 1]
        return {"location": next(iter(ch["location"])), "character": next(iter(ch["character"])),
                "item": ch["bought"][0]}[kind]

    # answer 2 with the same kind of fact from a chapter where it differs; 3 invented; 4 left out; others right
    other = next(k for k in range(1, len(chapters) + 1) if k != asked[1] and fact(k, kinds[1]) != gold[1])
    lines = {i: a for i, a in enumerate(gold, 1)}
    lines[2], lines[3] = fact(other, kinds[1]), "the purple elephant"
    del lines[4]
    prediction = "<answer>\n" + "\n".join(f"{i}. {a}" for i, a in sorted(lines.items())) + "\n</answer>"
    rows = cls.question_results(s, prediction)
    assert [r["source"] for r in rows[:4]] == ["correct", "other chapter", "not in story", "missing"]
    assert all(r["source"] == "correct" for r in rows[4:]) and [r["chapter"] for r in rows] == asked
    assert cls.score(prediction, s.gold) == sum(r["ok"] for r in rows) / len(rows) == (len(gold) - 3) / len(gold)

    b = cls.breakdown(rows)
    assert b["wrong"] == {"missing": 1, "not in story": 1, "other chapter": 1} and b["questions"] == len(gold)
    for kind in set(kinds):                              # hand count per kind and per band of ten chapters
        own = [i for i, k in enumerate(kinds) if k == kind]
        assert b["kind"][kind] == round(sum(i not in (1, 2, 3) for i in own) / len(own), 3)
    for band, (lo, hi) in {"1-9": (1, 9), "10-19": (10, 19)}.items():
        own = [i for i, c in enumerate(asked) if lo <= c <= hi]
        assert (band in b["chapters"]) == bool(own)
        if own:
            assert b["chapters"][band] == round(sum(i not in (1, 2, 3) for i in own) / len(own), 3)
    assert list(b["chapters"]) == sorted(b["chapters"], key=lambda k: int(k.split("-")[0]))
