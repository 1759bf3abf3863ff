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

Formulas and choices are documented in ``docs/analysis.md``.
"""

#: Methods that sparsify the prefill phase (decode stays dense over the full KV cache).
PREFILL_METHODS = ("vertical_slash", "flexprefill", "block_sparse")
#: Methods that sparsify the decode phase (prefill stays dense).
DECODE_METHODS = ("snapkv", "ada_snapkv", "quest")
#: The dense baseline.
DENSE_METHOD = "dense"


def method_phase(method: str) -> str:
    """Return ``"prefill"``, ``"decode"`` or ``"dense"`` for a method name."""
    if method in PREFILL_METHODS:
        return "prefill"
    if method in DECODE_METHODS:
        return "decode"
    if method == DENSE_METHOD:
        return "dense"
    raise ValueError(
        f"unknown method {method!r}; expected one of "
        f"{(DENSE_METHOD,) + PREFILL_METHODS + DECODE_METHODS}"
    )


__all__ = ["PREFILL_METHODS", "DECODE_METHODS", "DENSE_METHOD", "method_phase"]
