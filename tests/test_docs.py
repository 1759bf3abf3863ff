"""The README and docs say what the repository does (cheap checks; the commands that need a run are checked in
tests/test_workflow.py, tests/test_extending.py and by hand, recorded in docs).

1. every repository path the README and docs cite in backticks exists;
2. the validation message the README quotes is the one the workflow prints for that config;
3. docs/slurm.md's claim: the workflow profile (loaded with every --profile, its keys winning) agrees with the SLURM
   profile on every key both set, so no cluster setting (latency-wait, ...) is silently overridden;
4. LICENSE, CITATION.cff and pyproject.toml agree (licence, version), and CITATION.cff cites the paper the README
   names;
5. the README names the inference backends that exist and no extra that does not.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import yaml

from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "models" / "README.md",
        ROOT / "results" / "README.md"]
TOP = ("workflow_scripts/", "sparse_kernels/", "tests/", "bench/", "rules/", "docs/", "profiles/", "studies/",
       "models/", ".ci/")


def test_cited_repository_paths_exist():
    missing = []
    for doc in DOCS:
        for m in re.finditer(r"`([A-Za-z0-9_./\-]+)`", doc.read_text()):
            path = m.group(1).rstrip("/.")
            if path.startswith(TOP) and not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, missing


def test_readme_quotes_the_validation_message():
    from workflow_scripts.config import schema_errors

    readme = (ROOT / "README.md").read_text()
    quoted = re.search(r"message naming the key(?: or file)? \(e\.g\. `([^`]+)`", readme.replace("\n", " ")).group(1)
    cfg = copy.deepcopy(yaml.safe_load((ROOT / "config.yaml").read_text()))
    cfg["methods"]["dense"] = {"ratios": [0.5]}
    assert quoted in schema_errors(cfg)


def test_workflow_profile_does_not_override_the_slurm_profile():
    default = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    slurm = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert "latency-wait" in slurm and "latency-wait" not in default
    assert {k: default[k] for k in set(default) & set(slurm)} == {k: slurm[k] for k in set(default) & set(slurm)}
    slurm_doc = (ROOT / "docs" / "slurm.md").read_text()
    assert f"`latency-wait: {slurm['latency-wait']}`" in slurm_doc


def test_license_citation_and_version_agree():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert (ROOT / "LICENSE").read_text().startswith("MIT License") and cff["license"] == "MIT"
    assert cff["cff-version"] == "1.2.0" and str(cff["version"]) == meta["version"]
    paper = cff["preferred-citation"]
    assert "arXiv:2504.17768" in (ROOT / "README.md").read_text()
    assert paper["doi"] == "10.48550/arXiv.2504.17768" and paper["authors"][0]["family-names"] == "Nawrot"
    assert paper["title"] in (ROOT / "README.md").read_text().replace("*", "").replace("\n", " ")


def test_readme_backends_match_the_extras():
    readme = (ROOT / "README.md").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in re.findall(r"pip install [^`]*\.\[(\w+)\]", readme):
        assert extra in extras, f"README offers the extra [{extra}], pyproject.toml has none"
    assert "vllm" not in extras and "flash" not in extras
    from workflow_scripts.config import SCHEMA_PATH

    executors = yaml.safe_load(Path(SCHEMA_PATH).read_text())["properties"]["executor"]["enum"]
    section = readme.split("## Requirements", 1)[1]
    for name in executors:
        assert f"`{name}`" in section, f"README's Requirements do not name the executor {name!r}"
