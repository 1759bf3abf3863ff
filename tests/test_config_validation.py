"""Invalid study configs fail at load time with a message naming the key, and no job starts."""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import pytest
import yaml

from conftest import parse_job_stats


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


# ---------------------------------------------------------------------------------------------- expensive mistakes
# Bad inputs that used to pass validation and fail late (a job after the DAG, seconds to minutes in), hang, or run
# the study to garbage (issue 23, point 6). Each builder gets (good config, tmp_path, tiny model) and returns the
# study (a dict, or YAML text for what only a file can hold) and extra command-line arguments.
REF_2M = str(Path(__file__).resolve().parent.parent / "models" / "ref-2m")


def _copy_model(tiny: Path, dest: Path, edit) -> str:
    shutil.copytree(tiny, dest)
    edit(dest)
    return str(dest)


def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _yaml(cfg: dict, extra: str) -> str:
    return yaml.safe_dump(cfg, sort_keys=False) + extra


ALIAS_BOMB = "".join(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]\n" for i in range(1, 9))

BAD_INPUTS = [
    ("model folder without weights",
     lambda c, t, m: (_set(c, "models.tiny.path", _copy_model(m, t / "noweights",
                                                              lambda d: (d / "model.safetensors").unlink())), []),
     ["models.tiny.path", "has no weights"]),
    ("truncated safetensors",
     lambda c, t, m: (_set(c, "models.tiny.path", _copy_model(m, t / "trunc",
                                                              lambda d: _truncate(d / "model.safetensors"))), []),
     ["models.tiny.path", "model.safetensors is truncated"]),
    ("tokenizer larger than the model's vocabulary",
     lambda c, t, m: (_set(c, "models.tiny.tokenizer", REF_2M), []),
     ["models.tiny.tokenizer", "8192 tokens, more than the model's vocab_size 2048"]),
    ("tokenizer far smaller than the model's vocabulary",
     lambda c, t, m: (_set(_set(c, "models.tiny.path", REF_2M), "models.tiny.tokenizer", str(m)), []),
     ["models.tiny.tokenizer", "2048 tokens, far fewer than the model's vocab_size 8192"]),
    ("length beyond the model's context",
     lambda c, t, m: (_set(c, "lengths", [1024, 40000]), []), ["lengths[1]", "32768-token context of models.tiny"]),
    ("length 10^9", lambda c, t, m: (_set(c, "lengths", [10**9]), []), ["lengths[0]", "context of models.tiny"]),
    ("infinite ratio", lambda c, t, m: (_set(c, "methods", {"snapkv": {"ratios": [float("inf")]}}), []),
     ["methods.snapkv.ratios[0]", "finite number"]),
    ("ratio a path cannot hold", lambda c, t, m: (_set(c, "methods", {"snapkv": {"ratios": [1234567.5]}}), []),
     ["methods.snapkv.ratios[0]", "cannot be written exactly"]),
    ("samples 10^9", lambda c, t, m: (_set(c, "samples", 10**9), []), ["samples", "inference jobs, more than"]),
    ("duplicate key", lambda c, t, m: (_yaml(c, "samples: 8\n"), []), ["samples: duplicate key (also on line 1)"]),
    ("YAML alias bomb", lambda c, t, m: (_yaml(c, "b0: &b0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + ALIAS_BOMB), []),
     ["study.yaml: the study expands to more than 1,000,000 values"]),
]


@pytest.mark.parametrize("name, build, needles", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_expensive_mistakes_fail_before_any_job(workflow, tiny_model, tmp_path, name, build, needles):
    study, args = build(good_config(str(tiny_model)), tmp_path, tiny_model)
    if isinstance(study, str):
        workflow.config_path.write_text(study)
    else:
        workflow.write_config(study)
    t0 = time.monotonic()
    proc = workflow.run(*args, check=False, timeout=120)     # a real run: nothing may start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Invalid configuration" in out and "Building DAG" not in out, out[-3000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-3000:]}"
    assert not workflow.path("results").exists(), "no job may start on an invalid config"
    assert time.monotonic() - t0 < 60


def test_config_values_on_the_command_line_are_yaml(workflow, tiny_model):
    """`--config lengths=[2048]` (Snakemake hands it over as ['2048']) is the list [2048], as in a study file."""
    workflow.write_config(good_config(str(tiny_model)))
    proc = workflow.run("-n", "--config", "lengths=[2048]", "samples=4")
    out = proc.stdout + proc.stderr
    assert "length=2048" in out and "length=1024" not in out
    assert parse_job_stats(out)["infer"] == 2          # 4 samples in shards of 2
