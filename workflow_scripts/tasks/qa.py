"""Multi-document QA over natural datasets (paper spec §3.4): ``qa_squad``, ``qa_quality``, ``qa_toefl``.

Low dispersion, low scope. The context is a set of numbered documents ("Document i:" then the text, separated
by blank lines): the gold document plus distractor documents from the same dataset; the question names the
gold document's number ("Question about document i:").

Question pool (once per task instance, see ``_prepare``): unanswerable SQuAD questions are dropped, duplicate
(question, document) pairs removed, and questions whose single-document prompt is longer than
``min(pool_max_tokens, length)`` tokens are dropped (paper: 8172 - 64 = 8108 for every length, so all lengths
>= 8108 share the pool). The documents with a surviving question are the distractor pool. The pool is
shuffled with ``Random(seed)``: sample i asks question i at every length with the same pool.

Sample construction: the other documents are shuffled with the sample RNG and form a stream of words; the
filler is a prefix of that stream — whole documents plus a word-level prefix of the next one, exactly the
paper's "greedy documents, then a binary-searched word prefix of the next one". Every document (gold
included) gets a random sort key from the sample RNG; the documents are numbered in key order.

Metrics. MCQ (QuALITY, TOEFL): exact match of letters — the answer section without a leading "Question ...:"
label, upper-cased, with every character outside A-D removed and the letters sorted, must equal the gold
letters; 0 without an answer section. SQuAD: set-based token F1 after normalisation (lower case, punctuation
removed, the words a/an/the/and/or/about/to removed, whitespace squashed), rounded to 2 decimals, max over
the gold answers; 0 for a missing or empty answer section.
"""

from __future__ import annotations

import bisect
import os
import random
import re
import string

from . import qa_data
from .base import LengthError, Sample, Task, fit_items
from .prompt import PromptSpec, extract_answer

PAPER_POOL_MAX_TOKENS = 8172 - 64
_WORD_RE = re.compile(r"\S+")
_LOADED: dict = {}


