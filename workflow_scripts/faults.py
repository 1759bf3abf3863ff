"""Fault injection for tests of crash safety and retries (inactive unless SFW_FAULT is set).

``SFW_FAULT=<point>:<substring>`` makes the process SIGKILL itself at ``point`` when the output path
contains ``substring``. Points: ``mid_write`` (after the temporary file is written, before the rename).
"""

from __future__ import annotations

import os
import signal


def maybe_fault(point: str, path: str) -> None:
    spec = os.environ.get("SFW_FAULT")
    if not spec:
        return
    want, _, needle = spec.partition(":")
    if want == point and needle in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
