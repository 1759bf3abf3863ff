"""Attention recall: the share of the dense attention probability mass a method's selection keeps.

One place for every method: a method only decides what to keep (a prefill selection, a KV-compression
selection, a Quest page selection); the functions here score that decision against the *dense* attention
probabilities of the same queries and keys, and against the **oracle** selection of equal budget:

* prefill (Vertical-Slash, FlexPrefill, Block-Sparse): per query row and head, the dense softmax over the
  row's causal keys; recall = mass on the keys the selection's (block-granular) mask keeps; oracle = mass
  of the row's top-c keys, c = the number of keys the selection keeps in that row. Averaged over the real
  query rows -> one number per (batch row, q head).
* decode (SnapKV / Ada-SnapKV after compression, Quest at each step): per decode query and head, the dense
  softmax over every key of the uncompressed cache (prompt + generated tokens); recall = mass on the keys
  the method attends; oracle = mass of the top-c keys (token granularity, c = attended keys), or for Quest
  of the top-c pages by their summed mass (c = attended pages: the oracle picks pages as Quest does, so
  ``oracle - recall`` is what a better page choice could add).

By construction oracle >= recall, and both are 1 when the selection keeps everything.

:class:`RecallRecorder` is a :class:`~sparse_kernels.hf.session.SparseSession` hook that applies them to
every layer call of a generation (it keeps its own uncompressed copy of the keys for KV-compression methods)
and returns per-row means over layers, heads and query rows / decode steps, plus per-layer means.
"""

from __future__ import annotations

import torch

DEFAULT_MAX_ELEMENTS = 1 << 24  # fp32 probabilities per chunk (64 MiB)
PREFILL_ROWS = 512              # query rows measured per (sample, layer) in prefill (all when the prompt is shorter)
ROW_WINDOW = 64                 # ... in PREFILL_ROWS / ROW_WINDOW evenly spaced windows of consecutive rows


