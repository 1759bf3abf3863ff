"""Greedy generation with our own loop (explicit positions), shared by dense and every sparse method.

``generate()`` of transformers cannot continue from an edited (compressed) KV cache, so all methods use this
loop: one prefill forward over the (left-padded) prompts, then one forward per new token.

Two cache back-ends, one loop:

* ``session=None``: plain transformers attention with a ``DynamicCache`` and a 2-D padding mask (any
  ``attn_implementation``);
* ``session=SparseSession(...)``: the model must use our attention implementation
  (``sparse_kernels.hf.attention``); it runs with ``use_cache=False`` and no mask: the session owns the KV
  cache, the padding information and the methods. Positions always continue from each row's real prompt
  length, whatever the cache holds (KV compression never shifts RoPE positions).

**Fast decode** (``fast_decode``, session only): after the prefill forward the session freezes the decode
step (``SparseSession.start_static_decode``: static KV capacity, device-side counters, graph-safe Quest
selection) and one decode step becomes a function of static buffers only (:class:`StaticDecoder`: input
ids, positions, the token log and the EOS flags are device tensors updated in place). On CUDA that function
is captured once in a ``torch.cuda.CUDAGraph`` after ``warmup`` eager steps and replayed per token (one
launch per token instead of ~1,000); on CPU, or when capture fails, the same function runs eagerly (the
reason is reported in ``extras["fast_decode"]``). Nothing in the step reads the device from the host; EOS is
checked every ``eos_check_every`` steps (one sync), and the greedy tokens are those of the regular loop.
"""

from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from dataclasses import dataclass, field

import torch

FAST_DECODE_MODES = ("auto", "graph", "eager", "off")
# stop reason of a row whose logits held a NaN or an infinity while it was generating: its output means nothing
# (workflow_scripts/infer.py marks the sample failed; it is never scored)
NONFINITE = "nonfinite"


@dataclass
class GenerationOutput:
    tokens: list[list[int]]            # new tokens per row, EOS excluded
    stop: list[str]                    # "eos", "length" or NONFINITE per row
    prefill_s: float                   # wall time of the prefill forward (whole batch)
    decode_s: float                    # wall time of all decode steps (whole batch)
    decode_steps: int                  # number of decode forwards
    extras: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def left_pad(batch: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x):] = 1
    return ids.to(device), mask.to(device)


def resolve_fast_decode(fast_decode, session, device) -> str:
    """"graph", "eager" or "off" for a ``fast_decode`` option (None = the session's ``fast_decode``,
    default "auto"): "auto" = "graph" on CUDA, "off" on CPU; True = "graph" on CUDA, "eager" elsewhere;
    False = "off". Always "off" without a session, and with session hooks (they need host data)."""
    if session is None:
        return "off"
    if fast_decode is None:
        fast_decode = getattr(session, "fast_decode", "auto")
    if fast_decode is True:
        fast_decode = "graph"
    elif fast_decode is False or fast_decode is None:
        fast_decode = "off"
    if fast_decode not in FAST_DECODE_MODES:
        raise ValueError(f"fast_decode must be a bool or one of {FAST_DECODE_MODES}, got {fast_decode!r}")
    cuda = torch.device(device).type == "cuda"
    if fast_decode == "auto":
        fast_decode = "graph" if cuda else "off"
    if fast_decode == "graph" and not cuda:
        fast_decode = "eager"
    if session.hooks:
        fast_decode = "off"
    return fast_decode


