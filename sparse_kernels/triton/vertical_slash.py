"""Vertical-Slash / FlexPrefill: GPU index builder and executor.

The index builder turns ``vertical_idx`` / ``slash_offsets`` of a
:class:`~sparse_kernels.selection.VerticalSlashSelection` into a :class:`~.prefill.TileLayout` for query
blocks of ``bs`` (64) rows: the slash diagonals become contiguous ``bs``-wide key tiles (merged ranges,
exactly :func:`sparse_kernels.selection.build_vs_block_index`), and the verticals outside those ranges
and below the last range end become gathered columns. One Triton program per (batch row, q head, query
block) scans the slash offsets sequentially (descending offset = ascending window end), emitting tile
starts and columns as ranges close; every output has a static worst-case shape, so nothing is read back
to the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import i32
from .prefill import TileLayout, tile_attention


@triton.jit
def _emit_range(rs, re, q_start, ntile, nfull, ncol, vptr, nv,
                VROW, TROW, CROW, BS: tl.constexpr):
    """Write the tiles of range [rs, re) and the verticals before it that it does not cover."""
    for t in range(rs, re, BS):
        tl.store(TROW + ntile, t)
        ntile += 1
        nfull += (t + BS - 1 <= q_start).to(tl.int32)
    # verticals below re: those below rs are columns, those in [rs, re) are covered
    go = vptr < nv
    while go:
        vv = tl.load(VROW + vptr)
        go = vv < re
        if go:
            if vv < rs:
                tl.store(CROW + ncol, vv)
                ncol += 1
            vptr += 1
            go = vptr < nv
    return ntile, nfull, ncol, vptr


@triton.jit(do_not_specialize=["stride_sb", "stride_sh", "stride_vb", "stride_vh", "stride_cntb", "stride_tb",
                               "stride_th", "stride_tm", "stride_colb", "stride_colh", "stride_colm", "stride_ob",
                               "stride_oh"])  # not per prompt length (see prefill.py)
def _vs_index_kernel(SLASH, SCNT, VERT, VCNT, LEN, TSTART, TCNT, TFULL, COLS, CCNT,
                     stride_sb, stride_sh, stride_vb, stride_vh, stride_cntb,
                     stride_tb, stride_th, stride_tm, stride_colb, stride_colh, stride_colm,
                     stride_ob, stride_oh,
                     H, BS: tl.constexpr, BLOCK_S: tl.constexpr):
    m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    n = tl.load(LEN + b)
    q_start = m * BS
    end_m = q_start + BS
    ns = tl.load(SCNT + b * stride_cntb + h)
    nv = tl.load(VCNT + b * stride_cntb + h)
    srow = SLASH + b.to(tl.int64) * stride_sb + h * stride_sh
    vrow = VERT + b.to(tl.int64) * stride_vb + h * stride_vh
    trow = TSTART + b.to(tl.int64) * stride_tb + h.to(tl.int64) * stride_th + m.to(tl.int64) * stride_tm
    crow = COLS + b.to(tl.int64) * stride_colb + h.to(tl.int64) * stride_colh + m.to(tl.int64) * stride_colm
    ntile = tl.zeros([], dtype=tl.int32)
    nfull = tl.zeros([], dtype=tl.int32)
    ncol = tl.zeros([], dtype=tl.int32)
    vptr = tl.zeros([], dtype=tl.int32)
    if q_start < n:
        # offsets are ascending, so those < end_m (the ones this block sees) form a prefix: count it
        # vectorised, then scan it backwards (descending offset = ascending window end)
        offs_s = tl.arange(0, BLOCK_S)
        nvalid = tl.zeros([], dtype=tl.int32)
        for c0 in range(0, ns, BLOCK_S):
            oo = tl.load(srow + c0 + offs_s, mask=c0 + offs_s < ns, other=0)
            nvalid += tl.sum(((c0 + offs_s < ns) & (oo >= 0) & (oo < end_m)).to(tl.int32), 0)
        started = tl.zeros([], dtype=tl.int32)
        rs = tl.zeros([], dtype=tl.int32)
        re = tl.zeros([], dtype=tl.int32)
        for i in range(0, nvalid):
            o = tl.load(srow + (nvalid - 1 - i))
            e = tl.maximum(end_m - o, BS)
            if started == 0:
                rs = e - BS
                re = e
                started = 1
            elif e > re + BS:
                ntile, nfull, ncol, vptr = _emit_range(rs, re, q_start, ntile, nfull, ncol, vptr, nv,
                                                       vrow, trow, crow, BS)
                rs = e - BS
                re = e
            elif e > re:
                re = re + BS
        if started != 0:
            ntile, nfull, ncol, vptr = _emit_range(rs, re, q_start, ntile, nfull, ncol, vptr, nv,
                                                   vrow, trow, crow, BS)
    o_off = b.to(tl.int64) * stride_ob + h * stride_oh + m
    tl.store(TCNT + o_off, ntile)
    tl.store(TFULL + o_off, nfull)
    tl.store(CCNT + o_off, ncol)


def vs_layout(sel) -> TileLayout:
    """TileLayout (tiles + columns, block ``sel.block_size``) of a VerticalSlashSelection, built on the
    selection's device without host synchronisation. Equivalent to ``sel.block_index(b)`` for every row.

    Worst-case widths: tiles per query block <= min(#slashes, #query blocks) (each slash adds at most one
    tile, tiles are disjoint), columns <= #verticals."""
    bs = int(sel.block_size)
    dev = sel.vertical_idx.device
    B, H, Kv = sel.vertical_idx.shape
    Ks = sel.slash_offsets.shape[-1]
    L = int(sel.length)
    nqb = max(1, -(-L // bs))
    big = torch.iinfo(torch.int32).max
    # sort defensively: slashes ascending with -1 padding at the end; verticals ascending, -1 at the end
    so = sel.slash_offsets
    so = torch.where(so >= 0, so, torch.full_like(so, big)).sort(-1).values
    so = i32(torch.where(so == big, torch.full_like(so, -1), so))
    vi = sel.vertical_idx
    vi = torch.where(vi >= 0, vi, torch.full_like(vi, big)).sort(-1).values
    vi = i32(torch.where(vi == big, torch.full_like(vi, -1), vi))
    scnt = i32(torch.minimum(sel.slash_counts.to(dev), (so >= 0).sum(-1)))
    vcnt = i32(torch.minimum(sel.vertical_counts.to(dev), (vi >= 0).sum(-1)))
    if Ks == 0:
        so = torch.full((B, H, 1), -1, dtype=torch.int32, device=dev)
    if Kv == 0:
        vi = torch.full((B, H, 1), -1, dtype=torch.int32, device=dev)
    tmax = max(1, min(Ks, nqb))
    cmax = max(1, Kv)
    starts = torch.full((B, H, nqb, tmax), -1, dtype=torch.int32, device=dev)
    cols = torch.full((B, H, nqb, cmax), -1, dtype=torch.int32, device=dev)
    tcnt = torch.empty(B, H, nqb, dtype=torch.int32, device=dev)
    tfull = torch.empty_like(tcnt)
    ccnt = torch.empty_like(tcnt)
    lens = i32(sel.seq_lens.to(dev))
    if B * H:
        _vs_index_kernel[(nqb, B * H)](
            so, scnt, vi, vcnt, lens, starts, tcnt, tfull, cols, ccnt,
            so.stride(0), so.stride(1), vi.stride(0), vi.stride(1), scnt.stride(0),
            starts.stride(0), starts.stride(1), starts.stride(2), cols.stride(0), cols.stride(1), cols.stride(2),
            tcnt.stride(0), tcnt.stride(1),
            H, BS=bs, BLOCK_S=128, num_warps=1)
    return TileLayout(block_m=bs, block_n=bs, starts=starts, counts=tcnt, n_full=tfull,
                      pad_offsets=i32(sel.pad_offsets.to(dev)), seq_lens=lens, length=L,
                      columns=cols, column_counts=ccnt)


def vs_attention(q, k, v, sel, scale=None, config: dict | None = None, layout: TileLayout | None = None):
    """Attention of a VerticalSlashSelection at block granularity (what the MInference kernel computes)."""
    layout = vs_layout(sel) if layout is None else layout
    return tile_attention(q, k, v, layout, scale, config)


__all__ = ["vs_layout", "vs_attention"]
