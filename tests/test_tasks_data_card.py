"""Data card: question + instruction tokens per task (paper Table 2 analogue)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_scripts.data_card import data_card, strip_context
from workflow_scripts.io import write_parquet
from workflow_scripts.tasks import load_task_class
from workflow_scripts.tasks.base import Renderer
from workflow_scripts.tasks.testing import corpus_tokenizer


def test_strip_context_keeps_everything_but_the_context_body():
    p = "intro\n<question>\nq\n</question>\n\n<context>\nlong\ntext\n</context>\n\n<question_repeated>q"
    assert strip_context(p) == "intro\n<question>\nq\n</question>\n\n<context>\n\n</context>\n\n<question_repeated>q"
    with pytest.raises(ValueError):
        strip_context("no context here")


def test_data_card_table(tmp_path):
    tok = corpus_tokenizer(2048)
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(str(tok_dir))
    renderer = Renderer(tok)
    paths, expected = [], {}
    for task_name in ("ruler_vt", "story_multihop"):
        for length in (1024, 2048):
            task = load_task_class(task_name)(renderer, length, "cot")
            samples = [task.build(i) for i in range(3)]
            path = tmp_path / f"{task_name}-{length}.parquet"
            spec = {"task": task_name, "length": length, "mode": "cot"}
            write_parquet(pa.Table.from_pylist([s.row() for s in samples]), path, {"spec": spec})
            paths.append(str(path))
            # independent: render the same question with an empty context
            for s in samples:
                if task_name == "ruler_vt":
                    spec_ = task.spec(s.gold["value"], 5)
                else:
                    spec_ = task._spec(s.gold["target_item"])
                n = renderer.count(renderer.final(task.prompt(spec_, "")))
                expected.setdefault(task_name, []).append(n)
    rows = data_card(paths, str(tok_dir), str(tmp_path / "card.md"), str(tmp_path / "card.parquet"))
    by_task = {r["task"]: r for r in rows}
    assert set(by_task) == {"ruler_vt", "story_multihop"}
    for name, ns in expected.items():
        r = by_task[name]
        assert r["samples"] == 6 and r["lengths"] == "1024,2048" and r["mode"] == "cot"
        assert (r["min_tokens"], r["max_tokens"]) == (min(ns), max(ns))
        assert r["mean_tokens"] == pytest.approx(sum(ns) / len(ns), abs=0.05)
        assert 100 < r["mean_tokens"] < 600
    table = pq.read_table(tmp_path / "card.parquet").to_pylist()
    assert table == rows
    md = (tmp_path / "card.md").read_text()
    assert "| ruler_vt | cot |" in md and "| story_multihop | cot |" in md
