"""Compression ratio -> per-method budget, exactly as the paper's hyperparameter tables (spec §1.3, §2.7).

Import-light (standard library only). Conventions:

* ``ratio`` is the compression ratio (>= 1); the density is ``rho = 1 / ratio``.
* The paper's 10-point grid is written with 4-decimal densities
  ``(0.05, 0.0667, 0.1, 0.1333, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)``; the SnapKV/Quest tables are only
  reproduced with these *rounded* values (e.g. ``floor(0.0667 * 32768) = 2185`` whereas
  ``floor(32768 / 15) = 2184``). :func:`paper_density` snaps a ratio to that grid.
* ``length`` is the *nominal* sequence length of the configuration (``max_input_tokens``: 16384, 32768,
  65536, 128000), not the actual prompt length: the paper fixes budgets per configuration.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

# The 10-point grid (v3 Table 3 = v1 Table 6), high compression -> low compression.
PAPER_DENSITIES: tuple[float, ...] = (0.05, 0.0667, 0.1, 0.1333, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
PAPER_RATIOS: tuple[float, ...] = (20.0, 15.0, 10.0, 7.5, 5.0, 10 / 3, 2.5, 2.0, 5 / 3, 10 / 7)
# Block-Sparse's 7-point grid (exact ratios, spec §1.3).
BLOCK_SPARSE_RATIOS: tuple[float, ...] = (20.0, 15.0, 10.0, 7.5, 5.0, 3.0, 2.0)
# FlexPrefill's 7 points. The first points equal the V-S counts at 20/15/10/7.5x; the mapping of the
# alpha > 0 points to 5 / 3.33 / 2x is the spec's inference (§2.7), not stated in the paper.
FLEXPREFILL_RATIOS: tuple[float, ...] = (20.0, 15.0, 10.0, 7.5, 5.0, 10 / 3, 2.0)

PAPER_LENGTHS: tuple[int, ...] = (16384, 32768, 65536, 128000)

# Vertical-Slash: verticals = slashes, per nominal length, aligned with PAPER_RATIOS.
VS_COUNTS: dict[int, tuple[int, ...]] = {
    16384: (164, 240, 315, 400, 448, 576, 768, 1024, 1536, 2304),
    32768: (290, 384, 448, 576, 704, 1024, 1536, 2304, 3584, 4608),
    65536: (400, 448, 544, 640, 960, 1280, 2304, 4096, 6144, 8192),
    128000: (480, 768, 1024, 1536, 2048, 3584, 5632, 10240, 13312, 18432),
}
# FlexPrefill: (alpha, min_budget), aligned with FLEXPREFILL_RATIOS.
FLEXPREFILL_PARAMS: dict[int, tuple[tuple[float, int], ...]] = {
    16384: ((0.0, 164), (0.0, 240), (0.0, 315), (0.0, 400), (0.55, 512), (0.71, 512), (0.88, 512)),
    32768: ((0.0, 290), (0.0, 384), (0.45, 512), (0.6, 512), (0.7, 512), (0.8, 512), (0.92, 512)),
    65536: ((0.0, 400), (0.45, 512), (0.55, 512), (0.7, 512), (0.77, 512), (0.85, 512), (0.94, 512)),
}
# Block-Sparse top_chunks as printed in the paper (reproduced by block_sparse_top_k, kept for tests/docs).
BLOCK_SPARSE_TOP_CHUNKS: dict[int, tuple[int, ...]] = {
    16384: (26, 35, 53, 71, 108, 188, 300),
    32768: (52, 69, 105, 141, 216, 376, 600),
    65536: (104, 139, 210, 283, 432, 752, 1200),
}

_GRID_REL_TOL = 5e-3  # 1/1.43 = 0.6993 and 1/3.33 = 0.3003 still snap to 0.7 / 0.3


def _check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio >= 1.0):
        raise ValueError(f"compression ratio must be a finite number >= 1, got {ratio!r}")


def is_dense_ratio(ratio: float | None) -> bool:
    return ratio is not None and abs(float(ratio) - 1.0) < 1e-9


def _grid_index(ratio: float, grid: tuple[float, ...]) -> int | None:
    """Index of the grid ratio within 0.5 % (relative, in density) of ``ratio``, else None."""
    _check_ratio(ratio)
    rho = 1.0 / ratio
    for i, r in enumerate(grid):
        if abs(rho - 1.0 / r) <= _GRID_REL_TOL * (1.0 / r):
            return i
    return None


def paper_density(ratio: float) -> float:
    """Density the paper uses for ``ratio``: the 4-decimal grid value when ``ratio`` is on the 10-point
    grid (within 0.5 %), otherwise ``1/ratio`` rounded to 4 decimals."""
    i = _grid_index(ratio, PAPER_RATIOS)
    if i is not None:
        return PAPER_DENSITIES[i]
    return round(1.0 / ratio, 4)


def _density_fraction(ratio: float) -> Fraction:
    # exact rational of the 4-decimal density, so floor/round are free of float noise
    return Fraction(round(paper_density(ratio) * 10000), 10000)


def snapkv_capacity(length: int, ratio: float) -> int:
    """SnapKV / Ada-SnapKV ``token_capacity`` C = floor(rho * L) (per kv head and layer).

    At L = 128000 (v1 only) the paper's table uses the Quest values, i.e. round(rho*L/16)*16."""
    if is_dense_ratio(ratio):
        return int(length)
    if int(length) == 128000:
        return quest_token_budget(length, ratio)
    return int(math.floor(_density_fraction(ratio) * int(length)))


