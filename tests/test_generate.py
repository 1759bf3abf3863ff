"""Our greedy decode loop equals transformers' own greedy generate() (batch 1 and left-padded batches)."""

from __future__ import annotations

import torch

from sparse_kernels.hf.generate import greedy_generate


def _hf_reference(model, prompt: list[int], n: int, eos: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=eos,
                         pad_token_id=eos)
    new = out[0, len(prompt):].tolist()
    return new[:new.index(eos)] if eos in new else new


def test_greedy_matches_hf_generate(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 2000, (n,), generator=g).tolist() for n in (37, 64, 50)]
    refs = [_hf_reference(model, p, 12, eos=2) for p in prompts]
    # batch 1
    for p, ref in zip(prompts, refs):
        assert greedy_generate(model, [p], 12, {2}, pad_id=3).tokens[0] == ref
    # left-padded batch of different lengths gives the same tokens as one by one
    out = greedy_generate(model, prompts, 12, {2}, pad_id=3)
    assert out.tokens == refs
    assert out.decode_steps <= 11 and out.prefill_s > 0


def test_stops_at_eos(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    prompt = list(range(10, 40))
    first = greedy_generate(model, [prompt], 1, set(), pad_id=3).tokens[0][0]
    out = greedy_generate(model, [prompt], 10, {first}, pad_id=3)   # the first greedy token is declared EOS
    assert out.tokens == [[]] and out.stop == ["eos"] and out.decode_steps == 0
