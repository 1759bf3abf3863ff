"""Raw text from all nine task generators, for training the BPE tokenizer of the reference models.

    tokenizer_corpus(n_lines, seed) -> list[str]

No tokenizer is needed. Every task contributes the same share of lines: its context text (NIAH statements,
VT assignments and noise, CWE numbered word lists, story chapters, QA documents), its questions and reference
answers, and its full prompt skeleton in both prompt modes. QA documents come from the real datasets when
``datasets_dir`` holds them, otherwise from the made-up fixture generator of ``qa_data``.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterator

from . import qa_data
from .cwe import CommonWords, vocabulary
from .niah import NIAH, _code, _sentence
from .prompt import render
from .qa import QualityQA, SquadQA, ToeflQA
from .story import Narrative, StoryFiltering, StoryMultiHop, StoryRetrieval
from .vt import NOISE, VariableTracking, chains, statements


def _lines(text: str) -> list[str]:
    return [ln for ln in text.split("\n") if ln.strip()]


def _skeleton(spec, rng: random.Random) -> list[str]:
    return _lines(render(spec, "", rng.choice(("cot", "direct"))))


def _niah(rng: random.Random) -> Iterator[str]:
    while True:
        keys = [_code(rng) for _ in range(4)]
        yield from _skeleton(NIAH.spec(None, keys), rng)
        for i, k in enumerate(keys, 1):
            yield f"{i}. The answer for {k} is {_code(rng)}."
        for _ in range(16):
            yield " ".join(_sentence(_code(rng), _code(rng)) for _ in range(3))


def _vt(rng: random.Random) -> Iterator[str]:
    while True:
        names, values = chains(rng, 8, 4)
        yield from _skeleton(VariableTracking.spec(values[0], 5), rng)
        yield " ".join(names[0])
        pieces = statements(names, values) + [NOISE] * 8
        rng.shuffle(pieces)
        for i in range(0, len(pieces), 6):
            yield " ".join(pieces[i:i + 6])


def _cwe(rng: random.Random) -> Iterator[str]:
    task = CommonWords(None, 1024, "cot")
    words = list(vocabulary(43))
    while True:
        yield from _skeleton(task.spec(), rng)
        start = rng.randrange(1, 20000)
        for i in range(start, start + 40):
            yield f"{i}. {rng.choice(words)}"


def _story(cls, rng: random.Random) -> Iterator[str]:
    task = cls(None, 1024, "cot")
    while True:
        narrative = Narrative(random.Random(rng.getrandbits(64)))
        chapters = [narrative[k] for k in range(6)]
        spec, drop, answer, _, _ = task.questions(chapters, random.Random(rng.getrandbits(64)))
        yield from _skeleton(spec, rng)
        yield from _lines(answer)
        for k, ch in enumerate(chapters):
            yield from _lines(ch.text(8, drop.get(k, frozenset())))


def _qa(cls, rng: random.Random, datasets_dir) -> Iterator[str]:
    task = cls(None, 1024, "cot")
    try:
        ds = qa_data.load(cls.name, datasets_dir)
    except qa_data.DatasetMissing:
        ds = None
    if ds is None:                      # made-up passages in the same format
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            qa_data.write_fixtures(tmp, seed=rng.randrange(1 << 30), n_squad=60, n_quality=12, n_toefl=24)
            ds = qa_data.load(cls.name, tmp)
    while True:
        q = rng.choice(ds.questions)
        yield from _skeleton(task.spec(rng.randrange(1, 40), q.question), rng)
        yield q.answers[0]
        yield f"Document {rng.randrange(1, 40)}:"
        yield from _lines(ds.documents[q.doc])[:20]


def tokenizer_corpus(n_lines: int, seed: int, datasets_dir: str | None = None) -> list[str]:
    """``n_lines`` text lines, an equal share from each of the nine task generators, shuffled."""
    rng = random.Random(seed)
    sources = [
        _niah(random.Random(rng.getrandbits(64))),
        _vt(random.Random(rng.getrandbits(64))),
        _cwe(random.Random(rng.getrandbits(64))),
        _qa(SquadQA, random.Random(rng.getrandbits(64)), datasets_dir),
        _qa(QualityQA, random.Random(rng.getrandbits(64)), datasets_dir),
        _qa(ToeflQA, random.Random(rng.getrandbits(64)), datasets_dir),
        _story(StoryRetrieval, random.Random(rng.getrandbits(64))),
        _story(StoryMultiHop, random.Random(rng.getrandbits(64))),
        _story(StoryFiltering, random.Random(rng.getrandbits(64))),
    ]
    share = -(-n_lines // len(sources))
    lines = [ln for src in sources for ln in itertools.islice(src, share)]
    rng.shuffle(lines)
    return lines[:n_lines]
