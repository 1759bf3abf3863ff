"""Length control: every final prompt has 95-100 % of the target tokens in the model's own tokenizer."""

import math
import time

import pytest

from workflow_scripts.tasks import load_task_class, qa_data, task_names
from workflow_scripts.tasks.base import LengthError, Renderer, fit_items
from workflow_scripts.tasks.testing import corpus_tokenizer

ALL = task_names()
# CWE's 10 x 30 common-word lines alone exceed 2K tokens; "auto" scales the frequency down (docs/tasks.md)
SHORT_PARAMS = {"ruler_cwe": {"common_freq": "auto"}}


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory):
    return str(qa_data.write_fixtures(tmp_path_factory.mktemp("qa"), seed=2))


def independent_count(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


_RENDERERS = {}


def check(task_name, tok, length, mode, qa_dir, samples=2, chat=True, **params):
    # one renderer per tokenizer, as in a make_data job (its estimate caches are shared by the tasks)
    renderer = _RENDERERS.setdefault((id(tok), chat), Renderer(tok, use_chat_template=chat))
    task = load_task_class(task_name)(renderer, length, mode, datasets_dir=qa_dir, **params)
    for i in range(samples):
        s = task.build(i)
        n = independent_count(tok, s.prompt)
        assert n == s.input_tokens
        assert math.ceil(0.95 * length) <= n <= length, (task_name, length, n)
        if chat:
            assert s.prompt.startswith("<|im_start|>user\n") and s.prompt.endswith("<|im_start|>assistant\n")
        assert ("<explanation>" in s.prompt) == (mode == "cot")
    return task


@pytest.mark.parametrize("vocab", [2048, 8192])
@pytest.mark.parametrize("length", [1024, 2048, 8192])
@pytest.mark.parametrize("task_name", ALL)
def test_length_window_cot(task_name, length, vocab, qa_dir):
    params = SHORT_PARAMS.get(task_name, {}) if length < 4096 else {}
    check(task_name, corpus_tokenizer(vocab), length, "cot", qa_dir, **params)


@pytest.mark.parametrize("length", [1024, 2048])
@pytest.mark.parametrize("task_name", ALL)
def test_length_window_direct(task_name, length, qa_dir):
    check(task_name, corpus_tokenizer(8192), length, "direct", qa_dir, samples=1,
          **SHORT_PARAMS.get(task_name, {}))


@pytest.mark.parametrize("task_name", ["ruler_vt", "story_filtering", "qa_toefl"])
def test_length_window_without_chat_template(task_name, qa_dir):
    check(task_name, corpus_tokenizer(2048), 1536, "cot", qa_dir, samples=1, chat=False)


def test_128k_samples_take_seconds(tmp_path):
    """One 131072-token sample per task with an 8K-vocabulary BPE tokenizer: seconds, inside the window."""
    data = qa_data.write_fixtures(tmp_path, n_squad=1400, n_quality=200, n_toefl=1500)
    tok = corpus_tokenizer(8192)
    renderer = Renderer(tok)
    for name in ALL:
        task = load_task_class(name)(renderer, 131072, "cot", datasets_dir=str(data))
        t0 = time.perf_counter()
        s = task.build(0)
        elapsed = time.perf_counter() - t0
        assert 0.95 * 131072 <= s.input_tokens <= 131072
        assert elapsed < 15, f"{name}: {elapsed:.1f}s for one 128K sample"
        assert independent_count(tok, s.prompt) == s.input_tokens       # parallel piece counting is exact


# ---------------------------------------------------------------------------------------------- fit_items
class _WordRenderer(Renderer):
    """One token per space-separated word; no chat template (a tokenizer-free test double)."""

    def __init__(self):
        super().__init__(None, use_chat_template=False)
        self.measured = 0

    def count(self, text):
        self.measured += 1
        return len(text.split())

    def count_split(self, text, min_chars=0):
        return self.count(text)

    def count_many(self, texts):
        return [len(t.split()) for t in texts]


def test_fit_items_lands_in_window_with_biased_estimates():
    r = _WordRenderer()
    items = ["w " * (1 + i % 7) for i in range(5000)]
    est = [0.5 * len(x.split()) for x in items]                    # estimates off by a factor 2
    chosen, text, n = fit_items(r, lambda ids: "fixed " * 50 + "".join(items[i] for i in ids), est, 10000)
    assert 9500 <= n <= 10000 and n == len(text.split())
    assert chosen == list(range(len(chosen)))
    assert r.measured <= 6


def test_fit_items_errors_are_typed():
    r = _WordRenderer()
    with pytest.raises(LengthError) as e:
        fit_items(r, lambda ids: "x " * 200, [1.0] * 10, 100)
    assert e.value.kind == "fixed"
    with pytest.raises(LengthError) as e:
        fit_items(r, lambda ids: "x " * (10 + len(ids)), [1.0] * 10, 100)
    assert e.value.kind == "filler"
    with pytest.raises(LengthError) as e:                            # items of 60 tokens, window of 5
        fit_items(r, lambda ids: "x " * (10 + 60 * len(ids)), [60.0] * 10, 100)
    assert e.value.kind == "granularity"


def test_fit_items_swaps_an_item_when_the_window_is_narrow():
    r = _WordRenderer()
    sizes = [40, 40, 40, 40, 55, 40]
    chosen, _, n = fit_items(r, lambda ids: "x " * (20 + sum(sizes[i] for i in ids)), sizes, 200,
                             swappable=True)
    assert 190 <= n <= 200 and 4 in chosen