def row_windows(n: int, max_rows: int | None = PREFILL_ROWS, window: int = ROW_WINDOW) -> list[tuple[int, int]]:
    """Query-row ranges [q0, q1) measured in a row of length n: all rows when n <= max_rows (or max_rows is
    None), else max_rows // window windows of ``window`` consecutive rows, evenly spaced from the first to the
    last row (deterministic)."""
    if max_rows is None or n <= max_rows:
        return [(0, n)]
    w = max(1, int(window))
    m = max(1, int(max_rows) // w)
    starts = sorted({round(i * (n - w) / max(m - 1, 1)) for i in range(m)})
    return [(s, s + w) for s in starts]


def _topc_mass(p: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Sum of the ``count`` largest entries of p [..., n] along the last axis (count [...] >= 0)."""
    kmax = int(count.max()) if count.numel() else 0
    if kmax == 0:
        return torch.zeros(p.shape[:-1], dtype=p.dtype, device=p.device)
    top = torch.topk(p, min(kmax, p.shape[-1]), dim=-1).values.cumsum(-1)
    got = top.gather(-1, (count.clamp(max=top.shape[-1]) - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(count > 0, got, torch.zeros_like(got))


def kept_and_oracle(p: torch.Tensor, keep: torch.Tensor, units: torch.Tensor | None = None,
                    num_units: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(recall, oracle recall), each p.shape[:-1], of attention probabilities p [..., n] (rows sum to 1) and
    the kept keys ``keep`` [..., n] (bool). ``units`` [..., n] (long, broadcast to p; values < num_units):
    the oracle then chooses whole units (pages) as many as ``keep`` touches, by their summed mass."""
    keep = keep.expand_as(p)
    rec = (p * keep).sum(-1)
    if units is None:
        return rec, _topc_mass(p, keep.sum(-1))
    u = units.expand_as(p)
    mass = torch.zeros(*p.shape[:-1], num_units, dtype=p.dtype, device=p.device).scatter_add_(-1, u, p)
    touched = torch.zeros(*p.shape[:-1], num_units, dtype=torch.bool, device=p.device).scatter_(-1, u, keep)
    return rec, _topc_mass(mass, touched.sum(-1))


def _probs(q: torch.Tensor, k: torch.Tensor, scale: float, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax of q [H, r, D] . k [G, n, D]^T (GQA: q head h reads kv head h // (H/G)) over ``allowed``
    [H or 1, r, n]; fp32; rows without an allowed key are 0."""
    H, G = q.shape[0], k.shape[0]
    s = torch.matmul(q.float(), k.float().repeat_interleave(H // G, dim=0).transpose(-1, -2)) * scale
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num_(0.0)


def prefill_recall(q: torch.Tensor, k: torch.Tensor, selection, scale: float, max_rows: int | None = PREFILL_ROWS,
                   max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(recall [B, H], oracle [B, H]) float64 of a prefill selection (Block / VerticalSlash; its
    ``local_mask`` at the executor's block granularity) for q [B, H, L, D], k [B, Hkv, L, D], averaged over
    each row's real query rows — over the :func:`row_windows` sample of them when a row is longer than
    ``max_rows`` (None: every row). Rows are processed in chunks of at most ``max_elements`` scores."""
    B, H = q.shape[0], q.shape[1]
    rec = torch.zeros(B, H, dtype=torch.float64)
    orc = torch.zeros(B, H, dtype=torch.float64)
    for b in range(B):
        o, n = int(selection.pad_offsets[b]), int(selection.seq_lens[b])
        if n == 0:
            rec[b] = orc[b] = 1.0
            continue
        chunk = max(1, int(max_elements) // (H * n))
        kb = k[b, :, o:o + n]
        windows = row_windows(n, max_rows)
        chunks = [(a, min(e, a + chunk)) for s, e in windows for a in range(s, e, chunk)]
        for q0, q1 in chunks:
            causal = (torch.arange(n, device=q.device).view(1, -1)
                      <= torch.arange(q0, q1, device=q.device).view(-1, 1)).unsqueeze(0)
            p = _probs(q[b, :, o + q0:o + q1], kb, scale, causal)
            r, c = kept_and_oracle(p, selection.local_mask(b, q0, q1).to(p.device))
            rec[b] += r.double().sum(-1).cpu()
            orc[b] += c.double().sum(-1).cpu()
        rows = sum(e - s for s, e in windows)
        rec[b] /= rows
        orc[b] /= rows
    return rec, orc


def decode_recall(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, scale: float,
                  page_size: int | None = None, pad_offsets: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(recall [B, H], oracle [B, H]) float64 of one decode step: q [B, H, 1, D] over the uncompressed cache
    k [B, Hkv, Lk, D] whose existing keys are ``valid`` [B, 1 or Hkv, Lk], with the method attending ``keep``
    [B, H or Hkv, Lk]. ``page_size``: the oracle picks pages of that size (row-local: page i = real tokens
    [i*p, (i+1)*p) after ``pad_offsets`` [B]) instead of tokens."""
    B, H = q.shape[0], q.shape[1]
    G, Lk = k.shape[1], k.shape[2]

    def per_q_head(m):
        return m if m.shape[1] in (1, H) else m.repeat_interleave(H // m.shape[1], dim=1)

    valid = per_q_head(valid.to(torch.bool))
    keep = per_q_head(keep.to(torch.bool)) & valid
    units = num_units = None
    if page_size is not None:
        off = torch.zeros(B, dtype=torch.long) if pad_offsets is None else pad_offsets.long()
        pos = torch.arange(Lk, device=q.device).view(1, -1) - off.to(q.device).view(-1, 1)
        num_units = Lk // page_size + 2
        units = torch.where(pos >= 0, pos // page_size, torch.full_like(pos, num_units - 1)).view(B, 1, 1, Lk)
    rec = torch.zeros(B, H, dtype=torch.float64)
    orc = torch.zeros(B, H, dtype=torch.float64)
    for b in range(B):   # one row at a time: [H, 1, Lk] probabilities
        p = _probs(q[b], k[b], scale, valid[b].unsqueeze(1).expand(H, 1, Lk))
        r, c = kept_and_oracle(p, keep[b].unsqueeze(1), None if units is None else units[b], num_units)
        rec[b], orc[b] = r[:, 0].double().cpu(), c[:, 0].double().cpu()
    return rec, orc


def _real_positions(pad_offsets: torch.Tensor, seq_lens: torch.Tensor, length: int) -> torch.Tensor:
    """[B, length] bool: the real (not left-padding) positions of a padded axis."""
    pos = torch.arange(length, device=pad_offsets.device).view(1, -1)
    off = pad_offsets.view(-1, 1)
    return (pos >= off) & (pos < off + seq_lens.view(-1, 1))


class RecallRecorder:
    """Session hook (``SparseSession(hooks=[recorder])``) measuring attention recall at every layer call.

    Prefill events with a prefill selection -> :func:`prefill_recall`; decode events of a KV-compression or
    Quest session -> :func:`decode_recall` at every step (rows that already stopped are not counted). For
    KV compression it keeps the full prompt keys of each layer (and the generated keys), which the compressed
    cache no longer holds. Call :meth:`reset` before each generation and :meth:`rows` after it."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.prefill: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.decode_sum: dict[int, list[torch.Tensor]] = {}    # layer -> [recall sum [B, H], oracle sum [B, H]]
        self.decode_steps: dict[int, torch.Tensor] = {}        # layer -> counted steps per row [B]
        self._full: dict[int, dict] = {}                       # layer -> uncompressed keys (KV compression)

    def __call__(self, ev) -> None:
        if ev.phase == "prefill":
            if ev.selection is not None:
                self.prefill[ev.layer] = prefill_recall(ev.q, ev.k, ev.selection, ev.scale)
            ks = ev.kv_selection
            if ks is not None:
                real = _real_positions(ks.pad_offsets.to(ev.k.device), ks.seq_lens.to(ev.k.device), ks.length)
                self._full[ev.layer] = {"keys": [ev.k], "valid": [real.unsqueeze(1)],
                                        "keep": [ks.keep_mask().to(ev.k.device)]}
            return
        B = ev.q.shape[0]
        if ev.selection is not None:                     # Quest: the cache is the full cache
            K, _, valid = ev.cache.view()
            sel = ev.selection
            rec, orc = decode_recall(ev.q, K, valid, sel.token_mask(), ev.scale, sel.page_size, sel.pad_offsets)
        elif ev.layer in self._full:                     # KV compression: the uncompressed copy
            full = self._full[ev.layer]
            ones = torch.ones(B, ev.k.shape[1], 1, dtype=torch.bool, device=ev.k.device)
            full["keys"].append(ev.k)
            full["valid"].append(ones[:, :1])
            full["keep"].append(ones)
            K = torch.cat(full["keys"], 2)
            rec, orc = decode_recall(ev.q, K, torch.cat(full["valid"], 2), torch.cat(full["keep"], 2), ev.scale)
        else:
            return                                       # dense decode: nothing selected
        act = (torch.ones(B, dtype=torch.bool) if getattr(ev, "active", None) is None
               else ev.active.to("cpu", torch.bool))
        w = act.double().view(-1, 1)
        s = self.decode_sum.setdefault(ev.layer, [torch.zeros_like(rec), torch.zeros_like(orc)])
        s[0] += rec * w
        s[1] += orc * w
        self.decode_steps[ev.layer] = self.decode_steps.get(ev.layer, torch.zeros(B, dtype=torch.long)) + act.long()

    def rows(self, batch: int) -> list[dict]:
        """Per batch row: ``prefill_recall`` / ``prefill_oracle_recall`` (mean over layers, heads, query rows)
        and ``decode_recall`` / ``decode_oracle_recall`` (mean over layers, heads, decode steps), each with a
        ``*_by_layer`` list (mean over heads); None for a phase without a selection (or without a decode
        step)."""
        out = []
        for b in range(batch):
            row = {}
            layers = sorted(self.prefill)
            per = [(float(self.prefill[i][0][b].mean()), float(self.prefill[i][1][b].mean())) for i in layers]
            _put(row, "prefill", per)
            layers = [i for i in sorted(self.decode_sum) if int(self.decode_steps[i][b]) > 0]
            per = [(float(self.decode_sum[i][0][b].mean()) / int(self.decode_steps[i][b]),
                    float(self.decode_sum[i][1][b].mean()) / int(self.decode_steps[i][b])) for i in layers]
            _put(row, "decode", per)
            out.append(row)
        return out


def _put(row: dict, phase: str, per_layer: list[tuple[float, float]]) -> None:
    if not per_layer:
        row.update({f"{phase}_recall": None, f"{phase}_oracle_recall": None, f"{phase}_recall_by_layer": None,
                    f"{phase}_oracle_recall_by_layer": None})
        return
    rec = [r for r, _ in per_layer]
    orc = [o for _, o in per_layer]
    row.update({f"{phase}_recall": sum(rec) / len(rec), f"{phase}_oracle_recall": sum(orc) / len(orc),
                f"{phase}_recall_by_layer": rec, f"{phase}_oracle_recall_by_layer": orc})


__all__ = ["kept_and_oracle", "prefill_recall", "decode_recall", "RecallRecorder"]
