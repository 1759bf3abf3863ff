"""QA datasets: file locations, loaders, a download helper and made-up fixture files.

Files are looked up in ``datasets_dir`` (config key ``datasets_dir``), first name found wins:

=============  ==========================================  ===============================================
task           file name(s) in datasets_dir                 format
=============  ==========================================  ===============================================
qa_squad       ``squad.json`` or ``dev-v2.0.json``          SQuAD v2.0 JSON (``data/paragraphs/qas``, with
                                                            ``is_impossible``); the paper used SQuAD v2 dev
qa_quality     ``quality.jsonl``                            LC_VS_RAG jsonl (one passage per line: ``context``,
                                                            ``questions`` = "Question: ... Options: A.. B.. C..
                                                            D..", ``answer`` = letters) — what the paper used
               or ``QuALITY.v1.0.1.htmlstripped.dev``       official QuALITY v1.0.1 jsonl (``article``,
                                                            ``questions[].question/options/gold_label``)
qa_toefl       ``toeflqa.jsonl``                            LC_VS_RAG jsonl (as above); 198 passages, 962
                                                            questions, 1,101,971 bytes
=============  ==========================================  ===============================================

Download (needs internet; not exercised by the tests)::

    python -m workflow_scripts.tasks.qa_data download --to datasets

Made-up fixture files in the same formats (for tests and benchmarks; not real data)::

    python -m workflow_scripts.tasks.qa_data fixtures --to /tmp/qa_fixtures
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

FILES: dict[str, tuple[str, ...]] = {
    "qa_squad": ("squad.json", "dev-v2.0.json"),
    "qa_quality": ("quality.jsonl", "QuALITY.v1.0.1.htmlstripped.dev"),
    "qa_toefl": ("toeflqa.jsonl",),
}

# Sources. SQuAD and QuALITY are the datasets' official releases. The LC_VS_RAG-format TOEFL/QuALITY files
# the paper used ship inside the paper's repository (sparse_frontier/tasks/qa/data/); LC_VS_RAG itself
# distributes them through a SharePoint folder linked from github.com/lixinze777/LC_VS_RAG.
URLS = {
    "squad.json": "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",
    "QuALITY.v1.0.1.htmlstripped.dev": "https://github.com/nyu-mll/quality/raw/main/data/v1.0.1/QuALITY.v1.0.1.zip",
    "toeflqa.jsonl": ("https://raw.githubusercontent.com/PiotrNawrot/sparse-frontier/main/"
                      "sparse_frontier/tasks/qa/data/toeflqa.jsonl"),
}


class DatasetMissing(FileNotFoundError):
    pass


@dataclass(frozen=True)
class QAQuestion:
    doc: int                    # index into the dataset's document list
    question: str
    answers: tuple[str, ...]    # SQuAD: answer texts; MCQ: one string of letters, e.g. ("AC",)


@dataclass
class QADataset:
    name: str
    mcq: bool
    documents: list[str]
    questions: list[QAQuestion]
    source: str


def find_file(task: str, datasets_dir: str | os.PathLike | None) -> Path:
    names = FILES[task]
    where = Path(datasets_dir) if datasets_dir else None
    if where is not None:
        for n in names:
            if (where / n).is_file():
                return where / n
    shown = str(where) if where is not None else "<datasets_dir not set>"
    raise DatasetMissing(
        f"{task}: dataset file not found. Put {' or '.join(repr(n) for n in names)} into {shown!r} "
        f"(config key 'datasets_dir'), e.g. with `python -m workflow_scripts.tasks.qa_data download --to "
        f"{shown}` on a machine with internet access. See docs/tasks.md.")


def load(task: str, datasets_dir) -> QADataset:
    path = find_file(task, datasets_dir)
    if task == "qa_squad":
        return load_squad(path)
    if task == "qa_quality":
        return load_quality_official(path) if path.name.startswith("QuALITY") else load_lc_vs_rag(path, task)
    return load_lc_vs_rag(path, task)


def _dedupe(name, mcq, docs_in_order, pairs, source) -> QADataset:
    """Index documents by text and drop duplicate (question, document) pairs, keeping file order."""
    doc_index: dict[str, int] = {}
    for d in docs_in_order:
        doc_index.setdefault(d, len(doc_index))
    seen: set[tuple[str, int]] = set()
    questions = []
    for doc_text, q, answers in pairs:
        d = doc_index[doc_text]
        if (q, d) in seen:
            continue
        seen.add((q, d))
        questions.append(QAQuestion(d, q, tuple(answers)))
    return QADataset(name, mcq, list(doc_index), questions, source)


def load_squad(path) -> QADataset:
    """SQuAD v2 JSON; unanswerable questions are dropped; answer texts deduplicated in order."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    docs, pairs = [], []
    for article in data["data"]:
        for para in article["paragraphs"]:
            ctx = para["context"]
            docs.append(ctx)
            for qa in para["qas"]:
                if qa.get("is_impossible"):
                    continue
                answers = list(dict.fromkeys(a["text"].strip() for a in qa.get("answers", []) if a["text"].strip()))
                if answers:
                    pairs.append((ctx, qa["question"].strip(), answers))
    return _dedupe("qa_squad", False, docs, pairs, str(path))


