"""QA tasks: loaders, question pool, multi-document construction (fixture files written by the tests)."""

import collections
import json
import re
from pathlib import Path

import pytest

from workflow_scripts.tasks import load_task_class, qa_data
from workflow_scripts.tasks.base import Renderer
from workflow_scripts.tasks.testing import corpus_tokenizer

TOEFL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "toeflqa.jsonl"
QA_TASKS = ["qa_squad", "qa_quality", "qa_toefl"]


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory):
    return qa_data.write_fixtures(tmp_path_factory.mktemp("qa"), seed=1)


@pytest.fixture(scope="module")
def renderer():
    return Renderer(corpus_tokenizer(2048))


def documents_of(prompt: str) -> dict[int, str]:
    ctx = prompt[prompt.index("<context>\n") + 10:prompt.rindex("\n</context>")]
    parts = re.split(r"(?:^|\n\n)Document (\d+):\n", ctx)
    assert parts[0] == ""
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


# ---------------------------------------------------------------------------------------------- loaders
def test_fixture_loaders(qa_dir):
    squad = qa_data.load("qa_squad", qa_dir)
    assert not squad.mcq and len(squad.documents) == 300
    assert len(squad.questions) == 300 * 3                  # the impossible question of each paragraph dropped
    assert all(q.answers and q.answers[0] in squad.documents[q.doc] for q in squad.questions)
    assert all(len(q.answers) == 1 for q in squad.questions)  # duplicate answer texts merged
    for task in ("qa_quality", "qa_toefl"):
        ds = qa_data.load(task, qa_dir)
        assert ds.mcq and all(re.fullmatch("[A-D]+", q.answers[0]) for q in ds.questions)
        assert not any(q.question.startswith("Question:") for q in ds.questions)
        assert all("Options: A." in q.question for q in ds.questions)


