"""Build a tiny random-weight Qwen2 model and a small BPE tokenizer (for tests and smoke studies).

Random weights score ~0 on every task: this model exercises the plumbing, never the science. The project's
trained reference models are the default study's models once shipped.

    python -m workflow_scripts.tiny_model OUT_DIR [--vocab 2048] [--layers 2] [--seed 0]
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


def build_tiny_model(out_dir: str | Path, vocab_size: int = 2048, layers: int = 2, hidden: int = 64,
                     heads: int = 4, kv_heads: int = 2, seed: int = 0, max_positions: int = 32768) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from .tokenizer import train_tokenizer

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        tok = train_tokenizer(tokenizer_corpus(seed=seed), vocab_size=vocab_size, model_max_length=max_positions)
        tok.save_pretrained(str(tmp))
        torch.manual_seed(seed)
        cfg = Qwen2Config(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
            tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            bos_token_id=None, rope_theta=100000.0,
        )
        model = Qwen2ForCausalLM(cfg).eval()
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
    a = ap.parse_args(argv)
    build_tiny_model(a.out_dir, vocab_size=a.vocab, layers=a.layers, hidden=a.hidden, seed=a.seed)
    print(f"wrote {a.out_dir}")


if __name__ == "__main__":
    main()