@torch.inference_mode()
def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int], pad_id: int,
                    cache=None, session=None, return_logits: bool = False, fast_decode=None,
                    eos_check_every: int = 1, graph_warmup: int = 2, min_graph_steps: int = 4,
                    record=None) -> GenerationOutput:
    """Greedy decoding of a batch of token-id prompts (left padding) until EOS or ``max_new_tokens``.

    ``session``: a :class:`~sparse_kernels.hf.session.SparseSession` (sparse methods, or dense through our
    attention); its per-row realized sparsity is returned in ``extras["stats"]``. ``return_logits``: keep
    the last-position logits of every forward in ``extras["logits"]`` (list of [B, V] tensors, for tests).

    ``fast_decode`` (session only; None = ``session.fast_decode``, whose default "auto" is on for CUDA and off
    on CPU): "graph" / True = static-cache decode step captured in a CUDA graph (eager on CPU or when the
    capture fails), "eager" = the same static step without a graph, "off" / False = the regular loop.
    ``eos_check_every``: steps between EOS checks of the fast path (each is one host sync; extra steps after
    every row stopped are discarded, and counted in ``decode_steps``); ``graph_warmup``: eager steps before the
    capture; ``min_graph_steps``: fewer remaining steps than this are not worth a capture.
    ``extras["fast_decode"]`` reports the mode used, the fallback reason, and the steady-state time per step.

    ``record``: a :class:`~sparse_kernels.hf.session.PromptRecord` of these prompts (:func:`shared_prefill`): the
    session (without a prefill method) starts from that dense prefill instead of running its own; the tokens are
    those of its own prefill, ``prefill_s`` is the shared prefill's time."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    batch = ids.shape[0]
    padded = bool((mask == 0).any())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits_log: list[torch.Tensor] = []
    if session is not None:
        from .attention import is_enabled

        if not is_enabled(model):
            raise ValueError("the model does not use the sparse-frontier attention: load it with "
                             "attn_implementation=sparse_kernels.hf.ATTN_IMPLEMENTATION or call "
                             "sparse_kernels.hf.enable(model)")
        session.begin(batch, ids.shape[1], mask.bool() if padded else None, max_new_tokens, device)
        ctx = session.activate()
        if record is not None and (record.batch, record.length) != tuple(ids.shape):
            raise ValueError(f"the prompt record holds a batch of {record.batch} x {record.length} tokens, these "
                             f"prompts are {tuple(ids.shape)}")
    elif record is not None:
        raise ValueError("a shared prefill (record) needs a session")
    else:
        cache = DynamicCache(config=model.config) if cache is None else cache
        ctx = contextlib.nullcontext()

    def forward(input_ids, pos, attn_mask, **kw):
        if session is not None:
            return model(input_ids=input_ids, position_ids=pos, use_cache=False, **kw)
        return model(input_ids=input_ids, attention_mask=attn_mask if padded else None, position_ids=pos,
                     past_key_values=cache, use_cache=True, **kw)

    mode = resolve_fast_decode(fast_decode, session, device)
    note = None
    if mode == "graph" and len({p.device for p in model.parameters()}) > 1:
        mode, note = "eager", "model spread over several devices: no CUDA graph (eager static decode)"
    log = logits_log if return_logits else None
    with ctx:
        if record is None:
            first = _prefill(forward, ids, positions, mask, device, log)
        else:
            session.adopt(record)
            if log is not None and record.logits is not None:
                log.append(record.logits)
            first = (record.first, record.bad, record.prefill_s)
        if mode != "off":
            return _fast_loop(model, first, positions, batch, max_new_tokens, eos_ids, device, session, log, mode,
                              max(1, int(eos_check_every)), max(1, int(graph_warmup)), max(1, int(min_graph_steps)),
                              note)
        return _loop(forward, first, mask, positions, batch, padded, max_new_tokens, eos_ids, device, session, log)


@torch.inference_mode()
def shared_prefill(model, prompts: list[list[int]], pad_id: int, max_new_tokens: int, session, q_tail: int = 0,
                   return_logits: bool = False):
    """One dense prefill of a batch of prompts, recorded for several sessions' decode (``greedy_generate(...,
    record=...)``): the decode-side cells of one (task, length, shard) share it (workflow_scripts/infer.py).
    ``session``: a :class:`SparseSession` without methods (its executor computes the prefill); ``q_tail``: the
    prompt queries to keep per layer (the largest SnapKV / Ada-SnapKV window of the sessions); ``max_new_tokens``:
    that of the sessions (it decides whether a sliding window covers everything)."""
    from .session import PromptRecord

    if session.prefill_method is not None or session.decode_method is not None:
        raise ValueError("the shared prefill is dense: its session has no methods")
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    padded = bool((mask == 0).any())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    session.begin(ids.shape[0], ids.shape[1], mask.bool() if padded else None, max_new_tokens, device)
    record = session.record = PromptRecord(q_tail)
    log = [] if return_logits else None
    try:
        with session.activate():
            record.first, record.bad, record.prefill_s = _prefill(
                lambda i, p, _m, **kw: model(input_ids=i, position_ids=p, use_cache=False, **kw),
                ids, positions, mask, device, log)
    finally:
        session.record = None
        session.release()
    record.key_padding_mask = session.key_padding_mask
    record.logits = log[0] if log else None
    return record


def nonfinite_rows(logits: torch.Tensor) -> torch.Tensor:
    """[B] True where a row of [B, V] logits holds a NaN or an infinity (its argmax means nothing)."""
    return ~torch.isfinite(logits).all(-1)


def _prefill(forward, ids, positions, mask, device, logits_log) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The prompt forward of both loops: (greedy first token per row, rows with non-finite logits, wall s)."""
    _sync(device)
    t0 = time.perf_counter()
    out = forward(ids, positions, mask, logits_to_keep=1)
    if logits_log is not None:
        logits_log.append(out.logits[:, -1].float().cpu())
    nxt = out.logits[:, -1].argmax(-1)
    bad = nonfinite_rows(out.logits[:, -1])
    del out
    _sync(device)
    return nxt, bad, time.perf_counter() - t0


