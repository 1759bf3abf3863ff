"""Observation-window scoring on the GPU (SnapKV, Ada-SnapKV; also per-head column sums for V-S).

The last ``w`` queries of a row are scored against all of its keys without materialising the [H, w, n]
probability matrix:

1. ``_window_lse_kernel`` — one program per (q head, window tile, key chunk) computes the partial row max /
   sum of exp over its chunk; the chunks are merged into each window row's log-sum-exp in torch.
2. ``_window_score_kernel`` — one program per (kv head, key tile) recomputes the probabilities of the
   group's q heads for its keys and reduces them: SnapKV ``mean over heads, sum over queries``, Ada-SnapKV
   ``max over queries and heads``, or per-head sums. Each program owns its key tile: no atomics.

3. ``_window_diag_kernel`` — Vertical-Slash / FlexPrefill slash scores: one program per (q head, tile of
   diagonal offsets o = q_pos - k_pos) sums the window's probabilities along its diagonals. A query tile
   meets the keys of a tile of offsets in one contiguous span (tile + window tile wide): one ``tl.dot``
   scores the span and ``tl.gather`` reads each query row's diagonal out of it. No atomics, and no
   [H, w, n] matrix (the torch estimation materialises one per GQA group: ~67 ms per layer at 128K).

Pooling, forcing and top-k reuse the method's own torch code, so :func:`snapkv_compress` returns what
``method.compress`` returns (up to ties in fp32 rounding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..methods._common import avg_pool_scores, check_qk, resolve_scale, rows
from ..selection import KVSelection, pad_stack
from ._common import LOG2E, dot_precision, next_pow2, prep

MODE_MEAN_SUM = 0  # SnapKV: mean over the group's q heads, sum over window queries -> [Hkv, n]
MODE_MAX = 1  # Ada-SnapKV: max over window queries and the group's q heads -> [Hkv, n]
MODE_HEAD_SUM = 2  # per q head: sum over window queries -> [H, n] (V-S vertical scores)


@triton.jit(do_not_specialize=["N", "CHUNK", "NCHUNK"])  # not per prompt length (see prefill.py)
def _window_lse_kernel(Q, K, M_OUT, L_OUT,
                       stride_qh, stride_qn, stride_qd, stride_kh, stride_kn, stride_kd,
                       N, W, D, GROUPS, CHUNK, NCHUNK, qk_scale,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    c = tl.program_id(0)
    wt = tl.program_id(1)
    h = tl.program_id(2)
    kvh = h // GROUPS
    offs_r = wt * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    r_ok = offs_r < W
    qpos = N - W + offs_r
    q = tl.load(Q + h.to(tl.int64) * stride_qh + qpos.to(tl.int64)[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=r_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    k0 = c * CHUNK
    k1 = tl.minimum(k0 + CHUNK, N)
    for j0 in range(k0, k1, BLOCK_N):
        kpos = j0 + tl.arange(0, BLOCK_N)
        k_ok = kpos < k1
        k = tl.load(K + kvh.to(tl.int64) * stride_kh + kpos.to(tl.int64)[:, None] * stride_kn
                    + offs_d[None, :] * stride_kd, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        qk = tl.where(k_ok[None, :] & (kpos[None, :] <= qpos[:, None]), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - m_sub) + tl.sum(tl.math.exp2(qk - m_sub[:, None]), 1)
        m_i = m_new
    base = (h.to(tl.int64) * NCHUNK + c) * W + offs_r
    tl.store(M_OUT + base, m_i, mask=r_ok)
    tl.store(L_OUT + base, l_i, mask=r_ok)


@triton.jit
def _window_probs_tile(Q, LSE, h, offs_r, qpos, r_ok, offs_d, d_ok, stride_qh, stride_qn, stride_qd,
                       k, kpos, k_ok, W, qk_scale, PREC: tl.constexpr):
    """Softmax probabilities [rows, keys] of q head ``h``'s window rows ``offs_r`` (positions ``qpos``) against
    the loaded keys ``k`` (positions ``kpos``), given each row's log2-sum-exp2; 0 where masked or causal-cut."""
    q = tl.load(Q + h.to(tl.int64) * stride_qh + qpos.to(tl.int64)[:, None] * stride_qn
                + offs_d[None, :] * stride_qd, mask=r_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(LSE + h.to(tl.int64) * W + offs_r, mask=r_ok, other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    p = tl.math.exp2(qk - lse[:, None])
    return tl.where(r_ok[:, None] & k_ok[None, :] & (kpos[None, :] <= qpos[:, None]), p, 0.0)


@triton.jit(do_not_specialize=["N", "stride_oh"])
def _window_score_kernel(Q, K, LSE, OUT,
                         stride_qh, stride_qn, stride_qd, stride_kh, stride_kn, stride_kd,
                         stride_oh, stride_on,
                         N, W, D, GROUPS, qk_scale,
                         MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    jt = tl.program_id(0)
    kvh = tl.program_id(1)
    kpos = jt * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    k_ok = kpos < N
    k = tl.load(K + kvh.to(tl.int64) * stride_kh + kpos.to(tl.int64)[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    grp = tl.zeros([BLOCK_N], dtype=tl.float32)
    for hh in range(0, GROUPS):
        h = kvh * GROUPS + hh
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for r0 in range(0, W, BLOCK_M):
            offs_r = r0 + tl.arange(0, BLOCK_M)
            r_ok = offs_r < W
            qpos = N - W + offs_r
            p = _window_probs_tile(Q, LSE, h, offs_r, qpos, r_ok, offs_d, d_ok, stride_qh, stride_qn, stride_qd,
                                   k, kpos, k_ok, W, qk_scale, PREC)
            if MODE == 1:
                acc = tl.maximum(acc, tl.max(p, 0))
            else:
                acc = acc + tl.sum(p, 0)
        if MODE == 2:
            tl.store(OUT + h.to(tl.int64) * stride_oh + kpos * stride_on, acc, mask=k_ok)
        elif MODE == 1:
            grp = tl.maximum(grp, acc)
        else:
            grp = grp + acc
    if MODE == 0:
        tl.store(OUT + kvh.to(tl.int64) * stride_oh + kpos * stride_on, grp / GROUPS, mask=k_ok)
    if MODE == 1:
        tl.store(OUT + kvh.to(tl.int64) * stride_oh + kpos * stride_on, grp, mask=k_ok)


@triton.jit(do_not_specialize=["N", "stride_oh"])
def _window_diag_kernel(Q, K, LSE, OUT,
                        stride_qh, stride_qn, stride_qd, stride_kh, stride_kn, stride_kd,
                        stride_oh, stride_on,
                        N, W, D, GROUPS, qk_scale,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    # out[h, o] = sum over window queries i of p[h, i, q_pos(i) - o], for the offsets o of this tile.
    ot = tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // GROUPS
    o0 = ot * BLOCK_N
    offs_o = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    span = tl.arange(0, BLOCK_M + BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for r0 in range(0, W, BLOCK_M):
        offs_r = r0 + tl.arange(0, BLOCK_M)
        r_ok = offs_r < W
        qpos = N - W + offs_r
        # the keys of (row i, offset o) are q_pos(i) - o: all of them lie in [s0, s0 + BLOCK_M + BLOCK_N - 1)
        s0 = N - W + r0 - o0 - (BLOCK_N - 1)
        if s0 + BLOCK_M + BLOCK_N > 0:          # some key of the span exists (keys >= 0)
            kpos = s0 + span
            k_ok = (kpos >= 0) & (kpos < N)
            k = tl.load(K + kvh.to(tl.int64) * stride_kh + kpos.to(tl.int64)[:, None] * stride_kn
                        + offs_d[None, :] * stride_kd, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
            p = _window_probs_tile(Q, LSE, h, offs_r, qpos, r_ok, offs_d, d_ok, stride_qh, stride_qn, stride_qd,
                                   k, kpos, k_ok, W, qk_scale, PREC)
            # row i, offset o0 + j sits at span column i - r0 - j + BLOCK_N - 1
            col = (offs_r - r0)[:, None] - offs_o[None, :] + (BLOCK_N - 1)
            acc += tl.sum(tl.gather(p, col, 1), 0)
    o = o0 + offs_o
    tl.store(OUT + h.to(tl.int64) * stride_oh + o * stride_on, acc, mask=o < N)


def _window_prep(q_row: torch.Tensor, k_row: torch.Tensor, window: int):
    """(q, k in the kernel dtype with a contiguous last dim, H, G, n, D, w) of one row."""
    H, n, D = q_row.shape
    G = k_row.shape[0]
    if H % G:
        raise ValueError("q heads must be a multiple of kv heads")
    return prep(q_row), prep(k_row), H, G, n, D, min(int(window), n)


def _window_lse(qc, kc, w: int, qk_scale: float, block_m: int, block_n: int, chunk: int) -> torch.Tensor:
    """log2-sum-exp2 [H, w] of each window query's scaled scores over its keys (``_window_lse_kernel``
    per key chunk, merged in torch)."""
    H, n, D = qc.shape
    chunk = max(block_n, (int(chunk) // block_n) * block_n)
    nch = triton.cdiv(n, chunk)
    m_buf = torch.empty(H, nch, w, dtype=torch.float32, device=qc.device)
    l_buf = torch.empty_like(m_buf)
    _window_lse_kernel[(nch, triton.cdiv(w, block_m), H)](
        qc, kc, m_buf, l_buf, qc.stride(0), qc.stride(1), qc.stride(2), kc.stride(0), kc.stride(1), kc.stride(2),
        n, w, D, H // kc.shape[0], chunk, nch, qk_scale, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=max(16, next_pow2(D)), PREC=dot_precision(qc.dtype), num_warps=4)
    mx = m_buf.amax(1, keepdim=True)
    return (mx + torch.log2((l_buf * torch.exp2(m_buf - mx)).sum(1, keepdim=True))).squeeze(1).contiguous()


def _window_score_launch(qc, kc, lse, out, w: int, qk_scale: float, mode: int, block_m: int, block_n: int):
    """``_window_score_kernel`` over one row's keys: ``out`` [Hkv or H, n] (see the modes)."""
    H, n, D = qc.shape
    G = kc.shape[0]
    _window_score_kernel[(triton.cdiv(n, block_n), G)](
        qc, kc, lse, out, qc.stride(0), qc.stride(1), qc.stride(2), kc.stride(0), kc.stride(1), kc.stride(2),
        out.stride(0), out.stride(1), n, w, D, H // G, qk_scale,
        MODE=mode, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, next_pow2(D)),
        PREC=dot_precision(qc.dtype), num_warps=4)


def window_scores(q_row: torch.Tensor, k_row: torch.Tensor, window: int, scale: float, mode: int = MODE_MEAN_SUM,
                  block_m: int = 64, block_n: int = 64, chunk: int = 4096) -> torch.Tensor:
    """Scores from the softmax of the last ``window`` queries of one row: q_row [H, n, D], k_row [Hkv, n, D]
    (one row's real tokens). Returns [Hkv, n] (MODE_MEAN_SUM, MODE_MAX) or [H, n] (MODE_HEAD_SUM), fp32."""
    qc, kc, H, G, n, D, w = _window_prep(q_row, k_row, window)
    out = torch.empty(H if mode == MODE_HEAD_SUM else G, n, dtype=torch.float32, device=q_row.device)
    if n == 0:
        return out
    qk_scale = float(scale) * LOG2E
    lse = _window_lse(qc, kc, w, qk_scale, block_m, block_n, chunk)
    _window_score_launch(qc, kc, lse, out, w, qk_scale, mode, block_m, block_n)
    return out


def vs_window_sums(q_row: torch.Tensor, k_row: torch.Tensor, window: int, scale: float, block_m: int = 64,
                   block_n: int = 64, chunk: int = 4096, diag_block: int = 64, diag_warps: int = 4,
                   diag_stages: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The Vertical-Slash estimation of one row on the GPU: (column sums, diagonal sums) [H, n] fp32 of the
    softmax of the last ``window`` queries, i.e. ``window_probs(...).sum(1)`` and ``diagonal_sums(...)`` of
    ``sparse_kernels.methods._common`` without the [H, w, n] probabilities. ``diag_block``: window rows and
    offsets per step of the diagonal kernel (a power of two), ``diag_warps`` its warps."""
    qc, kc, H, G, n, D, w = _window_prep(q_row, k_row, window)
    vsum = torch.empty(H, n, dtype=torch.float32, device=q_row.device)
    dsum = torch.empty_like(vsum)
    if n == 0:
        return vsum, dsum
    qk_scale = float(scale) * LOG2E
    lse = _window_lse(qc, kc, w, qk_scale, block_m, block_n, chunk)
    _window_score_launch(qc, kc, lse, vsum, w, qk_scale, MODE_HEAD_SUM, block_m, block_n)
    # default 4 warps: they spill a little on sm_90 but took 5.4 ms against 7.3 ms for 8 (H100, 128K)
    _window_diag_kernel[(triton.cdiv(n, diag_block), H)](
        qc, kc, lse, dsum, qc.stride(0), qc.stride(1), qc.stride(2), kc.stride(0), kc.stride(1), kc.stride(2),
        dsum.stride(0), dsum.stride(1), n, w, D, H // G, qk_scale,
        BLOCK_M=diag_block, BLOCK_N=diag_block, BLOCK_D=max(16, next_pow2(D)), PREC=dot_precision(qc.dtype),
        num_warps=diag_warps, num_stages=diag_stages)
    return vsum, dsum


def _mode_of(method) -> int:
    from ..methods.ada_snapkv import AdaSnapKV

    return MODE_MAX if isinstance(method, AdaSnapKV) else MODE_MEAN_SUM


def snapkv_token_scores(method, q_row: torch.Tensor, k_row: torch.Tensor, scale: float) -> torch.Tensor:
    """Triton version of ``method.token_scores(q_row, k_row, scale)`` for SnapKV / Ada-SnapKV: [Hkv, n]
    pooled scores with the forced tokens at +inf."""
    n = q_row.shape[1]
    raw = window_scores(q_row, k_row, method.window, scale, _mode_of(method))
    s = avg_pool_scores(raw, method.kernel_size)
    s[:, max(0, n - method.local_window):] = float("inf")
    s[:, : min(method.n_sinks, n)] = float("inf")
    return s


def snapkv_compress(method, q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                    scale: float | None = None) -> KVSelection:
    """``method.compress(q, k, key_padding_mask, scale)`` with the window scoring on the GPU (SnapKV and
    Ada-SnapKV; budgets, pooling, forcing and the (adaptive) top-k are the method's own code)."""
    B, H, G, L, D = check_qk(q, k)
    scale = resolve_scale(D, scale)
    off, lens, it = rows(q, k, key_padding_mask)
    idx, lengths, sps = [], [], []
    for b, o, n, qr, kr in it:
        c = method.capacity(n)
        if n == 0:
            sel = torch.full((G, 0), -1, dtype=torch.long, device=q.device)
        elif c >= n:
            sel = torch.arange(n, device=q.device).expand(G, n).clone()
        else:
            sel = method._select_row(snapkv_token_scores(method, qr, kr, scale), n, c)
        lr = (sel >= 0).sum(-1)
        idx.append(sel)
        lengths.append(lr)
        sps.append(method._paper_sparsity(lr, n, c))
    return KVSelection(indices=pad_stack(idx), lengths=torch.stack(lengths), seq_lens=lens, pad_offsets=off,
                       length=L, paper_sparsity=torch.stack(sps))


__all__ = ["window_scores", "vs_window_sums", "snapkv_token_scores", "snapkv_compress", "MODE_MEAN_SUM", "MODE_MAX",
           "MODE_HEAD_SUM"]
