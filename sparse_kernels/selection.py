"""Selection data structures shared by all sparse-attention methods.

A method decides *what* to keep and returns one of these; executors (``reference.py`` today, Triton
kernels later) compute attention from it.

Coordinate conventions (all selections):

* Batches may be **left padded**. ``pad_offsets[b]`` is the number of padding positions at the start of
  row ``b`` and ``seq_lens[b]`` the number of real tokens, so real tokens occupy
  ``[pad_offsets[b], pad_offsets[b] + seq_lens[b])`` of the padded axis of length ``length``.
* All stored positions (key indices, block indices, page indices, diagonal offsets) are **row-local**:
  position 0 is the first real token of the row. Block / page boundaries are therefore aligned to the
  first real token, which makes a left-padded row select exactly what the unpadded row selects.
  ``absolute_*`` helpers add the offsets back.
* Variable-length lists are padded with ``-1`` and accompanied by a count tensor.
* ``to_mask()`` returns a dense boolean mask ``[B, H, Lq, Lk]`` over the *padded* axes with causality
  applied (query ``i`` sits at position ``Lk - Lq + i``); padded positions are never kept.
* ``paper_sparsity`` holds the sparsity the paper records for that method (spec §5.6), per (row, head);
  ``density_computed()`` is the uniform measure: the fraction of causal query–key pairs of the sparsified
  phase that are actually computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

_BIG = 1 << 62


# --------------------------------------------------------------------------------------------------
# padding helpers


def padding_info(key_padding_mask: torch.Tensor | None, batch: int, length: int,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pad_offsets [B], seq_lens [B]) from an optional left-padding mask [B, L] (True = real token).

    Raises ValueError if the mask is not of the form ``[False]*p + [True]*(L-p)`` per row."""
    if key_padding_mask is None:
        off = torch.zeros(batch, dtype=torch.long, device=device)
        return off, torch.full((batch,), length, dtype=torch.long, device=device)
    m = key_padding_mask.to(torch.bool)
    if m.shape != (batch, length):
        raise ValueError(f"key_padding_mask must have shape {(batch, length)}, got {tuple(m.shape)}")
    lens = m.sum(-1).to(torch.long)
    off = length - lens
    pos = torch.arange(length, device=m.device)
    expected = pos.unsqueeze(0) >= off.unsqueeze(1)
    if not torch.equal(expected, m):
        raise ValueError("only left padding is supported: each row must be [False]*p + [True]*(L-p)")
    return off.to(device) if device is not None else off, lens.to(device) if device is not None else lens


def pad_stack(tensors: list[torch.Tensor], fill: int = -1) -> torch.Tensor:
    """Stack 1-D..N-D tensors that differ only in their last dimension, padding it with ``fill``."""
    width = max([t.shape[-1] for t in tensors] + [0])
    out = []
    for t in tensors:
        if t.shape[-1] < width:
            pad = torch.full((*t.shape[:-1], width - t.shape[-1]), fill, dtype=t.dtype, device=t.device)
            t = torch.cat([t, pad], dim=-1)
        out.append(t)
    return torch.stack(out)


