"""Fault injection for tests of crash safety and retries (inactive unless SFW_FAULT is set).

``SFW_FAULT=<point>:<substring>`` (several separated by ``,``) injects a fault at ``point`` when the output
path contains ``substring``. The environment reaches cluster jobs too (the SLURM executor submits with
``sbatch --export=ALL``). Points, both at the moment an output's temporary file is written, before the rename:

* ``mid_write``: the process SIGKILLs itself (a job killed mid-write; its output must not look complete).
* ``fail_once``: the process exits with status 3 the first time, for each matching output. A marker file
  in ``$SFW_FAULT_DIR`` (default ``.sfw_faults`` in the working directory; it must be on a file system
  shared by the retry, e.g. the workflow directory) records the failure, so the next attempt succeeds.
  Tests of Snakemake ``--retries`` use it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

FAIL_ONCE_STATUS = 3


def _specs() -> list[tuple[str, str]]:
    spec = os.environ.get("SFW_FAULT", "")
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        want, _, needle = item.partition(":")
        out.append((want, needle))
    return out


def marker_path(path: str | Path) -> Path:
    """The marker a ``fail_once`` fault leaves for ``path`` (one per output path)."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    return Path(os.environ.get("SFW_FAULT_DIR") or ".sfw_faults") / f"fail_once-{digest}"


def maybe_fault(point: str, path: str) -> None:
    for want, needle in _specs():
        if needle not in str(path):
            continue
        if want == point == "mid_write":
            os.kill(os.getpid(), signal.SIGKILL)
        if want == "fail_once" and point == "mid_write":
            marker = marker_path(path)
            if marker.exists():
                print(f"SFW_FAULT fail_once: {path} already failed once ({marker}); continuing", file=sys.stderr)
                continue
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{path}\n")
            print(f"SFW_FAULT fail_once: failing {path} (exit {FAIL_ONCE_STATUS}); marker {marker}",
                  file=sys.stderr, flush=True)
            raise SystemExit(FAIL_ONCE_STATUS)
