"""Greedy generation with our own loop (explicit positions), shared by dense and every sparse method.

``generate()`` of transformers cannot continue from an edited (compressed) KV cache, so all methods use this
loop: one prefill forward over the (left-padded) prompts, then one forward per new token.
"""

from __future__ import annotations

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
                    cache=None) -> GenerationOutput:
    """Greedy decoding of a batch of token-id prompts (left padding) until EOS or ``max_new_tokens``."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    batch = ids.shape[0]
    padded = bool((mask == 0).any())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config) if cache is None else cache

    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, attention_mask=mask if padded else None, position_ids=positions,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
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
        if padded:
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=mask if padded else None,
                    position_ids=next_pos[:, None], past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1)
        next_pos = next_pos + 1
        steps += 1
    _sync(device)
    decode_s = time.perf_counter() - t1
    return GenerationOutput(tokens, stop, prefill_s, decode_s, steps)
