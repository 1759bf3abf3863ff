"""Quest decode on the GPU: page upper bounds, top-k page selection and attention over the chosen pages.

* :func:`page_bounds` — one Triton program per (batch row, kv head, page tile) computes
  ``sum_d max(q_d min_d, q_d max_d)`` for every q head of the group as two tensor-core products,
  ``q+ . max + q- . min`` (q+ = max(q, 0), q- = min(q, 0); equal term by term), optionally summed over the
  group (``share_pages``). Empty pages get -inf.
* :func:`topk_pages` — the k largest entries of each row as ascending page ids, in one kernel (radix select
  over the bounds' bits, then an ordered compaction): replaces ``torch.topk`` + sort + bookkeeping.
* :func:`quest_select` — the same choice as :meth:`sparse_kernels.methods.Quest.select` (top T/p complete
  earlier pages + the page of the newest token) with :func:`topk_pages`: no host sync.
* :func:`quest_attention` — decode attention over a :class:`~sparse_kernels.selection.QuestSelection`.
  Shared selections read one page list per GQA group; per-q-head selections are merged per group into the
  union of pages plus a bitmap of the heads that chose each page, so a page is read once per group.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import QuestSelection
from ._common import check_gqa, compute_dtype, dot_precision, i32, next_pow2
from .decode import gathered_decode


@triton.jit
def _page_bounds_kernel(Q, PMIN, PMAX, OUT, LIMIT,
                        stride_qb, stride_qh, stride_qd,
                        stride_nb, stride_nh, stride_np, stride_nd,
                        stride_xb, stride_xh, stride_xp, stride_xd,
                        stride_ob, stride_oh, stride_op,
                        Hkv, GROUPS, P, D,
                        BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                        SHARED: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr,
                        HAS_LIMIT: tl.constexpr, GROUP_ROWS: tl.constexpr):
    pt = tl.program_id(0)
    pid_bg = tl.program_id(1)
    b = pid_bg // Hkv
    g = pid_bg % Hkv
    b64 = b.to(tl.int64)
    offs_p = pt * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    p_ok = offs_p < P
    d_ok = offs_d < D
    r_ok = offs_r < GROUPS
    qh = g * GROUPS + offs_r
    q = tl.load(Q + b64 * stride_qb + qh.to(tl.int64)[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                mask=r_ok[:, None] & d_ok[None, :], other=0.0)
    pm = p_ok[:, None] & d_ok[None, :]
    mn = tl.load(PMIN + b64 * stride_nb + g.to(tl.int64) * stride_nh + offs_p.to(tl.int64)[:, None] * stride_np
                 + offs_d[None, :] * stride_nd, mask=pm, other=0.0)
    mx = tl.load(PMAX + b64 * stride_xb + g.to(tl.int64) * stride_xh + offs_p.to(tl.int64)[:, None] * stride_xp
                 + offs_d[None, :] * stride_xd, mask=pm, other=0.0)
    # empty page: min = +inf (its first element is enough, as in the reference)
    first = tl.load(PMIN + b64 * stride_nb + g.to(tl.int64) * stride_nh + offs_p.to(tl.int64) * stride_np,
                    mask=p_ok, other=0.0).to(tl.float32)
    empty = first == float("inf")
    mn = tl.where(empty[:, None], tl.zeros_like(mn), mn)
    mx = tl.where(empty[:, None], tl.zeros_like(mx), mx)
    zero = tl.zeros_like(q)
    qpos = tl.maximum(q, zero).to(q.dtype)  # q+ and q- stay in q's dtype for tl.dot
    qneg = tl.minimum(q, zero).to(q.dtype)
    if USE_DOT:
        bound = tl.dot(qpos, tl.trans(mx.to(q.dtype)), input_precision=PREC)
        bound = tl.dot(qneg, tl.trans(mn.to(q.dtype)), bound, input_precision=PREC)
    else:
        qf = q.to(tl.float32)
        bound = tl.sum(tl.maximum(qf[:, None, :] * mn[None, :, :].to(tl.float32),
                                  qf[:, None, :] * mx[None, :, :].to(tl.float32)), 2)
    if GROUP_ROWS:  # shared pages, one row per GQA group: the group sum as a vector
        tot = tl.sum(tl.where(r_ok[:, None], bound, 0.0), 0)
        tot = tl.where(empty, float("-inf"), tot)
        if HAS_LIMIT:
            cur = tl.load(LIMIT + b)
            tot = tl.where(offs_p < cur, tot, tl.where(offs_p == cur, float("inf"), float("-inf")))
        tl.store(OUT + b64 * stride_ob + g.to(tl.int64) * stride_oh + offs_p * stride_op, tot, mask=p_ok)
    else:
        if SHARED:
            tot = tl.sum(tl.where(r_ok[:, None], bound, 0.0), 0)
            bound = tl.broadcast_to(tot[None, :], (BLOCK_R, BLOCK_P))
        bound = tl.where(empty[None, :], float("-inf"), bound)
        if HAS_LIMIT:  # candidates of a fixed-size top-k: earlier pages, the current page first, nothing after
            cur = tl.load(LIMIT + b)
            bound = tl.where(offs_p[None, :] < cur, bound,
                             tl.where(offs_p[None, :] == cur, float("inf"), float("-inf")))
        tl.store(OUT + b64 * stride_ob + qh.to(tl.int64)[:, None] * stride_oh + offs_p[None, :] * stride_op, bound,
                 mask=r_ok[:, None] & p_ok[None, :])


@triton.jit
def _sortable_key(x):
    """fp32 -> int32 whose signed order is the float order (-inf lowest, +inf highest, -0 = +0; no NaN)."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _topk_pages_kernel(X, KROW, LIMIT, OUT, CNT,
                       stride_xb, stride_xs, stride_xp, stride_ob, stride_os, stride_op,
                       S, P, K, W,
                       BLOCK: tl.constexpr, HAS_KROW: tl.constexpr, HAS_LIMIT: tl.constexpr,
                       DROP_NEG_INF: tl.constexpr, RADIX: tl.constexpr):
    # One program per (batch row, list): radix select of the k-th largest key (32 / RADIX passes of RADIX bits
    # over the row, each a 2^RADIX-bin histogram of the keys that share the prefix found so far), then one pass
    # in page order that writes the chosen pages ascending (ties at the threshold: the lowest pages), -1 after.
    pid = tl.program_id(0)
    b = pid // S
    s = pid % S
    x_row = X + b.to(tl.int64) * stride_xb + s.to(tl.int64) * stride_xs
    o_row = OUT + b.to(tl.int64) * stride_ob + s.to(tl.int64) * stride_os
    kk = K
    if HAS_KROW:
        kk = tl.minimum(tl.maximum(tl.load(KROW + b), 0), K)
    lim = P
    if HAS_LIMIT:  # entries at or after limit[b] count as -inf
        lim = tl.load(LIMIT + b)
    offs = tl.arange(0, BLOCK)
    bins = tl.arange(0, 1 << RADIX)
    prefix = kk * 0          # digits of the threshold found so far, in the unsigned-order key (key ^ sign bit)
    need = kk                # how many of the keys that share the prefix are still to be taken
    for i in tl.static_range(32 // RADIX):
        shift = 32 - RADIX * (i + 1)   # a compile-time int (not annotated: an annotated constexpr cannot be reassigned)
        hist = tl.zeros([1 << RADIX], dtype=tl.int32)
        for c in range(0, P, BLOCK):
            p = c + offs
            ok = p < P
            x = tl.load(x_row + p * stride_xp, mask=ok, other=0.0)
            u = _sortable_key(tl.where(p < lim, x, float("-inf"))) ^ (-2147483648)
            if shift < 32 - RADIX:
                ok = ok & ((u >> (shift + RADIX)) == (prefix >> (shift + RADIX)))
            hist += tl.histogram((u >> shift) & ((1 << RADIX) - 1), 1 << RADIX, mask=ok)
        ge = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist          # keys with this digit or a larger one
        digit = tl.max(tl.where(ge >= need, bins, 0), 0)
        need -= tl.sum(tl.where(bins > digit, hist, 0), 0)
        prefix = prefix | (digit << shift)
    thr = prefix ^ (-2147483648)   # the k-th largest key (signed order)
    taken = kk * 0
    ties = kk * 0
    for c in range(0, P, BLOCK):
        p = c + offs
        ok = p < P
        x = tl.load(x_row + p * stride_xp, mask=ok, other=0.0)
        x = tl.where(p < lim, x, float("-inf"))
        key = _sortable_key(x)
        eq = ok & (key == thr)
        take = (ok & (key > thr)) | (eq & (ties + tl.cumsum(eq.to(tl.int32), 0) <= need))
        take = take & (kk > 0)
        if DROP_NEG_INF:
            take = take & (x > float("-inf"))
        pos = taken + tl.cumsum(take.to(tl.int32), 0) - 1
        tl.store(o_row + pos * stride_op, p, mask=take)
        taken += tl.sum(take.to(tl.int32), 0)
        ties += tl.sum(eq.to(tl.int32), 0)
    for c in range(0, W, BLOCK):
        j = c + offs
        tl.store(o_row + j * stride_op, tl.full([BLOCK], -1, tl.int32), mask=(j >= taken) & (j < W))
    tl.store(CNT + pid, taken)


def topk_pages(x: torch.Tensor, k: int, k_row: torch.Tensor | None = None, *, limit: torch.Tensor | None = None,
               drop_neg_inf: bool = False, width: int | None = None, block: int | None = None,
               radix_bits: int = 8, num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row of x [B, S, P] (fp32) as page ids **in ascending order**, in one
    kernel (radix select + ordered compaction) instead of ``torch.topk`` + sort: (pages [B, S, width] int32,
    -1 after the chosen ones; counts [B, S] int32). Ties at the threshold take the lowest pages.

    ``k_row`` [B] (device): row b takes ``min(k_row[b], k)``; ``limit`` [B] (device): entries at or after
    ``limit[b]`` count as ``-inf`` (Quest: pages from the current one on); ``drop_neg_inf``: ``-inf`` entries are never
    taken (fewer than k then); ``width`` >= k (default k) pads the lists with -1. ``radix_bits`` (2, 4 or 8)
    and ``num_warps``: launch variants for the sweep in ``bench/bench_kernels.py`` (same result). No host sync,
    static shapes: CUDA-graph capturable."""
    if x.dim() != 3:
        raise ValueError("x must be [B, S, P]")
    B, S, P = x.shape
    k = max(0, min(int(k), P))
    width = k if width is None else int(width)
    if width < k:
        raise ValueError("width must be >= k")
    if radix_bits not in (2, 4, 8):
        raise ValueError("radix_bits must be 2, 4 or 8")
    xf = x.to(torch.float32)
    out = torch.empty(B, S, width, dtype=torch.int32, device=x.device)
    cnt = torch.empty(B, S, dtype=torch.int32, device=x.device)
    if B * S == 0:
        return out, cnt
    block = int(block) if block else min(8192, max(256, next_pow2(P)))
    krow = i32(k_row.to(x.device)) if k_row is not None else cnt
    lim = i32(limit.to(x.device)) if limit is not None else cnt
    _topk_pages_kernel[(B * S,)](xf, krow, lim, out, cnt, *xf.stride(), *out.stride(), S, P, k, width,
                                 BLOCK=block, HAS_KROW=k_row is not None, HAS_LIMIT=limit is not None,
                                 DROP_NEG_INF=bool(drop_neg_inf), RADIX=int(radix_bits),
                                 num_warps=num_warps or max(4, min(16, block // 512)))
    return out, cnt


def block_p_for(dtype) -> int:
    """Pages per program: fp32 summaries (ieee products on CUDA cores) spill registers at 64."""
    return 32 if dtype in (torch.float32, "fp32") else 64


def page_bounds(page_min: torch.Tensor, page_max: torch.Tensor, q: torch.Tensor, share_pages: bool = False,
                block_p: int | None = None, *, limit: torch.Tensor | None = None,
                group_rows: bool = False) -> torch.Tensor:
    """Upper bounds [B, H, P] (fp32) of q . k per page; q [B, H, 1, D] or [B, H, D]; page_min / page_max
    [B, Hkv, P, D] in any float dtype (the key dtype holds them exactly and halves the bytes read).

    ``limit`` [B] (device, the page of the newest token ``cur``): the output becomes the candidate list of a
    fixed-size top-k (static decode): bounds of pages ``< cur``, ``+inf`` at ``cur`` (always chosen) and
    ``-inf`` after it. ``group_rows`` (with ``share_pages``): one row per GQA group, [B, Hkv, P]."""
    if q.dim() == 4:
        q = q[:, :, -1]
    B, H, D = q.shape
    Hkv, P = page_min.shape[1], page_min.shape[2]
    if H % Hkv:
        raise ValueError("q heads must be a multiple of kv heads")
    g = H // Hkv
    group_rows = bool(group_rows)
    if group_rows and not share_pages:
        raise ValueError("group_rows needs share_pages")
    out = torch.empty(B, Hkv if group_rows else H, P, dtype=torch.float32, device=q.device)
    lim = out if limit is None else i32(limit.to(q.device))
    # fp32 summaries (QuestState's) -> fp32 ieee products; key-dtype summaries -> tensor cores in that dtype
    # (bf16 x bf16 products are exact in the fp32 accumulator). The interpreter has no bf16 dot: upcast.
    cdt = torch.float32 if page_min.dtype == torch.float32 else compute_dtype(page_min)
    qc = q.to(cdt)
    mn, mx = page_min.to(cdt), page_max.to(cdt)
    pdt = cdt
    block_p = block_p_for(cdt) if block_p is None else int(block_p)
    use_dot = q.is_cuda
    block_r = max(16, next_pow2(g))
    _page_bounds_kernel[(triton.cdiv(max(P, 1), block_p), B * Hkv)](
        qc, mn, mx, out, lim, *qc.stride(), *mn.stride(), *mx.stride(), *out.stride(),
        Hkv, g, P, D, BLOCK_P=block_p, BLOCK_R=block_r, BLOCK_D=max(16, next_pow2(D)), SHARED=bool(share_pages),
        USE_DOT=use_dot, PREC=dot_precision(pdt), HAS_LIMIT=limit is not None, GROUP_ROWS=group_rows,
        num_warps=4)
    return out


def quest_select(quest, state, q: torch.Tensor, bounds: torch.Tensor | None = None) -> QuestSelection:
    """GPU version of ``quest.select(state, q)`` (same pages up to ties in the bounds). No host sync
    (``state.token_budget`` lives on the host); CUDA-graph capturable when all rows share one budget."""
    if bounds is None:
        bounds = page_bounds(state.page_min, state.page_max, q, quest.share_pages)
    B, H, P = bounds.shape
    p = state.page_size
    dev = bounds.device
    n_hist = (state.token_budget.to(torch.long) // p).clamp(min=0)
    kmax = int(min(int(n_hist.max()) if B else 0, P))
    seq = state.seq_lens.to(dev)
    cur = ((seq - 1) // p).clamp(min=0)  # [B] page of the newest token
    # the kmax best earlier pages, ascending, in one kernel; rows with smaller budgets take fewer (host tensor:
    # no device sync); one more column for the current page
    k_row = None if B == 0 or int(n_hist.min()) >= kmax else n_hist.to(dev)
    pages, nsel = topk_pages(bounds, kmax, k_row, limit=cur, drop_neg_inf=True, width=kmax + 1)
    nsel = nsel.long()
    pages.scatter_(2, nsel.unsqueeze(-1), cur.to(torch.int32).view(B, 1, 1).expand(B, H, 1))
    sps = state.paper_sparsity.view(B, 1).expand(B, H).clone()
    return QuestSelection(page_size=p, pages=pages, counts=nsel + 1, seq_lens=seq.clone(),
                          pad_offsets=state.pad_offsets, length=state.length, paper_sparsity=sps,
                          shared=quest.share_pages)


def group_union(pages: torch.Tensor, counts: torch.Tensor, num_kv_heads: int, num_pages: int | None = None):
    """Merge per-q-head page lists [B, H, P] into per-group lists: (pages [B, Hkv, W] ascending, -1 padded,
    counts [B, Hkv], bits [B, Hkv, W] int32 with bit j set when head j of the group chose the page).
    Static shapes, no host sync; ``num_pages`` bounds the page ids (default: from the tensor width is not
    possible without a sync, so pass it; the cache length / page size)."""
    B, H, P = pages.shape
    g = H // num_kv_heads
    dev = pages.device
    valid = (torch.arange(P, device=dev).view(1, 1, -1) < counts.view(B, H, 1)) & (pages >= 0)
    NP = int(num_pages)
    bm = torch.zeros(B, num_kv_heads, NP + 1, dtype=torch.int32, device=dev)
    hb = (torch.ones(1, dtype=torch.int32, device=dev) << torch.arange(g, device=dev, dtype=torch.int32))
    hb = hb.repeat(num_kv_heads).view(1, H, 1).expand(B, H, P)
    tgt = torch.where(valid, pages.long(), torch.full_like(pages.long(), NP)).view(B, num_kv_heads, g * P)
    bm.scatter_add_(2, tgt, torch.where(valid, hb, torch.zeros_like(hb)).reshape(B, num_kv_heads, g * P))
    bm = bm[..., :NP]
    nz = bm != 0
    W = max(1, min(NP, g * P))
    pos = torch.cumsum(nz, -1, dtype=torch.int32) - 1
    idx = torch.where(nz, pos, torch.full_like(pos, W)).long()
    ids = torch.arange(NP, device=dev, dtype=torch.int32).view(1, 1, -1).expand(B, num_kv_heads, NP)
    out = torch.full((B, num_kv_heads, W + 1), -1, dtype=torch.int32, device=dev)
    out.scatter_(2, idx, ids)
    bits = torch.zeros(B, num_kv_heads, W + 1, dtype=torch.int32, device=dev)
    bits.scatter_(2, idx, bm)
    return out[..., :W].contiguous(), nz.sum(-1, dtype=torch.int32), bits[..., :W].contiguous()


def quest_attention(q, k, v, selection: QuestSelection, scale=None, **kw):
    """One decode step q [B, H, 1, D] over the selected pages of the full cache k, v [B, Hkv, Lk, D]."""
    if k.shape[2] != selection.length:
        raise ValueError("cache length does not match the selection")
    B, H = q.shape[0], q.shape[1]
    Hkv = k.shape[1]
    check_gqa(q, k)
    p = selection.page_size
    if selection.shared or H == Hkv:
        g = H // Hkv
        pages, counts = selection.pages[:, ::g], selection.counts[:, ::g]
        bits = None
    else:
        num_pages = -(-selection.length // p)
        pages, counts, bits = group_union(selection.pages, selection.counts, Hkv, num_pages)
    return gathered_decode(q, k, v, pages=pages, counts=counts, page_size=p, page_bits=bits,
                           pad_offsets=selection.pad_offsets, page_limit=selection.seq_lens, scale=scale, **kw)


__all__ = ["page_bounds", "topk_pages", "quest_select", "group_union", "quest_attention"]