def _loop(forward, first, mask, positions, batch, padded, max_new_tokens, eos_ids, device, session, logits_log):
    nxt, bad, prefill_s = first

    tokens: list[list[int]] = [[] for _ in range(batch)]
    stop = ["length"] * batch
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    next_pos = positions[:, -1] + 1
    steps = 0
    t1 = time.perf_counter()
    for step in range(max_new_tokens):
        nxt_list, bad_list = nxt.tolist(), bad.tolist()
        for i, t in enumerate(nxt_list):
            if done[i]:
                continue
            if bad_list[i]:                 # NaN / inf logits: the row stops, its sample fails (never scored)
                done[i] = True
                stop[i] = NONFINITE
            elif t in eos_ids:
                done[i] = True
                stop[i] = "eos"
            else:
                tokens[i].append(t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        if padded and session is None:
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        if session is not None:
            session.begin_decode_step(~done)
        out = forward(nxt[:, None], next_pos[:, None], mask)
        if logits_log is not None:
            logits_log.append(out.logits[:, -1].float().cpu())
        nxt = out.logits[:, -1].argmax(-1)
        bad = nonfinite_rows(out.logits[:, -1])
        next_pos = next_pos + 1
        steps += 1
    _sync(device)
    decode_s = time.perf_counter() - t1
    extras = {}
    if session is not None:
        extras["stats"] = session.row_stats()
    if logits_log is not None:
        extras["logits"] = logits_log
    return GenerationOutput(tokens, stop, prefill_s, decode_s, steps, extras)


# ---------------------------------------------------------------------------------------------- fast decode
def _mask_mapping_supported(model) -> bool:
    """Whether the base model's forward accepts a prepared ``{layer type: mask}`` dict as attention_mask
    (transformers >= 4.53 layout: "It may already have been prepared by e.g. `generate`"). Passing
    ``{"full_attention": None}`` skips mask creation, whose packed-sequence check syncs with the host."""
    base = getattr(model, "base_model", None) or getattr(model, "model", None)
    try:
        src = inspect.getsource(inspect.unwrap(type(base).forward))
    except (TypeError, OSError, AttributeError):
        return False
    return "causal_mask_mapping := attention_mask, dict" in src.replace("(", "").replace(")", "")


class StaticDecoder:
    """One decode step as a function of static device buffers (the function a CUDA graph captures).

    Buffers: ``ids`` / ``pos`` [B, 1] (input token and position), ``tokens`` [B, max_new_tokens] (column 0 is
    the prefill's token; step s writes column s), ``col`` [1] (next column), ``done`` [B] (EOS seen) and, when
    logits are kept, ``logits`` [B, V] (fp32). :meth:`step` runs the model on ``ids`` / ``pos`` with the
    session in static mode, writes the argmax everywhere it is needed and advances every counter in place:
    calling it again (or replaying its graph) is the next step."""

    def __init__(self, model, session, first: torch.Tensor, next_pos: torch.Tensor, max_new_tokens: int,
                 eos_ids, keep_logits: bool):
        dev = first.device
        B = first.shape[0]
        self.model, self.session = model, session
        self.tokens = torch.zeros(B, max(int(max_new_tokens), 1), dtype=torch.long, device=dev)
        self.tokens[:, 0] = first
        self.col = torch.ones(1, dtype=torch.long, device=dev)
        self.ids = first.view(B, 1).clone()
        self.pos = next_pos.view(B, 1).to(torch.long).clone()
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=dev) if eos_ids else None
        self.done = self._is_eos(first) if self.eos is not None else torch.zeros(B, dtype=torch.bool, device=dev)
        self.bad = torch.zeros(B, dtype=torch.bool, device=dev)   # non-finite logits while the row was running
        self.logits = None
        self.keep_logits = keep_logits
        types = getattr(model.config, "layer_types", None) or ["full_attention"]
        self.mask_arg = {t: None for t in set(types)} if _mask_mapping_supported(model) else None

    def _is_eos(self, tok: torch.Tensor) -> torch.Tensor:
        # (a broadcast compare: torch.isin may sort / unique, which reads sizes on the host)
        return (tok.view(-1, 1) == self.eos.view(1, -1)).any(-1)

    def step(self) -> None:
        out = self.model(input_ids=self.ids, position_ids=self.pos, attention_mask=self.mask_arg, use_cache=False)
        lg = out.logits[:, -1]
        nxt = lg.argmax(-1).to(self.tokens.device)   # (no-op unless the model is spread over devices)
        if self.keep_logits:
            if self.logits is None:
                self.logits = torch.zeros(lg.shape, dtype=torch.float32, device=lg.device)
            self.logits.copy_(lg)
        self.bad.logical_or_(nonfinite_rows(lg).to(self.bad.device) & ~self.done)
        self.tokens.index_copy_(1, self.col, nxt.view(-1, 1))
        self.col.add_(1)
        self.ids.copy_(nxt.view(-1, 1))
        self.pos.add_(1)
        if self.eos is not None:
            self.done.logical_or_(self._is_eos(nxt))
        self.session.static_advance()


