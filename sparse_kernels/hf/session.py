"""The per-run context object behind our transformers attention function.

A :class:`SparseSession` holds everything one generation needs and the HF model does not know about:

* the methods: at most one **prefill** method (Vertical-Slash, FlexPrefill, Block-Sparse) and at most one
  **decode-side** method (SnapKV / Ada-SnapKV = one-off KV compression after prefill, Quest = page
  selection at every decode step). Both together = a combined cell. None = dense.
* the **executor** (``executors.py``) that computes attention from a selection or mask — the injection
  point for Triton kernels;
* its own **KV cache** (:class:`LayerCache` per layer): preallocated ``[B, Hkv, capacity, D]`` keys and
  values plus a ``valid [B, Hkv, capacity]`` mask. The model is run with ``use_cache=False`` and explicit
  ``position_ids`` (``generate.greedy_generate``), so the attention function receives the new tokens' keys
  and values only and appends them here. KV compression replaces a layer's prompt cache by the kept tokens
  of each kv head, right-aligned with ``valid`` marking the per-head lengths (Ada-SnapKV gives heads
  different lengths); RoPE is already applied to cached keys and new tokens get positions continuing from
  the original prompt length, so eviction never shifts positions;
* the **phase** (prefill / decode) set by the loop, the layer (``module.layer_idx``), left padding
  (``key_padding_mask``), Quest page summaries per layer (updated at every decode step), and the realized
  sparsity statistics per batch row.

Activate it around the model calls (``with session.activate(): ...``); outside an active session the
registered attention function is plain SDPA, so a model loaded with our implementation behaves exactly like
``attn_implementation="sdpa"``.

**Static decode** (the fast decode path, ``generate.greedy_generate(fast_decode=...)``): after prefill,
:meth:`SparseSession.start_static_decode` freezes every shape of the decode step. Each layer cache gets its
final capacity once (no per-step ``torch.cat``), the unwritten slots are zeroed, and the per-step quantities
(write slot, end of the written prefix, Quest's token position and page) live in small device tensors that
:meth:`SparseSession.static_advance` increments in place. The per-layer decode then makes no host
synchronisation and no data-dependent shape: K/V are written with ``index_copy_`` at a device slot;
dense and KV-compressed caches are attended over ``[start, end)`` by ``Executor.span_decode``; Quest updates
its preallocated page summaries with a scatter and picks pages with a fixed-size ``torch.topk`` over
candidates whose current page is ``+inf`` and later pages ``-inf`` (:func:`static_quest_pages`). The whole
decode step can therefore be captured in a CUDA graph and replayed. The statistics of these steps are
closed-form functions of the step count (KV compression: kept + appended over prompt + appended; Quest:
``min(T/p, complete pages)`` pages plus the current one), so :meth:`SparseSession.finish_static_decode`
adds them on the host at the end, from the number of steps each row was active.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import torch

from .. import reference
from ..methods._common import PHASE_DECODE, PHASE_KV_COMPRESSION, PHASE_PREFILL
from ..selection import QuestSelection, padding_info
from .executors import Executor, _expand_mask, make_executor, span_mask

_ACTIVE: contextvars.ContextVar["SparseSession | None"] = contextvars.ContextVar("sparse_session", default=None)


def active_session() -> "SparseSession | None":
    return _ACTIVE.get()


@dataclass(frozen=True)
class LayerKind:
    """What a layer's attention is beyond plain causal softmax (as transformers passes it to the attention
    function): ``window`` = sliding window (query i attends keys ``i - window < j <= i``; Mistral, Gemma 2/3
    local layers, Qwen2 with ``use_sliding_window``), ``softcap`` = logit soft-capping (Gemma 2)."""

    window: int | None = None
    softcap: float | None = None


@dataclass
class LayerCache:
    """One layer's KV cache: ``keys/values [B, Hkv, capacity, D]``, ``valid [B, Hkv, capacity]``; slots
    ``[0, length)`` are in use. A slot is attended iff valid (left padding, evicted tokens)."""

    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    length: int

    @classmethod
    def from_prefill(cls, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, extra: int) -> "LayerCache":
        B, G, L, D = k.shape
        extra = max(int(extra), 1)
        # one concatenation per tensor (k / v arrive as transposed views: cat copies them at full bandwidth,
        # a slice assignment did not); unwritten slots are zero (masked-out 0 * garbage would be NaN)
        keys = torch.cat([k, k.new_zeros(B, G, extra, D)], 2)
        values = torch.cat([v, v.new_zeros(B, G, extra, v.shape[-1])], 2)
        mask = torch.cat([valid.to(torch.bool), valid.new_zeros(B, G, extra, dtype=torch.bool)], 2)
        return cls(keys, values, mask, L)

    def ensure_capacity(self, capacity: int) -> None:
        """Grow (once, outside the decode step) to at least ``capacity`` slots; new slots are zero."""
        extra = int(capacity) - self.keys.shape[2]
        if extra <= 0:
            return
        B, G, _, D = self.keys.shape
        self.keys = torch.cat([self.keys, self.keys.new_zeros(B, G, extra, D)], 2)
        self.values = torch.cat([self.values, self.values.new_zeros(B, G, extra, self.values.shape[3])], 2)
        self.valid = torch.cat([self.valid, self.valid.new_zeros(B, G, extra)], 2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add one new token per row and kv head (k, v [B, Hkv, 1, D])."""
        n = k.shape[2]
        if self.length + n > self.keys.shape[2]:
            grow = max(n, self.keys.shape[2] // 2)
            self.keys = torch.cat([self.keys, self.keys.new_empty(*self.keys.shape[:2], grow, self.keys.shape[3])], 2)
            self.values = torch.cat([self.values, self.values.new_empty(*self.values.shape[:2], grow,
                                                                         self.values.shape[3])], 2)
            self.valid = torch.cat([self.valid, self.valid.new_zeros(*self.valid.shape[:2], grow)], 2)
        self.keys[:, :, self.length:self.length + n] = k
        self.values[:, :, self.length:self.length + n] = v
        self.valid[:, :, self.length:self.length + n] = True
        self.length += n

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        L = self.length
        return self.keys[:, :, :L], self.values[:, :, :L], self.valid[:, :, :L]

    def head_lengths(self) -> torch.Tensor:
        """[B, Hkv] number of attended (valid) tokens per row and kv head."""
        return self.view()[2].sum(-1)


@dataclass
class StaticQuestSelection(QuestSelection):
    """A :class:`QuestSelection` over a statically sized cache (``length`` = capacity) whose page ids are
    below ``num_pages``: ``token_mask`` then has a static size and makes no host synchronisation (the base
    class reads ``seq_lens.max()`` to size its page bitmap). Pages may be unsorted and hold ``-1`` entries."""

    num_pages: int = 1

    def token_mask(self) -> torch.Tensor:
        B, H, L = self.batch, self.num_heads, self.length
        dev = self.pages.device
        NP = int(self.num_pages)
        pos = torch.arange(L, device=dev).view(1, -1) - self.pad_offsets.view(-1, 1)
        real = (pos >= 0) & (pos < self.seq_lens.view(-1, 1))
        pm = torch.zeros(B, H, NP + 1, dtype=torch.bool, device=dev)
        pg = self.pages.long()
        pm.scatter_(2, torch.where(pg < 0, torch.full_like(pg, NP), pg.clamp(max=NP)), True)
        page_of = (pos.clamp(min=0) // self.page_size).clamp(max=NP)
        return pm.gather(2, page_of.unsqueeze(1).expand(B, H, L)) & real.unsqueeze(1)


@dataclass
class _Counters:
    """Device counters of the static decode step on one device (advanced in place by ``static_advance``):
    ``slots [n]`` the slot the next token is written to in each of the device's n layers, ``ends [n, B]``
    the end of the written prefix after that write, ``qpos [B]`` the row-local position of the new token,
    ``qlen [B]`` the row-local length after it, ``qpage [B]`` its page (Quest); plus the device copies of
    the constant tensors the layers need (``pad_offsets``, Quest's ``counts`` and ``n_eff``)."""

    slots: torch.Tensor
    ends: torch.Tensor
    qpos: torch.Tensor
    qlen: torch.Tensor
    qpage: torch.Tensor
    pad_offsets: torch.Tensor
    counts: torch.Tensor | None = None
    n_eff: torch.Tensor | None = None


@dataclass
class _StaticLayer:
    """Static decode state of one layer: its device's counters ``dc`` and its row ``index`` there, first
    decode slot ``base``, first attended slot per (row, kv head) ``start`` (device, int32), prompt tokens kept
    per (row, kv head) ``kept`` (host, for the statistics), Quest page summaries ``pmin`` / ``pmax``."""

    dc: _Counters
    index: int
    base: int
    start: torch.Tensor
    kept: torch.Tensor
    pmin: torch.Tensor | None = None
    pmax: torch.Tensor | None = None


@dataclass
class _StaticDecode:
    """Static decode state: per-device counters, per-layer state, and Quest's static sizes (``num_pages``
    pages per row, ``kmax`` earlier pages per step, ``n_hist`` = T // p per row on the host)."""

    steps: int
    counters: dict
    layers: dict
    quest: bool = False
    page_size: int = 16
    num_pages: int = 1
    kmax: int = 0
    n_hist: torch.Tensor | None = None
    gpu_select: bool = False   # Triton page bounds and top-k (the accelerated Quest)


def limit_candidates(bounds: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """Candidates of the fixed-size Quest top-k from bounds [B, S, P]: pages ``< cur`` keep their bound, the
    current page ``cur`` [B] gets ``+inf`` (always chosen) and later pages ``-inf`` (the Triton
    ``page_bounds(limit=cur)`` writes this directly)."""
    pid = torch.arange(bounds.shape[-1], device=bounds.device).view(1, 1, -1)
    c = cur.view(-1, 1, 1)
    return torch.where(pid < c, bounds, torch.where(pid == c, float("inf"), float("-inf")))


def static_quest_pages(cand: torch.Tensor, kmax: int, n_eff: torch.Tensor | None, groups: int,
                       fused: bool = False) -> torch.Tensor:
    """Graph-safe Quest choice from the candidates of :func:`limit_candidates` ([B, S, P]; S = H, or Hkv for
    pages shared per GQA group, then ``groups`` = H / Hkv repeats each list for its heads): the ``kmax + 1``
    largest, i.e. the current page plus the ``kmax`` complete earlier pages with the largest bounds. Where a
    row has fewer earlier pages, the rest of its list are later pages, which hold no token yet and are never
    attended (every consumer bounds pages by ``seq_lens``). ``n_eff`` [B] (device; only when rows have
    different budgets): row b keeps its ``n_eff[b] + 1`` largest, ``-1`` after them. ``fused``: one Triton
    kernel (:func:`sparse_kernels.triton.quest.topk_pages`, int32, ascending) instead of ``torch.topk``.
    Returns [B, H, kmax + 1] page ids in no particular order: no host sync, no data-dependent shape."""
    B, S, P = cand.shape
    k = min(int(kmax) + 1, P)
    if fused:
        from ..triton.quest import topk_pages

        pages = topk_pages(cand, k, None if n_eff is None else n_eff + 1)[0]
    elif n_eff is None:
        pages = torch.topk(cand, k, dim=-1, sorted=False).indices
    else:
        pages = torch.topk(cand, k, dim=-1, sorted=True).indices
        rank = torch.arange(k, device=cand.device).view(1, 1, -1)
        pages = torch.where(rank <= n_eff.view(B, 1, 1), pages, torch.full_like(pages, -1))
    if groups > 1:   # (expand + reshape: repeat_interleave may read its output size on the host)
        pages = pages.unsqueeze(2).expand(B, S, groups, k).reshape(B, S * groups, k)
    return pages


class PromptRecord:
    """One batch's dense prefill, kept for the decode of several sessions (the shared prefill of the
    decode-side cells, ``generate.shared_prefill``): per layer the prompt keys and values, the last ``q_tail``
    queries (what SnapKV / Ada-SnapKV score with), the scale and the layer's kind; plus the batch geometry and,
    set by the generation loop, the first greedy token per row, the rows with non-finite logits, the prefill's
    wall time and (for tests) its last-position logits. Sessions build their caches from it with
    :meth:`SparseSession.adopt`; the record itself is never modified."""

    def __init__(self, q_tail: int = 0):
        self.q_tail = max(int(q_tail), 0)
        self.layers: dict[int, tuple] = {}
        self.batch = self.length = 0
        self.key_padding_mask = None
        self.first = self.bad = self.logits = None
        self.prefill_s = 0.0

    def keep(self, layer, q, k, v, scale, window, kind, sparse) -> None:
        tail = q[:, :, q.shape[2] - min(self.q_tail, q.shape[2]):].clone()
        self.layers[layer] = (tail, k, v, scale, window, kind, sparse)
        self.batch, self.length = k.shape[0], k.shape[2]

    def full_queries(self, tail: torch.Tensor) -> torch.Tensor:
        """[B, H, length, D] queries holding the recorded tail at the end (zeros before it, which KV compression
        never reads: it scores with the last ``window`` <= ``q_tail`` real queries of each row)."""
        B, H, W, D = tail.shape
        q = tail.new_zeros(B, H, self.length, D)
        q[:, :, self.length - W:] = tail
        return q


@dataclass
class AttentionEvent:
    """What a hook sees for one layer call (tests, calibration, debugging).

    Prefill: q, k, v are the whole (padded) prompt, ``selection`` the prefill selection (None when dense)
    and ``kv_selection`` the KV-compression selection (None without one), ``cache`` the layer cache just
    written (compressed when KV compression runs). Decode: k, v are the new token's
    key/value, ``cache`` the layer cache *after* appending it (what was attended, with ``mask`` the
    ``[B, H or Hkv, Lk]`` attention mask used) and ``selection`` Quest's page selection (None otherwise)."""

    layer: int
    phase: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    scale: float
    selection: Any = None
    kv_selection: Any = None
    cache: LayerCache | None = None
    mask: torch.Tensor | None = None
    step: int = 0
    active: torch.Tensor | None = None   # decode: [B] bool (CPU), rows still generating at this step
    sparse: bool = True      # the methods apply to this layer (False: a sliding-window layer, docs/methods.md)


@dataclass
class _Stats:
    """Per-row sums (float64) of the realized sparsity measures. The prefill sums live on the device of the
    selections (``add_prefill``): a layer adds its figures without waiting for the GPU; they are read once,
    at the end (``SparseSession.row_stats``)."""

    batch: int
    prefill_sparsity: torch.Tensor = None
    prefill_density: torch.Tensor = None
    prefill_layers: int = 0
    kv_sparsity: torch.Tensor = None
    kv_layers: int = 0
    decode_density: torch.Tensor = None
    decode_count: torch.Tensor = None      # (layer, step) pairs counted per row
    decode_steps: torch.Tensor = None      # steps per row while the row was active

    def __post_init__(self):
        z = lambda: torch.zeros(self.batch, dtype=torch.float64)  # noqa: E731
        self.prefill_sparsity, self.prefill_density = z(), z()
        self.kv_sparsity, self.decode_density, self.decode_count = z(), z(), z()
        self.decode_steps = torch.zeros(self.batch, dtype=torch.long)

    def add_prefill(self, sparsity: torch.Tensor, density: torch.Tensor) -> None:
        """One layer's [B, H] paper sparsity and computed density (any device)."""
        dev = sparsity.device
        self.prefill_sparsity = self.prefill_sparsity.to(dev) + sparsity.double().mean(-1)
        self.prefill_density = self.prefill_density.to(dev) + density.to(dev).double().mean(-1)
        self.prefill_layers += 1


class SparseSession:
    """Per-run context: methods, executor, per-layer caches, phase and statistics (see module docstring).

    ``prefill``: a method with ``phase == "prefill"`` (``select(q, k, key_padding_mask, scale)``) or None;
    ``decode``: a method with ``phase`` ``"kv_compression"`` (``compress``) or ``"decode"`` (Quest:
    ``init_state`` / ``select``) or None; ``executor``: an :class:`Executor` or a name (``"auto"``: the Triton
    kernels on CUDA, the exact SDPA-based ``torch`` executor on CPU; with ``"triton"`` the methods are swapped for their
    :func:`sparse_kernels.triton.accelerate` versions, whose selection steps run on the GPU too). ``hooks``:
    callables receiving an :class:`AttentionEvent` per layer call (they force the regular decode path).
    ``fast_decode``: the session's default for ``greedy_generate(fast_decode=None)`` ("auto": static cache +
    CUDA graph on CUDA, regular path on CPU)."""

    def __init__(self, prefill=None, decode=None, executor: Executor | str | None = "auto",
                 hooks: list[Callable[[AttentionEvent], None]] | None = None, fast_decode: bool | str = "auto"):
        if prefill is not None and getattr(prefill, "phase", None) != PHASE_PREFILL:
            raise ValueError(f"{type(prefill).__name__} is not a prefill method")
        if decode is not None and getattr(decode, "phase", None) not in (PHASE_KV_COMPRESSION, PHASE_DECODE):
            raise ValueError(f"{type(decode).__name__} is not a KV-compression or decode method")
        self.prefill_method = prefill
        self.decode_method = decode
        self._executor_spec = executor
        self.executor: Executor | None = executor if isinstance(executor, Executor) else None
        self.hooks = list(hooks or [])
        self.fast_decode = fast_decode   # default of greedy_generate(fast_decode=None): see generate.py
        self.phase: str | None = None
        self.caches: dict[int, LayerCache] = {}
        self.quest_states: dict[int, Any] = {}
        self.layer_kinds: dict[int, LayerKind] = {}     # every layer seen (kept across batches)
        self.sparse_layers: set[int] = set()            # layers the methods ran on in the last batch
        self._windows: dict[int, int | None] = {}       # effective window per layer in the last batch
        self.step = 0
        self._static: _StaticDecode | None = None
        self.record: PromptRecord | None = None   # set: the prefill is recorded for other sessions (adopt)

    # ------------------------------------------------------------------ lifecycle (driven by the loop)
    def begin(self, batch: int, length: int, key_padding_mask: torch.Tensor | None, max_new_tokens: int,
              device) -> None:
        """Reset for a new batch of prompts of padded ``length`` (left padding given by the mask)."""
        if self.executor is None:
            self.executor = make_executor(self._executor_spec, device)
        if self.executor.name == "triton":    # the methods' selection steps on the GPU too (triton.methods)
            from ..triton import accelerate

            self.prefill_method = None if self.prefill_method is None else accelerate(self.prefill_method)
            self.decode_method = None if self.decode_method is None else accelerate(self.decode_method)
        self.key_padding_mask = None if key_padding_mask is None else key_padding_mask.to(torch.bool)
        self.pad_offsets, self.seq_lens = padding_info(self.key_padding_mask, batch, length, device=device)
        self.batch, self.length = batch, length
        self.max_new_tokens = int(max_new_tokens)
        self.caches, self.quest_states = {}, {}
        self.sparse_layers = set()
        self._windows: dict[int, int | None] = {}
        self.stats = _Stats(batch)
        self.phase = "prefill"
        self.step = 0
        self.appended = 0
        self._active = torch.ones(batch, dtype=torch.bool)
        self._static = None

    def begin_decode_step(self, active: torch.Tensor | None = None) -> None:
        """Before each decode forward: ``active`` [B] marks rows still generating (statistics only)."""
        self.phase = "decode"
        self.step += 1
        self.appended += 1
        self._active = (torch.ones(self.batch, dtype=torch.bool) if active is None
                        else active.detach().to("cpu", torch.bool))
        self.stats.decode_steps += self._active.long()

    @contextlib.contextmanager
    def activate(self):
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    # ------------------------------------------------------------------ attention
    def attend(self, module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
               window: int | None = None, softcap: float | None = None) -> torch.Tensor:
        """Attention output [B, H, Lq, D] of one layer call (q [B, H, Lq, D]; k, v the new tokens' [B, Hkv, Lq, D]).
        ``window`` / ``softcap``: the layer's sliding window and logit soft-cap (see :class:`LayerKind`)."""
        layer = int(module.layer_idx)
        if self.phase == "prefill":
            if q.shape[2] != k.shape[2] or q.shape[2] != self.length:
                raise RuntimeError("prefill expects the whole prompt in one forward (no HF cache)")
            if layer in self.caches:
                raise RuntimeError(f"layer {layer} prefilled twice in one session step")
            kind = LayerKind(int(window) if window else None, float(softcap) if softcap else None)
            self.layer_kinds[layer] = kind
            # a window that covers the prompt and every generated token excludes nothing: a full layer
            span = self.length + max(self.max_new_tokens, 1)
            self._windows[layer] = kind.window if kind.window is not None and kind.window < span else None
            return self._prefill(layer, q, k, v, scale)
        if self.phase == "decode":
            if q.shape[2] != 1:
                raise RuntimeError("decode expects one new token per row")
            if self._static is not None:
                return self._decode_static(layer, q, k, v, scale)
            return self._decode(layer, q, k, v, scale)
        raise RuntimeError("session not started: call begin() first (greedy_generate does)")

    def layer_report(self) -> dict:
        """Which layers the methods ran on in the last batch, and the layers' kinds: ``sparse_layers`` (the
        methods apply to full-attention layers only; a sliding-window layer keeps its exact windowed
        attention and its full cache), ``window_layers`` (window < prompt + generated tokens),
        ``softcap_layers``, ``layers`` (count)."""
        methods = self.prefill_method is not None or self.decode_method is not None
        return {"layers": len(self.layer_kinds),
                "sparse_layers": sorted(self.sparse_layers) if methods else [],
                "window_layers": sorted(i for i, w in self._windows.items() if w is not None),
                "window": sorted({k.window for k in self.layer_kinds.values() if k.window is not None}),
                "softcap_layers": sorted(i for i, k in self.layer_kinds.items() if k.softcap is not None)}

    def _prefill(self, layer, q, k, v, scale):
        self._num_q_heads = q.shape[1]
        kpm = self.key_padding_mask
        sel = ksel = None
        window, softcap = self._windows[layer], self.layer_kinds[layer].softcap
        sparse = window is None       # methods run on full-attention layers only (docs/methods.md)
        if sparse:
            self.sparse_layers.add(layer)
        if sparse and self.prefill_method is not None:
            sel = self.prefill_method.select(q, k, kpm, scale)
            if softcap is None:
                out = self.executor.sparse_prefill(q, k, v, sel, scale)
            else:
                out = reference.prefill_attention(q, k, v, sel, scale, softcap=softcap)
            self.stats.add_prefill(sel.paper_sparsity, sel.density_computed())
        elif window is None and softcap is None:
            out = self.executor.dense_prefill(q, k, v, kpm, scale)
        else:
            out = reference.windowed_attention(q, k, v, kpm, scale, window=window, softcap=softcap)
        if self.record is not None:
            self.record.keep(layer, q, k, v, scale, self._windows[layer], self.layer_kinds[layer], sparse)
        else:
            ksel = self._keep_prompt(layer, q, k, v, scale, sparse)
        if self.hooks:
            self._emit(AttentionEvent(layer, "prefill", q, k, v, out, scale, selection=sel, kv_selection=ksel,
                                      cache=self.caches.get(layer), sparse=sparse))
        return out

    def _keep_prompt(self, layer, q, k, v, scale, sparse):
        """The layer's prompt cache after its prefill attention: the KV-compressed cache (SnapKV / Ada-SnapKV;
        returns the selection), or the whole prompt (and Quest's page summaries of it)."""
        kpm = self.key_padding_mask
        dm = self.decode_method if sparse else None
        if dm is not None and dm.phase == PHASE_KV_COMPRESSION:
            ksel = dm.compress(q, k, kpm, scale)
            kc, vc, valid = ksel.gather(k, v, pad_side="left")
            self.caches[layer] = LayerCache.from_prefill(kc, vc, valid, self.max_new_tokens)
            self.stats.kv_sparsity += ksel.paper_sparsity.double().cpu().mean(-1)
            self.stats.kv_layers += 1
            return ksel
        G = k.shape[1]
        if kpm is None:
            valid = torch.ones(self.batch, G, self.length, dtype=torch.bool, device=k.device)
        else:
            valid = kpm.to(k.device).unsqueeze(1).expand(self.batch, G, self.length)
        self.caches[layer] = LayerCache.from_prefill(k, v, valid, self.max_new_tokens)
        if dm is not None:  # Quest: page summaries of the full prompt cache
            self.quest_states[layer] = dm.init_state(k, kpm)
        return None

    # ------------------------------------------------------------------ shared dense prefill
    def adopt(self, record: "PromptRecord") -> None:
        """Start this session's decode from a dense prefill recorded once for several sessions
        (:meth:`PromptRecord.keep`): after :meth:`begin` with the record's batch, every layer's prompt cache is
        built exactly as this session's own dense prefill would have built it (KV compression from the
        recorded window queries, Quest's page summaries, or a copy of the whole prompt)."""
        if self.prefill_method is not None:
            raise RuntimeError("a session with a prefill method computes its own prefill")
        if (self.batch, self.length) != (record.batch, record.length):
            raise RuntimeError("adopt() needs begin() with the recorded batch and length")
        dm = self.decode_method
        if dm is not None and dm.phase == PHASE_KV_COMPRESSION and int(dm.window) > record.q_tail:
            raise RuntimeError(f"{type(dm).__name__} scores with {dm.window} window queries, the record kept "
                               f"{record.q_tail}")
        for layer, (q, k, v, scale, window, kind, sparse) in record.layers.items():
            self.layer_kinds[layer] = kind
            self._windows[layer] = window
            self._num_q_heads = q.shape[1]
            if sparse:
                self.sparse_layers.add(layer)
            if dm is not None and sparse and dm.phase == PHASE_KV_COMPRESSION:
                q = record.full_queries(q)
            self._keep_prompt(layer, q, k, v, scale, sparse)

    def release(self) -> None:
        """Free the caches (and Quest states) of the last batch; statistics stay readable."""
        self.caches, self.quest_states = {}, {}
        self._static = None

    def _attend_masked(self, q, K, V, mask, scale, softcap):
        """Decode attention over ``mask`` [B, H or Hkv, Lk]: the executor, or the exact reference when the
        layer soft-caps its logits (no executor kernel has the cap)."""
        if softcap is None:
            return self.executor.decode(q, K, V, mask, scale)
        return reference.masked_attention(q, K, V, _expand_mask(mask, q.shape[1]), scale, softcap)

    def _decode(self, layer, q, k, v, scale):
        cache = self.caches[layer]
        cache.append(k, v)
        K, V, valid = cache.view()
        dm = self.decode_method if layer in self.sparse_layers else None
        window, softcap = self._windows[layer], self.layer_kinds[layer].softcap
        st = self.stats
        act = self._active.double()
        qsel = None
        if dm is not None and dm.phase == PHASE_DECODE:
            state = self.quest_states[layer]
            state.append(k)
            qsel = dm.select(state, q)
            mask = qsel.token_mask()
            out = (self.executor.quest_decode(q, K, V, qsel, scale) if softcap is None
                   else self._attend_masked(q, K, V, mask, scale, softcap))
            dens = mask.sum(-1).double() / state.seq_lens.clamp(min=1).double().view(-1, 1)
            st.decode_density += dens.mean(-1).cpu() * act
            st.decode_count += act
        else:
            mask = valid
            if window is not None:   # (uncompressed cache: slot distance = position distance)
                mask = mask & (torch.arange(K.shape[2], device=K.device) >= K.shape[2] - window)
            out = self._attend_masked(q, K, V, mask, scale, softcap)
            if dm is not None:  # KV compression: kept + appended tokens / all causal tokens
                dens = valid.sum(-1).double() / (self.seq_lens.double() + self.appended).view(-1, 1)
                st.decode_density += dens.mean(-1).cpu() * act
                st.decode_count += act
        if self.hooks:
            self._emit(AttentionEvent(layer, "decode", q, k, v, out, scale, selection=qsel, cache=cache, mask=mask,
                                      step=self.step, active=self._active, sparse=layer in self.sparse_layers))
        return out

    # ------------------------------------------------------------------ static decode (fast decode path)
    @property
    def static_active(self) -> bool:
        return self._static is not None

    def start_static_decode(self, steps: int) -> None:
        """After prefill: freeze the decode step for at most ``steps`` forwards (see the module docstring).
        May synchronise (it runs once, not per step). Not available with hooks (events need host data).
        Layers may sit on different devices (a model spread with ``device_map``): each device gets its own
        counters."""
        if self.hooks:
            raise RuntimeError("static decode does not emit hook events; use the regular decode path")
        if not self.caches:
            raise RuntimeError("start_static_decode needs a prefilled session")
        steps = max(int(steps), 0)
        layers = sorted(self.caches)
        B = self.batch
        dm = self.decode_method
        quest = dm is not None and dm.phase == PHASE_DECODE and bool(self.quest_states)
        by_dev: dict = {}
        for layer in layers:
            by_dev.setdefault(self.caches[layer].keys.device, []).append(layer)
        seq = self.seq_lens.to("cpu", torch.long)
        st = _StaticDecode(steps=steps, counters={}, layers={}, quest=quest)
        if quest:
            p = st.page_size = int(dm.page_size)
            qstates = [self.quest_states[layer] for layer in layers if layer in self.quest_states]
            P0 = max(qs.page_min.shape[2] for qs in qstates)
            st.num_pages = max(-(-(self.length + max(steps, 1)) // p), P0)
            st.n_hist = (qstates[0].token_budget.to("cpu", torch.long) // p).clamp(min=0)
            n_eff = st.n_hist.clamp(max=st.num_pages - 1)
            st.kmax = int(n_eff.max()) if B else 0
            uniform = bool((n_eff == st.kmax).all())
            try:
                from ..triton.methods import QuestGPU
                st.gpu_select = isinstance(dm, QuestGPU)
            except ImportError:  # pragma: no cover
                st.gpu_select = False
        for dev, dev_layers in by_dev.items():
            bases = [self.caches[layer].length for layer in dev_layers]
            slots = torch.tensor(bases, dtype=torch.long, device=dev)
            dc = _Counters(slots=slots, ends=(slots + 1).to(torch.int32).view(-1, 1).repeat(1, B).contiguous(),
                           qpos=seq.to(dev, copy=True), qlen=(seq + 1).to(dev),      # (copies: advanced in place)
                           qpage=torch.zeros(B, dtype=torch.long, device=dev), pad_offsets=self.pad_offsets.to(dev))
            if quest:
                torch.floor_divide(dc.qpos, st.page_size, out=dc.qpage)
                dc.counts = torch.full((B, self._num_q_heads), min(st.kmax + 1, st.num_pages), dtype=torch.long,
                                       device=dev)
                dc.n_eff = None if uniform else n_eff.to(dev)
            st.counters[dev] = dc
            for i, layer in enumerate(dev_layers):
                c = self.caches[layer]
                base = c.length
                c.ensure_capacity(base + max(steps, 1))
                c.keys[:, :, base:].zero_()
                c.values[:, :, base:].zero_()
                kept = c.valid[:, :, :base].sum(-1)
                start = (base - kept).to(torch.int32).contiguous()
                sl = _StaticLayer(dc, i, base, start, kept.to("cpu", torch.float64))
                if quest and layer in self.quest_states:   # page summaries of their final size
                    qs = self.quest_states[layer]
                    Bq, G, P, D = qs.page_min.shape
                    # the GPU bounds kernel reads 16-bit summaries with tensor cores (fp32 ones on CUDA cores
                    # spill registers: 86 vs 11 us per layer at 128K, bench/profile_decode_step.py); the min / max
                    # of 16-bit keys are 16-bit values, so the cast loses nothing
                    sdt = c.keys.dtype if st.gpu_select and c.keys.dtype in (torch.bfloat16, torch.float16) \
                        else qs.page_min.dtype
                    pmin = torch.full((Bq, G, st.num_pages, D), float("inf"), dtype=sdt, device=dev)
                    pmax = torch.full((Bq, G, st.num_pages, D), float("-inf"), dtype=sdt, device=dev)
                    pmin[:, :, :P] = qs.page_min
                    pmax[:, :, :P] = qs.page_max
                    qs.page_min, qs.page_max = sl.pmin, sl.pmax = pmin, pmax
                st.layers[layer] = sl
        self._static = st
        self.phase = "decode"

    def static_advance(self) -> None:
        """Advance the device counters by one token (in place: part of the captured step)."""
        st = self._static
        for dc in st.counters.values():
            dc.slots.add_(1)
            dc.ends.add_(1)
            dc.qpos.add_(1)
            dc.qlen.add_(1)
            if st.quest:
                torch.floor_divide(dc.qpos, st.page_size, out=dc.qpage)

    def finish_static_decode(self, forwards: int, active_steps: list[int]) -> None:
        """End of a static decode of ``forwards`` steps; ``active_steps[b]``: steps row b was still generating.
        Brings the caches, Quest states and counters up to date and adds the decode statistics."""
        st = self._static
        if st is None:
            return
        forwards = int(forwards)
        self._static = None
        for layer, sl in st.layers.items():
            c = self.caches[layer]
            c.valid[:, :, sl.base:sl.base + forwards] = True
            c.length = sl.base + forwards
        for qs in self.quest_states.values():
            qs.seq_lens = qs.seq_lens + forwards
            qs.length += forwards
            qs.page_min, qs.page_max = qs.page_min.float(), qs.page_max.float()   # QuestState keeps fp32
        self.step += forwards
        self.appended += forwards
        n = torch.tensor(active_steps, dtype=torch.long).view(-1)
        stats = self.stats
        stats.decode_steps += n
        dm = self.decode_method
        S = int(n.max()) if n.numel() else 0
        if dm is None or S == 0:
            return
        n_layers = sum(layer in self.sparse_layers for layer in st.layers)
        s = torch.arange(1, S + 1, dtype=torch.float64).view(1, -1)          # appended tokens at step s
        act = (s <= n.view(-1, 1).double()).double()                           # [B, S]
        seq = self.seq_lens.to("cpu", torch.float64).view(-1, 1)
        if st.quest:
            p = st.page_size
            qlen = seq + s
            cur = torch.div(qlen - 1, p, rounding_mode="floor")
            nsel = torch.minimum(st.n_hist.double().view(-1, 1), cur)
            dens = (nsel * p + qlen - cur * p) / qlen
            stats.decode_density += n_layers * (dens * act).sum(1)
        else:
            for layer, sl in st.layers.items():
                if layer not in self.sparse_layers:
                    continue
                dens = ((sl.kept.unsqueeze(-1) + s.unsqueeze(0)) / (seq.unsqueeze(1) + s.unsqueeze(0))).mean(1)
                stats.decode_density += (dens * act).sum(1)
        stats.decode_count += n_layers * n.double()

    def _decode_static(self, layer, q, k, v, scale):
        st = self._static
        sl = st.layers[layer]
        dc = sl.dc
        cache = self.caches[layer]
        K, V = cache.keys, cache.values
        slot = dc.slots[sl.index:sl.index + 1]
        K.index_copy_(2, slot, k)
        V.index_copy_(2, slot, v)
        window, softcap = self._windows[layer], self.layer_kinds[layer].softcap
        if not (st.quest and layer in self.quest_states):
            start, end = sl.start, dc.ends[sl.index]
            if window is not None:   # (device arithmetic: the window's first slot follows the end)
                start = torch.maximum(start, (end - window).view(-1, 1).to(start.dtype))
            if softcap is None:
                return self.executor.span_decode(q, K, V, start, end, scale)
            return self._attend_masked(q, K, V, span_mask(start, end, K.shape[2]), scale, softcap)
        # Quest: page summaries (static size), candidate bounds, fixed-size top-k, attention over the pages
        dm = self.decode_method
        B, G, _, D = k.shape
        idx = dc.qpage.view(B, 1, 1, 1).expand(B, G, 1, D)
        kf = k.to(sl.pmin.dtype)
        sl.pmin.scatter_reduce_(2, idx, kf, reduce="amin")
        sl.pmax.scatter_reduce_(2, idx, kf, reduce="amax")
        shared = bool(dm.share_pages)
        groups = q.shape[1] // G if shared else 1
        if st.gpu_select:
            from ..triton.quest import page_bounds

            cand = page_bounds(sl.pmin, sl.pmax, q, shared, limit=dc.qpage, group_rows=shared)
        else:
            bounds = dm.page_bounds(SimpleNamespace(page_min=sl.pmin, page_max=sl.pmax), q)
            cand = limit_candidates(bounds[:, ::groups] if shared else bounds, dc.qpage)
        pages = static_quest_pages(cand, st.kmax, dc.n_eff, groups, fused=st.gpu_select)
        sel = StaticQuestSelection(page_size=st.page_size, pages=pages, counts=dc.counts, seq_lens=dc.qlen,
                                   pad_offsets=dc.pad_offsets, length=K.shape[2], paper_sparsity=None,
                                   shared=shared, num_pages=st.num_pages)
        if softcap is not None:
            return self._attend_masked(q, K, V, sel.token_mask(), scale, softcap)
        return self.executor.quest_decode(q, K, V, sel, scale)

    def _emit(self, event: AttentionEvent) -> None:
        for h in self.hooks:
            h(event)

    # ------------------------------------------------------------------ results
    def row_stats(self) -> list[dict]:
        """Per batch row: the paper's sparsity and the uniform density of each phase.

        prefill: averaged over layers and heads (dense prefill: 0 / 1). decode: SnapKV / Ada-SnapKV paper
        sparsity = 1 - kept/prompt at compression (layers, heads); Quest paper sparsity = 1 - T/prompt; the
        uniform density of a decode-side method is averaged over layers, heads and the row's decode steps
        (None when the row had no decode step); dense decode: 0 / 1."""
        st = self.stats
        out = []
        for b in range(self.batch):
            row = {"prefill_sparsity": 0.0, "prefill_density": 1.0, "decode_sparsity": 0.0, "decode_density": 1.0,
                   "decode_steps": int(st.decode_steps[b])}
            if st.prefill_layers:
                row["prefill_sparsity"] = float(st.prefill_sparsity[b] / st.prefill_layers)
                row["prefill_density"] = float(st.prefill_density[b] / st.prefill_layers)
            dm = self.decode_method
            if dm is not None:
                cnt = float(st.decode_count[b])
                row["decode_density"] = float(st.decode_density[b] / cnt) if cnt else None
                if dm.phase == PHASE_KV_COMPRESSION:
                    row["decode_sparsity"] = float(st.kv_sparsity[b] / max(st.kv_layers, 1))
                else:
                    state = next(iter(self.quest_states.values()), None)
                    row["decode_sparsity"] = float(state.paper_sparsity[b]) if state is not None else None
            out.append(row)
        return out


__all__ = ["SparseSession", "PromptRecord", "LayerCache", "LayerKind", "AttentionEvent", "StaticQuestSelection", "active_session",
           "limit_candidates", "static_quest_pages"]
