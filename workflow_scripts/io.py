"""Atomic output writing: a killed job never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):   # left by a killed earlier attempt
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Like ``atomic_path`` for a directory (replaces an existing one only on success)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_parquet(table, path: str | Path, metadata: dict | None = None) -> None:
    """Write a pyarrow Table atomically; ``metadata`` values are JSON-encoded into the schema metadata."""
    import pyarrow.parquet as pq

    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({f"sfw.{k}".encode(): json.dumps(v, sort_keys=True, default=str).encode()
                     for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    from .faults import maybe_fault

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
        maybe_fault("mid_write", path)


def read_metadata(path: str | Path) -> dict:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {k.decode()[4:]: json.loads(v) for k, v in meta.items() if k.startswith(b"sfw.")}


def logged(log: str | Path, func, *args, **kwargs):
    """Call ``func(*args, **kwargs)`` for a rule that runs inside the Snakemake process (``run:``) and keep a log of
    it in ``log``: the call, its wall time and, if it fails, the traceback (then re-raised for Snakemake). Such
    rules print nothing of their own, so this is what their log can tell; shell rules log their process output."""
    import time
    import traceback

    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    name = f"{func.__module__}.{func.__qualname__}"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"{name}(\n" + "".join(f"    {a!r},\n" for a in args)
                + "".join(f"    {k}={v!r},\n" for k, v in kwargs.items()) + ")\n")
        f.flush()
        try:
            out = func(*args, **kwargs)
        except BaseException:
            f.write(f"failed after {time.perf_counter() - t0:.2f} s:\n{traceback.format_exc()}")
            raise
        f.write(f"done in {time.perf_counter() - t0:.2f} s\n")
    return out
