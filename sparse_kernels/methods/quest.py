"""Quest: query-aware page selection at every decode step over the full KV cache (spec §2.6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..budgets import quest_token_budget
from ..reference import quest_attention
from ..selection import QuestSelection, padding_info
from ._common import PHASE_DECODE, check_ratio, dense

_BIG = 1 << 62


@dataclass
class QuestState:
    """Per-layer page summaries of a (left-padded) batch cache.

    page_min / page_max [B, Hkv, P, D] (fp32) hold the element-wise min / max of the keys of each
    row-local page (+inf / -inf where a page has no token yet). ``seq_lens`` counts real tokens
    (prompt + appended), ``length`` the padded cache length. ``token_budget`` [B] is T per row and
    ``prompt_lens`` [B] the real prompt lengths (for the nominal sparsity 1 - T / prompt length)."""

    page_size: int
    page_min: torch.Tensor
    page_max: torch.Tensor
    seq_lens: torch.Tensor
    pad_offsets: torch.Tensor
    length: int
    token_budget: torch.Tensor
    prompt_lens: torch.Tensor

    def _grow(self, pages: int) -> None:
        P = self.page_min.shape[2]
        if pages <= P:
            return
        extra = max(pages - P, P)  # amortised doubling
        B, G, _, D = self.page_min.shape
        dev = self.page_min.device
        self.page_min = torch.cat([self.page_min, torch.full((B, G, extra, D), float("inf"), device=dev)], 2)
        self.page_max = torch.cat([self.page_max, torch.full((B, G, extra, D), float("-inf"), device=dev)], 2)

    def append(self, k_new: torch.Tensor) -> "QuestState":
        """Add one decode key per row, k_new [B, Hkv, 1, D] (or [B, Hkv, D]), to its page summary."""
        if k_new.dim() == 4:
            k_new = k_new[:, :, -1]
        B, G, D = k_new.shape
        pos = self.seq_lens  # local position of the new token
        page = pos // self.page_size
        self._grow(int(page.max()) + 1)
        idx = page.view(B, 1, 1, 1).expand(B, G, 1, D)
        kf = k_new.float().unsqueeze(2)
        self.page_min.scatter_(2, idx, torch.minimum(self.page_min.gather(2, idx), kf))
        self.page_max.scatter_(2, idx, torch.maximum(self.page_max.gather(2, idx), kf))
        self.seq_lens = self.seq_lens + 1
        self.length += 1
        return self

    @property
    def paper_sparsity(self) -> torch.Tensor:
        """[B] nominal sparsity 1 - T / prompt length (clipped at 0)."""
        return (1.0 - self.token_budget.double() / self.prompt_lens.clamp(min=1).double()).clamp(min=0.0).cpu()


class Quest:
    """Quest: dense prefill, full cache; each decode step attends T/p pages chosen by the upper bound
    sum_d max(q_d * min_d, q_d * max_d) among the complete earlier pages, plus the page holding the newest
    token.

    ``share_pages=False`` (paper v1): every q head chooses its own pages. ``share_pages=True`` (code
    default since June 2025): bounds are summed over the q heads of a GQA group, which share pages.
    Budget: ``token_budget`` T (rounded down to a multiple of ``page_size``), or ``ratio``:
    T = round(rho * L / 16) * 16 at ``nominal_length`` (each row's prompt length when None);
    ``ratio == 1`` attends everything. When there are no more complete pages than T/p all pages are
    attended (the official code asserts instead)."""

    name = "quest"
    phase = PHASE_DECODE

    def __init__(self, ratio: float | None = None, nominal_length: int | None = None,
                 token_budget: int | None = None, page_size: int = 16, share_pages: bool = False):
        self.ratio = check_ratio(ratio)
        self.nominal_length = nominal_length
        self.page_size = int(page_size)
        self.share_pages = bool(share_pages)
        if self.ratio is not None and token_budget is not None:
            raise ValueError("give either ratio or token_budget, not both")
        if self.ratio is None and token_budget is None:
            raise ValueError("Quest needs ratio or token_budget")
        self.token_budget = None if token_budget is None else int(token_budget)
        if self.ratio is not None and not dense(self.ratio) and nominal_length is not None:
            self.token_budget = quest_token_budget(nominal_length, self.ratio, self.page_size)

    def budget(self, prompt_len: int) -> int:
        if dense(self.ratio):
            return _BIG
        if self.token_budget is not None:
            return self.token_budget
        return quest_token_budget(prompt_len, self.ratio, self.page_size)

    def init_state(self, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> QuestState:
        """Page summaries of a prefilled cache k [B, Hkv, L, D] (left padding allowed)."""
        B, G, L, D = k.shape
        off, lens = padding_info(key_padding_mask, B, L, device=k.device)
        p = self.page_size
        P = max(1, -(-int(lens.max()) // p)) if B else 1
        pmin = torch.full((B, G, P, D), float("inf"), device=k.device)
        pmax = torch.full((B, G, P, D), float("-inf"), device=k.device)
        for b in range(B):
            o, n = int(off[b]), int(lens[b])
            if n == 0:
                continue
            np_ = -(-n // p)
            kr = k[b, :, o:o + n].float()
            pad = np_ * p - n
            lo = torch.cat([kr, torch.full((G, pad, D), float("inf"), device=k.device)], 1).view(G, np_, p, D)
            hi = torch.cat([kr, torch.full((G, pad, D), float("-inf"), device=k.device)], 1).view(G, np_, p, D)
            pmin[b, :, :np_] = lo.amin(2)
            pmax[b, :, :np_] = hi.amax(2)
        budgets = torch.tensor([self.budget(int(n)) for n in lens.tolist()], dtype=torch.long)
        return QuestState(page_size=p, page_min=pmin, page_max=pmax, seq_lens=lens.clone(), pad_offsets=off,
                          length=L, token_budget=budgets, prompt_lens=lens.clone().cpu())

    def page_bounds(self, state: QuestState, q: torch.Tensor) -> torch.Tensor:
        """Upper bounds [B, H, P] of q . k per page (per q head, or the group sum broadcast to its q heads
        when share_pages). q [B, H, 1, D] or [B, H, D]. Empty pages get -inf."""
        if q.dim() == 4:
            q = q[:, :, -1]
        B, H, D = q.shape
        G = state.page_min.shape[1]
        g = H // G
        empty = torch.isinf(state.page_min[..., 0]) & (state.page_min[..., 0] > 0)  # [B, G, P]
        mn = torch.where(empty.unsqueeze(-1), torch.zeros_like(state.page_min), state.page_min)
        mx = torch.where(empty.unsqueeze(-1), torch.zeros_like(state.page_max), state.page_max)
        qf = q.float().view(B, G, g, 1, D)
        bound = torch.maximum(qf * mn.unsqueeze(2), qf * mx.unsqueeze(2)).sum(-1)  # [B, G, g, P]
        if self.share_pages:
            bound = bound.sum(2, keepdim=True).expand(B, G, g, bound.shape[-1])
        bound = bound.masked_fill(empty.unsqueeze(2), float("-inf"))
        return bound.reshape(B, H, -1)

    def select(self, state: QuestState, q: torch.Tensor) -> QuestSelection:
        """Pages for the decode query q [B, H, 1, D]; ``state`` must already contain the query's own key."""
        bounds = self.page_bounds(state, q)
        B, H, P = bounds.shape
        p = self.page_size
        rows_pages, rows_cnt = [], []
        for b in range(B):
            n = int(state.seq_lens[b])
            cur = (n - 1) // p
            n_hist = int(state.token_budget[b]) // p
            if cur <= n_hist:
                sel = torch.arange(cur + 1, device=q.device).expand(H, cur + 1)
            else:
                top = torch.topk(bounds[b, :, :cur], n_hist, dim=-1).indices
                top = torch.sort(top, dim=-1).values
                sel = torch.cat([top, torch.full((H, 1), cur, dtype=torch.long, device=q.device)], 1)
            rows_pages.append(sel)
            rows_cnt.append(torch.full((H,), sel.shape[1], dtype=torch.long, device=q.device))
        width = max(t.shape[1] for t in rows_pages)
        pages = torch.full((B, H, width), -1, dtype=torch.long, device=q.device)
        for b, t in enumerate(rows_pages):
            pages[b, :, : t.shape[1]] = t
        sps = state.paper_sparsity.view(B, 1).expand(B, H).clone()
        return QuestSelection(page_size=p, pages=pages, counts=torch.stack(rows_cnt), seq_lens=state.seq_lens.clone(),
                              pad_offsets=state.pad_offsets, length=state.length, paper_sparsity=sps,
                              shared=self.share_pages)

    def attend(self, q, k, v, state: QuestState, scale=None):
        """(output [B, H, 1, D], selection) for one decode step; k, v [B, Hkv, Lk, D] is the full cache
        including the newest token (already appended to ``state``)."""
        sel = self.select(state, q)
        return quest_attention(q, k, v, sel, scale), sel

    __call__ = attend
