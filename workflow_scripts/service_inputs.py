"""A cell's model-server input counts as present while Snakemake plans (import-light; applied by rules/infer.smk).

Each inference cell takes its model server's rendezvous file as ``service(ancient(...))`` input: the service makes
Snakemake run the server together with the cells that must run (one group job); ``ancient`` is meant to keep a
server that runs from making its *other* cells rerun. Snakemake honours ``ancient`` in that spot (``DAG.update_needrun``:
a job that has to run makes a dependent rerun "unless all the files it takes from it are ancient and exist") only
for files that exist, and a service's output exists only while its server runs (Snakemake deletes it after the
group). So without help, changing one cell reruns every cell of its server, and regrouping cells reruns them all.

The workflow used to create an empty placeholder at every rendezvous path whenever the Snakefile was loaded; that
wrote files during ``snakemake -n`` and ``--list-changes`` (thousands for the paper grid), and a placeholder of a
server killed with Snakemake (``kill -9``) was taken as that server's *incomplete* output, which Snakemake then
forced, hiding every job downstream of it (the resumed run only started the server, which idled out).

Here, instead, an input flagged both ``service`` and ``ancient`` (only this workflow's cells have such inputs)
counts as present: the ancient rule then applies whatever is on disk, and nothing is written. Its contents are
never read by Snakemake (a service input is not waited for, its mtime is ignored as ancient, and it is recorded as
``<service>``); the client reads the real file, which the server's job writes when it starts.

The patch wraps ``_IOFile.exists`` and ``_IOFile.mtime_uncached`` (which Snakemake asks of every input it
believes to exist; an absent rendezvous file gets mtime 0, ignored anyway as ancient) only when their source is
the one it was written against (:data:`FINGERPRINTS`, Snakemake 9.27.1); otherwise :func:`apply` returns False and the rules fall back to the
placeholders (``server_plan.LoadPlan.ensure_placeholders``) with a warning. tests/test_faults.py checks both the
property (a changed cell reruns only itself) and that a dry run writes nothing.
"""

from __future__ import annotations

# SHA-1 of the source of the methods wrapped (Snakemake 9.27.1)
FINGERPRINTS = {"exists": "303bf04383bd2baadc4929d6a4bd4cabfbe66f8a",
                "mtime_uncached": "d1f71592844028db0cf832833dbfec8bace7189e"}


def _is_server_input(iofile) -> bool:
    from snakemake.io import is_flagged

    return is_flagged(iofile._file, "service") and is_flagged(iofile._file, "ancient")


def apply() -> bool:
    """Make ancient service inputs count as present; False (nothing changed) on an unknown Snakemake."""
    import os

    import snakemake.api  # noqa: F401  (import order: snakemake.io alone can be a circular import)
    from snakemake.io import Mtime, _IOFile

    from .snakemake_speedups import fingerprint

    if getattr(_IOFile.exists, "_sfw_service_inputs", False):
        return True
    originals = {name: getattr(_IOFile, name) for name in FINGERPRINTS}
    for name, func in originals.items():
        if fingerprint(func) != FINGERPRINTS[name]:
            return False
    exists_, mtime_ = originals["exists"], originals["mtime_uncached"]

    async def exists(self):
        return True if _is_server_input(self) else await exists_(self)

    async def mtime_uncached(self, skip_storage: bool = False):
        if _is_server_input(self) and not os.path.lexists(self.file):
            return Mtime(local=0.0)
        return await mtime_(self, skip_storage)

    exists._sfw_service_inputs = True
    for name, func in (("exists", exists), ("mtime_uncached", mtime_uncached)):
        func.__doc__ = originals[name].__doc__
        setattr(_IOFile, name, func)
    return True


def widen_local_pool(extra: int) -> bool:
    """Give Snakemake's local executor ``extra`` more worker threads than its ``cores + 5``.

    The local executor runs every job, threads: 0 ones included, on one thread pool of ``cores + 5`` workers, and
    a job holds its worker until it ends. A model server holds one for its whole life, and its cells (thin clients,
    threads: 0) get the rest, so locally, and inside each SLURM group job, at most ``cores + 4`` cells of a load
    could be in flight at once. The server runs the decode-side cells of one task, length and shard that are in
    flight together sample-major with one shared dense prefill (workflow_scripts/infer.run_cells): with more
    cells per unit than workers, the unit would be split and its prefill recomputed. With ``extra`` = the largest
    load's cell count, every cell of a load can wait on its server at once (each is a small standard-library
    client process). False (nothing changed) when the executor lacks the attributes this relies on."""
    import concurrent.futures

    from snakemake.executors import local

    cls = local.Executor
    orig = getattr(cls.__post_init__, "_sfw_original", cls.__post_init__)

    def __post_init__(self):
        orig(self)
        if isinstance(getattr(self, "workers", None), int) and hasattr(self, "pool"):
            self.workers += __post_init__.extra
            self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.workers)

    __post_init__._sfw_original = orig
    __post_init__.extra = max(int(extra), 0)
    cls.__post_init__ = __post_init__
    return True