def compact_sorted(valid: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort ``values`` ascending along the last dim keeping only ``valid`` entries; the rest become -1
    at the end. Returns (sorted values with -1 padding, counts)."""
    v = torch.where(valid, values, torch.full_like(values, _BIG))
    v, _ = torch.sort(v, dim=-1)
    cnt = valid.sum(-1)
    v = torch.where(v == _BIG, torch.full_like(v, -1), v)
    return v, cnt


def _causal_rows(q0: int, q1: int, n: int, device) -> torch.Tensor:
    """Causal mask of local query rows [q0, q1) against keys [0, n)."""
    return torch.arange(n, device=device).view(1, -1) <= torch.arange(q0, q1, device=device).view(-1, 1)


def _causal_pairs(q0: torch.Tensor, q1: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor) -> torch.Tensor:
    """Number of pairs (q, k) with q0 <= q < q1, k0 <= k < k1 and k <= q, elementwise over broadcast
    (integer) tensors, in closed form: a row q >= k0 sees min(q + 1, k1) - k0 keys, i.e. a triangle over the
    rows [max(q0, k0), min(q1, k1)) and the full width k1 - k0 for the rows [max(q0, k0, k1), q1)."""
    a = torch.maximum(q0, k0)
    c = torch.maximum(torch.minimum(q1, k1), a)
    tri = ((c - k0) * (c - k0 + 1) - (a - k0) * (a - k0 + 1)) // 2
    rect = (q1 - torch.maximum(a, k1)).clamp(min=0) * (k1 - k0).clamp(min=0)
    return tri + rect


DEFAULT_Q_CHUNK = 1024  # query rows per mask chunk (bounds memory to H * chunk * n)
_MASKED_TILES = 4  # masked tiles per query block read without a host check (disjoint tiles: at most 2 cross)


class _PrefillMaskMixin:
    """Shared dense-mask / density plumbing for prefill selections. Subclasses implement
    ``local_mask(b, q0, q1, **kw) -> [H, q1-q0, n]`` (row-local, causal applied)."""

    def to_mask(self, **kw) -> torch.Tensor:
        B, H, L = self.batch, self.num_heads, self.length
        mask = torch.zeros(B, H, L, L, dtype=torch.bool, device=self._device)
        for b in range(B):
            o, n = int(self.pad_offsets[b]), int(self.seq_lens[b])
            mask[b, :, o:o + n, o:o + n] = self.local_mask(b, **kw)
        return mask

    def iter_row_masks(self, q_chunk: int = DEFAULT_Q_CHUNK, **kw):
        """Yield (b, offset, n, q0, q1, mask [H, q1-q0, n]) chunk by chunk (row-local coordinates)."""
        for b in range(self.batch):
            o, n = int(self.pad_offsets[b]), int(self.seq_lens[b])
            for q0 in range(0, n, q_chunk):
                q1 = min(n, q0 + q_chunk)
                yield b, o, n, q0, q1, self.local_mask(b, q0, q1, **kw)

    def density_computed(self, q_chunk: int = DEFAULT_Q_CHUNK, **kw) -> torch.Tensor:
        """[B, H]: computed causal query-key pairs / (n(n+1)/2)."""
        out = torch.zeros(self.batch, self.num_heads, dtype=torch.float64)
        for b, o, n, q0, q1, m in self.iter_row_masks(q_chunk, **kw):
            out[b] += m.sum((-1, -2)).double().cpu() / (n * (n + 1) / 2)
        return out


# --------------------------------------------------------------------------------------------------
# prefill: block layout (Block-Sparse)


@dataclass
class BlockSelection(_PrefillMaskMixin):
    """Prefill block layout: per (batch, q head, query block) the kept key blocks.

    ``indices[b, h, m, :counts[b, h, m]]`` are ascending row-local key-block ids for query block ``m``
    (query rows ``[m*bs, (m+1)*bs)`` of the row-local sequence), -1 padded. Query and key blocks have the
    same size. Attention inside the kept tiles is causal."""

    block_size: int
    indices: torch.Tensor  # [B, H, NQB, K] long
    counts: torch.Tensor  # [B, H, NQB] long
    seq_lens: torch.Tensor  # [B]
    pad_offsets: torch.Tensor  # [B]
    length: int  # padded sequence length (queries = keys in prefill)
    paper_sparsity: torch.Tensor | None = None  # [B, H] float64

    @property
    def batch(self) -> int:
        return self.indices.shape[0]

    @property
    def num_heads(self) -> int:
        return self.indices.shape[1]

    @property
    def _device(self):
        return self.indices.device

    def local_mask(self, b: int, q0: int = 0, q1: int | None = None) -> torch.Tensor:
        """Row-local token mask [H, q1-q0, n] of batch row ``b`` (causal applied)."""
        n = int(self.seq_lens[b])
        q1 = n if q1 is None else q1
        bs = self.block_size
        nb = -(-n // bs)
        H = self.num_heads
        dev = self.indices.device
        if n == 0 or q1 <= q0:
            return torch.zeros(H, max(q1 - q0, 0), n, dtype=torch.bool, device=dev)
        m0, m1 = q0 // bs, -(-q1 // bs)  # query blocks touched by the rows
        idx = self.indices[b, :, m0:m1, :]  # [H, m1-m0, K]
        bm = torch.zeros(H, m1 - m0, nb + 1, dtype=torch.bool, device=dev)
        bm.scatter_(2, torch.where(idx < 0, torch.full_like(idx, nb), idx), True)
        # block -> token mask by one expanding copy (no per-token index gathers)
        tok = bm[:, :, :nb, None].expand(H, m1 - m0, nb, bs).reshape(H, m1 - m0, 1, nb * bs)
        tok = tok.expand(H, m1 - m0, bs, nb * bs).reshape(H, (m1 - m0) * bs, nb * bs)
        tok = tok[:, q0 - m0 * bs:q1 - m0 * bs, :n]
        return tok & _causal_rows(q0, q1, n, dev)

    def to_mask(self) -> torch.Tensor:
        return super().to_mask()

    def density_computed(self) -> torch.Tensor:
        """[B, H]: computed causal pairs / (n(n+1)/2), counted tile by tile from the layout."""
        out = torch.zeros(self.batch, self.num_heads, dtype=torch.float64)
        bs = self.block_size
        for b in range(self.batch):
            n = int(self.seq_lens[b])
            if not n:
                continue
            nb = -(-n // bs)
            idx = self.indices[b, :, :nb]  # [H, nb, K]
            m = torch.arange(nb, device=idx.device).view(1, -1, 1)
            q0, q1 = m * bs, torch.clamp((m + 1) * bs, max=n)
            k0, k1 = idx * bs, torch.clamp((idx + 1) * bs, max=n)
            pairs = _causal_pairs(q0, q1, k0, k1) * (idx >= 0)
            out[b] = pairs.sum((-1, -2)).double().cpu() / (n * (n + 1) / 2)
        return out


# --------------------------------------------------------------------------------------------------
# prefill: vertical-slash layout (Vertical-Slash, FlexPrefill)


@dataclass
class VSBlockIndex:
    """MInference-style index of one batch row: for each 64-query block the key ranges covered by merged
    slash tiles and the extra vertical columns. All row-local.

    range_start/range_end: [H, NQB, R] (-1 padded), range_count [H, NQB]; each range is a multiple of
    ``block_size`` wide and stands for (end-start)/block_size tiles. columns [H, NQB, C] (-1 padded),
    column_count [H, NQB]."""

    block_size: int
    range_start: torch.Tensor
    range_end: torch.Tensor
    range_count: torch.Tensor
    columns: torch.Tensor
    column_count: torch.Tensor

    @property
    def tile_count(self) -> torch.Tensor:
        """[H, NQB] number of block_size x block_size tiles per query block."""
        w = (self.range_end - self.range_start).clamp(min=0)
        return w.sum(-1) // self.block_size


def build_vs_block_index(vertical: torch.Tensor, slash: torch.Tensor, n: int, block_size: int = 64) -> VSBlockIndex:
    """Turn verticals [H, Kv] and slash offsets [H, Ks] (row-local, -1 padded) of a row of length ``n``
    into the block-granular layout the MInference kernel computes.

    For query block m (rows [m*bs, (m+1)*bs), end_m = (m+1)*bs, not clipped to n) every slash offset
    o < end_m becomes a bs-wide key window ending at e = max(end_m - o, bs). Windows are visited in
    ascending e and merged greedily: a window ending within bs of the current range end extends the
    range by bs (so ranges stay multiples of bs), a farther one closes the range and opens a new one.
    Verticals below the final range end and outside every range become single columns."""
    H = vertical.shape[0]
    dev = vertical.device
    bs = block_size
    nqb = max(1, -(-n // bs)) if n > 0 else 0
    end_m = (torch.arange(nqb, device=dev) + 1) * bs  # [NQB]
    # slash offsets in descending order -> window ends ascending
    s_valid = slash >= 0
    s_sorted, _ = torch.sort(torch.where(s_valid, slash, torch.full_like(slash, -1)), dim=-1, descending=True)
    Ks = s_sorted.shape[-1]
    o = s_sorted.unsqueeze(1)  # [H, 1, Ks]
    valid = (o >= 0) & (o < end_m.view(1, -1, 1))  # [H, NQB, Ks]
    e = torch.clamp(end_m.view(1, -1, 1) - o, min=bs)  # [H, NQB, Ks]
    started = torch.zeros(H, nqb, dtype=torch.bool, device=dev)
    rs = torch.zeros(H, nqb, dtype=torch.long, device=dev)
    re = torch.zeros(H, nqb, dtype=torch.long, device=dev)
    cnt = torch.zeros(H, nqb, dtype=torch.long, device=dev)
    out_s = torch.full((H, nqb, Ks + 1), -1, dtype=torch.long, device=dev)
    out_e = torch.full((H, nqb, Ks + 1), -1, dtype=torch.long, device=dev)

    def emit(where: torch.Tensor) -> None:
        nonlocal cnt
        idx = cnt.unsqueeze(-1)
        out_s.scatter_(2, idx, torch.where(where, rs, out_s.gather(2, idx).squeeze(-1)).unsqueeze(-1))
        out_e.scatter_(2, idx, torch.where(where, re, out_e.gather(2, idx).squeeze(-1)).unsqueeze(-1))
        cnt = cnt + where.long()

    for i in range(Ks):
        vi = valid[:, :, i]
        ei = e[:, :, i]
        fresh = vi & ~started
        cont = vi & started
        gap = cont & (ei > re + bs)
        ext = cont & ~gap & (ei > re)
        emit(gap)
        new_range = fresh | gap
        rs = torch.where(new_range, ei - bs, rs)
        re = torch.where(new_range, ei, torch.where(ext, re + bs, re))
        started = started | vi
    emit(started)
    R = max(int(cnt.max()) if cnt.numel() else 0, 1)
    out_s, out_e = out_s[:, :, :R], out_e[:, :, :R]

    # columns: verticals below the last range end that no range covers
    Kv = vertical.shape[-1]
    v = vertical.unsqueeze(1).expand(H, nqb, Kv)
    v_valid = v >= 0
    starts_sorted = torch.where(out_s >= 0, out_s, torch.full_like(out_s, _BIG)).contiguous()
    pos = torch.searchsorted(starts_sorted, v.contiguous(), right=True) - 1  # last range with start <= v
    end_at = out_e.gather(2, pos.clamp(min=0))
    covered = (pos >= 0) & (v < end_at)
    last_end = torch.where(cnt > 0, out_e.gather(2, (cnt - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1),
                           torch.full_like(cnt, -1))
    is_col = v_valid & ~covered & (v < last_end.unsqueeze(-1))
    cols, ccnt = compact_sorted(is_col, v)
    C = max(int(ccnt.max()) if ccnt.numel() else 0, 1)
    return VSBlockIndex(bs, out_s, out_e, cnt, cols[:, :, :C], ccnt)


def vs_block_index_from_layout(layout, b: int, n: int) -> VSBlockIndex:
    """Reference-format :class:`VSBlockIndex` of batch row ``b`` (length ``n``) from a V-S TileLayout:
    consecutive tiles are merged back into ranges (ranges never touch, so this is exact)."""
    bs = layout.block_m
    nqb = max(1, -(-n // bs)) if n > 0 else 0
    st = layout.starts[b, :, :nqb].long()  # [H, nqb, T]
    cnt = layout.counts[b, :, :nqb].long()
    H, _, T = st.shape
    i = torch.arange(T, device=st.device).view(1, 1, -1)
    valid = i < cnt.unsqueeze(-1)
    prev = torch.cat([torch.full_like(st[..., :1], -(1 << 40)), st[..., :-1]], -1)
    new = valid & (st != prev + bs)
    rid = torch.cumsum(new.long(), -1) - 1
    rcount = new.sum(-1)
    R = max(int(rcount.max()) if rcount.numel() else 0, 1)
    slot = torch.where(valid, rid, torch.full_like(rid, R)).clamp(max=R)
    rs = torch.full((H, nqb, R + 1), -1, dtype=torch.long, device=st.device)
    rs.scatter_(2, torch.where(new, slot, torch.full_like(slot, R)), torch.where(new, st, torch.full_like(st, -1)))
    re = torch.full((H, nqb, R + 1), -1, dtype=torch.long, device=st.device)
    re.scatter_reduce_(2, slot, torch.where(valid, st + bs, torch.full_like(st, -1)), reduce="amax")
    ccnt = layout.column_counts[b, :, :nqb].long()
    C = max(int(ccnt.max()) if ccnt.numel() else 0, 1)
    cols = layout.columns[b, :, :nqb, :C].long()
    return VSBlockIndex(bs, rs[..., :R].contiguous(), re[..., :R].contiguous(), rcount, cols.contiguous(), ccnt)


@dataclass
class VerticalSlashSelection(_PrefillMaskMixin):
    """Prefill vertical-slash layout per (batch, q head).

    ``vertical_idx[b, h, :vertical_counts[b, h]]``: ascending row-local key positions (columns kept for
    every query); ``slash_offsets[b, h, :slash_counts[b, h]]``: ascending diagonal offsets
    ``o = q_pos - k_pos >= 0``. ``block_size`` is the query-block / tile width of the kernel (64).

    ``to_mask(granularity="block")`` (default) is what the MInference kernel computes: merged 64-wide
    slash tiles plus vertical columns, causal. ``granularity="exact"`` keeps only the selected
    columns and diagonals."""

    vertical_idx: torch.Tensor  # [B, H, Kv]
    vertical_counts: torch.Tensor  # [B, H]
    slash_offsets: torch.Tensor  # [B, H, Ks]
    slash_counts: torch.Tensor  # [B, H]
    seq_lens: torch.Tensor
    pad_offsets: torch.Tensor
    length: int
    block_size: int = 64
    paper_sparsity: torch.Tensor | None = None  # [B, H]
    # the Triton kernel's TileLayout of this selection (block_m = block_n = block_size), when built on the GPU
    # (sparse_kernels.triton.accelerate): the executor reuses it and the counts below are read from it
    tile_layout: Any = field(default=None, repr=False, compare=False)
    _index_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch(self) -> int:
        return self.vertical_idx.shape[0]

    @property
    def num_heads(self) -> int:
        return self.vertical_idx.shape[1]

    @property
    def _device(self):
        return self.vertical_idx.device

    def block_index(self, b: int) -> VSBlockIndex:
        """MInference-style block/column index of batch row ``b`` (cached)."""
        if b not in self._index_cache:
            n = int(self.seq_lens[b])
            self._index_cache[b] = (build_vs_block_index(self.vertical_idx[b], self.slash_offsets[b], n,
                                                         self.block_size)
                                    if self.tile_layout is None else vs_block_index_from_layout(self.tile_layout, b, n))
        return self._index_cache[b]

    def _row_counts(self, b: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(computed causal pairs, bs x bs tiles, single columns), each [H] int64 on the selection's device, of
        batch row ``b`` of length n > 0. Read from the tile layout when there is one (no index conversion, no
        host read unless some query block has more than ``_MASKED_TILES`` masked tiles), else from the block
        index."""
        bs, nqb = self.block_size, -(-n // self.block_size)
        lay = self.tile_layout
        if lay is None:
            idx = self.block_index(b)
            dev = idx.range_start.device
            m = torch.arange(nqb, device=dev).view(1, -1, 1)
            q0, q1 = m * bs, torch.clamp((m + 1) * bs, max=n)
            k0, k1 = idx.range_start.clamp(min=0, max=n), idx.range_end.clamp(min=0, max=n)
            pairs = (_causal_pairs(q0, q1, k0, k1) * (idx.range_start >= 0)).sum((-1, -2))
            c = idx.columns
            pairs = pairs + (torch.clamp(q1 - torch.maximum(c, q0), min=0) * ((c >= 0) & (c < n))).sum((-1, -2))
            return pairs, idx.tile_count.sum(-1), idx.column_count.sum(-1)
        st, cnt, nf = lay.starts[b, :, :nqb], lay.counts[b, :, :nqb], lay.n_full[b, :, :nqb]
        dev, T = st.device, st.shape[-1]
        m = torch.arange(nqb, device=dev, dtype=torch.int32)
        q0, q1 = m * bs, torch.clamp((m + 1) * bs, max=n)
        # tiles [0, n_full) are seen whole by every row; the masked ones [n_full, count) are the last few
        pairs = (nf.long() * ((q1 - q0) * bs)).sum(-1)
        J = T if T <= _MASKED_TILES or bool(((cnt - nf) > _MASKED_TILES).any()) else _MASKED_TILES
        j = nf.unsqueeze(-1) + torch.arange(J, device=dev, dtype=torch.int32)
        k0 = st.gather(-1, j.clamp(max=T - 1).long()).clamp(min=0, max=n)
        mp = _causal_pairs(q0.view(-1, 1), q1.view(-1, 1), k0, (k0 + bs).clamp(max=n)) * (j < cnt.unsqueeze(-1))
        pairs = pairs + mp.sum(-1).long().sum(-1)
        c, cc = lay.columns[b, :, :nqb], lay.column_counts[b, :, :nqb]
        keep = torch.arange(c.shape[-1], device=dev, dtype=torch.int32) < cc.unsqueeze(-1)
        cp = torch.clamp(q1.view(-1, 1) - torch.maximum(c, q0.view(-1, 1)), min=0) * keep
        pairs = pairs + cp.sum(-1).long().sum(-1)
        return pairs, cnt.long().sum(-1), cc.long().sum(-1)

    def local_mask(self, b: int, q0: int = 0, q1: int | None = None, granularity: str = "block") -> torch.Tensor:
        """Row-local mask [H, q1-q0, n] of batch row ``b`` (causal applied)."""
        n = int(self.seq_lens[b])
        q1 = n if q1 is None else q1
        H = self.num_heads
        dev = self.vertical_idx.device
        if granularity not in ("block", "exact"):
            raise ValueError("granularity must be 'block' or 'exact'")
        if n == 0 or q1 <= q0:
            return torch.zeros(H, max(q1 - q0, 0), n, dtype=torch.bool, device=dev)
        causal = _causal_rows(q0, q1, n, dev)
        vcol = torch.zeros(H, n + 1, dtype=torch.bool, device=dev)
        if granularity == "exact":
            vi = self.vertical_idx[b]
            vcol.scatter_(1, torch.where((vi < 0) | (vi >= n), torch.full_like(vi, n), vi), True)
            sl = torch.zeros(H, n + 1, dtype=torch.bool, device=dev)
            so = self.slash_offsets[b]
            sl.scatter_(1, torch.where((so < 0) | (so >= n), torch.full_like(so, n), so), True)
            off = (torch.arange(q0, q1, device=dev).view(-1, 1) - torch.arange(n, device=dev).view(1, -1)).clamp(min=0)
            diag = sl[:, :n].gather(1, off.reshape(1, -1).expand(H, -1)).view(H, q1 - q0, n)
            return (vcol[:, :n].unsqueeze(1) | diag) & causal
        idx = self.block_index(b)
        bs = self.block_size
        m0, m1 = q0 // bs, -(-q1 // bs)  # query blocks touched by the chunk
        rs, re_ = idx.range_start[:, m0:m1], idx.range_end[:, m0:m1]
        nqb = m1 - m0
        cov = torch.zeros(H, nqb, n + 1, dtype=torch.long, device=dev)
        ok = rs >= 0
        st = torch.where(ok, rs.clamp(max=n), torch.full_like(rs, n))
        en = torch.where(ok, re_.clamp(max=n), torch.full_like(re_, n))
        cov.scatter_add_(2, st, torch.ones_like(st))
        cov.scatter_add_(2, en, -torch.ones_like(en))
        covb = cov.cumsum(-1)[:, :, :n] > 0
        colm = torch.zeros(H, nqb, n + 1, dtype=torch.bool, device=dev)
        c = idx.columns[:, m0:m1]
        colm.scatter_(2, torch.where((c < 0) | (c >= n), torch.full_like(c, n), c), True)
        covb = covb | colm[:, :, :n]
        # block rows -> token rows by one expanding copy (no per-row index gather)
        rows = covb.unsqueeze(2).expand(H, nqb, bs, n).reshape(H, nqb * bs, n)[:, q0 - m0 * bs:q1 - m0 * bs]
        return rows & causal

    def to_mask(self, granularity: str = "block") -> torch.Tensor:
        return super().to_mask(granularity=granularity)

    def density_computed(self, granularity: str = "block", q_chunk: int = DEFAULT_Q_CHUNK) -> torch.Tensor:
        """[B, H]: computed causal pairs / (n(n+1)/2). At block granularity it is counted from the block
        index (ranges and columns, clipped to the sequence and the causal triangle) without masks; at
        exact granularity from row-chunked masks."""
        if granularity == "exact":
            return super().density_computed(q_chunk, granularity=granularity)
        out = torch.zeros(self.batch, self.num_heads, dtype=torch.float64, device=self._device)  # no host sync
        for b in range(self.batch):
            n = int(self.seq_lens[b])
            if not n:
                continue
            out[b] = self._row_counts(b, n)[0].double() / (n * (n + 1) / 2)
        return out

    def block_granular_sparsity(self) -> torch.Tensor:
        """[B, H] paper measure (spec §2.1 step 6): 1 - (tiles*bs*bs + columns*bs) / (n(n+1)/2), on the
        selection's device."""
        out = torch.zeros(self.batch, self.num_heads, dtype=torch.float64, device=self._device)
        bs = self.block_size
        for b in range(self.batch):
            n = int(self.seq_lens[b])
            if not n:
                continue
            _, tiles, cols = self._row_counts(b, n)
            work = tiles.double() * bs * bs + cols.double() * bs
            out[b] = 1.0 - work / (n * (n + 1) / 2)
        return out


# --------------------------------------------------------------------------------------------------
# KV compression (SnapKV, Ada-SnapKV)


@dataclass
class KVSelection:
    """Per (batch, kv head) kept prompt tokens after KV compression.

    ``indices[b, g, :lengths[b, g]]`` are ascending row-local token positions of the prompt, -1 padded;
    lengths may differ per head (Ada-SnapKV). Tokens appended during decoding are always kept."""

    indices: torch.Tensor  # [B, Hkv, Cmax]
    lengths: torch.Tensor  # [B, Hkv]
    seq_lens: torch.Tensor  # [B] real prompt lengths
    pad_offsets: torch.Tensor  # [B]
    length: int  # padded prompt length
    paper_sparsity: torch.Tensor | None = None  # [B, Hkv]

    @property
    def batch(self) -> int:
        return self.indices.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.indices.shape[1]

    def absolute_indices(self) -> torch.Tensor:
        """Positions on the padded prompt axis (-1 kept for padding)."""
        return torch.where(self.indices >= 0, self.indices + self.pad_offsets.view(-1, 1, 1), self.indices)

    def keep_mask(self) -> torch.Tensor:
        """[B, Hkv, length] bool over the padded prompt axis."""
        B, G, L = self.batch, self.num_kv_heads, self.length
        m = torch.zeros(B, G, L + 1, dtype=torch.bool, device=self.indices.device)
        a = self.absolute_indices()
        m.scatter_(2, torch.where(a < 0, torch.full_like(a, L), a), True)
        return m[:, :, :L]

    def gather(self, k: torch.Tensor, v: torch.Tensor, pad_side: str = "left"):
        """Physically compress a prompt cache k, v [B, Hkv, length, D].

        Returns (k_c, v_c, valid) with k_c, v_c [B, Hkv, Cmax, D] and valid [B, Hkv, Cmax]. With
        ``pad_side="left"`` the kept tokens of each head are right-aligned (padding first), matching the
        left-padded batch convention so decode tokens can be appended after them; ``"right"`` puts them
        first. Kept tokens stay in positional order."""
        B, G, C = self.indices.shape
        D = k.shape[-1]
        if pad_side not in ("left", "right"):
            raise ValueError("pad_side must be 'left' or 'right'")
        slot = torch.arange(C, device=k.device).view(1, 1, C)
        if pad_side == "right":
            src = self.absolute_indices()
            valid = slot < self.lengths.unsqueeze(-1)
        else:
            shift = (C - self.lengths).unsqueeze(-1)
            j = slot - shift
            valid = j >= 0
            src = torch.where(valid, self.absolute_indices().gather(2, j.clamp(min=0)), torch.full_like(j, -1))
        gi = src.clamp(min=0).unsqueeze(-1).expand(B, G, C, D)
        kc = torch.where(valid.unsqueeze(-1), k.gather(2, gi), torch.zeros((), dtype=k.dtype, device=k.device))
        vc = torch.where(valid.unsqueeze(-1), v.gather(2, gi), torch.zeros((), dtype=v.dtype, device=v.device))
        return kc, vc, valid

    def to_mask(self, num_q_heads: int, q_len: int = 1, k_len: int | None = None) -> torch.Tensor:
        """[B, H, q_len, k_len] mask over a cache holding the padded prompt (``length`` positions) followed
        by ``k_len - length`` decode tokens. Prompt keys are kept iff selected for the query head's kv
        head (h // groups); decode tokens are always kept; causal with queries at the last q_len positions."""
        B, G = self.batch, self.num_kv_heads
        if num_q_heads % G:
            raise ValueError("num_q_heads must be a multiple of the number of kv heads")
        k_len = self.length if k_len is None else k_len
        if k_len < self.length:
            raise ValueError("k_len must include the whole prompt")
        keep = self.keep_mask()
        tail = torch.ones(B, G, k_len - self.length, dtype=torch.bool, device=keep.device)
        keep = torch.cat([keep, tail], dim=-1).repeat_interleave(num_q_heads // G, dim=1)
        qpos = torch.arange(k_len - q_len, k_len, device=keep.device).view(-1, 1)
        kpos = torch.arange(k_len, device=keep.device).view(1, -1)
        return keep.unsqueeze(2) & (kpos <= qpos).view(1, 1, q_len, k_len)

    def density_computed(self) -> torch.Tensor:
        """[B, Hkv] kept prompt tokens / prompt tokens: the fraction of prompt keys each decode step reads."""
        return self.lengths.double().cpu() / self.seq_lens.clamp(min=1).double().cpu().view(-1, 1)


# --------------------------------------------------------------------------------------------------
# Quest decode-step selection


@dataclass
class QuestSelection:
    """Pages chosen at one decode step per (batch, q head).

    ``pages[b, h, :counts[b, h]]`` ascending row-local page ids (page i = row-local tokens
    [i*p, (i+1)*p)); the last one is always the page holding the newest token. With ``share_pages`` the
    rows of all q heads of a GQA group are identical. ``seq_lens`` counts real tokens including the newest
    one; ``length`` is the padded cache length. The decode query is the last position."""

    page_size: int
    pages: torch.Tensor  # [B, H, P]
    counts: torch.Tensor  # [B, H]
    seq_lens: torch.Tensor  # [B]
    pad_offsets: torch.Tensor  # [B]
    length: int
    paper_sparsity: torch.Tensor | None = None  # [B, H]
    shared: bool = False  # True when all q heads of a GQA group share their pages (share_pages)

    @property
    def batch(self) -> int:
        return self.pages.shape[0]

    def group_pages(self, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pages [B, Hkv, P], counts [B, Hkv]) for a shared selection (one page list per kv group)."""
        if not self.shared:
            raise ValueError("selection is per q head; construct Quest with share_pages=True")
        g = self.num_heads // num_kv_heads
        return self.pages[:, ::g], self.counts[:, ::g]

    @property
    def num_heads(self) -> int:
        return self.pages.shape[1]

    def token_mask(self) -> torch.Tensor:
        """[B, H, length] keys attended by the decode query."""
        B, H, L = self.batch, self.num_heads, self.length
        dev = self.pages.device
        pos = torch.arange(L, device=dev).view(1, -1) - self.pad_offsets.view(-1, 1)  # local positions
        real = (pos >= 0) & (pos < self.seq_lens.view(-1, 1))
        npages = max(int((self.seq_lens.max() + self.page_size - 1) // self.page_size) if B else 0, 1)
        pm = torch.zeros(B, H, npages + 1, dtype=torch.bool, device=dev)
        pg = self.pages.long()  # any integer dtype (the Triton selection writes int32)
        pm.scatter_(2, torch.where(pg < 0, torch.full_like(pg, npages), pg), True)
        page_of = (pos.clamp(min=0) // self.page_size).clamp(max=npages)  # [B, L]
        sel = pm.gather(2, page_of.unsqueeze(1).expand(B, H, L))
        return sel & real.unsqueeze(1)

    def to_mask(self) -> torch.Tensor:
        return self.token_mask().unsqueeze(2)

    def density_computed(self) -> torch.Tensor:
        """[B, H] attended tokens / tokens in the cache at this step."""
        return self.token_mask().sum(-1).double().cpu() / self.seq_lens.clamp(min=1).double().cpu().view(-1, 1)


def sparsity_summary(selection) -> dict[str, float]:
    """The two numbers to log for one layer (and step): ``paper_sparsity`` (the paper's per-method
    definition, averaged over batch rows and heads) and ``density_computed`` (uniform measure, averaged
    the same way; for VerticalSlashSelection at block granularity)."""
    ps = selection.paper_sparsity
    return {
        "paper_sparsity": float("nan") if ps is None else float(ps.double().mean()),
        "density_computed": float(selection.density_computed().double().mean()),
    }
