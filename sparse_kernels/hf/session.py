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
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..methods._common import PHASE_DECODE, PHASE_KV_COMPRESSION, PHASE_PREFILL
from ..selection import padding_info
from .executors import Executor, make_executor

_ACTIVE: contextvars.ContextVar["SparseSession | None"] = contextvars.ContextVar("sparse_session", default=None)


def active_session() -> "SparseSession | None":
    return _ACTIVE.get()


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
        cap = L + max(int(extra), 1)
        keys = k.new_empty(B, G, cap, D)
        values = v.new_empty(B, G, cap, v.shape[-1])
        mask = torch.zeros(B, G, cap, dtype=torch.bool, device=k.device)
        keys[:, :, :L] = k
        values[:, :, :L] = v
        mask[:, :, :L] = valid
        return cls(keys, values, mask, L)

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


@dataclass
class _Stats:
    """Per-row sums (float64 on CPU) of the realized sparsity measures."""

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


class SparseSession:
    """Per-run context: methods, executor, per-layer caches, phase and statistics (see module docstring).

    ``prefill``: a method with ``phase == "prefill"`` (``select(q, k, key_padding_mask, scale)``) or None;
    ``decode``: a method with ``phase`` ``"kv_compression"`` (``compress``) or ``"decode"`` (Quest:
    ``init_state`` / ``select``) or None; ``executor``: an :class:`Executor` or a name (``"auto"``: reference on
    CPU, chunked torch on CUDA). ``hooks``: callables receiving an :class:`AttentionEvent` per layer call."""

    def __init__(self, prefill=None, decode=None, executor: Executor | str | None = "auto",
                 hooks: list[Callable[[AttentionEvent], None]] | None = None):
        if prefill is not None and getattr(prefill, "phase", None) != PHASE_PREFILL:
            raise ValueError(f"{type(prefill).__name__} is not a prefill method")
        if decode is not None and getattr(decode, "phase", None) not in (PHASE_KV_COMPRESSION, PHASE_DECODE):
            raise ValueError(f"{type(decode).__name__} is not a KV-compression or decode method")
        self.prefill_method = prefill
        self.decode_method = decode
        self._executor_spec = executor
        self.executor: Executor | None = executor if isinstance(executor, Executor) else None
        self.hooks = list(hooks or [])
        self.phase: str | None = None
        self.caches: dict[int, LayerCache] = {}
        self.quest_states: dict[int, Any] = {}
        self.step = 0

    # ------------------------------------------------------------------ lifecycle (driven by the loop)
    def begin(self, batch: int, length: int, key_padding_mask: torch.Tensor | None, max_new_tokens: int,
              device) -> None:
        """Reset for a new batch of prompts of padded ``length`` (left padding given by the mask)."""
        if self.executor is None:
            self.executor = make_executor(self._executor_spec, device)
        self.key_padding_mask = None if key_padding_mask is None else key_padding_mask.to(torch.bool)
        self.pad_offsets, self.seq_lens = padding_info(self.key_padding_mask, batch, length, device=device)
        self.batch, self.length = batch, length
        self.max_new_tokens = int(max_new_tokens)
        self.caches, self.quest_states = {}, {}
        self.stats = _Stats(batch)
        self.phase = "prefill"
        self.step = 0
        self.appended = 0
        self._active = torch.ones(batch, dtype=torch.bool)

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
    def attend(self, module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Attention output [B, H, Lq, D] of one layer call (q [B, H, Lq, D]; k, v the new tokens' [B, Hkv, Lq, D])."""
        layer = int(module.layer_idx)
        if self.phase == "prefill":
            if q.shape[2] != k.shape[2] or q.shape[2] != self.length:
                raise RuntimeError("prefill expects the whole prompt in one forward (no HF cache)")
            if layer in self.caches:
                raise RuntimeError(f"layer {layer} prefilled twice in one session step")
            return self._prefill(layer, q, k, v, scale)
        if self.phase == "decode":
            if q.shape[2] != 1:
                raise RuntimeError("decode expects one new token per row")
            return self._decode(layer, q, k, v, scale)
        raise RuntimeError("session not started: call begin() first (greedy_generate does)")

    def _prefill(self, layer, q, k, v, scale):
        kpm = self.key_padding_mask
        sel = ksel = None
        if self.prefill_method is not None:
            sel = self.prefill_method.select(q, k, kpm, scale)
            out = self.executor.sparse_prefill(q, k, v, sel, scale)
            st = self.stats
            st.prefill_sparsity += sel.paper_sparsity.double().cpu().mean(-1)
            st.prefill_density += sel.density_computed().double().cpu().mean(-1)
            st.prefill_layers += 1
        else:
            out = self.executor.dense_prefill(q, k, v, kpm, scale)
        dm = self.decode_method
        if dm is not None and dm.phase == PHASE_KV_COMPRESSION:
            ksel = dm.compress(q, k, kpm, scale)
            kc, vc, valid = ksel.gather(k, v, pad_side="left")
            self.caches[layer] = LayerCache.from_prefill(kc, vc, valid, self.max_new_tokens)
            self.stats.kv_sparsity += ksel.paper_sparsity.double().cpu().mean(-1)
            self.stats.kv_layers += 1
        else:
            G = k.shape[1]
            if kpm is None:
                valid = torch.ones(self.batch, G, self.length, dtype=torch.bool, device=k.device)
            else:
                valid = kpm.to(k.device).unsqueeze(1).expand(self.batch, G, self.length)
            self.caches[layer] = LayerCache.from_prefill(k, v, valid, self.max_new_tokens)
            if dm is not None:  # Quest: page summaries of the full prompt cache
                self.quest_states[layer] = dm.init_state(k, kpm)
        if self.hooks:
            self._emit(AttentionEvent(layer, "prefill", q, k, v, out, scale, selection=sel, kv_selection=ksel,
                                      cache=self.caches[layer]))
        return out

    def _decode(self, layer, q, k, v, scale):
        cache = self.caches[layer]
        cache.append(k, v)
        K, V, valid = cache.view()
        dm = self.decode_method
        st = self.stats
        act = self._active.double()
        qsel = None
        if dm is not None and dm.phase == PHASE_DECODE:
            state = self.quest_states[layer]
            state.append(k)
            qsel = dm.select(state, q)
            out = self.executor.quest_decode(q, K, V, qsel, scale)
            mask = qsel.token_mask()
            dens = mask.sum(-1).double() / state.seq_lens.clamp(min=1).double().view(-1, 1)
            st.decode_density += dens.mean(-1).cpu() * act
            st.decode_count += act
        else:
            mask = valid
            out = self.executor.decode(q, K, V, mask, scale)
            if dm is not None:  # KV compression: kept + appended tokens / all causal tokens
                dens = valid.sum(-1).double() / (self.seq_lens.double() + self.appended).view(-1, 1)
                st.decode_density += dens.mean(-1).cpu() * act
                st.decode_count += act
        if self.hooks:
            self._emit(AttentionEvent(layer, "decode", q, k, v, out, scale, selection=qsel, cache=cache, mask=mask,
                                      step=self.step))
        return out

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


__all__ = ["SparseSession", "LayerCache", "AttentionEvent", "active_session"]
