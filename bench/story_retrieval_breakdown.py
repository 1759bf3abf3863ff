"""Where a model's story-retrieval answers go wrong: accuracy per question kind and per asked chapter number, and
what the wrong answers are (taken from another chapter, not in the story, missing).

    python bench/story_retrieval_breakdown.py [--model models/ref-20m] [--lengths 2048 4096] [--samples 8]

Dense greedy generation through the trainer's ``DenseEvaluator`` (fp32 on the CPU, bf16 on a GPU; batched as in
the trainer's evaluation) on the evaluation seeds (43 + i: the default study's and the model cards' samples); the
per-question reading is ``StoryRetrieval.question_results``. Diagnostic, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workflow_scripts.tasks import load_task_class  # noqa: E402
from workflow_scripts.tasks.base import Renderer  # noqa: E402
from workflow_scripts.train_reference import EVAL_SEED, DenseEvaluator  # noqa: E402


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "ref-20m"))
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", help="write every question's row here (JSON)")
    a = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    if torch.cuda.is_available():
        model = model.cuda()
    ev = DenseEvaluator(model)
    cls = load_task_class("story_retrieval")
    out = {}
    for length in a.lengths:
        t0 = time.time()
        task = cls(Renderer(tok), length, "direct", seed=EVAL_SEED)
        preds: list = []
        ev.accuracy(tok, cls, [task.build(i) for i in range(a.samples)], a.max_new_tokens, predictions=preds)
        rows = [r for s, text in preds for r in cls.question_results(s, text)]
        out[length] = rows
        b = cls.breakdown(rows)
        print(f"{Path(a.model).name} story_retrieval@{length}: {sum(r['ok'] for r in rows) / len(rows):.3f} "
              f"over {len(rows)} questions of {a.samples} samples ({time.time() - t0:.0f} s)")
        print(f"  per kind:    {b['kind']}")
        print(f"  per chapter: {b['chapters']}")
        print(f"  wrong:       {b['wrong']}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
