"""Study files stand alone: `snakemake --configfile <study>` plans exactly that study, nothing of config.yaml.

The paper's grid (studies/paper.yaml) with its checkpoint paths pointed at small local stand-ins (copies of the
tiny model, QA fixture files for datasets_dir) must plan its 4 Qwen models and 31,680 inference cell shards
(4 models x 9 tasks x 4 lengths x 55 method-ratio cells x 4 shards of 25 samples), and the README's study
example only its own model and method.
"""

from __future__ import annotations

import collections
import json
import re
import shutil

import yaml

from conftest import ROOT, tree

PRED_RE = re.compile(r"results/predictions/model=([^/]+)/task=([^/]+)/length=(\d+)/method=([^/]+)/ratio=([^/]+)"
                     r"/shard=(\d+)/part\.parquet")


def _stand_in(tiny_model, folder):
    """A copy of the tiny checkpoint that claims the positions of a long-context model."""
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = 131072
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _planned_cells(workflow) -> set[tuple]:
    proc = workflow.run("-n")
    out = proc.stdout + proc.stderr
    return {m.groups() for m in PRED_RE.finditer(out)}


def test_paper_study_plans_exactly_its_grid(workflow, tiny_model, tmp_path):
    from workflow_scripts.tasks import qa_data

    cfg = yaml.safe_load((ROOT / "studies" / "paper.yaml").read_text())
    for name in cfg["models"]:
        cfg["models"][name]["path"] = str(_stand_in(tiny_model, tmp_path / name))
    cfg["datasets_dir"] = str(qa_data.write_fixtures(tmp_path / "qa", seed=1))
    workflow.write_config(cfg)
    shards = _planned_cells(workflow)
    assert len(shards) == 31_680
    models = collections.Counter(s[0] for s in shards)
    assert set(models) == {"qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b"}
    assert set(models.values()) == {7_920}
    methods = collections.Counter(s[3] for s in shards)
    n_ratio = {m: len((e or {}).get("ratios", [1])) for m, e in cfg["methods"].items()}
    assert methods == {m: 4 * 9 * 4 * 4 * n for m, n in n_ratio.items()}
    assert {int(s[2]) for s in shards} == {16384, 32768, 65536, 128000}
    assert {s[5] for s in shards} == {"0", "1", "2", "3"}


def test_readme_study_example_plans_only_its_own_model_and_methods(workflow, tiny_model, tmp_path):
    """The README's study example, run from the project folder where config.yaml (the default study) lies."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### The study config", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    cfg = yaml.safe_load(block)
    assert list(cfg["models"]) == ["qwen7b"]
    cfg["models"]["qwen7b"]["path"] = str(_stand_in(tiny_model, tmp_path / "qwen7b"))
    cfg["models"]["qwen7b"]["device"] = "cpu"
    workflow.write_config(cfg)
    shutil.copy(ROOT / "config.yaml", workflow.path("config.yaml"))   # present, as in a clone: must not leak
    shards = _planned_cells(workflow)
    expected = {("qwen7b", "ruler_niah", str(L), "dense", "1", str(s)) for L in (16384, 32768) for s in range(4)}
    assert shards == expected


def test_dry_run_of_the_default_study_leaves_the_working_tree_unchanged():
    """`snakemake -n` in the project folder (the default study, config.yaml, with the workflow profile): every file
    outside Snakemake's own .snakemake folder stays as it was (no rendezvous files, no results, no logs)."""
    import subprocess
    import sys

    skip = (".git", ".venv", ".snakemake", ".pytest_cache", "__pycache__")
    before = tree(ROOT, skip)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Job stats" in proc.stdout + proc.stderr or "Nothing to be done" in proc.stdout + proc.stderr
    after = tree(ROOT, skip)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, changed


def test_qa_study_with_calibrated_methods_calibrates_on_qa_questions(workflow, tiny_model, tmp_path):
    """A QA task with a calibrated method (the paper study's situation): calibration data and the calibration job
    run on the QA fixtures, with questions from the end of the pool, none of them an evaluation question."""
    import pyarrow.parquet as pq

    from workflow_scripts.tasks import qa_data

    qa = qa_data.write_fixtures(tmp_path / "qa", seed=1)
    cfg = {"seed": 43, "samples": 3, "shard_size": 3, "prompt_mode": "direct", "max_new_tokens": 2,
           "datasets_dir": str(qa), "models": {"tiny": {"path": str(tiny_model), "dtype": "float32", "device": "cpu"}},
           "tasks": ["qa_squad"], "lengths": [1024], "calibration": {"samples": 2},
           "methods": {"dense": {}, "vertical_slash": {"ratios": [2]}}}
    workflow.write_config(cfg)
    cal = "results/calibration/model=tiny/length=1024/method=vertical_slash"
    workflow.run("results/data/tokenizer=tiny/task=qa_squad/length=1024/mode=direct/samples.parquet")
    proc = workflow.run("--until", "calibrate")
    assert "(Rule: calibrate)" in proc.stdout + proc.stderr
    evaluation = pq.read_table(workflow.path("results/data/tokenizer=tiny/task=qa_squad/length=1024/mode=direct/"
                                             "samples.parquet")).to_pylist()
    calibration = pq.read_table(workflow.path("results/calibration/data/tokenizer=tiny/task=qa_squad/length=1024/"
                                              "mode=direct/samples.parquet")).to_pylist()
    assert [r["sample_id"] for r in calibration] == [10**6, 10**6 + 1]
    def question(row):
        return json.loads(row["meta"])["question"]
    assert not {question(r) for r in calibration} & {question(r) for r in evaluation}
    result = json.loads(next(workflow.path(cal).glob("params=*/calibration.json")).read_text())
    assert list(result["results"]) == ["2"] and abs(result["results"]["2"]["relative_error"]) <= 0.05
    assert result["samples"] == {"qa_squad": [10**6, 10**6 + 1]}
