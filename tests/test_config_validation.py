"""Invalid study configs fail at load time with a message naming the key, and no job starts."""

from __future__ import annotations

import copy

import pytest


def good_config(model: str) -> dict:
    return {"samples": 2, "shard_size": 2, "prompt_mode": "direct", "max_new_tokens": 2,
            "models": {"tiny": {"path": model, "dtype": "float32", "device": "cpu"}},
            "tasks": ["ruler_niah"], "lengths": [1024], "methods": {"dense": {}}}


def _set(cfg: dict, dotted: str, value) -> dict:
    cfg = copy.deepcopy(cfg)
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[last] = value
    return cfg


CASES = [
    ("unknown top-level key", lambda c: _set(c, "shrads", 3), ["shrads"]),
    ("unknown key in a model", lambda c: _set(c, "models.tiny.dtpye", "float16"), ["models.tiny", "dtpye"]),
    ("unknown method", lambda c: _set(c, "methods.magic_attention", {"ratios": [2]}), ["methods.magic_attention"]),
    ("unknown task", lambda c: _set(c, "tasks", ["ruler_niah", "ruler_nope"]), ["tasks[1]", "ruler_nope"]),
    ("ratio below 1", lambda c: _set(c, "methods.dense", {"ratios": [0.5]}), ["methods.dense.ratios[0]"]),
    ("missing model path", lambda c: _set(c, "models.tiny.path", "/nonexistent/ckpt"), ["models.tiny.path"]),
    ("missing tokenizer", lambda c: _set(c, "models.tiny.tokenizer", "/nonexistent/tok"), ["models.tiny.tokenizer"]),
    ("wrong type", lambda c: _set(c, "lengths", ["1k"]), ["lengths[0]"]),
    ("unknown task parameter", lambda c: _set(c, "task_params", {"ruler_niah": {"needles": 4}}),
     ["task_params.ruler_niah", "needles"]),
]


def test_good_config_plans_jobs(workflow, tiny_model):
    workflow.write_config(good_config(str(tiny_model)))
    assert workflow.planned_jobs()["infer"] == 1


@pytest.mark.parametrize("name, mutate, needles", CASES, ids=[c[0] for c in CASES])
def test_invalid_config_names_the_key(workflow, tiny_model, name, mutate, needles):
    workflow.write_config(mutate(good_config(str(tiny_model))))
    proc = workflow.run(check=False)            # a real run, not a dry run: nothing may start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Invalid configuration" in out
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-3000:]}"
    assert not workflow.path("results").exists(), "no job may start on an invalid config"
    assert "Building DAG" not in out


def test_tokenizer_folder_check_accepts_any_defining_file_and_names_the_key(tiny_model, tmp_path):
    """A vocab.json + merges.txt folder (a byte-level BPE tokenizer without tokenizer.json) is a tokenizer; a
    folder with only a chat template is not. Both checks (explicit ``tokenizer`` and the model folder) agree."""
    from workflow_scripts.config import ConfigError, Study

    bpe = tmp_path / "bpe"
    bpe.mkdir()
    (bpe / "vocab.json").write_text("{}")
    (bpe / "merges.txt").write_text("#version: 0.2\n")
    Study(_set(good_config(str(tiny_model)), "models.tiny.tokenizer", str(bpe)))    # accepted
    template_only = tmp_path / "tpl"
    template_only.mkdir()
    (template_only / "chat_template.jinja").write_text("{{ messages }}")
    with pytest.raises(ConfigError, match=r"models\.tiny\.tokenizer: no tokenizer files"):
        Study(_set(good_config(str(tiny_model)), "models.tiny.tokenizer", str(template_only)))
