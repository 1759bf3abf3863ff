"""Sparse flash-attention forward for prefill over a tile layout.

One kernel serves every prefill method. A :class:`TileLayout` lists, per (batch row, q head, query tile
of ``block_m`` rows), the start positions of the key tiles to visit (``block_n`` contiguous keys each, any
alignment) and optionally a list of single key columns (Vertical-Slash verticals). Entries
``[0, n_full)`` of a tile list are entirely visible to every row of the query tile (no mask is computed
for them); entries ``[n_full, count)`` are masked (causal, sequence end and, when ``bits`` is given, a
sub-block bitmap that restricts a tile to the method's finer blocks). All positions are row-local
(0 = first real token of a left-padded row), like the selections in ``sparse_kernels.selection``.

* :func:`block_layout` converts a :class:`~sparse_kernels.selection.BlockSelection` (any method block
  size) to kernel tiles of any ``block_m`` x ``block_n`` (both multiples or divisors of the method
  block), on the selection's device and without host synchronisation.
* :func:`causal_layout` is the dense causal layout (all tiles on or below the diagonal).
* :func:`tile_attention` runs the kernel.

GQA: q head ``h`` reads kv head ``h // (H / Hkv)``; K and V are never repeated. Rows without any kept key
output 0; padded query rows (left padding) output 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import (LOG2E, check_gqa, compute_dtype, dot_precision, i32, interpreting, masked_softmax_weights,
                      next_pow2, prep, resolve_scale)


# --------------------------------------------------------------------------------------------------
# layout


@dataclass
class TileLayout:
    """Kernel tile layout (all tensors on the device of q).

    starts [B, H, NQT, T] int32: start position (row-local token) of each visited key tile of width
    ``block_n``, -1 padded; counts / n_full [B, H, NQT] int32; bits [B, H, NQT, T] int64 or None: sub-block
    bitmap, bit ``(r // sub_m) * (block_n // sub_n) + (c // sub_n)`` set when row r / column c of the tile
    are kept; columns [B, H, NQT, C] int32 / column_counts [B, H, NQT] or None: extra single key positions
    (ascending). pad_offsets / seq_lens [B] int32. ``length`` = padded sequence length."""

    block_m: int
    block_n: int
    starts: torch.Tensor
    counts: torch.Tensor
    n_full: torch.Tensor
    pad_offsets: torch.Tensor
    seq_lens: torch.Tensor
    length: int
    bits: torch.Tensor | None = None
    sub_m: int = 0
    sub_n: int = 0
    columns: torch.Tensor | None = None
    column_counts: torch.Tensor | None = None

    @property
    def num_heads(self) -> int:
        return self.starts.shape[1]

    @property
    def num_q_tiles(self) -> int:
        return self.starts.shape[2]

    def to_mask(self) -> torch.Tensor:
        """Dense boolean mask [B, H, L, L] of what the kernel computes (for tests; O(L^2) memory)."""
        B, H, NQT, T = self.starts.shape
        L = self.length
        dev = self.starts.device
        mask = torch.zeros(B, H, L, L, dtype=torch.bool, device=dev)
        r = torch.arange(self.block_m, device=dev)
        c = torch.arange(self.block_n, device=dev)
        for b in range(B):
            o, n = int(self.pad_offsets[b]), int(self.seq_lens[b])
            loc = torch.zeros(H, n, n + 1, dtype=torch.bool, device=dev)
            for h in range(H):
                for m in range(min(NQT, -(-n // self.block_m))):
                    rows = m * self.block_m + r
                    rv = rows < n
                    for i in range(int(self.counts[b, h, m])):
                        s = int(self.starts[b, h, m, i])
                        cols = s + c
                        keep = (cols[None, :] <= rows[:, None]) & (cols < n)[None, :]
                        if self.bits is not None and i >= int(self.n_full[b, h, m]):
                            bit = (r // self.sub_m)[:, None] * (self.block_n // self.sub_n) + (c // self.sub_n)[None, :]
                            keep &= ((int(self.bits[b, h, m, i]) >> bit) & 1).bool()
                        keep &= rv[:, None]
                        rr, cc = torch.nonzero(keep, as_tuple=True)
                        loc[h, rows[rr], cols[cc]] = True
                    if self.columns is not None:
                        cols = self.columns[b, h, m, : int(self.column_counts[b, h, m])].long()
                        keep = (cols[None, :] <= rows[:, None]) & rv[:, None]
                        rr, cc = torch.nonzero(keep, as_tuple=True)
                        loc[h, rows[rr], cols[cc]] = True
            mask[b, :, o:o + n, o:o + n] = loc[:, :, :n]
        return mask


def _compact(valid_full: torch.Tensor, valid_masked: torch.Tensor, values: torch.Tensor, width: int,
             extra: torch.Tensor | None = None):
    """Per row of the last axis: the positions of ``valid_full`` entries (ascending) then those of
    ``valid_masked`` (ascending), written into a [.., width] int32 list (-1 padded) together with the
    matching ``values`` (and ``extra``). Returns (list, counts, n_full, extra list)."""
    n_full = valid_full.sum(-1, dtype=torch.int32)
    pos_f = torch.cumsum(valid_full, -1, dtype=torch.int32) - 1
    pos_m = n_full.unsqueeze(-1) + torch.cumsum(valid_masked, -1, dtype=torch.int32) - 1
    dump = torch.full_like(pos_f, width)
    idx = torch.where(valid_full, pos_f, torch.where(valid_masked, pos_m, dump)).long()
    shape = (*values.shape[:-1], width + 1)
    out = torch.full(shape, -1, dtype=torch.int32, device=values.device)
    out.scatter_(-1, idx, values.to(torch.int32))
    ex = None
    if extra is not None:
        ex = torch.zeros(shape, dtype=extra.dtype, device=values.device)
        ex.scatter_(-1, idx, extra)
        ex = ex[..., :width].contiguous()
    counts = (valid_full | valid_masked).sum(-1, dtype=torch.int32)
    return out[..., :width].contiguous(), counts, n_full, ex


def _full_bits(nbits: int) -> int:
    return -1 if nbits == 64 else (1 << nbits) - 1


def block_layout(sel, block_m: int | None = None, block_n: int | None = None,
                 max_elems: int = 1 << 26) -> TileLayout:
    """TileLayout of a BlockSelection for kernel tiles ``block_m`` x ``block_n``.

    Each of block_m / block_n must be a multiple or a divisor of the method block size ``bs``. Larger
    kernel tiles take the union of the method blocks they contain and carry a sub-block bitmap (at most
    64 sub-blocks per tile); smaller ones split method blocks. Runs on the selection's device with static
    shapes only (no host synchronisation); the intermediate per-(query tile, key tile) bitmap is processed
    in chunks of at most ``max_elems`` entries."""
    bs = int(sel.block_size)
    block_m = bs if block_m is None else int(block_m)
    block_n = bs if block_n is None else int(block_n)
    for name, t in (("block_m", block_m), ("block_n", block_n)):
        if not (t % bs == 0 or bs % t == 0):
            raise ValueError(f"{name}={t} must be a multiple or divisor of the selection block size {bs}")
    idx = sel.indices
    dev = idx.device
    B, H, NQB, K = idx.shape
    L = int(sel.length)
    rm = block_m // bs if block_m >= bs else 1  # method query blocks per kernel tile
    rn = block_n // bs if block_n >= bs else 1  # method key blocks per kernel tile
    sub_m, sub_n = min(bs, block_m), min(bs, block_n)
    nbits = rm * rn
    if nbits > 64:
        raise ValueError(f"a {block_m}x{block_n} tile holds {nbits} method blocks of {bs}; at most 64 supported")
    use_bits = nbits > 1
    split_n = bs // block_n if block_n < bs else 1
    rep_m = bs // block_m if block_m < bs else 1
    nqt = -(-NQB * bs // block_m) if NQB else 0
    nkt = -(-max(NQB * bs, 1) // block_n)
    idx = idx.long()
    # per kernel query tile t: entries (sub row i, method key block kb)
    if block_m >= bs:
        pad = nqt * rm - NQB
        if pad:
            idx = torch.cat([idx, torch.full((B, H, pad, K), -1, dtype=idx.dtype, device=dev)], 2)
        ent = idx.reshape(B, H, nqt, rm, K)
    else:
        ent = idx.repeat_interleave(rep_m, dim=2)[:, :, :nqt].unsqueeze(3)  # [B,H,nqt,1,K]
    valid = ent >= 0
    kb = ent.clamp(min=0)
    sub_i = torch.arange(ent.shape[3], device=dev).view(1, 1, 1, -1, 1)
    if block_n >= bs:
        tile = kb // rn
        bit = torch.ones_like(kb) << (sub_i * rn + kb % rn)
    else:
        s = torch.arange(split_n, device=dev).view(1, 1, 1, 1, 1, -1)
        tile = (kb.unsqueeze(-1) * split_n + s).flatten(-2)
        valid = valid.unsqueeze(-1).expand(*valid.shape, split_n).flatten(-2)
        bit = (torch.ones_like(tile) << sub_i)
    tile = tile.flatten(3)  # [B,H,nqt,E]
    bit = bit.flatten(3)
    valid = valid.flatten(3)
    E = tile.shape[-1]
    t_row = torch.arange(nqt, device=dev).view(1, 1, -1, 1)
    # drop tiles that no row of the query tile can see (only possible when block_m < bs)
    valid = valid & (tile * block_n <= t_row * block_m + block_m - 1)
    width = max(1, min(nkt, E))
    full = _full_bits(nbits)
    starts = torch.empty(B, H, nqt, width, dtype=torch.int32, device=dev)
    bits_out = torch.empty(B, H, nqt, width, dtype=torch.int64, device=dev) if use_bits else None
    counts = torch.empty(B, H, nqt, dtype=torch.int32, device=dev)
    n_full = torch.empty(B, H, nqt, dtype=torch.int32, device=dev)
    chunk = max(1, max_elems // max(1, B * H * (nkt + 1)))
    j = torch.arange(nkt, device=dev).view(1, 1, 1, -1)
    for t0 in range(0, nqt, chunk):
        t1 = min(nqt, t0 + chunk)
        bm = torch.zeros(B, H, t1 - t0, nkt + 1, dtype=torch.int64, device=dev)
        ti = torch.where(valid[:, :, t0:t1], tile[:, :, t0:t1], torch.full_like(tile[:, :, t0:t1], nkt))
        bm.scatter_add_(3, ti, torch.where(valid[:, :, t0:t1], bit[:, :, t0:t1], torch.zeros_like(bit[:, :, t0:t1])))
        bm = bm[..., :nkt]
        nz = bm != 0
        tr = torch.arange(t0, t1, device=dev).view(1, 1, -1, 1)
        crosses = (j * block_n + block_n - 1) > tr * block_m
        needs = crosses | (bm != full) if use_bits else crosses
        st, cnt, nf, ex = _compact(nz & ~needs, nz & needs, (j * block_n).expand_as(bm), width,
                                   bm if use_bits else None)
        starts[:, :, t0:t1] = st
        counts[:, :, t0:t1] = cnt
        n_full[:, :, t0:t1] = nf
        if use_bits:
            bits_out[:, :, t0:t1] = ex
    return TileLayout(block_m=block_m, block_n=block_n, starts=starts, counts=counts, n_full=n_full,
                      pad_offsets=i32(sel.pad_offsets.to(dev)), seq_lens=i32(sel.seq_lens.to(dev)), length=L,
                      bits=bits_out, sub_m=sub_m if use_bits else 0, sub_n=sub_n if use_bits else 0)


def causal_layout(batch: int, heads: int, length: int, block_m: int, block_n: int, device,
                  pad_offsets: torch.Tensor | None = None, seq_lens: torch.Tensor | None = None) -> TileLayout:
    """Dense causal layout: every key tile on or below the diagonal (heads share one expanded view)."""
    nqt = max(1, -(-length // block_m))
    nkt = max(1, -(-length // block_n))
    t = torch.arange(nqt, device=device).view(-1, 1)
    j = torch.arange(nkt, device=device).view(1, -1)
    visible = j * block_n <= t * block_m + block_m - 1
    crosses = (j * block_n + block_n - 1) > t * block_m
    st, cnt, nf, _ = _compact(visible & ~crosses, visible & crosses, (j * block_n).expand(nqt, nkt), nkt)
    if pad_offsets is None:
        pad_offsets = torch.zeros(batch, dtype=torch.int32, device=device)
    if seq_lens is None:
        seq_lens = torch.full((batch,), length, dtype=torch.int32, device=device)
    return TileLayout(block_m=block_m, block_n=block_n, starts=st.expand(batch, heads, nqt, nkt),
                      counts=cnt.expand(batch, heads, nqt), n_full=nf.expand(batch, heads, nqt),
                      pad_offsets=i32(pad_offsets), seq_lens=i32(seq_lens), length=length)


# --------------------------------------------------------------------------------------------------
# kernel


@triton.jit
def _masked_softmax_step(qk, keep, v, m_i, l_i, acc, PREC: tl.constexpr):
    """One online-softmax step over a masked score tile (:func:`masked_softmax_weights`), accumulated on the
    tensor cores."""
    m_new, p, alpha, l_i = masked_softmax_weights(qk, keep, m_i, l_i)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
    return m_new, l_i, acc


# Length-dependent integers that only address the layout lists (scalar loads) are not specialised on: a
# prompt length whose tile count is not a multiple of 16 would otherwise compile a new variant (about a second
# at 128K) after a warm-up at another length. The q / k / v strides stay specialised (vectorised loads).
@triton.jit(do_not_specialize=["NQT", "stride_tb", "stride_th", "stride_tm", "stride_cb", "stride_ch", "stride_cm",
                               "stride_colb", "stride_colh", "stride_colm", "stride_ccb", "stride_cch", "stride_ccm"])
def _sparse_prefill_kernel(
        Q, K, V, O, TSTART, TCNT, TFULL, TBITS, COLS, CCNT, OFF, LEN,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ob, stride_oh, stride_om, stride_od,
        stride_tb, stride_th, stride_tm,
        stride_cb, stride_ch, stride_cm,
        stride_colb, stride_colh, stride_colm,
        stride_ccb, stride_cch, stride_ccm,
        H, GROUPS, NQT, D, qk_scale,
        BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_N: tl.constexpr,
        HAS_BITS: tl.constexpr, SUB_M: tl.constexpr, SUB_N: tl.constexpr, BITS_PER_ROW: tl.constexpr,
        HAS_COLS: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
        USE_TMA: tl.constexpr):
    # heavy (late) query tiles first; a heads-fastest launch order (GQA heads side by side) was not faster
    # for Vertical-Slash at 128K on the H100 (session 9 sweep)
    pid_bh = tl.program_id(1)
    m = tl.num_programs(0) - 1 - tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    kvh = h // GROUPS
    b64 = b.to(tl.int64)
    off = tl.load(OFF + b)
    n = tl.load(LEN + b)
    offs_r = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    o_base = O + b64 * stride_ob + h.to(tl.int64) * stride_oh
    # absolute rows [m*BM, (m+1)*BM) that are left padding get zeros
    abs_rows = m * BLOCK_M + offs_r
    tl.store(o_base + abs_rows.to(tl.int64)[:, None] * stride_om + offs_d[None, :] * stride_od,
             tl.zeros([BLOCK_M, BLOCK_D], dtype=O.dtype.element_ty),
             mask=(abs_rows < off)[:, None] & d_ok[None, :])
    q_start = m * BLOCK_M
    if (m < NQT) & (q_start < n):
        offs_m = q_start + offs_r
        row_ok = offs_m < n
        q_base = Q + b64 * stride_qb + h.to(tl.int64) * stride_qh
        k_base = K + b64 * stride_kb + kvh.to(tl.int64) * stride_kh
        v_base = V + b64 * stride_vb + kvh.to(tl.int64) * stride_vh
        rows_abs = (off + offs_m).to(tl.int64)
        if USE_TMA:  # key / value tiles through the Hopper tensor memory accelerator; rows >= off + n read 0
            k_desc = tl.make_tensor_descriptor(k_base, shape=[off + n, BLOCK_D], strides=[stride_kn, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
            v_desc = tl.make_tensor_descriptor(v_base, shape=[off + n, BLOCK_D], strides=[stride_vn, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
        if EVEN_D:
            q = tl.load(q_base + rows_abs[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                        mask=row_ok[:, None], other=0.0)
        else:
            q = tl.load(q_base + rows_abs[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        c_off = b64 * stride_cb + h.to(tl.int64) * stride_ch + m * stride_cm
        cnt = tl.load(TCNT + c_off)
        nfull = tl.load(TFULL + c_off)
        t_base = TSTART + b64 * stride_tb + h.to(tl.int64) * stride_th + m.to(tl.int64) * stride_tm
        # A layout tile of SPLIT_N x BLOCK_N keys is visited as SPLIT_N loop iterations of one BLOCK_N tile each
        # (one flat loop: a statically unrolled inner loop doubled the body and spilled registers with TMA).
        # ---- tiles every row sees entirely: no mask
        for j in range(0, nfull * SPLIT_N):
            kstart = off + tl.load(t_base + j // SPLIT_N) + (j % SPLIT_N) * BLOCK_N
            if USE_TMA:
                k = k_desc.load([kstart, 0])
                v = v_desc.load([kstart, 0])
            else:
                kpos = (kstart + offs_n).to(tl.int64)
                if EVEN_D:
                    k = tl.load(k_base + kpos[:, None] * stride_kn + offs_d[None, :] * stride_kd)
                    v = tl.load(v_base + kpos[:, None] * stride_vn + offs_d[None, :] * stride_vd)
                else:
                    k = tl.load(k_base + kpos[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                                mask=d_ok[None, :], other=0.0)
                    v = tl.load(v_base + kpos[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                                mask=d_ok[None, :], other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=PREC)
            # online softmax, unmasked (scale and shift in one FMA)
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
            m_i = m_new
        # ---- tiles on the diagonal / at the sequence end / partially kept: masked
        for j in range(nfull * SPLIT_N, cnt * SPLIT_N):
            i = j // SPLIT_N
            s = j % SPLIT_N
            start = tl.load(t_base + i)
            if HAS_BITS:
                tbits = tl.load(TBITS + b64 * stride_tb + h.to(tl.int64) * stride_th + m.to(tl.int64) * stride_tm + i)
            kloc = start + s * BLOCK_N + offs_n
            k_ok = kloc < n
            if USE_TMA:
                k = k_desc.load([off + start + s * BLOCK_N, 0])
                v = v_desc.load([off + start + s * BLOCK_N, 0])
            else:
                kpos = (off + kloc).to(tl.int64)
                k = tl.load(k_base + kpos[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                            mask=k_ok[:, None] & d_ok[None, :], other=0.0)
                v = tl.load(v_base + kpos[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                            mask=k_ok[:, None] & d_ok[None, :], other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            keep = (kloc[None, :] <= offs_m[:, None]) & k_ok[None, :]
            if HAS_BITS:
                sub = (offs_r // SUB_M)[:, None] * BITS_PER_ROW + ((s * BLOCK_N + offs_n) // SUB_N)[None, :]
                keep = keep & (((tbits >> sub.to(tl.int64)) & 1) != 0)
            m_i, l_i, acc = _masked_softmax_step(qk, keep, v, m_i, l_i, acc, PREC)
        # ---- gathered single columns (Vertical-Slash verticals)
        if HAS_COLS:
            offs_c = tl.arange(0, BLOCK_C)
            cc_off = b64 * stride_ccb + h.to(tl.int64) * stride_cch + m * stride_ccm
            ccnt = tl.load(CCNT + cc_off)
            col_base = COLS + b64 * stride_colb + h.to(tl.int64) * stride_colh + m.to(tl.int64) * stride_colm
            for c0 in range(0, ccnt, BLOCK_C):
                ci = c0 + offs_c
                c_ok = ci < ccnt
                cidx = tl.load(col_base + ci, mask=c_ok, other=0)
                kpos = (off + cidx).to(tl.int64)
                k = tl.load(k_base + kpos[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                            mask=c_ok[:, None] & d_ok[None, :], other=0.0)
                v = tl.load(v_base + kpos[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                            mask=c_ok[:, None] & d_ok[None, :], other=0.0)
                qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
                keep = c_ok[None, :] & (cidx[None, :] <= offs_m[:, None])
                m_i, l_i, acc = _masked_softmax_step(qk, keep, v, m_i, l_i, acc, PREC)
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(o_base + rows_abs[:, None] * stride_om + offs_d[None, :] * stride_od,
                 out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def tma_ok(*ts: torch.Tensor) -> bool:
    """Whether the key / value tiles can be read through device-side tensor descriptors (Hopper's TMA): a GPU of
    compute capability >= 9, fp16 / bf16, a power-of-two head dim and 16-byte aligned bases and row strides."""
    if interpreting() or not hasattr(tl, "make_tensor_descriptor"):
        return False
    for t in ts:
        if not t.is_cuda or t.dtype not in (torch.float16, torch.bfloat16) or t.stride(-1) != 1:
            return False
        if torch.cuda.get_device_capability(t.device)[0] < 9:
            return False
        d = t.shape[-1]
        if d < 16 or d != next_pow2(d) or t.data_ptr() % 16:
            return False
        if any(st * t.element_size() % 16 for st in t.stride()[:-1]):
            return False
    return True


def _scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Global scratch for the device-side tensor descriptors (``triton.set_allocator``)."""
    return torch.empty(size, dtype=torch.int8, device="cpu" if interpreting() else "cuda")


def _ensure_allocator() -> None:
    """Device-side descriptors need Triton's scratch allocator; set ours unless the caller has set one (a
    context variable: per thread)."""
    try:
        from triton.runtime import _allocation
        if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):
        pass
    triton.set_allocator(_scratch)


def default_config(layout: TileLayout, head_dim: int, dtype: torch.dtype, tma: bool = False) -> dict:
    """Launch parameters: kernel key-tile width (divides the layout's block_n), warps, pipeline depth and
    whether K / V go through TMA. With TMA, 128-row query tiles run best on one warp group with two stages
    (dense causal at 128K on the H100: 541 TF/s against 415 for pointer loads with 8 warps and three stages,
    ``bench/exp_hopper_prefill.py``)."""
    bn = min(layout.block_n, 64)
    if tma:
        return {"BLOCK_N": bn, "num_warps": 4, "num_stages": 2, "tma": True}
    if layout.block_m >= 128:
        return {"BLOCK_N": bn, "num_warps": 8, "num_stages": 3, "tma": False}
    return {"BLOCK_N": bn, "num_warps": 4, "num_stages": 3, "tma": False}


def tile_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TileLayout,
                   scale: float | None = None, config: dict | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of q [B, H, L, D] over k, v [B, Hkv, L, D] restricted to ``layout``. Output [B, H, L, D]
    in q's dtype. Any strides with a contiguous last dim are accepted (no copies of K / V)."""
    B, H, L, D = q.shape
    groups = check_gqa(q, k)
    if k.shape[2] != L or layout.length != L:
        raise ValueError("prefill expects q, k and the layout over the same padded length")
    if layout.num_heads != H:
        raise ValueError(f"layout has {layout.num_heads} heads, q has {H}")
    in_dtype = q.dtype
    qc, kc, vc = prep(q), prep(k), prep(v)
    cdt = qc.dtype
    kc, vc = kc.to(cdt), vc.to(cdt)
    cfg = dict(default_config(layout, D, cdt, tma_ok(kc, vc)))
    if config:
        cfg.update(config)
    bn = int(cfg.pop("BLOCK_N"))
    use_tma = bool(cfg.pop("tma"))
    if use_tma:
        if D != max(16, next_pow2(D)) or kc.stride(-1) != 1 or vc.stride(-1) != 1:
            raise ValueError("tma needs a power-of-two head dim and contiguous rows")
        _ensure_allocator()
    if layout.block_n % bn:
        raise ValueError(f"BLOCK_N={bn} must divide the layout tile width {layout.block_n}")
    if layout.bits is not None and bn % layout.sub_n and layout.sub_n % bn:
        raise ValueError("BLOCK_N incompatible with the sub-block width")
    # [B, H, L, D] view of a [B, L, H, D] buffer: the attention layer's transpose(1, 2).contiguous() back to
    # token-major order is then free (a 0.9 GB strided copy per layer at 128K otherwise)
    o = (torch.empty(B, L, H, D, dtype=cdt, device=q.device).transpose(1, 2) if out is None or out.dtype != cdt
         else out)
    nqt = layout.num_q_tiles
    grid = (max(nqt, -(-L // layout.block_m)), B * H)
    st, cnt, nf = layout.starts, layout.counts, layout.n_full
    has_bits = layout.bits is not None
    bits = layout.bits if has_bits else st
    has_cols = layout.columns is not None
    cols = layout.columns if has_cols else st
    ccnt = layout.column_counts if has_cols else cnt
    block_c = int(cfg.pop("BLOCK_C", 32))  # 64 spills a few registers on sm_90 (aot_check)
    _sparse_prefill_kernel[grid](
        qc, kc, vc, o, st, cnt, nf, bits, cols, ccnt, layout.pad_offsets, layout.seq_lens,
        *qc.stride(), *kc.stride(), *vc.stride(), *o.stride(),
        st.stride(0), st.stride(1), st.stride(2),
        cnt.stride(0), cnt.stride(1), cnt.stride(2),
        cols.stride(0), cols.stride(1), cols.stride(2),
        ccnt.stride(0), ccnt.stride(1), ccnt.stride(2),
        H, groups, nqt, D, resolve_scale(D, scale) * LOG2E,
        BLOCK_D=max(16, next_pow2(D)), BLOCK_M=layout.block_m, BLOCK_N=bn, SPLIT_N=layout.block_n // bn,
        HAS_BITS=has_bits, SUB_M=max(layout.sub_m, 1), SUB_N=max(layout.sub_n, 1),
        BITS_PER_ROW=(layout.block_n // layout.sub_n) if has_bits else 1,
        HAS_COLS=has_cols, BLOCK_C=block_c, EVEN_D=(D == max(16, next_pow2(D))), PREC=dot_precision(cdt),
        USE_TMA=use_tma, **cfg)
    if o.dtype != in_dtype:
        o = o.to(in_dtype)
    if out is not None and out is not o:
        out.copy_(o)
        return out
    return o


__all__ = ["TileLayout", "block_layout", "causal_layout", "tile_attention", "default_config", "tma_ok"]
