"""Analysis library for the sparse-frontier workflow.

Pure-Python analyses of the per-sample / per-cell result tables:

* :mod:`.cost`         -- the paper's cost model (prefill FLOPs, decode memory, indexing overheads).
* :mod:`.pareto`       -- Pareto frontiers (min cost, max score) and isoCost points.
* :mod:`.significance` -- maximum compression ratio with statistically guaranteed retention.
* :mod:`.scaling`      -- logistic scaling-law fit and held-out-axis validation (paper Tables 3/4/7).
* :mod:`.tables`       -- sequence-length relative error and per-task method comparison tables.

This package ``__init__`` deliberately imports nothing heavy (no numpy/scipy/pandas): the
Snakefile imports ``workflow_scripts`` modules while building the DAG.  Import the submodules
explicitly, e.g. ``from workflow_scripts.analysis import cost``.

Formulas and choices are documented in ``docs/analysis.md``. Methods and their phases come from the method
registry (``sparse_kernels/registry.py``).
"""

from sparse_kernels import registry

#: The dense baseline.
DENSE_METHOD = "dense"


def prefill_methods() -> tuple[str, ...]:
    """Registered methods that sparsify the prefill phase (decode stays dense over the full KV cache)."""
    return registry.prefill_methods()


def decode_methods() -> tuple[str, ...]:
    """Registered methods that sparsify the decode phase: KV compression and decode-time selection (prefill
    stays dense)."""
    return registry.decode_methods()


def method_phase(method: str) -> str:
    """Return ``"prefill"``, ``"decode"`` or ``"dense"`` for a (single, registered) method name."""
    if method in registry.METHODS:
        phase = registry.METHODS[method].phase
        return {"none": "dense", "prefill": "prefill"}.get(phase, "decode")
    raise ValueError(f"unknown method {method!r}; expected one of {tuple(registry.METHODS)}")


__all__ = ["DENSE_METHOD", "prefill_methods", "decode_methods", "method_phase"]