_QPREFIX = re.compile(r"^\s*question\s*:\s*", re.IGNORECASE)


def _jsonl(path):
    """The rows of a JSON-lines file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _letters(ans) -> str:
    return "".join(sorted(re.sub(r"[^A-D]", "", str(ans).upper())))


def load_lc_vs_rag(path, task: str) -> QADataset:
    """LC_VS_RAG jsonl (``context``, ``questions``, ``answer``); the "Question: " prefix is removed."""
    docs, pairs = [], []
    for row in _jsonl(path):
        ctx = row["context"]
        docs.append(ctx)
        if len(row["questions"]) != len(row["answer"]):
            raise ValueError(f"{path}: a line has {len(row['questions'])} questions but "
                             f"{len(row['answer'])} answers")
        for q, a in zip(row["questions"], row["answer"]):
            letters = _letters(a)
            if letters:
                pairs.append((ctx, _QPREFIX.sub("", q).strip(), [letters]))
    return _dedupe(task, True, docs, pairs, str(path))


def mcq_text(question: str, options: list[str]) -> str:
    return question.strip() + " Options: " + " ".join(f"{'ABCD'[i]}.{o.strip()}" for i, o in enumerate(options))


def load_quality_official(path) -> QADataset:
    """Official QuALITY v1.0.1 (htmlstripped) jsonl: questions get the LC_VS_RAG "... Options: A.x B.y" form."""
    docs, pairs = [], []
    for row in _jsonl(path):
        ctx = row["article"].strip()
        docs.append(ctx)
        for q in row["questions"]:
            if "gold_label" not in q or len(q["options"]) != 4:
                continue
            pairs.append((ctx, mcq_text(q["question"], q["options"]), ["ABCD"[int(q["gold_label"]) - 1]]))
    return _dedupe("qa_quality", True, docs, pairs, str(path))


# ---------------------------------------------------------------------------------------------- download
def download(to: str | os.PathLike) -> list[Path]:
    """Fetch the three files into ``to`` (skips files already there). Needs internet access."""
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    out = []
    for name, url in URLS.items():
        dest = to / name
        if dest.is_file():
            out.append(dest)
            continue
        print(f"downloading {url}")
        with urllib.request.urlopen(url, timeout=120) as r:     # noqa: S310 (fixed https URLs)
            blob = r.read()
        if url.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(blob)) as z:
                member = next(m for m in z.namelist() if m.endswith(name))
                blob = z.read(member)
        tmp = dest.with_suffix(dest.suffix + ".part")
        tmp.write_bytes(blob)
        tmp.replace(dest)
        out.append(dest)
    return out


# ---------------------------------------------------------------------------------------------- fixtures
_TOWNS = ["Arlenford", "Brisk Hollow", "Calder Bay", "Dunmere", "Eastwick Vale", "Fennick", "Glenhaven",
          "Harrowgate", "Ivel", "Juniper Cross", "Kestrel Point", "Larkmoor", "Millbrook", "Northam Reach",
          "Oakhurst", "Pellham", "Quarry End", "Ravensholt", "Saltcombe", "Thornbury"]
_PEOPLE = ["Edda Morrow", "Felix Arkwright", "Hana Sorel", "Ivo Brandt", "Joss Kellerman", "Lina Farrow",
           "Milo Trent", "Nell Oduya", "Otto Rask", "Pia Lund", "Rhea Castellan", "Sami Voss", "Tove Marr",
           "Uma Pryce", "Vito Sandor", "Wyn Halloran"]
_THINGS = ["a stone bridge", "a paper mill", "a lending library", "a clock tower", "a weather station",
           "a glassworks", "a rope factory", "a botanical garden", "a music school", "a ferry line"]
_TRADES = ["wool", "salt", "timber", "cider", "pottery", "lace", "copper", "barley", "honey", "slate"]
_FILLER = [
    "Visitors often remark on the narrow streets and the smell of the sea.",
    "The town council meets on the first Monday of every month.",
    "Several families have lived in the valley for many generations.",
    "In winter the roads are sometimes closed for days at a time.",
    "Local historians disagree about the origin of the town's name.",
    "A small market is held in the square every Saturday morning.",
    "The surrounding hills are covered with heather and gorse.",
    "Most of the older houses were built from grey local stone.",
    "A railway line reached the area only much later.",
    "Fishing remains an important source of income for many households.",
]


def _fixture_passage(rng: random.Random, i: int, long: bool):
    town = f"{rng.choice(_TOWNS)} {i}"
    person, thing, trade = rng.choice(_PEOPLE), rng.choice(_THINGS), rng.choice(_TRADES)
    year, pop = rng.randrange(1620, 1950), rng.randrange(800, 90000)
    facts = [
        f"{town} is a small town known for its {trade} trade.",
        f"In {year}, {person} founded {thing} there.",
        f"The population of {town} was about {pop} at the last count.",
    ]
    filler = [rng.choice(_FILLER) for _ in range(rng.randrange(3, 7) * (12 if long else 1))]
    sentences = facts + filler
    rng.shuffle(sentences)
    qa = [
        (f"Who founded {thing} in {town}?", person),
        (f"In which year was {thing} founded in {town}?", str(year)),
        (f"What trade is {town} known for?", trade),
    ]
    return " ".join(sentences), qa


def _mcq(rng: random.Random, question: str, right: str, wrong_pool: list[str], multi: bool):
    wrong = [w for w in dict.fromkeys(wrong_pool) if w != right]
    rng.shuffle(wrong)
    options = [right] + wrong[:3]
    rng.shuffle(options)
    letters = "ABCD"[options.index(right)]
    if multi:                                   # a second correct option: "all of the above"-style duplicate
        j = next(k for k in range(4) if options[k] != right)
        options[j] = right + " (as stated)"
        letters = "".join(sorted(letters + "ABCD"[j]))
    text = f"Question: {question} Options: " + " ".join(f"{'ABCD'[k]}.{o} " for k, o in enumerate(options))
    return text, letters


def write_fixtures(to: str | os.PathLike, seed: int = 0, n_squad: int = 300, n_quality: int = 60,
                   n_toefl: int = 120) -> Path:
    """Write made-up ``squad.json``, ``quality.jsonl`` and ``toeflqa.jsonl`` (our own invented passages)."""
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n_squad):
        ctx, qa = _fixture_passage(rng, i, long=False)
        qas = [{"id": f"q{i}_{k}", "question": q, "is_impossible": False,
                "answers": [{"text": a, "answer_start": ctx.find(a)}] * 2} for k, (q, a) in enumerate(qa)]
        qas.append({"id": f"q{i}_x", "question": f"Who closed the harbour of {i}?", "is_impossible": True,
                    "answers": []})
        paragraphs.append({"context": ctx, "qas": qas})
    (to / "squad.json").write_text(json.dumps({"version": "v2.0", "data": [
        {"title": "Fixture", "paragraphs": paragraphs}]}), encoding="utf-8")
    for name, n, long in (("quality.jsonl", n_quality, True), ("toeflqa.jsonl", n_toefl, False)):
        with open(to / name, "w", encoding="utf-8") as f:
            for i in range(n):
                ctx, qa = _fixture_passage(rng, i, long=long)
                qs, ans = [], []
                for k, (q, a) in enumerate(qa):
                    pool = {0: _PEOPLE, 1: [str(y) for y in range(1620, 1950, 7)], 2: _TRADES}[k]
                    text, letters = _mcq(rng, q, a, pool, multi=(name == "toeflqa.jsonl" and k == 2 and i % 5 == 0))
                    qs.append(text)
                    ans.append(letters)
                row = {"context": ctx, "context_len": len(ctx.split()), "questions": qs,
                       "num_question": len(qs), "answer": ans, "dataset": name.split(".")[0]}
                f.write(json.dumps(row) + "\n")
    return to


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch the real datasets (internet needed)")
    d.add_argument("--to", required=True)
    fx = sub.add_parser("fixtures", help="write made-up fixture files in the same formats")
    fx.add_argument("--to", required=True)
    fx.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "download":
        for p in download(a.to):
            print(p)
    else:
        print(write_fixtures(a.to, seed=a.seed))


if __name__ == "__main__":
    main()