def quest_token_budget(length: int, ratio: float, page_size: int = 16) -> int:
    """Quest ``token_budget`` T = round(rho * L / 16) * 16 (round half to even; no ties occur on the grid)."""
    if is_dense_ratio(ratio):
        return int(math.ceil(length / page_size) * page_size)
    return int(round(_density_fraction(ratio) * int(length) / page_size)) * page_size


def block_sparse_density(k: int, n: int) -> float:
    """Analytic density of causal Block-Sparse with ``n`` query/key blocks and top-``k`` blocks per row:
    [k(k+1)/2 + (n-k)k] / [n(n+1)/2] (row m keeps min(m+1, k) blocks)."""
    if n <= 0:
        raise ValueError("n must be positive")
    k = max(0, min(int(k), int(n)))
    return (k * (k + 1) / 2 + (n - k) * k) / (n * (n + 1) / 2)


def block_sparse_top_k(length: int, ratio: float, block_size: int = 16, min_k: int = 3) -> int:
    """Invert :func:`block_sparse_density`: the k whose analytic density is closest to 1/ratio
    (n = ceil(L / block_size)). Reproduces every top_chunks value of the paper's table.
    The density is increasing in k, so a binary search finds the crossing; the nearer neighbour wins."""
    _check_ratio(ratio)
    n = int(math.ceil(length / block_size))
    if is_dense_ratio(ratio):
        return n
    target = 1.0 / ratio
    lo, hi = 1, n  # smallest k with density >= target
    while lo < hi:
        mid = (lo + hi) // 2
        if block_sparse_density(mid, n) >= target:
            hi = mid
        else:
            lo = mid + 1
    k = lo
    if k > 1 and abs(block_sparse_density(k - 1, n) - target) <= abs(block_sparse_density(k, n) - target):
        k = k - 1
    return max(min(k, n), min(min_k, n))


def paper_vs_counts(length: int, ratio: float) -> int:
    """Vertical-Slash count (verticals = slashes) from the paper's table for a nominal length and a
    ratio on the 10-point grid. Raises KeyError when (length, ratio) is not in the table."""
    if int(length) not in VS_COUNTS:
        raise KeyError(f"no paper Vertical-Slash counts for length {length}; known: {sorted(VS_COUNTS)}")
    i = _grid_index(ratio, PAPER_RATIOS)
    if i is None:
        raise KeyError(f"ratio {ratio} is not on the paper's 10-point grid {PAPER_RATIOS}")
    return VS_COUNTS[int(length)][i]


def paper_flexprefill(length: int, ratio: float) -> tuple[float, int]:
    """FlexPrefill (alpha, min_budget) from the paper's table for a nominal length and a ratio on
    FLEXPREFILL_RATIOS (20, 15, 10, 7.5, 5, 3.33, 2). Raises KeyError otherwise."""
    if int(length) not in FLEXPREFILL_PARAMS:
        raise KeyError(f"no paper FlexPrefill parameters for length {length}; known: {sorted(FLEXPREFILL_PARAMS)}")
    i = _grid_index(ratio, FLEXPREFILL_RATIOS)
    if i is None:
        raise KeyError(f"ratio {ratio} is not on FlexPrefill's grid {FLEXPREFILL_RATIOS}")
    return FLEXPREFILL_PARAMS[int(length)][i]


def nearest_k(f: Callable[[int], float], target: float, lo: int, hi: int) -> tuple[int, int]:
    """For ``f`` non-decreasing on [lo, hi]: (the k whose f(k) is closest to ``target``, the crossing = the
    smallest k with f(k) >= target, hi if none). The crossing is bracketed by doubling steps from ``lo`` and
    then bisected, so f is only evaluated at k up to about twice the crossing (an f whose cost grows with k,
    such as a Vertical-Slash layout with k columns, is never built at ``hi`` for a small answer); then the
    nearer of the crossing and its predecessor (the predecessor on ties)."""
    a, b, step = lo, lo, 1
    while b < hi and f(b) < target:
        a, b, step = b + 1, min(hi, b + step), step * 2
    while a < b:
        mid = (a + b) // 2
        if f(mid) >= target:
            b = mid
        else:
            a = mid + 1
    if a > lo and abs(f(a - 1) - target) <= abs(f(a) - target):
        return a - 1, a
    return a, a


def search_k_for_density(density_of_k: Callable[[int], float], target_density: float, lo: int, hi: int) -> int:
    """Generic calibration helper: ``density_of_k`` must be non-decreasing in k (e.g. the measured
    block-granular density of Vertical-Slash with k verticals = k slashes, averaged over calibration
    prompts). Returns the k in [lo, hi] whose density is closest to ``target_density``."""
    if lo > hi:
        raise ValueError("lo must be <= hi")
    return nearest_k(density_of_k, target_density, lo, hi)[0]
