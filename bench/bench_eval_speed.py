"""Dense evaluation speed of a reference model: plain HF generation vs the trainer's DenseEvaluator (GPU).

    python bench/bench_eval_speed.py [--model models/ref-20m] [--config studies/train_reference.yaml] [--reps 2]

Runs the recipe's training probes (``train.probes``: e.g. NIAH at 1K and story retrieval at 1K / 2K, 8 validation
samples each) with plain HF greedy generation (fp32 weights, bf16 autocast: what the probes used until session 7)
and with ``DenseEvaluator`` (bf16 copy, our attention, static-cache CUDA-graph decode), ``--reps`` times each, and
prints seconds and scores per repetition (the first one includes compilation / CUDA start-up). Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sparse_kernels.hf.generate import greedy_generate  # noqa: E402
from workflow_scripts.train_reference import (  # noqa: E402
    DenseEvaluator, _probe_set, generation_accuracy, load_config, max_new_tokens)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "ref-20m"))
    ap.add_argument("--config", default=str(ROOT / "studies" / "train_reference.yaml"))
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config([a.config])
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).cuda()
    probes = _probe_set(cfg, tok)

    def plain_generate(prompts, n):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return greedy_generate(model, prompts, n, {tok.eos_token_id}, tok.pad_token_id)

    ev = DenseEvaluator(model)
    print(f"{torch.cuda.get_device_name()}; probes {list(probes)}")
    for rep in range(a.reps):
        for name in ("plain HF", "DenseEvaluator"):
            torch.cuda.synchronize()
            t = time.perf_counter()
            if name == "DenseEvaluator":
                ev.sync(model)
            res = {}
            for spec, (cls, samples) in probes.items():
                n = max_new_tokens(cfg["eval"], spec.split("@")[0])
                res[spec] = round(generation_accuracy(plain_generate, tok, cls, samples, n) if name == "plain HF"
                                  else ev.accuracy(tok, cls, samples, n), 3)
            torch.cuda.synchronize()
            print(f"rep {rep} {name:15s} {time.perf_counter() - t:6.2f} s {res}", flush=True)


if __name__ == "__main__":
    main()
