"""Split-K ("flash-decoding") attention for a few decode queries over a gathered set of cache positions.

One program per (batch row, kv head, split) handles all ``g = H / Hkv`` q heads of the GQA group (and all
``Lq`` decode queries) as the rows of one tile, so each K / V row is read once per group. The keys it
visits are the concatenation of

* a page list (``pages [B, S, P]`` row-local page ids, ``page_size`` tokens each, ``counts [B, S]``;
  ``S`` = Hkv: one list per group), restricted to row-local positions ``< seq_lens[b]``; optionally a
  per-page bitmap of the group's q heads that selected the page (per-q-head selections, e.g. Quest v1),
* a contiguous range ``[range_start[b], end)`` of absolute positions (decode tokens after a compressed
  prompt, or the whole row for dense decode); ``end`` is ``Lk``, or ``range_end[b]`` read on the device
  (a statically sized cache of which only a prefix is written: the CUDA-graph decode step),

split evenly over ``num_splits`` programs; a second kernel merges the partial softmaxes. Queries sit at
the last ``Lq`` positions before ``end`` (causal among them). Rows without keys output 0. Page entries
``< 0`` are skipped wherever they sit in the list (unsorted fixed-size selections).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (LOG2E, check_gqa, dot_precision, i32, masked_softmax_weights, next_pow2, num_sms, prep,
                      resolve_scale)


@triton.jit
def _decode_partial_kernel(
        Q, K, V, PAGES, PCNT, PBITS, OFF, PLEN, RSTART, REND, M_OUT, L_OUT, ACC_OUT,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_pb, stride_ph, stride_cb, stride_ch, stride_rb, stride_rh,
        Hkv, GROUPS, LQ, LK, D, NSPLIT, qk_scale,
        PAGE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_PAGES: tl.constexpr, HAS_RANGE: tl.constexpr, HAS_END: tl.constexpr, HAS_BITS: tl.constexpr,
        HAS_OFF: tl.constexpr, HAS_PLEN: tl.constexpr, USE_DOT: tl.constexpr,
        PREC: tl.constexpr):
    # index inputs (counts, offsets, limits, range bounds) may be int32 or int64: read as they are, so that
    # the caller launches no conversion kernels (a few us each inside a decode step's CUDA graph)
    split = tl.program_id(0)
    pid_bg = tl.program_id(1)
    b = pid_bg // Hkv
    g = pid_bg % Hkv
    b64 = b.to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    hig = offs_r // LQ  # head within group
    qi = offs_r % LQ
    row_ok = offs_r < GROUPS * LQ
    qh = g * GROUPS + hig
    q_ptr = Q + b64 * stride_qb + qh.to(tl.int64)[:, None] * stride_qh + qi[:, None] * stride_qm \
        + offs_d[None, :] * stride_qd
    q = tl.load(q_ptr, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    lk = LK
    if HAS_END:
        lk = tl.load(REND + b).to(tl.int32)  # written prefix of a static cache
    qpos = lk - LQ + qi  # absolute query positions
    k_base = K + b64 * stride_kb + g.to(tl.int64) * stride_kh
    v_base = V + b64 * stride_vb + g.to(tl.int64) * stride_vh
    off = 0
    if HAS_OFF:
        off = tl.load(OFF + b).to(tl.int32)
    # work: page tiles then range tiles
    n_page_tiles = 0
    cnt = 0
    plen = 0
    if HAS_PAGES:
        cnt = tl.load(PCNT + b64 * stride_cb + g * stride_ch).to(tl.int32)
        plen = LK
        if HAS_PLEN:
            plen = tl.load(PLEN + b).to(tl.int32)
        n_page_tiles = tl.cdiv(cnt * PAGE, BLOCK_N)
    r0 = lk
    n_range_tiles = 0
    if HAS_RANGE:
        r0 = tl.load(RSTART + b * stride_rb + g * stride_rh).to(tl.int32)
        n_range_tiles = tl.cdiv(tl.maximum(lk - r0, 0), BLOCK_N)
    total = n_page_tiles + n_range_tiles
    per = tl.cdiv(total, NSPLIT)
    t0 = split * per
    t1 = tl.minimum(t0 + per, total)
    m_i = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    p_row = PAGES + b64 * stride_pb + g.to(tl.int64) * stride_ph
    for t in range(t0, t1):
        is_page = t < n_page_tiles
        u = t * BLOCK_N + offs_n
        entry = u // PAGE
        pg_ok = is_page & (entry < cnt)
        if HAS_PAGES:
            page = tl.load(p_row + entry, mask=pg_ok, other=0)
            ploc = page * PAGE + u % PAGE
            pvalid = pg_ok & (page >= 0) & (ploc < plen)
            ppos = off + ploc
        else:
            pvalid = pg_ok
            ppos = u
        rpos = r0 + (t - n_page_tiles) * BLOCK_N + offs_n
        rvalid = (t >= n_page_tiles) & (rpos < lk)
        pos = tl.where(is_page, ppos, rpos)
        valid = tl.where(is_page, pvalid, rvalid)
        pos64 = pos.to(tl.int64)
        k = tl.load(k_base + pos64[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                    mask=valid[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_base + pos64[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=valid[:, None] & d_ok[None, :], other=0.0)
        if USE_DOT:
            qk = tl.dot(q, tl.trans(k), input_precision=PREC)
        else:
            qk = tl.sum(q[:, None, :].to(tl.float32) * k[None, :, :].to(tl.float32), 2)
        qk = qk * qk_scale
        keep = valid[None, :] & (pos[None, :] <= qpos[:, None]) & row_ok[:, None]
        if HAS_BITS:
            pb = tl.load(PBITS + b64 * stride_pb + g.to(tl.int64) * stride_ph + entry, mask=pg_ok, other=0)
            hb = ((pb[None, :] >> hig[:, None]) & 1) != 0
            keep = keep & (hb | (t >= n_page_tiles))
        m_new, p, alpha, l_i = masked_softmax_weights(qk, keep, m_i, l_i)
        if USE_DOT:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        else:
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :].to(tl.float32), 1)
        m_i = m_new
    # partials of the real rows only (the tile's padding rows to 16 are never combined)
    base = (pid_bg.to(tl.int64) * NSPLIT + split) * (GROUPS * LQ)
    tl.store(M_OUT + base + offs_r, m_i, mask=row_ok)
    tl.store(L_OUT + base + offs_r, l_i, mask=row_ok)
    tl.store(ACC_OUT + (base + offs_r)[:, None] * BLOCK_D + offs_d[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _decode_combine_kernel(M_IN, L_IN, ACC_IN, O,
                           stride_ob, stride_oh, stride_om, stride_od,
                           Hkv, GROUPS, LQ, D, NSPLIT,
                           BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bg = tl.program_id(0)
    r = tl.program_id(1)
    b = pid_bg // Hkv
    g = pid_bg % Hkv
    if r < GROUPS * LQ:
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, BLOCK_D)
        s_ok = offs_s < NSPLIT
        base = (pid_bg.to(tl.int64) * NSPLIT + offs_s) * (GROUPS * LQ) + r
        mm = tl.load(M_IN + base, mask=s_ok, other=float("-inf"))
        ll = tl.load(L_IN + base, mask=s_ok, other=0.0)
        mx = tl.max(mm, 0)
        mx_sub = tl.where(mx == float("-inf"), 0.0, mx)
        w = tl.math.exp2(mm - mx_sub)
        denom = tl.sum(ll * w, 0)
        acc = tl.load(ACC_IN + base[:, None] * BLOCK_D + offs_d[None, :], mask=s_ok[:, None], other=0.0)
        num = tl.sum(acc * w[:, None], 0)
        out = num / tl.where(denom > 0, denom, 1.0)
        qh = g * GROUPS + r // LQ
        qi = r % LQ
        tl.store(O + b.to(tl.int64) * stride_ob + qh.to(tl.int64) * stride_oh + qi * stride_om + offs_d * stride_od,
                 out.to(O.dtype.element_ty), mask=offs_d < D)


def gathered_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, pages: torch.Tensor | None = None,
                    counts: torch.Tensor | None = None, page_size: int = 1, page_bits: torch.Tensor | None = None,
                    pad_offsets: torch.Tensor | None = None, page_limit: torch.Tensor | None = None,
                    range_start: torch.Tensor | None = None, range_end: torch.Tensor | None = None,
                    scale: float | None = None,
                    num_splits: int | None = None, block_n: int = 64, num_warps: int = 4,
                    num_stages: int = 2) -> torch.Tensor:
    """Decode attention of q [B, H, Lq, D] over k, v [B, Hkv, Lk, D] (see the module docstring).

    pages [B, Hkv, P] row-local page ids (-1 padded) with counts [B, Hkv]; page_bits [B, Hkv, P] int32
    (bit j = q head j of the group attends the page; None = all); pad_offsets [B] (row-local -> absolute);
    page_limit [B]: row-local positions >= limit are ignored; range_start [B] or [B, Hkv]: absolute start
    of the always-attended tail [range_start, end) (per row, or per row and kv head); range_end [B]: ``end``
    per row on the device (default Lk); the queries sit at ``end - Lq ..  end - 1``. ``num_splits`` defaults to
    enough programs to fill the GPU (from the static ``Lk``, so it does not change while a static cache
    fills: no recompilation, CUDA-graph safe)."""
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    groups = check_gqa(q, k)
    if pages is None and range_start is None:
        raise ValueError("give pages and/or range_start")
    in_dtype = q.dtype
    qc, kc, vc = prep(q), prep(k), prep(v)
    cdt = qc.dtype
    kc, vc = kc.to(cdt), vc.to(cdt)
    dev = q.device
    has_pages = pages is not None
    has_bits = page_bits is not None
    if has_pages:
        if pages.shape[-1] == 0:
            pages = torch.full((B, Hkv, 1), -1, dtype=torch.int32, device=dev)
        elif has_bits or pages.dtype != torch.int32 or pages.stride(-1) != 1:
            pages = i32(pages)     # the page bits are read with the pages' strides: both contiguous
        counts = _index(counts.to(dev), contiguous=False)
    has_range, has_end = range_start is not None, range_end is not None
    off = _index(pad_offsets.to(dev)) if pad_offsets is not None else None
    plen = _index(page_limit.to(dev)) if page_limit is not None else None
    rstart = _index(range_start.to(dev), contiguous=False) if has_range else None
    rend = _index(range_end.to(dev)) if has_end else None
    if has_end and rend.shape != (B,):
        raise ValueError("range_end must be [B]")
    some = pages if has_pages else rstart          # a pointer for the inputs a launch does not read
    if not has_range:
        srb, srh = 0, 0
    elif rstart.dim() == 1:
        srb, srh = rstart.stride(0), 0
    elif rstart.shape == (B, Hkv):
        srb, srh = rstart.stride(0), rstart.stride(1)
    else:
        raise ValueError("range_start must be [B] or [B, Hkv]")
    max_tokens = (pages.shape[-1] * page_size if has_pages else 0) + (Lk if has_range else 0)
    rows = groups * Lq
    block_r = max(16, next_pow2(rows))
    block_d = max(16, next_pow2(D))
    if num_splits is None:
        want = max(1, -(-2 * num_sms(dev) // max(1, B * Hkv)))
        num_splits = max(1, min(want, -(-max(max_tokens, 1) // (4 * block_n))))
    num_splits = int(num_splits)
    m_buf = torch.empty(B * Hkv * num_splits * rows, dtype=torch.float32, device=dev)
    l_buf = torch.empty_like(m_buf)
    acc_buf = torch.empty(B * Hkv * num_splits * rows, block_d, dtype=torch.float32, device=dev)
    pg = pages if has_pages else some
    cn = counts if has_pages else some
    bits = i32(page_bits) if has_bits else some
    if has_bits and bits.shape != pg.shape:
        raise ValueError("page_bits must have the shape of pages")
    pstrides = (pg.stride(0), pg.stride(1), cn.stride(0), cn.stride(1)) if has_pages else (0, 0, 0, 0)
    # tensor cores need >= 16 rows; they are used for GQA groups / several queries, CUDA cores otherwise
    use_dot = rows > 1 or q.is_cuda
    _decode_partial_kernel[(num_splits, B * Hkv)](
        qc, kc, vc, pg, cn, bits, some if off is None else off, some if plen is None else plen,
        some if rstart is None else rstart, some if rend is None else rend, m_buf, l_buf, acc_buf,
        *qc.stride(), *kc.stride(), *vc.stride(), *pstrides, srb, srh,
        Hkv, groups, Lq, Lk, D, num_splits, resolve_scale(D, scale) * LOG2E,
        PAGE=int(page_size), BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_D=block_d,
        HAS_PAGES=has_pages, HAS_RANGE=has_range, HAS_END=has_end, HAS_BITS=has_bits,
        HAS_OFF=off is not None, HAS_PLEN=plen is not None, USE_DOT=use_dot,
        PREC=dot_precision(cdt), num_warps=num_warps, num_stages=num_stages)
    out = torch.empty(B, H, Lq, D, dtype=in_dtype, device=dev)
    _decode_combine_kernel[(B * Hkv, rows)](
        m_buf, l_buf, acc_buf, out, *out.stride(), Hkv, groups, Lq, D, num_splits,
        BLOCK_S=max(2, next_pow2(num_splits)), BLOCK_D=block_d, num_warps=4)
    return out


def _index(t: torch.Tensor, contiguous: bool = True) -> torch.Tensor:
    """An index tensor as the decode kernel reads it: int32 / int64 kept as they are (no conversion kernel),
    other dtypes as int32; ``contiguous``: for [B] vectors that the kernel indexes by row."""
    if t.dtype not in (torch.int32, torch.int64):
        t = t.to(torch.int32)
    return t.contiguous() if contiguous else t


def dense_decode(q, k, v, key_padding_mask: torch.Tensor | None = None, scale=None, **kw) -> torch.Tensor:
    """Dense causal attention of Lq decode queries (the last Lq positions) over the whole cache; left
    padded keys (``key_padding_mask`` False) are skipped."""
    B, Lk = k.shape[0], k.shape[2]
    if key_padding_mask is None:
        start = torch.zeros(B, dtype=torch.int32, device=q.device)
    else:
        start = (Lk - key_padding_mask.to(q.device).sum(-1)).to(torch.int32)
    return gathered_decode(q, k, v, range_start=start, scale=scale, **kw)


def masked_decode(q, k, v, valid: torch.Tensor, scale=None, **kw) -> torch.Tensor:
    """Decode over a cache whose valid slots form a **suffix** per (row, kv head): valid [B, Hkv, Lk] or
    [B, 1, Lk] / [B, Lk] (left padding, right-aligned compressed caches as kept by the HF session; Ada-SnapKV
    heads of different lengths). Reads only ``Lk - valid.sum(-1)`` per (row, kv head): the suffix property
    is trusted, not checked (checking would need a host sync)."""
    B, Hkv, Lk = k.shape[0], k.shape[1], k.shape[2]
    if valid.dim() == 2:
        valid = valid.unsqueeze(1)
    if valid.shape[1] not in (1, Hkv):
        raise ValueError("valid must be [B, Lk], [B, 1, Lk] or [B, Hkv, Lk]")
    start = (Lk - valid.to(q.device).sum(-1)).to(torch.int32)
    start = start[:, 0] if start.shape[1] == 1 else start
    return gathered_decode(q, k, v, range_start=start.contiguous(), scale=scale, **kw)


def span_decode(q, k, v, start: torch.Tensor, end: torch.Tensor, scale=None, **kw) -> torch.Tensor:
    """Decode of q [B, H, Lq, D] over the slots ``[start, end)`` of a statically sized cache k, v
    [B, Hkv, C, D]: start [B] or [B, Hkv] (left padding / right-aligned compressed prompts), end [B] (the
    written prefix; the queries are its last Lq slots). Both are device tensors that are read by the kernel,
    so the launch is identical at every step (the static-cache / CUDA-graph decode path of the HF session)."""
    return gathered_decode(q, k, v, range_start=start, range_end=end, scale=scale, **kw)


__all__ = ["gathered_decode", "dense_decode", "masked_decode", "span_decode"]
