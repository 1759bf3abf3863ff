"""`make clean` removes everything the workflow writes (every results/ folder the rules and scripts name, the report,
Snakemake's .snakemake/) and keeps the shipped files (results/README.md, models/, the sources)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def written_folders() -> set[str]:
    """Top-level results/ folders named by the Snakefile, the rules and the workflow's scripts."""
    names = set()
    for path in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk"), *(ROOT / "workflow_scripts").rglob("*.py")]:
        text = path.read_text()
        names |= set(re.findall(r"[\"']results/([A-Za-z0-9_]+)/", text))
        names |= set(re.findall(r"RESULTS \+ [\"']/([A-Za-z0-9_]+)/", text))
    return names


def test_make_clean_removes_all_outputs_and_keeps_shipped_files(tmp_path):
    folders = written_folders()
    # the folders of the default study's run (an independent list: a lookup that misses one would fail here)
    assert {"data", "predictions", "scores", "aggregate", "charts", "logs", "calibration", "analysis", "data_cards",
            "model_server"} <= folders
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "requirements.txt").write_text("")
    shipped = ["results/README.md", "models/ref-2m/config.json", "rules/common.smk"]
    written = [f"results/{d}/x/part.parquet" for d in sorted(folders)] + [
        "results/report.html", "results/model_server/load-1.json", ".snakemake/metadata/abc"]
    for rel in shipped + written:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True, capture_output=True)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(["Makefile", "requirements.txt", *shipped])
