"""The grid helpers the rules use instead of per-job input functions agree with the per-job paths."""

from __future__ import annotations

import re
import shutil

from snakemake.io import apply_wildcards

from workflow_scripts.config import Study, wildcard_patterns


def _study(tmp_path, tiny_model, **models) -> Study:
    shutil.copytree(tiny_model, tmp_path / "other")
    entry = {"path": str(tiny_model), "dtype": "float32", "device": "cpu"}
    cfg = {"samples": 5, "shard_size": 2, "prompt_mode": "direct", "tasks": ["ruler_niah", "ruler_vt"],
           "lengths": [1024, 2048], "models": {"a": dict(entry), "b": dict(entry), **models},
           "methods": {"dense": {}, "snapkv": {"ratios": [2, 7.5]}, "vertical_slash+quest": {"ratios": [[2, 4]]}}}
    return Study(cfg)


def test_score_inputs_as_patterns_equal_the_per_group_paths(tmp_path, tiny_model):
    study = _study(tmp_path, tiny_model)
    patterns = study.group_pred_patterns()
    assert len(patterns) == 4 * study.n_shards == 12
    for model in study.models:
        for task in study.cfg["tasks"]:
            for length in study.cfg["lengths"]:
                w = {"model": model, "task": task, "length": str(length)}
                assert [apply_wildcards(p, w) for p in patterns] == study.group_pred_paths(model, task, length)
                assert apply_wildcards(study.shared_data_pattern(), w) == study.data_path(model, task, length)


def test_task_data_is_shared_by_tokenizer_content_not_path(tmp_path, tiny_model):
    # a copy of the tokenizer in another folder (a model family): one key, one set of task data
    same = _study(tmp_path / "s", tiny_model, c={"path": str(tmp_path / "s" / "other")})
    assert len(set(same.tokenizer_keys.values())) == 1
    assert same.data_path("c", "ruler_niah", 1024) == same.data_path("a", "ruler_niah", 1024)
    assert same.shared_data_pattern() is not None
    first = min(str(tiny_model), str(tmp_path / "s" / "other"))
    assert same.data_params(same.tokenizer_key("c"), "ruler_niah", 1024, "direct")["tokenizer"] == first
    # the cell still records its own configured tokenizer path
    assert same.cell_params("c", "ruler_niah", 1024, "dense", "1", 0)["tokenizer"] == str(tmp_path / "s" / "other")


def test_no_shared_data_pattern_when_models_read_different_task_data(tmp_path, tiny_model):
    _study(tmp_path / "t", tiny_model)            # copies the tokenizer to t/other; then change one token
    tok = tmp_path / "t" / "other" / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"<|im_end|>"', '"<|im_stop|>"', 1))
    other_tokenizer = _study(tmp_path / "t2", tiny_model, c={"path": str(tmp_path / "t" / "other")})
    assert len(set(other_tokenizer.tokenizer_keys.values())) == 2
    assert other_tokenizer.shared_data_pattern() is None
    other_mode = _study(tmp_path / "m", tiny_model, c={"path": str(tiny_model), "prompt_mode": "cot"})
    assert other_mode.shared_data_pattern() is None


def test_wildcard_constraints(tmp_path, tiny_model):
    study = _study(tmp_path, tiny_model)
    pat = wildcard_patterns(study)
    # model and tokenizer names: any one path segment (an alternation of hundreds of names slowed the dry run)
    assert re.fullmatch(pat["model"], "any-model_1.5") and not re.fullmatch(pat["model"], "a/b")
    assert re.fullmatch(pat["tokenizer"], "tiny") and not re.fullmatch(pat["tokenizer"], "a/b")
    # tasks and methods: exactly the configured ones
    assert re.fullmatch(pat["task"], "ruler_vt") and not re.fullmatch(pat["task"], "qa_squad")
    assert re.fullmatch(pat["method"], "vertical_slash+quest") and not re.fullmatch(pat["method"], "quest")
    assert re.fullmatch(pat["ratio"], "2+4") and re.fullmatch(pat["ratio"], "7.5")
