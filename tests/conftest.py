"""Shared fixtures: a tiny random-weight Qwen2 model + BPE tokenizer, and a runner for real Snakemake runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# result columns that describe how a run went, not what it computed (they differ between identical reruns)
RUN_COLUMNS = frozenset({"prefill_ms", "prefill_shared_by", "decode_ms_per_token", "peak_mem_mb"})
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen2ForCausalLM + trained BPE tokenizer with a chat template, saved HF-style."""
    from workflow_scripts.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", vocab_size=2048, layers=2, hidden=64)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


class Workflow:
    """Runs the project's Snakefile in its own working directory with a given study config."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "study.yaml"

    def write_config(self, config: dict) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def run(self, *args: str, check: bool = True, env: dict | None = None, timeout: int = 900):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(self.workdir),
               "--configfile", str(self.config_path), "--cores", "2", "--workflow-profile", "none", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        return proc

    def planned_jobs(self, *args: str) -> dict[str, int]:
        """Job counts per rule that a dry run plans ({} when nothing is to be done)."""
        proc = self.run("-n", *args)
        return parse_job_stats(proc.stdout + proc.stderr)

    def path(self, rel: str) -> Path:
        return self.workdir / rel


def parse_job_stats(text: str) -> dict[str, int]:
    stats: dict[str, int] = {}
    if "Job stats:" not in text:
        return stats
    block = text.split("Job stats:", 1)[1]
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            stats[m.group(1)] = int(m.group(2))
    return stats


def tree(root: Path, skip=(".snakemake",)) -> dict[str, tuple]:
    """Every path under ``root`` (files and folders) with its mode, size and mtime, except those below a folder
    named in ``skip`` (by default Snakemake's own .snakemake): a snapshot to tell whether a command wrote anything."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in dirs + sorted(files):
            p = Path(folder) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def workflow(tmp_path) -> Workflow:
    return Workflow(tmp_path / "wd")
