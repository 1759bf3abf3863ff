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
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch


@dataclass
class GenerationOutput:
    tokens: list[list[int]]            # new tokens per row, EOS excluded
    stop: list[str]                    # "eos" or "length" per row
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


@torch.inference_mode()
def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int], pad_id: int,
                    cache=None, session=None, return_logits: bool = False) -> GenerationOutput:
    """Greedy decoding of a batch of token-id prompts (left padding) until EOS or ``max_new_tokens``.

    ``session``: a :class:`~sparse_kernels.hf.session.SparseSession` (sparse methods, or dense through our
    attention); its per-row realized sparsity is returned in ``extras["stats"]``. ``return_logits``: keep
    the last-position logits of every forward in ``extras["logits"]`` (list of [B, V] tensors, for tests)."""
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
    else:
        cache = DynamicCache(config=model.config) if cache is None else cache
        ctx = contextlib.nullcontext()

    def forward(input_ids, pos, attn_mask, **kw):
        if session is not None:
            return model(input_ids=input_ids, position_ids=pos, use_cache=False, **kw)
        return model(input_ids=input_ids, attention_mask=attn_mask if padded else None, position_ids=pos,
                     past_key_values=cache, use_cache=True, **kw)

    with ctx:
        return _loop(forward, ids, mask, positions, batch, padded, max_new_tokens, eos_ids, device, session,
                     logits_log if return_logits else None)


def _loop(forward, ids, mask, positions, batch, padded, max_new_tokens, eos_ids, device, session, logits_log):
    _sync(device)
    t0 = time.perf_counter()
    out = forward(ids, positions, mask, logits_to_keep=1)
    if logits_log is not None:
        logits_log.append(out.logits[:, -1].float().cpu())
    nxt = out.logits[:, -1].argmax(-1)
    _sync(device)
    prefill_s = time.perf_counter() - t0

    tokens: list[list[int]] = [[] for _ in range(batch)]
    stop = ["length"] * batch
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    next_pos = positions[:, -1] + 1
    steps = 0
    t1 = time.perf_counter()
    for step in range(max_new_tokens):
        nxt_list = nxt.tolist()
        for i, t in enumerate(nxt_list):
            if done[i]:
                continue
            if t in eos_ids:
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