def test_duplicate_question_document_pairs_are_dropped(tmp_path):
    row = {"context": "Some text.", "context_len": 2, "questions": ["Question: q? Options: A.x B.y C.z D.w"] * 2,
           "num_question": 2, "answer": ["A", "A"], "dataset": "toefl"}
    (tmp_path / "toeflqa.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    ds = qa_data.load("qa_toefl", tmp_path)
    assert len(ds.documents) == 1 and len(ds.questions) == 1


def test_official_quality_format(tmp_path):
    row = {"article_id": "1", "article": "  The text of the article.  ", "questions": [
        {"question": "What is it?", "options": ["a", "b", "c", "d"], "gold_label": 3},
        {"question": "Broken", "options": ["a", "b"], "gold_label": 1}]}
    (tmp_path / "QuALITY.v1.0.1.htmlstripped.dev").write_text(json.dumps(row) + "\n")
    ds = qa_data.load("qa_quality", tmp_path)
    assert ds.documents == ["The text of the article."]
    assert [(q.question, q.answers) for q in ds.questions] == [("What is it? Options: A.a B.b C.c D.d", ("C",))]


def test_missing_dataset_error_names_file_and_directory(tmp_path, renderer):
    task = load_task_class("qa_toefl")(renderer, 2048, "cot", datasets_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"toeflqa\.jsonl.*" + re.escape(str(tmp_path))):
        task.build(0)
    with pytest.raises(FileNotFoundError, match="squad.json"):
        load_task_class("qa_squad")(renderer, 2048, "cot", datasets_dir=None).build(0)


@pytest.mark.skipif(not TOEFL.is_file(), reason=f"real TOEFL-QA file not present at {TOEFL}")
def test_real_toefl_file_matches_spec():
    assert TOEFL.stat().st_size == 1_101_971
    ds = qa_data.load("qa_toefl", TOEFL.parent)
    assert len(ds.documents) == 198 and len(ds.questions) == 962
    assert collections.Counter(len(q.answers[0]) for q in ds.questions) == {1: 829, 2: 130, 3: 3}
    assert not any(q.question.lower().startswith("question:") for q in ds.questions)


# ---------------------------------------------------------------------------------------------- construction
@pytest.mark.parametrize("task_name", QA_TASKS)
@pytest.mark.parametrize("length", [1024, 4096])
def test_gold_document_present_and_numbered_as_the_question_says(qa_dir, renderer, task_name, length):
    ds = qa_data.load(task_name, qa_dir)
    texts = set(ds.documents)
    task = load_task_class(task_name)(renderer, length, "cot", datasets_dir=str(qa_dir))
    for i in range(3):
        s = task.build(i)
        docs = documents_of(s.prompt)
        assert sorted(docs) == list(range(1, len(docs) + 1)) == list(range(1, s.meta["num_documents"] + 1))
        m = re.search(r"<question>\nQuestion about document (\d+):\n(.*)\n</question>", s.prompt, re.DOTALL)
        number, question = int(m.group(1)), m.group(2)
        assert number == s.meta["target_doc"] and question == s.meta["question"]
        q = next(q for q in ds.questions if q.question == question and ds.documents[q.doc] == docs[number])
        gold_text = ds.documents[q.doc]
        assert list(docs.values()).count(gold_text) == 1
        partial = [d for d in docs.values() if d not in texts]
        assert len(partial) <= 1
        for d in partial:                      # a word-level prefix of some other document
            assert any(t.startswith(d) and t != gold_text for t in texts)
        assert (len(partial) == 1) == (s.meta["partial_words"] > 0)
        if ds.mcq:
            assert s.gold == {"letters": q.answers[0]} and s.answer == q.answers[0]
        else:
            assert s.gold == {"answers": list(q.answers)}
        assert task.score(f"<answer>{s.answer}</answer>", s.gold) == 1.0


def test_question_pool_is_shared_across_lengths(qa_dir, renderer):
    """With pool_max_tokens at or below every length, sample i asks the same question at each length."""
    questions = []
    for length in (1024, 2048, 4096):
        task = load_task_class("qa_squad")(renderer, length, "cot", datasets_dir=str(qa_dir), pool_max_tokens=1024)
        questions.append([task.build(i).meta["question"] for i in range(4)])
    assert questions[0] == questions[1] == questions[2]
    assert len(set(questions[0])) == 4


def test_pool_drops_questions_whose_document_alone_is_too_long(qa_dir, renderer):
    short = load_task_class("qa_quality")(renderer, 1024, "cot", datasets_dir=str(qa_dir))
    long = load_task_class("qa_quality")(renderer, 8192, "cot", datasets_dir=str(qa_dir))
    _, keep_short, docs_short, doc_tok, _ = short._prepare()
    _, keep_long, *_ = long._prepare()
    assert 0 < len(keep_short) < len(keep_long)
    assert max(doc_tok[d] for d in docs_short) < 1024
    with pytest.raises(ValueError, match="only .* questions"):
        short.build(len(keep_short))


def test_calibration_questions_come_from_the_pool_end_disjoint_from_evaluation(qa_dir, renderer):
    """Calibration sample ids (CALIBRATION_OFFSET + c) ask question pool_size-1-c: never an evaluation question,
    never past the pool; a study whose evaluation + calibration samples exceed the pool is refused."""
    from workflow_scripts.tasks.base import CALIBRATION_OFFSET, LengthError

    for name in QA_TASKS:
        probe = load_task_class(name)(renderer, 2048, "cot", datasets_dir=str(qa_dir))
        pool = probe._prepare()[1]
        n = len(pool)
        evaluation = 3
        task = load_task_class(name)(renderer, 2048, "cot", datasets_dir=str(qa_dir), reserved=evaluation)
        asked = {task.build(i).meta["question"] for i in range(evaluation)}
        calib = [task.build(CALIBRATION_OFFSET + c).meta["question"] for c in range(2)]
        assert calib == [pool[n - 1].question, pool[n - 2].question]
        assert not asked & set(calib)
        # the last calibration sample that still leaves the evaluation questions alone, and the first that does not
        assert task.build(CALIBRATION_OFFSET + n - evaluation - 1).meta["question"] == pool[evaluation].question
        with pytest.raises(LengthError, match="would reuse an evaluation question"):
            task.build(CALIBRATION_OFFSET + n - evaluation)
