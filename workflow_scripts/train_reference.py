"""Train the reference model family: a BPE tokenizer and Qwen2 models of several sizes, on task generators.

    python -m workflow_scripts.train_reference --config studies/train_reference.yaml --work WORK [--stage all]

Stages (each resumable; outputs under WORK):
  tokenizer  BPE tokenizer (tokenizers, ChatML chat template) trained on text of every task generator
  data       direct-mode samples (prompt + "<answer>…</answer>") per task × length, seeds disjoint from evaluation,
             generated in parallel processes and stored as token ids with a loss mask
  train      one process per size, concurrently on one GPU; time-budgeted, cosine schedule on elapsed time
  (each train process then evaluates its model densely on the evaluation seeds and writes its model card)

The result is WORK/models/<size>/: bf16 safetensors shards (<= 15 MB each), tokenizer, README.md model card,
training_log.json. Needs a CUDA GPU for the train stage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def answer_text(answer: str) -> str:
    """What a direct-mode model must emit (the tokenizer's EOS follows it)."""
    return f"<answer>\n{answer}\n</answer>"


# ----------------------------------------------------------------------------------------------- tokenizer
def stage_tokenizer(cfg: dict, work: Path) -> None:
    from .tasks.corpus import tokenizer_corpus
    from .tokenizer import train_tokenizer

    out = work / "tokenizer"
    if (out / "tokenizer.json").exists():
        return
    t0 = time.time()
    lines = tokenizer_corpus(cfg["tokenizer"]["corpus_lines"], cfg["seed"])
    tok = train_tokenizer(lines, vocab_size=cfg["tokenizer"]["vocab_size"])
    tok.save_pretrained(str(out))
    print(f"tokenizer: {len(tok)} tokens from {len(lines)} lines in {time.time() - t0:.1f}s", flush=True)


# ----------------------------------------------------------------------------------------------- data
def _gen_chunk(args):
    tok_dir, task, length, ids, seed, params = args
    from transformers import AutoTokenizer

    from .tasks import load_task_class
    from .tasks.base import LengthError, Renderer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    task_obj = load_task_class(task)(Renderer(tok), length, "direct", seed=seed, **params)
    out = []
    for i in ids:
        try:
            s = task_obj.build(i)
        except LengthError:      # rare at short lengths with coarse items: skip this training sample
            continue
        p = tok(s.prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer_text(s.answer), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((p, a))
    return task, length, out


def stage_data(cfg: dict, work: Path) -> None:
    import multiprocessing as mp

    import torch

    out = work / "data.pt"
    if out.exists():
        return
    d = cfg["data"]
    n, seed = d["samples_per_task_length"], cfg["seed"] + d["seed_offset"]
    jobs = []
    for task in d["tasks"]:
        for length in d["lengths"]:
            for start in range(0, n, 50):
                jobs.append((str(work / "tokenizer"), task, length, list(range(start, min(start + 50, n))), seed,
                             cfg.get("task_params", {}).get(task, {})))
    random.Random(0).shuffle(jobs)          # balance long and short chunks across workers
    t0 = time.time()
    samples = []
    with mp.get_context("fork").Pool(d["workers"]) as pool:
        for task, length, items in pool.imap_unordered(_gen_chunk, jobs):
            samples += [{"task": task, "length": length, "prompt": p, "answer": a} for p, a in items]
    tokens = sum(len(s["prompt"]) + len(s["answer"]) for s in samples)
    torch.save(samples, out)
    print(f"data: {len(samples)} samples, {tokens / 1e6:.1f}M tokens in {time.time() - t0:.0f}s", flush=True)


# ----------------------------------------------------------------------------------------------- train
def _batches(samples, tokens_per_batch: int, rng: random.Random, progress, curriculum: float):
    """Endless batches of samples of one target length (similar sizes -> little padding).

    Length curriculum: the i-th shortest length is drawn with weight exp(-curriculum * i * (1 - progress())),
    so training starts mostly short (retrieval is learnt there first) and ends uniform over lengths.
    """
    by_len: dict[int, list] = {}
    for s in samples:
        by_len.setdefault(s["length"], []).append(s)
    lengths = sorted(by_len)
    while True:
        remaining = 1.0 - progress()
        L = rng.choices(lengths, weights=[math.exp(-curriculum * i * remaining) for i in range(len(lengths))])[0]
        pool = by_len[L]
        k = max(1, tokens_per_batch // L)
        yield [pool[rng.randrange(len(pool))] for _ in range(k)]


def _collate(batch, pad_id: int, context_weight: float, device):
    import torch

    width = max(len(s["prompt"]) + len(s["answer"]) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    w = torch.zeros((len(batch), width), dtype=torch.float32)
    for i, s in enumerate(batch):
        seq = s["prompt"] + s["answer"]
        ids[i, :len(seq)] = torch.tensor(seq)
        # weight of predicting token t (position t-1 predicts it): context tokens light, answer tokens 1
        w[i, 1:len(s["prompt"])] = context_weight
        w[i, len(s["prompt"]):len(seq)] = 1.0
    return ids.to(device, non_blocking=True), w.to(device, non_blocking=True)


def train_one(cfg: dict, work: Path, size: str) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out_dir = work / "models" / size
    if (out_dir / "README.md").exists():
        return
    t_cfg = cfg["train"]
    torch.manual_seed(cfg["seed"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")   # cpu: smoke tests only
    tok = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    samples = torch.load(work / "data.pt")
    arch = cfg["sizes"][size]
    mcfg = Qwen2Config(vocab_size=len(tok), tie_word_embeddings=True, rope_theta=t_cfg["rope_theta"],
                       max_position_embeddings=t_cfg["max_position_embeddings"], eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, bos_token_id=None, **arch)
    model = Qwen2ForCausalLM._from_config(mcfg, attn_implementation="sdpa").to(device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t_cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=t_cfg["lr"], betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    budget = t_cfg["minutes"] * 60
    rng = random.Random(cfg["seed"])
    t0 = time.time()
    tokens_per_batch = t_cfg.get("tokens_per_batch_by_size", {}).get(size, t_cfg["tokens_per_batch"])
    batches = _batches(samples, tokens_per_batch, rng, lambda: min(1.0, (time.time() - t0) / budget),
                       t_cfg.get("curriculum", 0.0))
    log, step, seen_tokens = [], 0, 0
    model.train()
    while True:
        elapsed = time.time() - t0
        if elapsed >= budget:
            break
        frac = elapsed / budget
        lr = t_cfg["lr"] * min(1.0, (step + 1) / t_cfg["warmup_steps"]) * (
            t_cfg["min_lr_fraction"] + (1 - t_cfg["min_lr_fraction"]) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, w = _collate(next(batches), tok.pad_token_id, t_cfg["context_weight"], device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                             reduction="none").view(ids.shape[0], -1)
        wt = w[:, 1:]
        loss = (ce * wt).sum() / wt.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen_tokens += int(ids.numel())
        if step % 25 == 0:
            ans = (wt == 1.0)
            ans_loss = float((ce.detach() * ans).sum() / ans.sum())
            log.append({"step": step, "seconds": round(elapsed, 1), "lr": lr, "loss": float(loss.detach()),
                        "answer_loss": ans_loss, "tokens": seen_tokens})
            print(f"[{size}] step {step} t={elapsed:.0f}s loss={float(loss.detach()):.3f} answer={ans_loss:.3f} "
                  f"tok={seen_tokens / 1e6:.0f}M", flush=True)
        step += 1
    model.eval()
    results = evaluate(cfg, model, tok)
    save_model(model, tok, out_dir, size, cfg, n_params, step, seen_tokens, time.time() - t0, log, results)


def evaluate(cfg: dict, model, tok) -> list[dict]:
    """Dense accuracy per task and length on the evaluation seeds (the default study's samples)."""
    import torch

    from sparse_kernels.hf.generate import greedy_generate

    from .tasks import load_task_class
    from .tasks.base import LengthError, Renderer

    e = cfg["eval"]
    results = []
    for task in cfg["data"]["tasks"]:
        cls = load_task_class(task)
        for length in e["lengths"]:
            t = cls(Renderer(tok), length, "direct", seed=43, **cfg.get("task_params", {}).get(task, {}))
            try:
                samples = [t.build(i) for i in range(e["samples"])]
            except LengthError as err:
                print(f"eval {task}@{length}: skipped ({err})", flush=True)
                continue
            scores = []
            bs = max(1, 65536 // length)
            for b in range(0, len(samples), bs):
                chunk = samples[b:b + bs]
                prompts = [tok(s.prompt, add_special_tokens=False)["input_ids"] for s in chunk]
                with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16):
                    gen = greedy_generate(model, prompts, e["max_new_tokens"], {tok.eos_token_id}, tok.pad_token_id)
                for s, toks in zip(chunk, gen.tokens):
                    scores.append(cls.score(tok.decode(toks, skip_special_tokens=True), s.gold))
            results.append({"task": task, "length": length, "n": len(scores), "accuracy": sum(scores) / len(scores)})
            print(f"eval {task}@{length}: {results[-1]['accuracy']:.3f}", flush=True)
    return results


def save_model(model, tok, out_dir: Path, size: str, cfg: dict, n_params: int, steps: int, tokens: int,
               seconds: float, log: list, results: list) -> None:
    import torch

    from .io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        model.to(torch.bfloat16)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(str(tmp), max_shard_size="15MB")
        tok.save_pretrained(str(tmp))
        (tmp / "training_log.json").write_text(json.dumps(
            {"size": size, "n_params": n_params, "steps": steps, "tokens": tokens, "seconds": seconds,
             "config": cfg, "log": log, "eval": results}, indent=1))
        (tmp / "README.md").write_text(model_card(size, cfg, n_params, steps, tokens, seconds, log, results))
        for f in tmp.iterdir():
            f.chmod(0o644)


def model_card(size, cfg, n_params, steps, tokens, seconds, log, results) -> str:
    arch = cfg["sizes"][size]
    lengths = cfg["eval"]["lengths"]
    tasks = cfg["data"]["tasks"]
    acc = {(r["task"], r["length"]): r["accuracy"] for r in results}

    def cell(t, L):
        return f"{acc[(t, L)]:.2f}" if (t, L) in acc else "n/a"

    def mean(L):
        vals = [acc[(t, L)] for t in tasks if (t, L) in acc]
        return f"{sum(vals) / len(vals):.2f}" if vals else "n/a"

    rows = ["| task | " + " | ".join(str(L) for L in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for t in tasks:
        rows.append(f"| {t} | " + " | ".join(cell(t, L) for L in lengths) + " |")
    rows.append("| **mean** | " + " | ".join(mean(L) for L in lengths) + " |")
    first, last = log[0], log[-1]
    mid = log[len(log) // 2]
    return f"""# {size} — sparse-frontier reference model

A small long-context causal LM trained by the sparse-frontier workflow project as an offline testbed for
sparse-attention studies. Architecture: Qwen2 (RoPE, GQA) from transformers — the same code path as Qwen2.5.
It only knows the project's synthetic and story tasks in the **direct-answer** prompt mode.

| | |
|---|---|
| parameters | {n_params:,} ({n_params / 1e6:.1f}M, tied embeddings) |
| layers / hidden / MLP | {arch['num_hidden_layers']} / {arch['hidden_size']} / {arch['intermediate_size']} |
| q heads / kv heads | {arch['num_attention_heads']} / {arch['num_key_value_heads']} |
| vocabulary | {cfg['tokenizer']['vocab_size']} BPE tokens (trained on the task generators' text), ChatML chat template |
| RoPE base / max positions | {cfg['train']['rope_theta']:g} / {cfg['train']['max_position_embeddings']} |
| training data | {', '.join(tasks)} at lengths {', '.join(map(str, cfg['data']['lengths']))}; {cfg['data']['samples_per_task_length']} samples per task × length, seeds offset by {cfg['data']['seed_offset']:,} (disjoint from evaluation) |
| objective | next-token loss, weight 1 on answer tokens and {cfg['train']['context_weight']} on prompt tokens |
| training | {steps} steps, {tokens / 1e6:.0f}M tokens (padded), {seconds / 60:.1f} min on one H100, AdamW lr {cfg['train']['lr']:g} cosine on elapsed time |
| loss (weighted / answer-only) | start {first['loss']:.3f} / {first['answer_loss']:.3f}, middle {mid['loss']:.3f} / {mid['answer_loss']:.3f}, end {last['loss']:.3f} / {last['answer_loss']:.3f} |
| weights | bf16 safetensors, shards ≤ 15 MB |

## Dense accuracy (direct mode, {cfg['eval']['samples']} evaluation samples per cell, seeds 43 + i)

{chr(10).join(rows)}

Retrain with `snakemake train_reference` (recipe `studies/train_reference.yaml`, needs a CUDA GPU).
"""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "studies" / "train_reference.yaml"))
    ap.add_argument("--work", required=True)
    ap.add_argument("--stage", choices=["all", "tokenizer", "data", "train", "train-one"], default="all")
    ap.add_argument("--size")
    a = ap.parse_args(argv)
    cfg = yaml.safe_load(open(a.config))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.stage in ("all", "tokenizer"):
        stage_tokenizer(cfg, work)
    if a.stage in ("all", "data"):
        stage_data(cfg, work)
    if a.stage == "train-one":
        train_one(cfg, work, a.size)
    if a.stage in ("all", "train"):
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        procs = [subprocess.Popen([sys.executable, "-m", "workflow_scripts.train_reference", "--config", a.config,
                                   "--work", str(work), "--stage", "train-one", "--size", s], cwd=str(ROOT))
                 for s in cfg["sizes"]]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"training failed: exit codes {codes}")


if __name__ == "__main__":
    main()
