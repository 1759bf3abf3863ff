"""FlexPrefill with the query-aware switch disabled (tau = 0): cumulative-coverage vertical-slash
budgets per head (spec §2.2)."""

from __future__ import annotations

import torch

from ..budgets import paper_flexprefill
from ._common import check_ratio, dense
from .vertical_slash import _VSBase


def coverage_count(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """c_alpha per row of scores [H, n]: the number of entries, taken in descending order, whose
    cumulative sum stays <= alpha, plus one (clipped to n)."""
    s = torch.sort(scores, dim=-1, descending=True).values
    c = (torch.cumsum(s, dim=-1) <= alpha).sum(-1) + 1
    return c.clamp(max=scores.shape[-1])


class FlexPrefill(_VSBase):
    """FlexPrefill: k_v = max(min_budget, c_alpha(mean vertical probs)), k_s = max(min_budget,
    c_alpha(diagonal sums / window)), computed per head (and per row / layer / sample).

    Budget: explicit ``alpha`` / ``min_budget`` (config defaults 0.65 / 512), or ``ratio`` +
    ``nominal_length`` looked up in the paper's table (:func:`budgets.paper_flexprefill`).
    ``ratio == 1`` selects everything. A ``min_budget`` below one block (``block_size``, 64) is refused: the
    official code's behaviour there is not reproduced (the paper's tables never go below 164)."""

    name = "flexprefill"

    def __init__(self, ratio: float | None = None, nominal_length: int | None = None,
                 alpha: float | None = None, min_budget: int | None = None, last_q: int = 512,
                 n_sinks: int = 4, n_local: int = 64, block_size: int = 64, bf16_probs: bool = False):
        super().__init__(last_q, n_sinks, n_local, block_size, bf16_probs)
        self.ratio = check_ratio(ratio)
        self.nominal_length = nominal_length
        if self.ratio is not None and (alpha is not None or min_budget is not None):
            raise ValueError("give either ratio or explicit alpha/min_budget, not both")
        self.alpha = alpha
        self.min_budget = min_budget
        if self.ratio is not None and not dense(self.ratio) and nominal_length is not None:
            self.alpha, self.min_budget = paper_flexprefill(nominal_length, self.ratio)
        elif self.ratio is None:
            self.alpha = 0.65 if alpha is None else float(alpha)
            self.min_budget = 512 if min_budget is None else int(min_budget)
        if self.min_budget is not None and self.min_budget < self.block_size:
            raise ValueError(f"FlexPrefill min_budget must be at least one block ({self.block_size} tokens; the "
                             f"official code's behaviour below it is not reproduced), got {self.min_budget}")

    def params(self, n: int) -> tuple[float, int]:
        """(alpha, min_budget) for a row of real length n."""
        if dense(self.ratio):
            return 1.0, n
        if self.alpha is not None:
            return float(self.alpha), int(self.min_budget)
        return paper_flexprefill(n, self.ratio)

    def _from_sums(self, vsum, dsum, w):
        return vsum / w, dsum / w

    def _counts(self, vertical, slash, n, w):
        alpha, min_budget = self.params(n)
        kv = coverage_count(vertical, alpha).clamp(min=min_budget)
        ks = coverage_count(slash, alpha).clamp(min=min_budget)
        kv = kv.clamp(min=min(self.n_sinks, n), max=n)
        ks = ks.clamp(min=min(self.n_local, n), max=n)
        return kv.long(), ks.long()
