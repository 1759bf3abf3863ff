"""Build a tiny random-weight model (Qwen2 by default, or another family) and a small BPE tokenizer (for tests
and smoke studies).

Random weights score ~0 on every task: this model exercises the plumbing, never the science. The project's
trained reference models are the default study's models once shipped.

    python -m workflow_scripts.tiny_model OUT_DIR [--vocab 2048] [--layers 2] [--seed 0] [--family gemma3]

``--family`` (:data:`FAMILIES`) picks the architecture and its layer features: sliding-window layers
(Mistral on every layer, Qwen2 on the layers from ``max_window_layers``, Gemma 2 alternating, Gemma 3 two
local per global), Gemma's logit soft-capping, QK-norm (Gemma 3), query scaling by ``query_pre_attn_scalar``
instead of head_dim, head_dim 256 and a single kv head (MQA), Phi-3's fused projections.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from .io import atomic_dir


def tokenizer_corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    """Text resembling what the task generators emit (prompt skeleton + NIAH statements)."""
    from .tasks.niah import NIAH, _code, _sentence
    from .tasks.prompt import render

    rng = random.Random(seed)
    lines = [_sentence(_code(rng), _code(rng)) for _ in range(n_lines)]
    keys = [_code(rng) for _ in range(4)]
    spec = NIAH.spec(None, keys)
    for mode in ("cot", "direct"):
        lines += render(spec, "context", mode).splitlines() * 20
    lines += [f"{i}. The answer for {_code(rng)} is {_code(rng)}." for i in range(1, 5)] * 50
    return lines


# family -> (model_type, config overrides). ``window`` in a value is replaced by the ``window`` argument.
FAMILIES: dict[str, tuple[str, dict]] = {
    "qwen2": ("qwen2", {}),
    "llama": ("llama", {}),
    "mistral": ("mistral", {"sliding_window": "window"}),
    "qwen2_swa": ("qwen2", {"use_sliding_window": True, "sliding_window": "window", "max_window_layers": 1}),
    "gemma2": ("gemma2", {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 256,
                          "query_pre_attn_scalar": 64, "attn_logit_softcapping": 5.0,
                          "final_logit_softcapping": 30.0, "sliding_window": "window"}),
    "gemma3": ("gemma3_text", {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 256,
                               "query_pre_attn_scalar": 64, "sliding_window": "window",
                               "sliding_window_pattern": 3}),
    "phi3": ("phi3", {}),
}


def tiny_config(family: str, vocab_size: int, layers: int, hidden: int, heads: int, kv_heads: int,
                max_positions: int, window: int, eos: int, pad: int):
    """A transformers config of ``family`` (:data:`FAMILIES`) with the given sizes."""
    from transformers import AutoConfig

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    model_type, extra = FAMILIES[family]
    kw = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
              tie_word_embeddings=True, eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    kw.update({k: (window if v == "window" else v) for k, v in extra.items()})
    if model_type in ("qwen2", "llama", "mistral", "phi3"):
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 100000.0}
    return AutoConfig.for_model(model_type, **kw)


def build_tiny_model(out_dir: str | Path, vocab_size: int = 2048, layers: int = 2, hidden: int = 64,
                     heads: int = 4, kv_heads: int = 2, seed: int = 0, max_positions: int = 32768,
                     family: str = "qwen2", window: int = 64) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from .tokenizer import train_tokenizer

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        tok = train_tokenizer(tokenizer_corpus(seed=seed), vocab_size=vocab_size, model_max_length=max_positions)
        tok.save_pretrained(str(tmp))
        torch.manual_seed(seed)
        cfg = tiny_config(family, len(tok), layers, hidden, heads, kv_heads, max_positions, window,
                          tok.eos_token_id, tok.pad_token_id)
        model = AutoModelForCausalLM.from_config(cfg).eval()
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(str(tmp))
    return out_dir


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--family", default="qwen2", choices=sorted(FAMILIES))
    ap.add_argument("--window", type=int, default=64, help="sliding window of the families that have one")
    a = ap.parse_args(argv)
    build_tiny_model(a.out_dir, vocab_size=a.vocab, layers=a.layers, hidden=a.hidden, seed=a.seed, family=a.family,
                     window=a.window)
    print(f"wrote {a.out_dir}")


if __name__ == "__main__":
    main()