def _load(task: str, datasets_dir) -> qa_data.QADataset:
    path = qa_data.find_file(task, datasets_dir)
    st = path.stat()
    key = (task, str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _LOADED:
        _LOADED[key] = qa_data.load(task, datasets_dir)
    return _LOADED[key]


# ---------------------------------------------------------------------------------------------- metrics
_MCQ_LABEL = re.compile(r"^\s*question\b[^:\n]*:", re.IGNORECASE)


def mcq_letters(text: str) -> str:
    text = _MCQ_LABEL.sub("", text or "")
    return "".join(sorted(re.sub(r"[^A-D]", "", text.upper())))


def mcq_score(prediction: str, gold: dict) -> float:
    block = extract_answer(prediction)
    if block is None:
        return 0.0
    letters = mcq_letters(block)
    return float(bool(letters) and letters == mcq_letters(gold["letters"]))


_STOP = {"a", "an", "the", "and", "or", "about", "to"}
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")


def squad_tokens(text: str) -> set[str]:
    return {w for w in _PUNCT.sub(" ", (text or "").lower()).split() if w not in _STOP}


def token_f1(pred: str, gold: str) -> float:
    p, g = squad_tokens(pred), squad_tokens(gold)
    common = len(p & g)
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return round(2 * precision * recall / (precision + recall), 2)


def squad_score(prediction: str, gold: dict) -> float:
    block = extract_answer(prediction)
    if not block:
        return 0.0
    return max(token_f1(block, a) for a in gold["answers"])


# ---------------------------------------------------------------------------------------------- tasks
class _QATask(Task):
    uses_datasets = True
    version = "1"
    defaults = {"pool_max_tokens": PAPER_POOL_MAX_TOKENS}
    mcq = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        m = self.params["pool_max_tokens"]
        if not (isinstance(m, int) and m >= 1):
            raise ValueError(f"task {self.name}: pool_max_tokens must be an integer >= 1, got {m!r}")
        self._pool = None

    # ------------------------------------------------------------------ prompt
    def spec(self, doc_number: int, question: str) -> PromptSpec:
        common = ("You will read several numbered documents. Answer the question about the document it names; "
                  "the other documents are unrelated.")
        q = f"Question about document {doc_number}:\n{question}"
        if self.mcq:
            return PromptSpec(
                intro=common + " The question is multiple-choice.",
                question=q,
                answer_format="Write only the letter(s) of the correct option(s), e.g. 'B' or 'AC'.",
                bullets=("One or more options can be correct; give all correct letters.",
                         "Base the answer on the named document only."),
            )
        return PromptSpec(
            intro=common,
            question=q,
            answer_format="Write only a short phrase taken from the document, not a full sentence.",
            bullets=("Give a complete date only when the question asks for a date.",
                     "For a place, give the shortest name that identifies it.",
                     "Base the answer on the named document only."),
        )

    @staticmethod
    def context(docs: list[str]) -> str:
        return "\n\n".join(f"Document {i}:\n{d}" for i, d in enumerate(docs, 1))

    # ------------------------------------------------------------------ pool
    def _prepare(self):
        if self._pool is not None:
            return self._pool
        ds = _load(self.name, self.datasets_dir)
        r = self.renderer
        memo_key = ("qa_doc_tokens", ds.source, id(ds))
        if memo_key not in r.cache:
            r.cache[memo_key] = r.count_many(ds.documents)
        doc_tok = r.cache[memo_key]
        threshold = min(self.params["pool_max_tokens"], self.length)
        header = r.estimate("\n\nDocument 10:\n")
        skeleton = self._skeleton = r.count(r.final(self.prompt(self.spec(1, ""), self.context([""]))))
        margin = 32 + threshold // 50
        keep = []
        for q in ds.questions:
            est = skeleton + 2 * r.estimate(q.question) + header + doc_tok[q.doc]
            if est > threshold + margin:
                continue
            if est >= threshold - margin:
                text = r.final(self.prompt(self.spec(1, q.question), self.context([ds.documents[q.doc]])))
                if r.count(text) > threshold:
                    continue
            keep.append(q)
        if not keep:
            raise LengthError(f"{self.name}: no question fits a single-document prompt of {threshold} tokens",
                              "fixed")
        random.Random(self.seed).shuffle(keep)
        docs = sorted({q.doc for q in keep})
        self._pool = (ds, keep, docs, doc_tok, header)
        return self._pool

    def _words(self, ds, d: int) -> list[int]:
        """End offsets of the words of document ``d`` (cached per tokenizer-independent dataset)."""
        memo = self.renderer.cache.setdefault(("qa_words", id(ds)), {})
        if d not in memo:
            memo[d] = [m.end() for m in _WORD_RE.finditer(ds.documents[d])]
        return memo[d]

    def build(self, sample_id: int) -> Sample:
        ds, pool, doc_pool, doc_tok, header = self._prepare()
        try:
            q = pool[self.pool_index(sample_id, len(pool))]
        except LengthError as e:
            raise LengthError(f"{e} (pool_max_tokens={self.params['pool_max_tokens']})", "pool") from None
        rng = self.rng(sample_id)
        others = [d for d in doc_pool if d != q.doc]
        rng.shuffle(others)
        keys = [rng.random() for _ in range(len(others) + 1)]

        # word stream over the shuffled distractors, long enough to overfill the target
        stream, starts, item_tokens = [], [0], []
        total = 0.0
        for d in others:
            words = self._words(ds, d)
            if not words:
                continue
            per_word = doc_tok[d] / len(words)
            item_tokens.append(per_word + header)
            item_tokens.extend([per_word] * (len(words) - 1))
            stream.append(d)
            starts.append(starts[-1] + len(words))
            total += doc_tok[d] + header
            if total > 1.15 * self.length + 256:
                break
        gold_text = ds.documents[q.doc]

        def assemble(n: int):
            j = bisect.bisect_right(starts, n) - 1           # stream[:j] complete, stream[j] gets n-starts[j] words
            entries = [(keys[0], gold_text, True)]
            entries += [(keys[k + 1], ds.documents[stream[k]], False) for k in range(j)]
            partial = n - starts[j]
            if j < len(stream) and partial > 0:
                entries.append((keys[j + 1], ds.documents[stream[j]][: self._words(ds, stream[j])[partial - 1]], False))
            entries.sort(key=lambda e: e[0])
            number = next(i for i, e in enumerate(entries, 1) if e[2])
            return [e[1] for e in entries], number, j, partial

        def build_prompt(items: list[int]) -> str:
            docs, number, _, _ = assemble(len(items))
            return self.prompt(self.spec(number, q.question), self.context(docs))

        fixed = self._skeleton + 2 * self.renderer.estimate(q.question) + header + doc_tok[q.doc]
        items, text, tokens = fit_items(self.renderer, build_prompt, item_tokens, self.length, fixed_tokens=fixed)
        docs, number, full, partial = assemble(len(items))
        if self.mcq:
            gold = {"letters": q.answers[0]}
            answer = q.answers[0]
        else:
            gold = {"answers": list(q.answers)}
            answer = q.answers[0]
        meta = {"question": q.question, "target_doc": number, "num_documents": len(docs),
                "partial_words": partial, "dataset": os.path.basename(ds.source), "is_mcq": self.mcq}
        return Sample(sample_id, text, tokens, answer, gold, meta)


class SquadQA(_QATask):
    name = "qa_squad"
    mcq = False

    @staticmethod
    def score(prediction: str, gold: dict) -> float:
        return squad_score(prediction, gold)


class QualityQA(_QATask):
    name = "qa_quality"

    @staticmethod
    def score(prediction: str, gold: dict) -> float:
        return mcq_score(prediction, gold)


class ToeflQA(_QATask):
    name = "qa_toefl"

    @staticmethod
    def score(prediction: str, gold: dict) -> float:
        return mcq_score(prediction, gold)
