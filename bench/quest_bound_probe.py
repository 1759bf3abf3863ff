"""How well Quest's page bound finds the pages the dense attention uses (dense decoding, one process, CPU).

    .venv/bin/python bench/quest_bound_probe.py --model models/ref-6m --length 8192 --samples 2 --ratio 5

At every decode step of a *dense* generation and every layer and q head, over the complete earlier pages:
Quest's upper bound sum_d max(q_d min_d, q_d max_d) (``Quest.page_bounds``) against each page's true attention
mass. Prints per layer: the page recall of Quest's T/p pages and of the T/p heaviest pages (both without the
current page), how often the heaviest page is among Quest's, the Spearman correlation of bound and mass, and
the same correlation when the bound uses only the high-frequency or only the low-frequency RoPE dimensions
(rotate-half layout: dims i and i + d/2 rotate with frequency theta^(-2i/d); i < d/4 = the fast half).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spearman(a, b):
    import torch

    ra = a.argsort(-1).argsort(-1).double()
    rb = b.argsort(-1).argsort(-1).double()
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1)).clamp(min=1e-12)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=5.0)
    ap.add_argument("--max-new-tokens", type=int, default=120)
    ap.add_argument("--out")
    a = ap.parse_args(argv)

    import torch

    from sparse_kernels.budgets import quest_token_budget
    from sparse_kernels.hf.generate import greedy_generate
    from sparse_kernels.hf.session import SparseSession
    from sparse_kernels.methods import Quest
    from workflow_scripts.infer import eos_ids_of, load
    from workflow_scripts.make_data import generate

    torch.set_num_threads(1)
    rows = generate({"task": "ruler_niah", "task_params": {}, "length": a.length, "mode": "direct",
                     "samples": a.samples, "seed": 43, "tokenizer": a.model, "chat_template": True})
    loaded = load({"model_path": a.model, "tokenizer": a.model, "dtype": "float32", "device": "cpu"})
    model, tok = loaded.model, loaded.tokenizer
    eos = eos_ids_of(model, tok)
    quest = Quest(token_budget=quest_token_budget(a.length, a.ratio))
    p = quest.page_size
    n_hist = quest.token_budget // p
    stats: dict[int, dict[str, list]] = {}

    def hook(ev):
        if ev.phase != "decode":
            return
        K = ev.cache.view()[0][0]                       # [G, L, D], batch 1, no padding
        q = ev.q[0, :, 0].float()                        # [H, D]
        H, D = q.shape
        G, L, _ = K.shape
        cur = (L - 1) // p
        if cur <= n_hist:
            return
        kk = K[:, :cur * p].float().view(G, cur, p, D)
        mn, mx = kk.amin(2), kk.amax(2)                  # [G, cur, D]
        g = H // G
        qe = q.view(G, g, 1, D)
        per_dim = torch.maximum(qe * mn.unsqueeze(1), qe * mx.unsqueeze(1)).reshape(H, cur, D)
        fast = torch.zeros(D, dtype=torch.bool)
        fast[: D // 4] = True
        fast[D // 2: D // 2 + D // 4] = True
        bound, b_fast, b_slow = per_dim.sum(-1), per_dim[..., fast].sum(-1), per_dim[..., ~fast].sum(-1)
        logits = (q.view(G, g, D) @ K.float().transpose(1, 2)).reshape(H, L) * ev.scale
        prob = torch.softmax(logits, -1)
        mass = prob[:, :cur * p].view(H, cur, p).sum(-1)     # complete pages only
        quest_pages = bound.topk(n_hist, -1).indices
        oracle_pages = mass.topk(n_hist, -1).indices
        top1 = mass.argmax(-1, keepdim=True)
        s = stats.setdefault(ev.layer, {k: [] for k in ("quest", "oracle", "hit1", "rho", "rho_fast", "rho_slow")})
        s["quest"].append(float(mass.gather(-1, quest_pages).sum(-1).mean()))
        s["oracle"].append(float(mass.gather(-1, oracle_pages).sum(-1).mean()))
        s["hit1"].append(float((quest_pages == top1).any(-1).double().mean()))
        s["rho"].append(float(spearman(bound, mass).mean()))
        s["rho_fast"].append(float(spearman(b_fast, mass).mean()))
        s["rho_slow"].append(float(spearman(b_slow, mass).mean()))

    session = SparseSession(None, None, executor="torch", hooks=[hook])
    for r in rows:
        ids = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        greedy_generate(model, [ids], a.max_new_tokens, eos, tok.pad_token_id or 0, session=session)
    out = {}
    print(f"{a.model} NIAH {a.length}, Quest {a.ratio:g}x (T = {quest.token_budget}, {n_hist} pages), dense decoding")
    print("layer  page-recall quest / oracle  heaviest-page hit  spearman(bound, mass) all / fast dims / slow dims")
    for layer in sorted(stats):
        m = {k: sum(v) / len(v) for k, v in stats[layer].items()}
        out[layer] = m
        print(f"{layer:5d}  {m['quest']:.3f} / {m['oracle']:.3f}            {m['hit1']:.2f}"
              f"               {m['rho']:+.2f} / {m['rho_fast']:+.2f} / {m['rho_slow']:+.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "per_layer": out}, indent=1))


if __name__ == "__main__":
    main()
