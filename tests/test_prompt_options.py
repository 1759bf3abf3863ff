"""Prompts the model expects: the tokenizer's BOS when it asks for one and no chat template writes it, and the
direct-mode answer prefill (the assistant turn opened with the answer tag), per model entry.

Checked against strings and token ids written here: where the BOS goes and when it does not, that the prefill
ends the prompt and counts towards the length window, that models without the new keys get exactly the data
spec they had (so their task data stays byte-identical), and that models sharing task data must agree."""

from __future__ import annotations

import json
import shutil

import pytest

from workflow_scripts.tasks import load_task_class
from workflow_scripts.tasks.base import Renderer, wants_bos

BOS = "<|endoftext|>"


@pytest.fixture()
def bos_tokenizer(tiny_model, tmp_path):
    """The tiny tokenizer declaring a BOS token it wants (like Gemma's), saved with and without its template."""
    from transformers import AutoTokenizer

    folder = tmp_path / "tok"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.update(bos_token=BOS, add_bos_token=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return AutoTokenizer.from_pretrained(str(folder)), folder


def test_bos_only_when_the_tokenizer_wants_it_and_no_template_writes_it(bos_tokenizer, tiny_tokenizer):
    tok, _ = bos_tokenizer
    assert tok.bos_token == BOS
    assert wants_bos(tok, chat_template_used=False) and not wants_bos(tok, chat_template_used=True)
    assert not wants_bos(tiny_tokenizer, chat_template_used=False)          # no BOS token at all
    plain = Renderer(tok, use_chat_template=False)
    text = plain.final("Hello there.")
    assert text == BOS + "Hello there."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids(BOS) and ids.count(ids[0]) == 1
    assert plain.count(text) == len(tok("Hello there.", add_special_tokens=False)["input_ids"]) + 1
    templated = Renderer(tok, use_chat_template=True)
    assert templated.final("Hello there.") == tok.apply_chat_template(
        [{"role": "user", "content": "Hello there."}], tokenize=False, add_generation_prompt=True)
    forced = Renderer(tok, use_chat_template=True, bos=True).final("Hi")
    assert forced.startswith(BOS + "<|im_start|>") and not forced.startswith(BOS + BOS)
    assert Renderer(tok, use_chat_template=False, bos=False).final("Hi") == "Hi"


def test_prefill_ends_the_prompt_inside_the_length_window(tiny_tokenizer):
    r = Renderer(tiny_tokenizer, use_chat_template=True, prefill="<answer>\n")
    assert r.final("Q?").endswith("<|im_start|>assistant\n<answer>\n")
    task = load_task_class("ruler_niah")(r, 1024, "direct", seed=3)
    s = task.build(0).row()
    assert s["prompt"].endswith("assistant\n<answer>\n")
    assert s["input_tokens"] == r.count(s["prompt"]) and 0.9 * 1024 <= s["input_tokens"] <= 1024
    plain = load_task_class("ruler_niah")(Renderer(tiny_tokenizer), 1024, "direct", seed=3).build(0).row()
    assert plain["prompt"] + "<answer>\n" != s["prompt"] or plain["input_tokens"] <= s["input_tokens"]


def test_study_passes_prompt_options_only_when_set(tiny_model, tmp_path):
    from workflow_scripts.config import ConfigError, Study

    base = {"models": {"a": {"path": str(tiny_model)}}, "tasks": ["ruler_niah"], "lengths": [1024],
            "prompt_mode": "direct", "methods": {"dense": {}}}
    st = Study(base)
    key = st.tokenizer_key("a")
    spec = st.data_params(key, "ruler_niah", 1024, "direct")
    assert "bos" not in spec and "answer_prefill" not in spec           # unchanged spec -> unchanged data
    assert "answer_prefill" not in st.cell_params("a", "ruler_niah", 1024, "dense", "1", 0)

    cfg = json.loads(json.dumps(base))
    cfg["models"]["a"].update(bos=True, answer_prefill="<answer>\n")
    st = Study(cfg)
    spec = st.data_params(key, "ruler_niah", 1024, "direct")
    assert spec["bos"] is True and spec["answer_prefill"] == "<answer>\n"
    assert st.cell_params("a", "ruler_niah", 1024, "dense", "1", 0)["answer_prefill"] == "<answer>\n"
    cfg["models"]["a"]["prompt_mode"] = "cot"                        # the prefill is a direct-mode option
    assert "answer_prefill" not in Study(cfg).data_params(key, "ruler_niah", 1024, "cot")

    other = tmp_path / "copy"
    shutil.copytree(tiny_model, other)
    cfg = json.loads(json.dumps(base))
    cfg["models"]["b"] = {"path": str(other), "answer_prefill": "<answer>"}
    with pytest.raises(ConfigError, match=r"models\.b: shares its tokenizer with models\.a"):
        Study(cfg)
