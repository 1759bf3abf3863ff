"""Attention recall and accuracy of methods on one (model, task, length), in one process (CPU or GPU).

    .venv/bin/python bench/recall_probe.py --model models/ref-6m --task ruler_niah --length 1024 \
        --samples 5 --method dense --method quest:5 --method "quest:5:share_pages=true" --out /tmp/probe.json

A method is ``name:ratio[:key=value,...]`` (hyperparameters as in a study's ``methods.<name>.params``;
``token_budget=...`` etc. replace the ratio's budget). V-S / FlexPrefill at lengths outside the paper's table
need an explicit budget (``vertical_size=..,slash_size=..`` / ``alpha=..,min_budget=..``): this probe does not
calibrate. Prints accuracy, realized density and attention recall / oracle recall (sparsified phase) per
method, per layer with ``--by-layer``. The workflow's own recall columns come from a study with
``recall: true`` (docs/methods.md); this script is for quick experiments on variants.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_method(text: str):
    parts = text.split(":")
    name = parts[0]
    ratio = float(parts[1]) if len(parts) > 1 and parts[1] else 1.0
    params = {}
    if len(parts) > 2:
        for kv in parts[2].split(","):
            k, v = kv.split("=")
            try:
                params[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                params[k] = {"true": True, "false": False}.get(v.lower(), v)
    return name, ratio, params


def build(name, ratio, params, length):
    from sparse_kernels.hf.build import build_methods
    from sparse_kernels.registry import BUDGET_PARAMS, CALIBRATED_BUDGET_PARAMS, split_method

    if name == "dense":
        return None, None
    budget = {k: params.pop(k) for k in list(params) if k in BUDGET_PARAMS.get(name, ())
              or k in CALIBRATED_BUDGET_PARAMS.get(name, ())}
    pre, dec = split_method(name)
    if budget and pre:
        return build_methods(name, ratio, params, nominal_length=length, calibrated=budget)
    if budget:
        from sparse_kernels.methods import build_method

        return None, build_method(name, **params, **budget)
    return build_methods(name, ratio, params, nominal_length=length)


def probe_executor(n_layers: int, oracle: bool, dense_layers: set[int]):
    """A torch executor whose Quest step attends the page *oracle* (the same number of pages per head, chosen by
    their dense attention mass) and / or leaves ``dense_layers`` dense: what accuracy the selection could reach.
    Decode steps call quest_decode once per layer in layer order, so the call count gives the layer."""
    import torch

    from sparse_kernels.hf.executors import TorchExecutor
    from sparse_kernels.recall import _probs

    class Probe(TorchExecutor):
        calls = 0

        def quest_decode(self, q, k, v, sel, scale):
            layer = self.calls % n_layers
            self.calls += 1
            B, H, L = q.shape[0], q.shape[1], k.shape[2]
            pos = torch.arange(L).view(1, -1) - sel.pad_offsets.view(-1, 1)
            real = (pos >= 0) & (pos < sel.seq_lens.view(-1, 1))
            if layer in dense_layers:
                return self.decode(q, k, v, real.unsqueeze(1).expand(B, H, L), scale)
            if not oracle:
                return super().quest_decode(q, k, v, sel, scale)
            page = (pos.clamp(min=0) // sel.page_size)
            P = int(page.max()) + 1
            mask = torch.zeros(B, H, L, dtype=torch.bool)
            for b in range(B):
                p = _probs(q[b], k[b], scale, real[b].view(1, 1, L).expand(H, 1, L))[:, 0]   # [H, L]
                mass = torch.zeros(H, P).scatter_add_(1, page[b].expand(H, L), p)
                for h in range(H):
                    top = torch.topk(mass[h], int(sel.counts[b, h])).indices
                    mask[b, h] = torch.isin(page[b], top) & real[b]
            return self.decode(q, k, v, mask, scale)

    return Probe()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", default="ruler_niah")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=260)
    ap.add_argument("--mode", default="direct")
    ap.add_argument("--method", action="append", default=[])
    ap.add_argument("--executor", default="torch")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-recall", action="store_true")
    ap.add_argument("--fast-decode", default="off", help="off / eager: the session's static decode path")
    ap.add_argument("--by-layer", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quest-oracle", action="store_true", help="Quest attends the page oracle (same page counts)")
    ap.add_argument("--dense-layers", default="", help="comma-separated layers Quest leaves dense")
    ap.add_argument("--out")
    a = ap.parse_args(argv)

    import torch

    from sparse_kernels.hf.generate import greedy_generate
    from sparse_kernels.hf.session import SparseSession
    from sparse_kernels.recall import RecallRecorder
    from workflow_scripts.infer import eos_ids_of, load
    from workflow_scripts.make_data import generate
    from workflow_scripts.tasks import load_task_class

    torch.set_num_threads(a.threads)
    spec = {"task": a.task, "task_params": {}, "length": a.length, "mode": a.mode, "samples": a.samples,
            "seed": 43, "tokenizer": a.model, "chat_template": True, "first_sample": a.first}
    rows = generate(spec)
    loaded = load({"model_path": a.model, "tokenizer": a.model, "dtype": a.dtype, "device": "cpu"})
    model, tok = loaded.model, loaded.tokenizer
    eos = eos_ids_of(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos)
    cls = load_task_class(a.task)
    results = []
    for text in a.method or ["dense"]:
        name, ratio, params = parse_method(text)
        pre, dec = build(name, ratio, dict(params), a.length)
        rec = None if a.no_recall else RecallRecorder()
        executor = a.executor
        dense_layers = {int(x) for x in a.dense_layers.split(",") if x}
        if dec is not None and dec.name == "quest" and (a.quest_oracle or dense_layers):
            executor = probe_executor(model.config.num_hidden_layers, a.quest_oracle, dense_layers)
        session = SparseSession(pre, dec, executor=executor, hooks=[rec] if rec else None)
        scores, recs, preds, t0 = [], [], [], time.perf_counter()
        dens = []
        for b in range(0, len(rows), a.batch):
            batch = rows[b:b + a.batch]
            prompts = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in batch]
            if rec:
                rec.reset()
            gen = greedy_generate(model, prompts, a.max_new_tokens, eos, pad, session=session,
                                  fast_decode=a.fast_decode)
            for r, toks, st in zip(batch, gen.tokens, gen.extras["stats"]):
                preds.append(tok.decode(toks, skip_special_tokens=True))
                scores.append(cls.score(preds[-1], json.loads(r["gold"])))
                dens.append(st["prefill_density"] if pre is not None else st["decode_density"])
            if rec:
                recs.extend(rec.rows(len(batch)))
        phase = "prefill" if pre is not None else "decode"
        out = {"method": text, "accuracy": sum(scores) / len(scores), "density": sum(d for d in dens if d) / len(dens),
               "seconds": round(time.perf_counter() - t0, 1), "scores": scores, "predictions": preds}
        if recs and recs[0].get(f"{phase}_recall") is not None:
            for key in ("recall", "oracle_recall"):
                out[key] = sum(r[f"{phase}_{key}"] for r in recs) / len(recs)
                per = [r[f"{phase}_{key}_by_layer"] for r in recs]
                out[f"{key}_by_layer"] = [sum(x) / len(x) for x in zip(*per)]
        results.append(out)
        line = f"{text:40s} acc {out['accuracy']:.3f} density {out['density']:.3f}"
        if "recall" in out:
            line += f" recall {out['recall']:.3f} oracle {out['oracle_recall']:.3f}"
            if a.by_layer:
                line += " | " + " ".join(f"{r:.2f}/{o:.2f}" for r, o in zip(out["recall_by_layer"],
                                                                             out["oracle_recall_by_layer"]))
        print(line + f" ({out['seconds']} s)", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": results}, indent=1))


if __name__ == "__main__":
    main()
