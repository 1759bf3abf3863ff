"""Versions, code fingerprint and timestamps recorded with every result file."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("torch", "transformers", "tokenizers", "triton", "pyarrow", "duckdb", "snakemake")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha1 over the project's Python sources (workflow_scripts, sparse_kernels)."""
    h = hashlib.sha1()
    for pkg in ("workflow_scripts", "sparse_kernels"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def provenance() -> dict:
    versions = {}
    for p in _PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = None
    return {
        "python": platform.python_version(),
        "versions": versions,
        "code": code_fingerprint(),
        "git_commit": git_commit(),
        "host": platform.node(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
