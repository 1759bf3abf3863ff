"""Task registry, parameters, the make_data integration and the tokenizer corpus."""

import json

import pyarrow as pa
import pytest

from workflow_scripts import make_data
from workflow_scripts.io import write_parquet
from workflow_scripts.tasks import TASKS, load_task_class, qa_data, task_names
from workflow_scripts.tasks.base import Renderer
from workflow_scripts.tasks.corpus import tokenizer_corpus
from workflow_scripts.tasks.testing import corpus_tokenizer

PAPER_NAMES = ["ruler_niah", "ruler_vt", "ruler_cwe", "qa_squad", "qa_quality", "qa_toefl",
               "story_retrieval", "story_multihop", "story_filtering"]


def test_all_nine_tasks_registered_under_the_paper_names():
    assert task_names() == PAPER_NAMES == list(TASKS)
    for name in PAPER_NAMES:
        cls = load_task_class(name)
        assert cls.name == name and cls.version
        assert cls.uses_datasets == name.startswith("qa_")
        task = cls(None, 1024, "cot")         # config validation constructs tasks without a tokenizer
        assert task.params == cls.defaults


@pytest.mark.parametrize("name, bad", [
    ("ruler_vt", {"num_chains": 0}), ("ruler_vt", {"num_hops": "4"}), ("ruler_cwe", {"common_freq": 2}),
    ("ruler_cwe", {"common_freq": "many"}), ("ruler_cwe", {"num_common": -1}),
    ("qa_squad", {"pool_max_tokens": 0}), ("story_retrieval", {"num_queries": 0}),
    ("story_filtering", {"chapters_in_question": 1.5}), ("story_multihop", {"num_queries": 3}),
    ("qa_toefl", {"unknown": 1}),
])
def test_bad_parameters_are_rejected(name, bad):
    with pytest.raises(ValueError):
        load_task_class(name)(None, 1024, "cot", **bad)


def test_unknown_prompt_mode_is_rejected():
    task = load_task_class("ruler_vt")(Renderer(corpus_tokenizer(2048)), 1024, "chatty")
    with pytest.raises(ValueError, match="prompt mode"):
        task.build(0)


def test_renderer_count_equals_the_tokenizer():
    tok = corpus_tokenizer(2048)
    r = Renderer(tok)
    texts = ["", "hello world", "<|im_start|>user\nA\n<|im_end|>", "Chapter 1:\nMarek met Ilse Varga. " * 900]
    assert r.count_many(texts) == [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    long = r.final("VAR ABCDE = 12345. " * 6000)
    assert r.count_split(long) == r.count(long) == len(tok(long, add_special_tokens=False)["input_ids"])


def _metaspace_tokenizer():
    """A SentencePiece-style BPE (Metaspace, prefix "▁" always): text pieces are NOT additive at spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tok.decoder = decoders.Metaspace(prepend_scheme="always")
    tok.train_from_iterator(tokenizer_corpus(3000, seed=1), trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<unk>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.mark.parametrize("name", ["bytelevel", "metaspace"])
def test_count_split_is_exact_or_falls_back(name):
    from workflow_scripts.tasks.base import _CUT

    tok = corpus_tokenizer(2048) if name == "bytelevel" else _metaspace_tokenizer()
    r = Renderer(tok)
    texts = [
        "VAR ABCDE = 12345. The river bends. " * 3000,
        "\n".join(f"{i}. word{i % 97}" for i in range(12000)),      # only newline cuts
        ("Chapter 3:\nMarek met Ilse Varga near the well. They parted as friends.\n\n" * 1200),
        "x" * 50000 + " " + "y" * 50000,                             # no usable cut near the middle
    ]
    for t in texts:
        assert len(t) > 40000
        assert r.count_split(t) == len(tok(t, add_special_tokens=False)["input_ids"])
    # the newline case discriminates: a blind cut would miscount with the Metaspace tokenizer
    t = texts[1]
    cut = _CUT.search(t, len(t) // 2).start()
    blind = r.count(t[:cut]) + r.count(t[cut:])
    assert (blind != r.count(t)) == (name == "metaspace")


def test_make_data_generates_checked_samples(tmp_path):
    """The workflow's data step (make_data.generate) over a few tasks, with a saved tokenizer."""
    tok_dir = tmp_path / "tok"
    corpus_tokenizer(2048).save_pretrained(str(tok_dir))
    data = qa_data.write_fixtures(tmp_path / "qa")
    for task, params in [("ruler_vt", {}), ("ruler_cwe", {"common_freq": "auto"}), ("qa_toefl", {}),
                         ("story_multihop", {})]:
        spec = {"task": task, "task_version": load_task_class(task).version, "task_params": params,
                "datasets_dir": str(data), "length": 1024, "mode": "direct", "samples": 3, "seed": 43,
                "tokenizer": str(tok_dir), "chat_template": True}
        rows = make_data.generate(spec)
        assert [r["sample_id"] for r in rows] == [0, 1, 2]
        assert all(973 <= r["input_tokens"] <= 1024 for r in rows)
        cls = load_task_class(task)
        assert all(cls.score(f"<answer>{r['answer']}</answer>", json.loads(r["gold"])) == 1.0 for r in rows)
        write_parquet(pa.Table.from_pylist(rows), tmp_path / f"{task}.parquet", {"spec": spec})


def test_tokenizer_corpus():
    lines = tokenizer_corpus(900, seed=5)
    assert len(lines) == 900 and all(isinstance(x, str) and x for x in lines)
    assert lines == tokenizer_corpus(900, seed=5) and lines != tokenizer_corpus(900, seed=6)
    text = "\n".join(lines)
    for marker in ["The value for key", "VAR ", "Chapter ", "Document ", "Options: A.", "<answer>",
                   "Marek", "Question about document"]:
        assert marker in text, marker
    assert any(line[0].isdigit() and ". " in line for line in lines)     # CWE list lines