def _sync_warnings(fn):
    """Run ``fn`` with torch's CUDA sync debug mode on "warn"; return the sync warnings it raised."""
    if not hasattr(torch.cuda, "set_sync_debug_mode"):
        fn()
        return []
    prev = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(prev)
    return [str(w.message)[:200] for w in rec if "synchroniz" in str(w.message).lower()]


def _fast_loop(model, first, positions, batch, max_new_tokens, eos_ids, device, session, logits_log, mode, eos_every,
               warmup, min_graph_steps, note=None):
    cuda = device.type == "cuda"
    nxt, bad, prefill_s = first

    info = {"mode": mode, "fallback": note, "warmup_steps": 0, "graph_steps": 0, "capture_s": None,
            "steady_steps": 0, "steady_ms_per_step": None}
    t1 = time.perf_counter()
    max_fwd = max(int(max_new_tokens) - 1, 0)
    session.start_static_decode(max_fwd)
    dec = StaticDecoder(model, session, nxt, positions[:, -1] + 1, max_new_tokens, eos_ids, logits_log is not None)
    dec.bad.logical_or_(bad)
    n_fwd = 0
    stop_early = dec.eos is not None and bool(dec.done.all())   # one sync after prefill
    graph = None
    use_graph = mode == "graph" and cuda
    stream = torch.cuda.Stream(device) if use_graph else None
    ev0 = ev1 = None
    steady0 = None
    steady_from = warmup if max_fwd > warmup else 0
    try:
        while not stop_early and n_fwd < max_fwd:
            if use_graph and graph is None and n_fwd >= warmup and max_fwd - n_fwd >= min_graph_steps:
                tc = time.perf_counter()
                try:
                    torch.cuda.synchronize(device)
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, stream=stream):
                        dec.step()
                    torch.cuda.synchronize(device)
                    graph = g
                    info["capture_s"] = round(time.perf_counter() - tc, 4)
                except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager steps
                    info["fallback"] = f"capture failed: {type(exc).__name__}: {exc}"[:500]
                    use_graph = False
                    graph = None
                    with contextlib.suppress(Exception):
                        torch.cuda.synchronize(device)
            if n_fwd == steady_from:
                if cuda:
                    ev0 = torch.cuda.Event(enable_timing=True)
                    ev0.record()
                else:
                    steady0 = time.perf_counter()
            if graph is not None:
                graph.replay()
                info["graph_steps"] += 1
            elif use_graph:   # warm-up on the capture stream (compiles kernels, creates handles there)
                stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(stream):
                    if n_fwd == warmup - 1:
                        info["sync_warnings"] = _sync_warnings(dec.step)
                    else:
                        dec.step()
                torch.cuda.current_stream(device).wait_stream(stream)
                info["warmup_steps"] += 1
            else:
                dec.step()
            n_fwd += 1
            if logits_log is not None:
                logits_log.append(dec.logits.detach().to("cpu", torch.float32, copy=True))
            if dec.eos is not None and n_fwd % eos_every == 0 and bool(dec.done.all()):
                break
        if use_graph and graph is None and info["fallback"] is None and n_fwd:
            info["fallback"] = "too few steps to capture a graph"
        if ev0 is not None:
            ev1 = torch.cuda.Event(enable_timing=True)
            ev1.record()
        _sync(device)
        decode_s = time.perf_counter() - t1
        info["steady_steps"] = max(n_fwd - steady_from, 0)
        if info["steady_steps"]:
            el = ev0.elapsed_time(ev1) if ev0 is not None else 1e3 * (time.perf_counter() - steady0)
            info["steady_ms_per_step"] = el / info["steady_steps"]
        toks = dec.tokens[:, :min(1 + n_fwd, max(int(max_new_tokens), 0))].cpu().tolist()
        bad_rows = dec.bad.cpu().tolist()
    finally:
        del graph
    tokens: list[list[int]] = []
    stop, active = [], []
    for row, row_bad in zip(toks, bad_rows):
        cut = next((i for i, t in enumerate(row) if t in eos_ids), None)
        tokens.append(row if cut is None else row[:cut])
        stop.append(NONFINITE if row_bad else "length" if cut is None else "eos")
        active.append(n_fwd if cut is None else min(cut, n_fwd))
    session.finish_static_decode(n_fwd, active)
    extras = {"stats": session.row_stats(), "fast_decode": info}
    if logits_log is not None:
        extras["logits"] = logits_log
    return GenerationOutput(tokens, stop, prefill_s, decode_s, n_fwd, extras)
