"""Story tasks over procedurally generated narratives (paper spec §3.5), with our own word lists and templates.

Narrative: the travels of one protagonist, in numbered chapters ("Chapter k:" then the chapter's sentences;
chapters separated by a blank line). Every chapter has a (location, character) pair used by no other chapter,
an event, and exactly one purchase of an item "<adjective> <material> <type>" bought in no other chapter.
With probability 0.5 the chapter also sells an item bought in an earlier chapter and not sold yet.

Sentences are *core* (scene with the location, meeting the character, the purchase, the sale) or *optional*
flavour (reason, event, three conversation lines, farewell, conclusion, one extra line). Core sentences carry
everything any question asks about; optional ones never mention items, buying or selling.

Length control (see docs/tasks.md): the narrative is chapters 1..n, every chapter with its core sentences;
the optional sentences form the filler, taken as a prefix in chapter order, so only the last chapter or two
can lose flavour sentences. An optional sentence is ~10-25 tokens, inside the 5 % window from 1K tokens up.

Chapters are drawn one by one from a narrative RNG seeded from the sample RNG, so sample i shares its
leading chapters across lengths; the questions are drawn from a second seeded RNG once n is known.

Tasks:

* ``story_retrieval`` (num_queries=16): numbered questions, each about the location, the character or the
  acquired item of a distinct chapter. Score: fraction of numbered answer lines that match exactly after
  normalisation (lower case, whitespace squashed, surrounding punctuation and a leading article removed).
* ``story_multihop``: "which item was acquired immediately before acquiring <item of chapter t>?", t uniform in
  2..n; the answer is chapter t-1's item. Score: exact match of the normalised answer section; a missing or
  empty answer section scores 0 (the official code drops such samples).
* ``story_filtering`` (chapters_in_question=3): the purchase sentences of that many chapters are deleted (and
  later sales of their items too, so the story stays consistent); which chapters have no purchase? Score: IoU
  of chapter-number sets ("Chapter N" mentions first, otherwise all integers); 0 without an answer section.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from . import story_words as W
from .base import LengthError, Sample, Task, fit_items, window
from .prompt import PromptSpec, extract_answer
from .vt import iou

P = W.PROTAGONIST

# sentence slots, in the order they appear inside a chapter
SCENE, REASON, EVENT, MEET, CONV1, CONV2, CONV3, BUY, SELL, FAREWELL, CONCLUSION, EXTRA = range(12)
OPTIONAL_ORDER = (REASON, EVENT, CONV1, CONV2, CONV3, FAREWELL, CONCLUSION, EXTRA)  # kept first -> trimmed last


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


@dataclass
class Chapter:
    number: int
    location: str
    character: str
    event: str
    item: str
    sold: str | None                      # item of an earlier chapter sold here
    sentences: dict[int, str] = field(default_factory=dict)   # slot -> sentence

    def text(self, n_optional: int, drop: frozenset = frozenset()) -> str:
        keep = {s for s in (SCENE, MEET, BUY, SELL) if s in self.sentences} | set(OPTIONAL_ORDER[:n_optional])
        body = " ".join(self.sentences[s] for s in sorted(keep - drop))
        return f"Chapter {self.number}:\n{body}"


class Narrative:
    """Chapters drawn lazily, one after the other, from one RNG (so prefixes agree across lengths)."""

    def __init__(self, rng: random.Random, first: int = 1):
        self.rng = rng
        self.first = first                   # number of the first chapter
        self.chapters: list[Chapter] = []
        self._pairs: set[tuple[int, int]] = set()
        self._items: set[tuple[int, int, int]] = set()
        self._held: list[str] = []

    def __getitem__(self, k: int) -> Chapter:      # 0-based
        while len(self.chapters) <= k:
            self._next()
        return self.chapters[k]

    def _next(self) -> None:
        r = self.rng.random                  # one float per draw: much cheaper than choice/randrange

        def pick(seq):
            return seq[int(r() * len(seq))]

        if len(self.chapters) >= len(W.LOCATIONS) * len(W.CHARACTERS):
            raise LengthError("ran out of unique (location, character) pairs", "filler")
        while True:
            pair = (int(r() * len(W.LOCATIONS)), int(r() * len(W.CHARACTERS)))
            if pair not in self._pairs:
                self._pairs.add(pair)
                break
        while True:
            code = (int(r() * len(W.ITEM_ADJECTIVES)), int(r() * len(W.ITEM_MATERIALS)),
                    int(r() * len(W.ITEM_TYPES)))
            if code not in self._items:
                self._items.add(code)
                break
        item = f"{W.ITEM_ADJECTIVES[code[0]]} {W.ITEM_MATERIALS[code[1]]} {W.ITEM_TYPES[code[2]]}"
        location, character = W.LOCATIONS[pair[0]], W.CHARACTERS[pair[1]]
        event = pick(W.EVENTS)
        sold = None
        if r() < 0.5 and self._held:
            sold = self._held.pop(int(r() * len(self._held)))
        conv = self.rng.sample(W.CONVERSATION, 3)
        templates = {
            SCENE: pick(W.SCENE), REASON: pick(W.REASON), EVENT: pick(W.EVENT), MEET: pick(W.CHARACTER),
            CONV1: conv[0], CONV2: conv[1], CONV3: conv[2], BUY: pick(W.PURCHASE), FAREWELL: pick(W.FAREWELL),
            CONCLUSION: pick(W.CONCLUSION), EXTRA: pick(W.EXTRA),
        }
        sale = pick(W.SALE)
        if sold is not None:
            templates[SELL] = sale
        slots = {"P": P, "location": location, "character": character, "event": event,
                 "a_item": with_article(item), "item": item, "sold": sold}
        sentences = {s: t.format_map(slots) if "{" in t else t for s, t in templates.items()}
        self._held.append(item)
        number = self.first + len(self.chapters)
        self.chapters.append(Chapter(number, location, character, event, item, sold, sentences))


_LINE_RE = re.compile(r"^\s*(\d+)\s*[.:)]\s*(.*?)\s*$")
_CHAPTER_RE = re.compile(r"^Chapter (\d+):\n(.*)$", re.M)     # a chapter's number and its one-line text
_ARTICLE_RE = re.compile(r"^(?:the|a|an)\s+")


def norm(text: str) -> str:
    """Lower case, squash whitespace, strip surrounding punctuation/quotes and one leading article."""
    t = " ".join((text or "").lower().split()).strip(" .,;:!?'\"`*")
    return _ARTICLE_RE.sub("", t)


# parameters every story task takes. first_chapter: the number of the first chapter, an int, or [lo, hi] to draw it
# per sample (uniform, inclusive). A training-data knob: with stories numbered from 1, short contexts only hold
# one-digit chapters, while the questions of long ones mostly name two-digit chapters (docs/reference_models.md,
# session 11); evaluations keep the default 1.
STORY_DEFAULTS = {"first_chapter": 1}


class _StoryTask(Task):
    """Shared narrative construction and length control; subclasses define questions and answers."""

    min_chapters = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        f = self.params["first_chapter"]
        ok = (type(f) is int and f >= 1) or (                       # type(...) is int: no booleans
            isinstance(f, (list, tuple)) and len(f) == 2 and all(type(v) is int for v in f) and 1 <= f[0] <= f[1])
        if not ok:
            raise ValueError(f"task {self.name}: first_chapter must be an integer >= 1 or [lo, hi] with "
                             f"1 <= lo <= hi, got {f!r}")

    def first_chapter(self, rng: random.Random) -> int:
        f = self.params["first_chapter"]
        return f if isinstance(f, int) else rng.randint(f[0], f[1])

    def questions(self, chapters: list[Chapter], rng: random.Random):
        """-> (PromptSpec, drop: {chapter index: frozenset(slots)}, answer text, gold dict, meta dict)."""
        raise NotImplementedError

    def generic_spec(self) -> PromptSpec:
        """A stand-in question of typical size, used only to estimate how many chapters fit."""
        raise NotImplementedError

    def build(self, sample_id: int) -> Sample:
        rng = self.rng(sample_id)
        narrative_seed, question_seed = rng.getrandbits(64), rng.getrandbits(64)
        narrative = Narrative(random.Random(narrative_seed), self.first_chapter(rng))   # draws only for [lo, hi]
        renderer = self.renderer
        low, target = window(self.length)
        aim = target - (target - low) / 4

        est_core: list[int] = []
        est_opt: list[list[int]] = []

        def estimate_upto(n: int) -> None:      # estimates in batches of chapters (drawing ahead is harmless)
            first = len(est_core)
            if first >= n:
                return
            upto = max(n, first + 16)
            memo = renderer.cache.setdefault("story_sentence_tokens", {})
            texts = []
            for k in range(first, upto):
                ch = narrative[k]
                texts.append("\n\n" + ch.text(0))
                texts.extend(" " + ch.sentences[s] for s in OPTIONAL_ORDER)
            unknown = [t for t in dict.fromkeys(texts) if t not in memo]
            memo.update(zip(unknown, renderer.estimate_many(unknown)))
            step = 1 + len(OPTIONAL_ORDER)
            for j in range(upto - first):
                est_core.append(memo[texts[j * step]])
                est_opt.append([memo[t] for t in texts[j * step + 1:(j + 1) * step]])

        # first guess of the chapter count: the smallest n whose full chapters reach the budget
        budget = aim - renderer.estimate_prompt(self.prompt(self.generic_spec(), ""))
        n, total = 0, 0.0
        while total < budget:
            estimate_upto(n + 1)
            total += est_core[n] + sum(est_opt[n])
            n += 1
        n = max(n, self.min_chapters)

        tried: set[int] = set()
        while True:
            if n < self.min_chapters:
                raise LengthError(f"{self.name}: length {self.length} leaves room for fewer than "
                                  f"{self.min_chapters} chapter(s)", "fixed")
            tried.add(n)
            estimate_upto(n)
            chapters = narrative.chapters[:n]
            spec, drop, answer, gold, meta = self.questions(chapters, random.Random(question_seed))
            offsets = [0]
            for k in range(n):
                offsets.append(offsets[-1] + len(est_opt[k]))
            item_tokens = [t for k in range(n) for t in est_opt[k]]

            def build_prompt(items: list[int], chapters=chapters, offsets=offsets, spec=spec, drop=drop) -> str:
                m = len(items)
                texts = [ch.text(min(max(m - offsets[k], 0), len(OPTIONAL_ORDER)), drop.get(k, frozenset()))
                         for k, ch in enumerate(chapters)]
                return self.prompt(spec, "\n\n".join(texts))

            fixed = renderer.estimate_prompt(self.prompt(spec, "")) + sum(est_core[:n])
            try:
                items, text, tokens = fit_items(renderer, build_prompt, item_tokens, self.length,
                                                fixed_tokens=fixed)
            except LengthError as e:
                step = {"fixed": -1, "filler": 1}.get(e.kind)
                if step is None or n + step in tried:
                    raise
                n += step
                continue
            meta.update({"num_chapters": n, "num_optional": len(items), "num_optional_max": len(item_tokens)})
            return Sample(sample_id, text, tokens, answer, gold, meta)


class StoryRetrieval(_StoryTask):
    name = "story_retrieval"
    version = "1"
    # kind_weights (None = uniform): how often each question kind is drawn, e.g. {"item": 3, "location": 1,
    # "character": 1}; a training-data knob (items are the hard kind: one mention per chapter, see
    # docs/reference_models.md), evaluations keep the default.
    defaults = {**STORY_DEFAULTS, "num_queries": 16, "kind_weights": None}

    KINDS = ("location", "character", "item")
    _QUESTION = {
        "location": "Where did {P} go in chapter {c}?",
        "character": "Whom did {P} meet in chapter {c}?",
        "item": "Which item did {P} acquire in chapter {c}?",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        q = self.params["num_queries"]
        if not (isinstance(q, int) and q >= 1):
            raise ValueError(f"task {self.name}: num_queries must be an integer >= 1, got {q!r}")
        kw = self.params["kind_weights"]
        if kw is not None and not (isinstance(kw, dict) and set(kw) <= set(self.KINDS)
                                   and all(isinstance(v, (int, float)) and v >= 0 for v in kw.values())
                                   and sum(kw.values()) > 0):
            raise ValueError(f"task {self.name}: kind_weights must map some of {list(self.KINDS)} to weights >= 0 "
                             f"with a positive sum, got {kw!r}")

    def _spec(self, lines: list[str]) -> PromptSpec:
        q = len(lines)
        return PromptSpec(
            intro=(f"You will read a story about the travels of {P}, told in numbered chapters. In every chapter "
                   f"{P} visits one place, meets one person and acquires one item. Answer questions about "
                   "individual chapters."),
            question="\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1)),
            answer_format=(f"Write {q} numbered lines, one per question in the order asked, each like "
                           "'1. <answer>'."),
            bullets=("Answer with just the name of the place, the person or the item, as written in the story.",
                     "Each question is about the chapter it names only."),
            multi=True,
        )

    def generic_spec(self) -> PromptSpec:
        q = self.params["num_queries"]
        return self._spec([self._QUESTION["item"].format(P=P, c=100)] * q)

    def questions(self, chapters, rng):
        q = min(self.params["num_queries"], len(chapters))
        picked = rng.sample(range(len(chapters)), q)
        kw = self.params["kind_weights"]
        if kw is None:
            kinds = [rng.choice(self.KINDS) for _ in picked]
        else:
            kinds = rng.choices(self.KINDS, weights=[kw.get(k, 0) for k in self.KINDS], k=len(picked))
        lines, answers = [], []
        for k, kind in zip(picked, kinds):
            ch = chapters[k]
            lines.append(self._QUESTION[kind].format(P=P, c=ch.number))
            answers.append({"location": ch.location, "character": ch.character, "item": ch.item}[kind])
        answer = "\n".join(f"{i}. {a}" for i, a in enumerate(answers, 1))
        gold = {"answers": answers, "kinds": kinds, "chapters": [chapters[k].number for k in picked]}
        return self._spec(lines), {}, answer, gold, {"num_queries": q}

    @staticmethod
    def answer_lines(prediction: str) -> dict[int, str]:
        """Normalised answer per question number: the first numbered line of each number in the answer section
        (the whole prediction without one)."""
        block = extract_answer(prediction)
        text = prediction if block is None else block
        found: dict[int, str] = {}
        for line in (text or "").splitlines():
            m = _LINE_RE.match(line)
            if m:
                found.setdefault(int(m.group(1)), norm(m.group(2)))
        return found

    @staticmethod
    def question_results(sample: Sample, prediction: str) -> list[dict]:
        """Per question of ``sample``: the asked chapter and kind, whether the answer is right, and where a wrong
        one comes from: "other chapter" (its normalised text occurs in another chapter: a fact of the wrong
        chapter), "not in story" or "missing". Diagnostics for the accuracy by kind and by chapter number."""
        texts = {int(m.group(1)): norm(m.group(2)) for m in _CHAPTER_RE.finditer(sample.prompt)}
        found = StoryRetrieval.answer_lines(prediction)
        out = []
        for q, (answer, kind, chapter) in enumerate(zip(sample.gold["answers"], sample.gold["kinds"],
                                                        sample.gold["chapters"]), 1):
            pred = found.get(q)
            if pred == norm(answer):
                source = "correct"
            elif not pred:
                source = "missing"
            elif any(c != chapter and pred in t for c, t in texts.items()):
                source = "other chapter"
            else:
                source = "not in story"
            out.append({"chapter": chapter, "kind": kind, "ok": source == "correct", "source": source,
                        "prediction": pred})
        return out

    @staticmethod
    def breakdown(results: list[dict]) -> dict:
        """Accuracy per question kind and per band of ten asked chapter numbers ("1-9", "10-19", ...), and the
        count of each source of wrong answers, over :meth:`question_results` rows."""
        def accuracy(key) -> dict:
            groups: dict = {}
            for r in results:
                groups.setdefault(key(r), []).append(r["ok"])
            return {k: round(sum(v) / len(v), 3) for k, v in sorted(groups.items())}

        def band(chapter: int) -> str:
            lo = chapter // 10 * 10
            return f"{max(lo, 1)}-{lo + 9}"

        chapters = accuracy(lambda r: r["chapter"] // 10)          # by tens, in increasing order
        wrong: dict = {}
        for r in results:
            if not r["ok"]:
                wrong[r["source"]] = wrong.get(r["source"], 0) + 1
        return {"kind": accuracy(lambda r: r["kind"]),
                "chapters": {band(10 * tens): acc for tens, acc in chapters.items()},
                "wrong": dict(sorted(wrong.items())), "questions": len(results)}

    @staticmethod
    def score(prediction: str, gold: dict) -> float:
        answers = gold["answers"]
        found = StoryRetrieval.answer_lines(prediction)
        correct = sum(1 for i, a in enumerate(answers, 1) if i in found and found[i] == norm(a))
        return correct / len(answers)


class StoryMultiHop(_StoryTask):
    name = "story_multihop"
    version = "1"
    defaults = dict(STORY_DEFAULTS)
    min_chapters = 2

    @staticmethod
    def _spec(item: str) -> PromptSpec:
        return PromptSpec(
            intro=(f"You will read a story about the travels of {P}, told in numbered chapters. {P} acquires "
                   "items along the way and sometimes sells items acquired earlier."),
            question=f"Which item did {P} acquire immediately before acquiring the {item}?",
            answer_format="Write only the name of that item.",
            bullets=(f"Acquisitions happen in the order of the chapters; selling an item does not count as "
                     "acquiring one.",
                     "Write the item's name exactly as in the story, without any other words."),
        )

    def generic_spec(self) -> PromptSpec:
        return self._spec("engraved porcelain candlestick")

    def questions(self, chapters, rng):
        t = rng.randrange(1, len(chapters))          # 0-based target chapter in 2..n (1-based)
        target, before = chapters[t], chapters[t - 1]
        gold = {"item": before.item, "chapter": before.number, "target_item": target.item,
                "target_chapter": target.number}
        return self._spec(target.item), {}, before.item, gold, {"target_chapter": target.number}

    @staticmethod
    def score(prediction: str, gold: dict) -> float:
        block = extract_answer(prediction)
        if not block:
            return 0.0
        return float(norm(block) == norm(gold["item"]))


class StoryFiltering(_StoryTask):
    name = "story_filtering"
    version = "1"
    defaults = {**STORY_DEFAULTS, "chapters_in_question": 3}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        k = self.params["chapters_in_question"]
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"task {self.name}: chapters_in_question must be an integer >= 1, got {k!r}")
        self.min_chapters = k + 1

    def _spec(self) -> PromptSpec:
        k = self.params["chapters_in_question"]
        return PromptSpec(
            intro=(f"You will read a story about the travels of {P}, told in numbered chapters. In most chapters "
                   f"{P} acquires an item, but not in all of them."),
            question=f"In exactly {k} chapters {P} does not acquire any item. Which chapters are they?",
            answer_format="Write the chapter numbers in increasing order, separated by commas, e.g. '2, 9, 14'.",
            bullets=("Selling an item does not count as acquiring one.",
                     f"There are exactly {k} such chapters."),
        )

    def generic_spec(self) -> PromptSpec:
        return self._spec()

    def questions(self, chapters, rng):
        k = self.params["chapters_in_question"]
        picked = sorted(rng.sample(range(len(chapters)), k))
        removed = {chapters[j].item for j in picked}
        picked_set = set(picked)
        drop: dict[int, frozenset] = {}
        for j, ch in enumerate(chapters):
            slots = set()
            if j in picked_set:
                slots.add(BUY)
            if ch.sold in removed:                   # never sell an item that was never bought
                slots.add(SELL)
            if slots:
                drop[j] = frozenset(slots)
        numbers = [chapters[j].number for j in picked]
        gold = {"chapters": numbers}
        return self._spec(), drop, ", ".join(map(str, numbers)), gold, {}

    @staticmethod
    def score(prediction: str, gold: dict) -> float:
        block = extract_answer(prediction)
        if block is None:
            return 0.0
        ids = re.findall(r"chapter\s*(\d+)", block, re.IGNORECASE) or re.findall(r"\d+", block)
        return iou({int(i) for i in ids}, {int(i) for i in gold["chapters"]})
