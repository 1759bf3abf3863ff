"""Executors: the piece that turns (q, k, v, selection or mask) into attention output inside the HF model.

The session (``session.py``) decides *what* each layer attends (via the methods' selections and its own KV
cache); an executor computes it. This is the injection point for faster kernels (Triton, a later issue):
subclass :class:`Executor`, override what the kernel covers, and pass an instance as
``SparseSession(executor=...)`` (or register it in :data:`EXECUTORS` so configs can name it).

Shapes: q ``[B, H, Lq, D]``, k / v ``[B, Hkv, Lk, D]`` (kv heads are *not* repeated; q head h uses kv head
``h // (H // Hkv)``). Every method returns ``[B, H, Lq, D]`` in q's dtype. The session's decode ``valid`` mask
``[B, Hkv, Lk]`` is always a *suffix* per (row, kv head): left padding and KV compression both right-align the
prompt part (kept tokens of a head are gathered to the end of its prompt slots), decode tokens follow; so a
kernel may read it as one start offset per (row, kv head): ``Lk - valid.sum(-1)``.

Executors with the function signatures of ``sparse_kernels.reference`` (``dense_attention``,
``prefill_attention``, ``quest_attention`` in a namespace, e.g. ``sparse_kernels.triton.get_executor()``)
drop in through :class:`NamespaceExecutor` (``make_executor("triton")``).

* :class:`ReferenceExecutor` — exact masked attention from ``sparse_kernels.reference`` (fp32 softmax, kv heads
  expanded), one batch row and 1024 query rows at a time: memory O(H * 1024 * n) for prefill. The ground
  truth and the CPU default; slow and memory-hungry at 16k+ on a GPU.
Static-cache decode (the fast decode path of ``generate.greedy_generate(fast_decode=...)``): the cache has a
fixed capacity and only a prefix of it is written, so the session calls :meth:`Executor.span_decode` with the
attended slot range as *device* tensors (``start [B, Hkv]``, ``end [B]``) and never reads them on the host.
Every executor's ``span_decode`` (and ``quest_decode`` on a selection whose ``token_mask`` has a static size)
is free of host synchronisation, so it can be captured in a CUDA graph.

* :class:`TorchExecutor` — the same mathematics with bounded memory: dense prefill through
  ``scaled_dot_product_attention(is_causal=True)`` one batch row at a time (flash / memory-efficient kernels
  on CUDA, no mask), sparse prefill one kv head and one query block at a time (memory: the block's scores
  over its gathered keys + an ``[H, chunk, n]`` bool mask, chunk bounded by ``max_elements``), decode through SDPA with a ``[B, H, 1, Lk]``
  bool mask. Sparse prefill scores, per query block and kv head, only the keys some head of the group keeps
  there (gathered), so its work follows the kept fraction; exact like the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference
from ..selection import BlockSelection, QuestSelection, VerticalSlashSelection, padding_info


class Executor:
    """Interface + shared fallbacks. ``decode`` is the only primitive every executor must provide."""

    name = "abstract"

    def dense_prefill(self, q, k, v, key_padding_mask: torch.Tensor | None, scale: float) -> torch.Tensor:
        """Causal attention of a prompt, left padded per ``key_padding_mask`` [B, L] (True = real token, None =
        no padding); padded query rows output 0."""
        raise NotImplementedError

    def sparse_prefill(self, q, k, v, selection, scale: float) -> torch.Tensor:
        """Attention restricted to a prefill selection (Block / VerticalSlash, block granularity)."""
        raise NotImplementedError

    def decode(self, q, k, v, mask: torch.Tensor, scale: float) -> torch.Tensor:
        """Decode queries q [B, H, 1, D] over the cache restricted to ``mask`` [B, H or Hkv, Lk] (True = attend;
        from the session: [B, Hkv, Lk], a suffix per (row, kv head))."""
        raise NotImplementedError

    def quest_decode(self, q, k, v, selection: QuestSelection, scale: float) -> torch.Tensor:
        """One Quest step over the selected pages (default: as a masked decode)."""
        return self.decode(q, k, v, selection.token_mask(), scale)

    def span_decode(self, q, k, v, start: torch.Tensor, end: torch.Tensor, scale: float) -> torch.Tensor:
        """Decode queries q [B, H, 1, D] over the slots ``[start, end)`` of a statically sized cache k, v
        [B, Hkv, C, D] (``start`` [B, Hkv], ``end`` [B]: device tensors, never read on the host). Default: a
        masked decode with the mask built on the device (static shapes)."""
        return self.decode(q, k, v, span_mask(start, end, k.shape[2]), scale)


def span_mask(start: torch.Tensor, end: torch.Tensor, capacity: int) -> torch.Tensor:
    """[B, Hkv, capacity] bool: slot s is attended iff start[b, j] <= s < end[b] (static shape, no sync)."""
    ar = torch.arange(capacity, device=start.device)
    if start.dim() == 1:
        start = start.unsqueeze(1)
    return (ar >= start.unsqueeze(-1)) & (ar < end.view(-1, 1, 1))


def _expand_mask(mask: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    """[B, Hm, Lk] -> [B, H, 1, Lk] (Hm = H, or Hkv repeated per group, or 1)."""
    hm = mask.shape[1]
    if hm != num_q_heads and hm != 1:
        mask = mask.repeat_interleave(num_q_heads // hm, dim=1)
    return mask.unsqueeze(2)


class ReferenceExecutor(Executor):
    """Exact reference (``sparse_kernels.reference``), chunked over query rows."""

    name = "reference"

    def __init__(self, q_chunk: int = 1024):
        self.q_chunk = int(q_chunk)

    def dense_prefill(self, q, k, v, key_padding_mask, scale):
        """Exact masked attention, one batch row and ``q_chunk`` query rows at a time (memory
        O(H * q_chunk * n))."""
        out = torch.zeros_like(q)
        B, H, L, _ = q.shape
        off, lens = padding_info(key_padding_mask, B, L)
        for b, (o, n) in enumerate(zip(off.tolist(), lens.tolist())):
            for q0 in range(0, n, self.q_chunk):
                q1 = min(n, q0 + self.q_chunk)
                mask = (torch.arange(n, device=q.device).view(1, -1)
                        <= torch.arange(q0, q1, device=q.device).view(-1, 1)).view(1, 1, q1 - q0, n)
                out[b:b + 1, :, o + q0:o + q1] = reference.masked_attention(
                    q[b:b + 1, :, o + q0:o + q1], k[b:b + 1, :, o:], v[b:b + 1, :, o:], mask, scale)
        return out

    def sparse_prefill(self, q, k, v, selection, scale):
        return reference.prefill_attention(q, k, v, selection, scale)

    def decode(self, q, k, v, mask, scale):
        return reference.masked_attention(q, k, v, _expand_mask(mask, q.shape[1]), scale)


class TorchExecutor(Executor):
    """Memory-bounded exact attention with plain torch (see module docstring). ``max_elements`` bounds the
    fp32 score block of sparse prefill (per kv head and query chunk)."""

    name = "torch"

    def __init__(self, max_elements: int = 1 << 26, min_chunk: int = 64):
        self.max_elements = int(max_elements)
        self.min_chunk = int(min_chunk)

    def dense_prefill(self, q, k, v, key_padding_mask, scale):
        B, H, L, _ = q.shape
        pad_offsets, seq_lens = padding_info(key_padding_mask, B, L)
        if not bool((pad_offsets > 0).any()):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                  enable_gqa=q.shape[1] != k.shape[1])
        out = torch.zeros_like(q)
        for b, (o, n) in enumerate(zip(pad_offsets.tolist(), seq_lens.tolist())):
            if n:
                out[b:b + 1, :, o:] = F.scaled_dot_product_attention(
                    q[b:b + 1, :, o:], k[b:b + 1, :, o:], v[b:b + 1, :, o:], is_causal=True, scale=scale,
                    enable_gqa=q.shape[1] != k.shape[1])
        return out

    def _chunk(self, g: int, heads: int, n: int, block: int) -> int:
        per_row = max(1, g * n, heads * n // 4)   # fp32 scores of one kv group + the bool mask of all heads
        c = max(self.min_chunk, self.max_elements // per_row)
        return max(block, (c // block) * block)

    def sparse_prefill(self, q, k, v, selection, scale):
        """Per batch row, kv head and query block (the selection's block size): the key positions that any
        head of the group keeps for any row of the block are gathered, and only those are scored (the block's
        token mask applied, causal included): work ~ the kept fraction, not n^2 (on 2 CPU cores, 1K-2K tokens,
        ~25 % kept: several times faster than scoring every key and masking)."""
        if isinstance(selection, VerticalSlashSelection):
            kw = {"granularity": "block"}
            block = selection.block_size
        elif isinstance(selection, BlockSelection):
            kw = {}
            block = selection.block_size
        else:
            raise TypeError(f"not a prefill selection: {type(selection).__name__}")
        B, H, L, D = q.shape
        G = k.shape[1]
        g = H // G
        out = torch.zeros_like(q)
        for b in range(B):
            o, n = int(selection.pad_offsets[b]), int(selection.seq_lens[b])
            if n == 0:
                continue
            chunk = self._chunk(g, H, n, block)
            kb, vb = k[b, :, o:o + n].float(), v[b, :, o:o + n].float()
            for q0 in range(0, n, chunk):
                q1 = min(n, q0 + chunk)
                m = selection.local_mask(b, q0, q1, **kw).to(q.device)  # [H, qc, n]
                for r0 in range(q0, q1, block):
                    r1 = min(q1, r0 + block)
                    mr = m[:, r0 - q0:r1 - q0, :r1]                    # causal: keys < r1 only
                    for j in range(G):
                        mj = mr[j * g:(j + 1) * g]                      # [g, rows, r1]
                        keep = mj.any(1).any(0).nonzero().squeeze(1)
                        if keep.numel() == 0:
                            continue                                    # nothing kept: output stays 0
                        qs = q[b, j * g:(j + 1) * g, o + r0:o + r1].float()
                        s = torch.matmul(qs, kb[j].index_select(0, keep).transpose(0, 1)) * scale
                        s.masked_fill_(~mj.index_select(2, keep), float("-inf"))
                        p = torch.softmax(s, dim=-1).nan_to_num_(0.0)   # a row with no kept key: 0
                        out[b, j * g:(j + 1) * g, o + r0:o + r1] = torch.matmul(
                            p, vb[j].index_select(0, keep)).to(q.dtype)
        return out

    def decode(self, q, k, v, mask, scale):
        H, G = q.shape[1], k.shape[1]
        m = _expand_mask(mask.to(torch.bool), H)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale, enable_gqa=H != G)

    def span_decode(self, q, k, v, start, end, scale):
        """The g q heads of a GQA group are the g query rows of one SDPA call per kv head (one mask per
        (row, kv head)), so K / V are neither repeated nor expanded."""
        B, H, Lq, D = q.shape
        G = k.shape[1]
        if Lq != 1:
            return super().span_decode(q, k, v, start, end, scale)
        m = span_mask(start, end, k.shape[2]).unsqueeze(2)                   # [B, G, 1, C]
        out = F.scaled_dot_product_attention(q.reshape(B, G, H // G, D), k, v, attn_mask=m, scale=scale)
        return out.reshape(B, H, 1, D)


class NamespaceExecutor(Executor):
    """Adapter for executor namespaces with ``sparse_kernels.reference``'s signatures
    (``dense_attention(q, k, v, key_padding_mask, scale)``, ``prefill_attention(q, k, v, selection, scale)``,
    ``quest_attention(q, k, v, selection, scale)``), e.g. the Triton kernels. Decode over a cache whose heads
    have different valid lengths (Ada-SnapKV) goes to ``fallback`` (a :class:`TorchExecutor`) unless the
    namespace also has ``masked_decode(q, k, v, valid, scale)``. ``sdpa_dense_prefill``: dense prefill through
    the fallback's SDPA call instead of the namespace (the Triton executor on CUDA: cuDNN's dense kernel is
    1.4x faster than our tile kernel at 128K on an H100, and a dense baseline must run at its best)."""

    def __init__(self, ns, fallback: Executor | None = None, sdpa_dense_prefill: bool = False):
        self.ns = ns
        self.name = getattr(ns, "name", "namespace")
        self.fallback = fallback or TorchExecutor()
        self.sdpa_dense_prefill = bool(sdpa_dense_prefill)

    def dense_prefill(self, q, k, v, key_padding_mask, scale):
        if self.sdpa_dense_prefill:
            return self.fallback.dense_prefill(q, k, v, key_padding_mask, scale)
        return self.ns.dense_attention(q, k, v, key_padding_mask, scale)

    def sparse_prefill(self, q, k, v, selection, scale):
        return self.ns.prefill_attention(q, k, v, selection, scale)

    def quest_decode(self, q, k, v, selection, scale):
        return self.ns.quest_attention(q, k, v, selection, scale)

    def span_decode(self, q, k, v, start, end, scale):
        fn = getattr(self.ns, "span_decode", None)
        if fn is None and self.name == "triton":
            from ..triton.decode import span_decode as fn
        if fn is None:
            return self.fallback.span_decode(q, k, v, start, end, scale)
        return fn(q, k, v, start, end, scale)

    def decode(self, q, k, v, mask, scale):
        if hasattr(self.ns, "masked_decode"):
            return self.ns.masked_decode(q, k, v, mask, scale)
        if mask.shape[1] == 1 or bool((mask == mask[:, :1]).all()):
            return self.ns.dense_attention(q, k, v, mask[:, 0], scale)   # one padding mask per row
        return self.fallback.decode(q, k, v, mask, scale)


def _triton(device: torch.device) -> Executor:
    from .. import triton as sk_triton

    return NamespaceExecutor(sk_triton.get_executor("triton", device), sdpa_dense_prefill=device.type == "cuda")


EXECUTORS = {"reference": ReferenceExecutor, "torch": TorchExecutor, "triton": _triton}
EXECUTOR_NAMES = ("auto", *EXECUTORS)


def resolve_executor_name(name: str | None, device: torch.device | str | None = None) -> str:
    """The executor a name stands for on ``device``: ``"auto"`` / None = the fastest exact one there, the Triton
    kernels on CUDA and ``torch`` elsewhere (SDPA; 3.6-4.6x faster than ``reference`` on CPU, same mathematics)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if name in (None, "auto"):
        return "triton" if dev.type == "cuda" else "torch"
    if name not in EXECUTORS:
        raise KeyError(f"unknown executor {name!r}; known: {', '.join(EXECUTOR_NAMES)}")
    return name


def make_executor(name: str | Executor | None, device: torch.device | str | None = None) -> Executor:
    """An executor by name (see :func:`resolve_executor_name`) or the instance given."""
    if isinstance(name, Executor):
        return name
    dev = torch.device(device) if device is not None else torch.device("cpu")
    name = resolve_executor_name(name, dev)
    factory = EXECUTORS[name]
    return factory(dev) if name == "triton" else factory()


__all__ = ["Executor", "ReferenceExecutor", "TorchExecutor", "NamespaceExecutor", "EXECUTORS", "EXECUTOR_NAMES",
           "make_executor", "resolve_executor_name", "span_mask"]
