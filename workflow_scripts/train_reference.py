"""Train the reference model family: a BPE tokenizer and Qwen2 models of several sizes, on task generators.

    python -m workflow_scripts.train_reference --config studies/train_reference.yaml --work WORK [--stage all]
    (or `snakemake train_reference`, rules/train.smk)

Stages (outputs under WORK):
  tokenizer  BPE tokenizer (tokenizers, ChatML chat template) trained on text of every task generator
  train      generator processes write fresh direct-mode samples (prompt + "<answer>…</answer>" + EOS, seeds
             disjoint from evaluation) into a stream folder while one trainer process per size reads it; sizes
             train one after another (or concurrently, train.concurrent) for a fixed number of steps
             (train.steps: every size sees as many batches) capped by a wall-clock budget (train.minutes, which
             includes compilation and probes); the cosine schedule and the length curriculum follow the progress
             (steps or time, whichever ends first). Then each size is evaluated densely on the evaluation seeds
             and gets its model card.

The result is WORK/models/<size>/: bf16 safetensors shards (<= 15 MB each), tokenizer, README.md model card,
training_log.json (loss curve, retrieval probes, evaluation). Needs a CUDA GPU for the train stage (a CPU run
only serves smoke tests). Because the data stream is produced concurrently, which samples a step sees depends
on timing: the recipe, seeds and budgets are fixed, the weights are not bit-reproducible.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .io import atomic_dir, atomic_path

ROOT = Path(__file__).resolve().parent.parent


def answer_text(answer: str) -> str:
    """What a direct-mode model must emit (the tokenizer's EOS follows it)."""
    return f"<answer>\n{answer}\n</answer>"


# ----------------------------------------------------------------------------------------------- tokenizer
def stage_tokenizer(cfg: dict, work: Path) -> None:
    from .tasks.corpus import tokenizer_corpus
    from .tokenizer import check_model_loading, train_tokenizer

    out = work / "tokenizer"
    if (out / "tokenizer.json").exists():
        return
    src = cfg["tokenizer"].get("from")
    if src:                                   # a later stage: the tokenizer its init_from models were trained with
        if not (Path(src) / "tokenizer.json").exists():
            raise SystemExit(f"tokenizer.from: no tokenizer.json in {src} (train the first stage first)")
        with atomic_dir(out) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        print(f"tokenizer: copied from {src}", flush=True)
        return
    t0 = time.time()
    lines = tokenizer_corpus(cfg["tokenizer"]["corpus_lines"], cfg["seed"])
    tok = train_tokenizer(lines, vocab_size=cfg["tokenizer"]["vocab_size"])
    with atomic_dir(out) as tmp:
        tok.save_pretrained(str(tmp))
        check_model_loading(tmp, lines[:2000])    # shipped models must tokenize exactly like training did
    print(f"tokenizer: {len(tok)} tokens from {len(lines)} lines in {time.time() - t0:.1f}s", flush=True)


# ----------------------------------------------------------------------------------------------- data
# Training data is generated while the models train: a pool of generator processes writes chunks of fresh
# samples (never-seen seeds) into a stream folder that every trainer reads. Retrieval is learnt from many distinct
# instances; a fixed pre-generated set (attempts 1-2: 16,800 samples, 4 epochs) was memorised instead.

def _chunk_plan(cfg: dict) -> tuple[list[tuple[str, int]], list[float]]:
    """(task, length) pairs and their draw weights: task weight x token share of the length / length."""
    d = cfg["data"]
    pairs, weights = [], []
    for task in d["tasks"]:
        for length in d["lengths"]:
            pairs.append((task, length))
            weights.append(d.get("task_weights", {}).get(task, 1.0) * d["length_share"][length] / length)
    return pairs, weights


def eval_task_params(cfg: dict, task: str) -> dict:
    """A task's generator parameters for the evaluation and the probes: ``task_params``."""
    return dict(cfg.get("task_params", {}).get(task, {}))


def train_task_params(cfg: dict, task: str) -> dict:
    """A task's generator parameters for training data: ``eval_task_params`` updated by ``data.task_params``
    (training only, e.g. story_retrieval's kind_weights)."""
    return {**eval_task_params(cfg, task), **cfg["data"].get("task_params", {}).get(task, {})}


def check_phases(cfg: dict) -> list[dict]:
    """``data.phases``, validated: training-data parameter changes from a point of training progress on. Each phase
    ``{from: progress in [0, 1), share: (0, 1], task_params: {task: {param: value}}}`` makes, once the trainer's
    progress (fraction of steps or time) reaches ``from``, a ``share`` of the chunks of each named task use
    ``train_task_params`` updated by the phase's parameters; the latest phase that has begun applies. E.g. chapter
    numbers that no longer start at 1 once the story lookup has emerged (docs/reference_models.md, session 12)."""
    from .tasks import load_task_class

    phases = cfg["data"].get("phases") or []
    if not isinstance(phases, list):
        raise ValueError(f"data.phases must be a list of phases, got {phases!r}")
    for i, ph in enumerate(phases):
        key = f"data.phases[{i}]"
        if not isinstance(ph, dict) or set(ph) != {"from", "share", "task_params"}:
            raise ValueError(f"{key} must have exactly the keys from, share, task_params; got {ph!r}")
        if not (isinstance(ph["from"], (int, float)) and 0 <= ph["from"] < 1):
            raise ValueError(f"{key}.from must be a training progress in [0, 1), got {ph['from']!r}")
        if not (isinstance(ph["share"], (int, float)) and 0 < ph["share"] <= 1):
            raise ValueError(f"{key}.share must be in (0, 1], got {ph['share']!r}")
        tp = ph["task_params"]
        if not (isinstance(tp, dict) and tp and all(isinstance(v, dict) for v in tp.values())):
            raise ValueError(f"{key}.task_params must map task names to parameter dicts, got {tp!r}")
        unknown = [t for t in tp if t not in cfg["data"]["tasks"]]
        if unknown:
            raise ValueError(f"{key}.task_params names task(s) {unknown} that are not in data.tasks")
        if i and ph["from"] <= phases[i - 1]["from"]:
            raise ValueError(f"{key}.from must be later than the previous phase's ({phases[i - 1]['from']})")
        for t, params in tp.items():              # the task's own check of its parameters, before any work
            try:
                load_task_class(t)(None, 1024, "direct", **{**train_task_params(cfg, t), **params})
            except (TypeError, ValueError) as err:
                raise ValueError(f"{key}.task_params.{t}: {err}") from None
    return phases


def phase_variant(phases: list[dict], task: str, progress: float, draw: float) -> int:
    """Index of the phase whose parameters a new chunk of ``task`` uses (-1: the base parameters); ``draw`` is a
    uniform number in [0, 1) that decides the phase's share."""
    for i in range(len(phases) - 1, -1, -1):
        if progress >= phases[i]["from"]:
            return i if task in phases[i]["task_params"] and draw < phases[i]["share"] else -1
    return -1


def variant_task_params(cfg: dict, task: str, variant: int) -> dict:
    params = train_task_params(cfg, task)
    if variant >= 0:
        params.update(cfg["data"]["phases"][variant]["task_params"][task])
    return params


PROGRESS_FILE = ".progress_{size}"      # in the stream folder (dot files are not chunks): a trainer's progress


def write_progress(stream: Path, size: str, progress: float) -> None:
    tmp = stream / f".{size}.progress.tmp"
    tmp.write_text(f"{progress:.4f}")
    os.replace(tmp, stream / PROGRESS_FILE.format(size=size))


def read_progress(stream: Path, sizes) -> float:
    """The furthest progress of the trainers (0 before any has written one)."""
    best = 0.0
    for s in sizes:
        try:
            best = max(best, float((stream / PROGRESS_FILE.format(size=s)).read_text()))
        except (OSError, ValueError):
            pass
    return best


def _generator(cfg: dict, work: Path, stream: Path, worker: int, n_workers: int) -> None:
    """Endless producer: chunks of ``chunk`` direct-mode samples of one (task, length), token ids + answer ids."""
    import torch
    from transformers import AutoTokenizer

    from .tasks import load_task_class
    from .tasks.base import LengthError, Renderer

    torch.set_num_threads(1)
    d = cfg["data"]
    tok = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    rng = random.Random(cfg["seed"] * 1000 + worker)
    pairs, weights = _chunk_plan(cfg)
    id_dtype = torch.int16 if len(tok) <= 32767 else torch.int32
    phases = d.get("phases") or []              # validated by main() (check_phases) before the generators start
    tasks: dict = {}
    dead: set = set()
    counter = 0
    seq = 0
    while True:
        k = rng.choices(range(len(pairs)), weights=[0.0 if i in dead else w for i, w in enumerate(weights)])[0]
        task, length = pairs[k]
        v = phase_variant(phases, task, read_progress(stream, cfg["sizes"]), rng.random()) if phases else -1
        if (k, v) not in tasks:
            try:
                tasks[k, v] = load_task_class(task)(Renderer(tok), length, "direct",
                                                    seed=cfg["seed"] + d["seed_offset"],
                                                    **variant_task_params(cfg, task, v))
            except (LengthError, ValueError) as err:
                print(f"generator: {task}@{length} unavailable ({err})", flush=True)
                dead.add(k)
                continue
        out = []
        for _ in range(d["chunk"]):
            sample_id = worker + n_workers * counter      # unique across workers; evaluation uses seed 43
            counter += 1
            try:
                s = tasks[k, v].build(sample_id)
            except LengthError:
                continue
            p = tok(s.prompt, add_special_tokens=False)["input_ids"]
            a = tok(answer_text(s.answer), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            out.append({"task": task, "length": length, "ids": torch.tensor(p + a, dtype=id_dtype),
                        "prompt_len": len(p)})
        tmp = stream / f".{worker}_{seq}.tmp"
        torch.save(out, tmp)
        os.replace(tmp, stream / f"{worker:03d}_{seq:06d}.pt")
        seq += 1


def start_generators(cfg: dict, work: Path, stream: Path) -> list:
    import multiprocessing as mp

    stream.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("fork")    # before any CUDA use in the parent
    n = cfg["data"]["workers"]
    procs = [ctx.Process(target=_generator, args=(cfg, work, stream, w, n), daemon=True) for w in range(n)]
    for p in procs:
        p.start()
    return procs


class StreamPool:
    """A trainer's view of the stream: the newest ``cap`` samples per length, refreshed from new chunk files."""

    def __init__(self, stream: Path, cap: int):
        self.stream, self.cap = stream, cap
        self.seen: set[str] = set()
        self.by_len: dict[int, list] = {}
        self.loaded = 0

    def refresh(self) -> None:
        import torch

        for entry in sorted(os.scandir(self.stream), key=lambda e: e.name):
            if entry.name.startswith(".") or entry.name in self.seen:
                continue
            self.seen.add(entry.name)
            for s in torch.load(entry.path):
                pool = self.by_len.setdefault(s["length"], [])
                pool.append(s)
                self.loaded += 1
            for L, pool in self.by_len.items():
                if len(pool) > self.cap:
                    del pool[:len(pool) - self.cap]

    def wait(self, lengths, timeout: float = 300.0) -> None:
        t0 = time.time()
        while True:
            self.refresh()
            if all(self.by_len.get(L) for L in lengths):
                return
            if time.time() - t0 > timeout:
                raise RuntimeError(f"no training data for lengths {[L for L in lengths if not self.by_len.get(L)]}"
                                   f" after {timeout:.0f}s (generators failed?)")
            time.sleep(1.0)


# ----------------------------------------------------------------------------------------------- train
def length_weights(lengths: list[int], share: dict, curriculum: float, progress: float) -> list[float]:
    """Batch-length draw weights: the i-th shortest length weighs share[L] * exp(-curriculum * i * (1 - progress)),
    so training starts mostly short (retrieval is learnt there first) and ends at the configured shares."""
    return [share[L] * math.exp(-curriculum * i * (1.0 - progress)) for i, L in enumerate(sorted(lengths))]


def _weighted_loss(model, ids, w):
    """(weighted mean next-token loss, per-token loss, per-token weights) of a batch."""
    import torch
    import torch.nn.functional as F

    with torch.autocast(ids.device.type, dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                         reduction="none").view(ids.shape[0], -1)
    wt = w[:, 1:]
    return (ce * wt).sum() / wt.sum(), ce.detach(), wt


def optimizer_step(model, opt, loss):
    """Backward, gradient clipping at norm 1 and the fused AdamW update, without a host synchronisation: a
    non-finite gradient (one such step would poison the weights for good, attempt 9) sets the optimizer's
    ``found_inf`` so the fused kernel skips the update on the device. Returns that flag (a 0-d float tensor:
    1.0 = step skipped); the trainer reads the sum at logging time. ``opt`` must be a fused Adam/AdamW."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.found_inf = (~torch.isfinite(norm)).float()
    opt.step()
    return opt.found_inf


def new_model(arch: dict, t_cfg: dict, vocab_size: int, **token_ids):
    """A randomly initialised Qwen2 model of one size (``arch``) with the recipe's RoPE settings; tied embeddings."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    mcfg = Qwen2Config(vocab_size=vocab_size, tie_word_embeddings=True, rope_theta=t_cfg["rope_theta"],
                       max_position_embeddings=t_cfg["max_position_embeddings"], bos_token_id=None,
                       **token_ids, **arch)
    return Qwen2ForCausalLM._from_config(mcfg, attn_implementation="sdpa")


def init_from_path(t_cfg: dict, size: str) -> Path:
    """``train.init_from`` of a size; ``{size}`` in it stands for the size's name."""
    return Path(str(t_cfg["init_from"]).format(size=size))


def earlier_stage(path: Path) -> dict:
    """What a continued run records about the weights it started from: their folder and, from their
    training_log.json, the earlier stage's run (steps, tokens, time, GPU, recipe, its own earlier stages)."""
    stage: dict = {"from": str(path)}
    log = path / "training_log.json"
    if log.exists():
        prior = json.loads(log.read_text())
        stage.update({k: prior[k] for k in ("steps", "tokens", "seconds", "gpu", "compile_seconds", "stream_samples",
                                            "selected", "config", "eval", "init") if k in prior})
    return stage


def init_weights(model, tok, path: Path) -> None:
    """``train.init_from``: continue from a trained model folder (same tokenizer and architecture), e.g. a second
    stage on other data; the optimizer, schedule and moving average start afresh."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"train.init_from: no *.safetensors weights in {path}")
    if AutoTokenizer.from_pretrained(str(path)).get_vocab() != tok.get_vocab():
        raise ValueError(f"train.init_from: the tokenizer of {path} differs from the run's tokenizer")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own}      # tied embeddings: lm_head.weight may be absent
    wrong = [k for k in own if k not in state and k != "lm_head.weight"] + [
        k for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"train.init_from: {path} does not match the size's architecture ({wrong[:4]} ...)")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    model.tie_weights()


class BestWeights:
    """``train.keep_best``: a copy of the weights with the best probe score offered so far (ties: the later)."""

    def __init__(self):
        self.score, self.step, self.seconds, self.weights, self.state = -math.inf, None, None, None, None

    def offer(self, model, score: float, step: int, seconds: float, weights: str = "raw") -> None:
        if score >= self.score:
            self.score, self.step, self.seconds, self.weights = score, step, seconds, weights
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model) -> dict:
        """Load the kept weights into ``model``; returns {step, seconds, score, weights} of them."""
        model.load_state_dict(self.state)
        return {"step": self.step, "seconds": self.seconds, "score": self.score, "weights": self.weights}


class WeightEMA:
    """``train.ema_decay``: an exponential moving average of the weights, updated on the device after every
    step (no host synchronisation). The probes score the average as well as the raw weights, and
    ``keep_best`` may keep either. In the logs of the cosine schedule NIAH climbed mostly in the last minute,
    while the learning rate fell (attempt 18 F: 0.78 -> 0.88): averaging gives low-noise weights earlier."""

    def __init__(self, model, decay: float):
        import torch

        self.decay, self.n = float(decay), 0
        self.params = [p for p in model.parameters() if p.dtype.is_floating_point]
        self.avg = [p.detach().clone() for p in self.params]
        self._torch = torch

    def update(self) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))     # short warm-up: early weights fade fast
        with self._torch.no_grad():
            self._torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1.0 - d)

    @contextlib.contextmanager
    def applied(self):
        """The average in the model's parameters (copied in place: compiled CUDA graphs keep their addresses)."""
        with self._torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.avg):
                p.copy_(a)
            try:
                yield
            finally:
                for p, s in zip(self.params, saved):
                    p.copy_(s)


def context_weights(t_cfg: dict) -> dict:
    """Loss weight of prompt tokens per task: ``context_weight`` (default) updated by ``context_weight_by_task``."""
    return {"default": float(t_cfg["context_weight"]),
            **{k: float(v) for k, v in (t_cfg.get("context_weight_by_task") or {}).items()}}


def _context_weight_note(t_cfg: dict) -> str:
    """Model-card suffix naming the per-task prompt-token weights, if any."""
    by_task = t_cfg.get("context_weight_by_task") or {}
    return f" ({', '.join(f'{k} {v:g}' for k, v in by_task.items())})" if by_task else ""


def _collate(batch, pad_id: int, context_weight: dict, device, width: int | None = None):
    """Right-padded ids and per-token loss weights; ``width`` fixes the padded width (longer samples are cut).
    ``context_weight``: prompt-token weight per task (``context_weights``)."""
    import torch

    width = width or max(len(s["ids"]) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    w = torch.zeros((len(batch), width), dtype=torch.float32)
    for i, s in enumerate(batch):
        n, p = min(len(s["ids"]), width), min(s["prompt_len"], width)
        ids[i, :n] = s["ids"][:n]
        # weight of predicting token t (position t-1 predicts it): context tokens light, answer tokens 1
        w[i, 1:p] = context_weight.get(s["task"], context_weight["default"])
        w[i, p:n] = 1.0
    if device.type == "cuda":   # pinned: a copy from pageable memory would wait for the GPU (no overlap)
        ids, w = ids.pin_memory(), w.pin_memory()
    return ids.to(device, non_blocking=True), w.to(device, non_blocking=True)


def batch_shape(t_cfg: dict, L: int, compiled: bool) -> tuple[int, int | None]:
    """(samples per batch, padded width or None = longest sample) of a length-L batch."""
    return max(1, t_cfg["tokens_per_batch"] // L), (L + t_cfg["answer_pad"] if compiled else None)


def size_config(cfg: dict, size: str) -> tuple[dict, dict]:
    """(architecture, run config) of one size: per-size ``train``/``eval`` entries override the shared ones."""
    entry = dict(cfg["sizes"][size])
    run = {k: dict(cfg[k]) for k in ("train", "eval")}
    for k in ("train", "eval"):
        run[k].update(entry.pop(k, {}) or {})
    return entry, run


def train_one(cfg: dict, work: Path, size: str) -> None:
    import torch
    from transformers import AutoTokenizer

    out_dir = work / "models" / size
    if (out_dir / "training_log.json").exists():
        return
    arch, run = size_config(cfg, size)
    t_cfg = run["train"]
    torch.manual_seed(cfg["seed"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")   # cpu: smoke tests only
    tok = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    model = new_model(arch, t_cfg, len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    init = None
    if t_cfg.get("init_from"):
        init_path = init_from_path(t_cfg, size)
        init_weights(model, tok, init_path)
        init = earlier_stage(init_path)
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t_cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=t_cfg["lr"], betas=(0.9, 0.95),
                            fused=True)     # fused: skips non-finite steps on the device (optimizer_step)
    lengths = sorted(cfg["data"]["lengths"])
    share = {L: cfg["data"]["length_share"][L] for L in lengths}
    pool = StreamPool(Path(cfg["data"]["stream"]), cfg["data"]["pool_cap"])
    t0 = time.time()                           # the budget counts compilation and probes too
    budget = t_cfg["minutes"] * 60
    max_steps = t_cfg.get("steps") or float("inf")
    # Eager, ~40 % of the step is unfused elementwise kernels (bench/bench_train_step.py --profile): `compile`
    # pads every batch of a length to one width (one static shape per length) and compiles the forward + loss
    # (mode e.g. "reduce-overhead" = CUDA graphs). Every length's shape is compiled before the first step
    # (while the generator processes fill the stream), not in the middle of the length curriculum.
    compiled = bool(t_cfg.get("compile"))
    step_loss = _weighted_loss
    if compiled:
        step_loss = torch.compile(_weighted_loss, mode=t_cfg.get("compile_mode") or None, dynamic=False)
        for L in lengths:
            ids = torch.full(batch_shape(t_cfg, L, True), tok.pad_token_id, dtype=torch.long, device=device)
            w = torch.ones(ids.shape, dtype=torch.float32, device=device)
            for _ in range(3):                # CUDA graphs are recorded on a shape's third call
                model.zero_grad(set_to_none=True)   # as optimizer_step: graph outputs are not accumulated into
                step_loss(model, ids, w)[0].backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    warmup_s = time.time() - t0
    pool.wait(lengths[:1])
    probes = _probe_set(cfg, tok)
    rng = random.Random(cfg["seed"])
    log, probe_log, step, seen_tokens = [], [], 0, 0
    skipped_t = torch.zeros((), device=device)
    ctx_w = context_weights(t_cfg)
    t1 = time.time()
    train_budget = max(1.0, budget - (t1 - t0))     # the lr schedule and the curriculum follow this part
    next_probe = (t_cfg.get("probe_seconds", 0) if probes else 0) or float("inf")
    model.train()

    best = BestWeights() if t_cfg.get("keep_best") else None
    ema = WeightEMA(model, t_cfg["ema_decay"]) if t_cfg.get("ema_decay") else None

    evaluator = DenseEvaluator(model) if probes else None

    def take_probe(elapsed: float) -> None:
        for weights in ("raw", "ema") if ema is not None else ("raw",):
            with ema.applied() if weights == "ema" else contextlib.nullcontext():
                result = _probe(evaluator, model, tok, probes, run["eval"])
                probe_log.append({"seconds": round(elapsed, 1), "step": step, "weights": weights, **result})
                print(f"[{size}] probe t={elapsed:.0f}s {probe_log[-1]}", flush=True)
                if best is not None:
                    best.offer(model, sum(result.values()) / len(result), step, round(elapsed, 1), weights)

    def check_skipped() -> int:
        skipped = int(skipped_t.item())
        if skipped > t_cfg.get("max_skipped_steps", 200):
            raise RuntimeError(f"[{size}] {skipped} non-finite gradient steps: lower train.lr")
        return skipped

    while True:
        elapsed = time.time() - t1
        frac = max(elapsed / train_budget, step / max_steps)   # progress: time or steps, whichever ends first
        if frac >= 1.0:
            break
        if step % 20 == 0:
            pool.refresh()
            if step % 200 == 0:
                write_progress(pool.stream, size, frac)     # data.phases: the generators follow it
        if elapsed >= next_probe:
            take_probe(elapsed)
            next_probe += t_cfg["probe_seconds"]
        lr = t_cfg["lr"] * min(1.0, (step + 1) / t_cfg["warmup_steps"]) * (
            t_cfg["min_lr_fraction"] + (1 - t_cfg["min_lr_fraction"]) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        avail = [L for L in lengths if pool.by_len.get(L)]
        L = rng.choices(avail, weights=length_weights(avail, share, t_cfg.get("curriculum", 0.0), frac))[0]
        k, width = batch_shape(t_cfg, L, compiled)
        batch = [pool.by_len[L][rng.randrange(len(pool.by_len[L]))] for _ in range(k)]
        ids, w = _collate(batch, tok.pad_token_id, ctx_w, device, width=width)
        loss, ce, wt = step_loss(model, ids, w)
        skipped_t += optimizer_step(model, opt, loss)
        if ema is not None:
            ema.update()
        seen_tokens += int(ids.numel())
        if step % 50 == 0:                     # the only host synchronisation of the loop
            ans = (wt == 1.0)
            ans_loss = float((ce.detach() * ans).sum() / ans.sum())
            skipped = check_skipped()
            log.append({"step": step, "seconds": round(elapsed, 1), "lr": lr, "skipped": skipped, "length": L,
                        "loss": float(loss.detach()),
                        "answer_loss": ans_loss, "tokens": seen_tokens, "stream_samples": pool.loaded})
            print(f"[{size}] step {step} t={elapsed:.0f}s L={L} loss={float(loss.detach()):.3f} answer={ans_loss:.3f} "
                  f"tok={seen_tokens / 1e6:.0f}M stream={pool.loaded}", flush=True)
        step += 1
    skipped = check_skipped()
    train_s = time.time() - t0
    selected = None
    if best is not None and probes:
        take_probe(time.time() - t1)         # the final weights compete too
        selected = best.restore(model)
        print(f"[{size}] kept the {selected['weights']} weights of step {selected['step']} "
              f"(probe mean {selected['score']:.3f})", flush=True)
    model.eval()
    save_weights(model, tok, out_dir)        # before evaluation: a cut-off run still leaves the weights
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    write_log(out_dir, {"size": size, "n_params": n_params, "gpu": gpu, "steps": step, "skipped_steps": skipped,
                        "tokens": seen_tokens, "compile_seconds": round(warmup_s, 1),
                        "seconds": train_s, "stream_samples": pool.loaded, "config": cfg, "log": log,
                        "probes": probe_log, "selected": selected, **({"init": init} if init else {})})
    if run["eval"].get("after_training", True):
        evaluate_size(cfg, work, size, model, tok)


def evaluate_size(cfg: dict, work: Path, size: str, model=None, tok=None) -> None:
    """Dense evaluation of a trained size; adds the results to training_log.json and writes the model card."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = work / "models" / size
    if (out_dir / "README.md").exists():
        return
    if model is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        tok = AutoTokenizer.from_pretrained(str(out_dir))
        model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.bfloat16).to(device).eval()
    _, run = size_config(cfg, size)
    record = json.loads((out_dir / "training_log.json").read_text())
    record["eval"] = evaluate(cfg, run["eval"], model, tok)
    record["n_params"] = sum(p.numel() for p in model.parameters())
    write_log(out_dir, record)
    write_card(out_dir, size, record)


def write_card(out_dir: Path, size: str, record: dict) -> None:
    """README.md (model card) and the exact training config of this size, to retrain it: recipe.yaml (the last
    stage; ``model_card`` describes it) and recipe.stage<i>.yaml for the earlier stages of a continued model."""
    stages = training_stages(record)
    for i, stage in enumerate(stages, 1):
        recipe = json.loads(json.dumps(stage["config"]))
        recipe["data"].pop("stream", None)           # a path of the training machine
        recipe["data"]["length_share"] = {int(k): v for k, v in recipe["data"]["length_share"].items()}  # JSON keys
        with atomic_path(out_dir / recipe_name(i, len(stages))) as tmp:
            tmp.write_text(f"# Exact recipe of models/{size}{f', stage {i} of {len(stages)}' if len(stages) > 1 else ''}"
                           f" (from its training_log.json). {retrain_note(size, stages)}\n"
                           + yaml.safe_dump(recipe, sort_keys=False))
    with atomic_path(out_dir / "README.md") as tmp:
        tmp.write_text(model_card(size, recipe, record))


def training_stages(record: dict) -> list[dict]:
    """The runs that made a model, first to last: the earlier stages a continued run recorded (``init``), then it."""
    stages = [record]
    while "config" in stages[0].get("init", {}):
        stages.insert(0, stages[0]["init"])
    return stages


def recipe_name(i: int, n: int) -> str:
    return "recipe.yaml" if i == n else f"recipe.stage{i}.yaml"


def retrain_commands(size: str, stages: list[dict]) -> list[str]:
    """Commands that retrain a size from its recipe files, stage by stage: each earlier stage works in the folder
    the next stage's ``train.init_from`` reads (``<work>/models/<size>``)."""
    n = len(stages)
    works = [str(init_from_path(size_config(nxt["config"], size)[1]["train"], size).parent.parent)
             for nxt in stages[1:]] + ["DIR"]
    return [f"python -m workflow_scripts.train_reference --config models/{size}/{recipe_name(i, n)} "
            f"--work {works[i - 1]} --sizes {size}" for i in range(1, n + 1)]


def retrain_note(size: str, stages: list[dict]) -> str:
    return "Retrain this size (a CUDA GPU):\n" + "\n".join(f"#   {c}" for c in retrain_commands(size, stages))


# Evaluation samples: seeds 43 + i (the paper's Random(43 + i)). Probe (validation) samples: seeds 5,000,043 + i,
# disjoint from the evaluation (i < 10^6) and from training (seed_offset 10^7 up), so that choosing the weights by
# the probes (train.keep_best) never sees a test sample.
EVAL_SEED = 43
PROBE_SEED = 5_000_043


def _probe_set(cfg: dict, tok) -> dict:
    """A few fixed validation prompts (``PROBE_SEED``) to follow retrieval accuracy during training."""
    from .tasks import load_task_class
    from .tasks.base import Renderer

    out = {}
    for spec in cfg["train"].get("probes", []):
        task, length = spec.split("@")
        cls = load_task_class(task)
        t = cls(Renderer(tok), int(length), "direct", seed=PROBE_SEED, **eval_task_params(cfg, task))
        out[spec] = (cls, [t.build(i) for i in range(cfg["train"].get("probe_samples", 8))])
    return out


def _probe(ev: "DenseEvaluator", model, tok, probes: dict, e: dict) -> dict:
    ev.sync(model)
    return {spec: round(ev.accuracy(tok, cls, samples, max_new_tokens(e, spec.split("@")[0])), 3)
            for spec, (cls, samples) in probes.items()}


def max_new_tokens(e: dict, task: str) -> int:
    return e.get("max_new_tokens_by_task", {}).get(task, e["max_new_tokens"])


def generation_accuracy(generate, tok, cls, samples, max_new_tokens: int, tokens_per_batch: int = 65536,
                        predictions: list | None = None) -> float:
    """Mean score of task class ``cls`` over ``samples``, generated in batches (left padding) by
    ``generate(prompts, max_new_tokens)`` (a :class:`GenerationOutput`). ``predictions``: a list that receives
    (sample, decoded prediction) pairs."""
    prompts = [tok(s.prompt, add_special_tokens=False)["input_ids"] for s in samples]
    bs = max(1, tokens_per_batch // max(len(p) + max_new_tokens for p in prompts))
    scores = []
    for b in range(0, len(samples), bs):
        gen = generate(prompts[b:b + bs], max_new_tokens)
        for s, toks in zip(samples[b:b + bs], gen.tokens):
            text = tok.decode(toks, skip_special_tokens=True)
            scores.append(cls.score(text, s.gold))
            if predictions is not None:
                predictions.append((s, text))
    return sum(scores) / len(scores)


class DenseEvaluator:
    """Dense greedy accuracy of a model through the workflow's own inference path: a copy of the weights (bf16
    on a GPU, as shipped; fp32 on the CPU, where bf16 matmuls are slow) with sparse_kernels' attention and a
    dense :class:`SparseSession`, whose decode runs from a static cache in a CUDA graph on a GPU. Plain HF
    generation spent ~30 s per probe of a training run (launch-bound decode steps), a fifth of the training
    budget at four probes. ``sync`` copies the current weights of the trained model into the copy."""

    def __init__(self, model):
        import copy

        import torch

        from sparse_kernels.hf import enable
        from sparse_kernels.hf.session import SparseSession

        cuda = next(model.parameters()).device.type == "cuda"
        self.model = enable(copy.deepcopy(model).to(torch.bfloat16 if cuda else torch.float32)).eval()
        self.session = SparseSession(None, None, executor="auto")

    def sync(self, model) -> None:
        import torch

        with torch.no_grad():
            self.model.load_state_dict(model.state_dict())    # cast to the copy's dtype

    def accuracy(self, tok, cls, samples, max_new_tokens: int, tokens_per_batch: int = 65536,
                 predictions: list | None = None) -> float:
        """Mean score of ``cls`` over ``samples`` (:func:`generation_accuracy`)."""
        from sparse_kernels.hf.generate import greedy_generate

        def generate(prompts, n):
            return greedy_generate(self.model, prompts, n, {tok.eos_token_id}, tok.pad_token_id, session=self.session)

        return generation_accuracy(generate, tok, cls, samples, max_new_tokens, tokens_per_batch, predictions)


def evaluate(cfg: dict, e: dict, model, tok) -> list[dict]:
    """Dense accuracy per task and length on the evaluation seeds (the default study's samples)."""
    from .tasks import load_task_class
    from .tasks.base import LengthError, Renderer

    ev = DenseEvaluator(model)
    results = []
    for task in e.get("tasks", cfg["data"]["tasks"]):
        cls = load_task_class(task)
        for length in e["lengths"]:
            t = cls(Renderer(tok), length, "direct", seed=EVAL_SEED, **eval_task_params(cfg, task))
            try:
                samples = [t.build(i) for i in range(e["samples"])]
            except LengthError as err:
                print(f"eval {task}@{length}: skipped ({err})", flush=True)
                continue
            preds = [] if hasattr(cls, "question_results") else None      # story retrieval: where it fails
            acc = ev.accuracy(tok, cls, samples, max_new_tokens(e, task), e.get("tokens_per_batch", 65536), preds)
            results.append({"task": task, "length": length, "n": len(samples), "accuracy": acc})
            print(f"eval {task}@{length}: {acc:.3f}", flush=True)
            if preds is not None:
                results[-1]["breakdown"] = cls.breakdown([r for s, p in preds for r in cls.question_results(s, p)])
                print(f"  {results[-1]['breakdown']}", flush=True)
    return results


def save_weights(model, tok, out_dir: Path) -> None:
    """bf16 safetensors shards (<= 15 MB each) and the tokenizer, written atomically to ``out_dir``."""
    import torch

    with atomic_dir(out_dir) as tmp:
        model.to(torch.bfloat16)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(str(tmp), max_shard_size="15MB")
        tok.save_pretrained(str(tmp))
        for f in tmp.iterdir():
            f.chmod(0o644)


def write_log(out_dir: Path, record: dict) -> None:
    with atomic_path(out_dir / "training_log.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def trained_on(record: dict) -> str:
    """The GPU a training log was made on; logs written before the trainer recorded it come from H100 runs."""
    return record.get("gpu", "NVIDIA H100")


def model_card(size: str, cfg: dict, record: dict) -> str:
    """The model card (README.md) from the recipe and the run's record (training_log.json)."""
    n_params, steps, tokens, seconds = record["n_params"], record["steps"], record["tokens"], record["seconds"]
    log, probe_log, results = record["log"], record["probes"], record["eval"]
    stream_samples = record["stream_samples"]
    arch, run = size_config(cfg, size)
    t_cfg, lengths = run["train"], run["eval"]["lengths"]
    tasks = run["eval"].get("tasks", cfg["data"]["tasks"])
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
    probes = "; ".join(f"{p['seconds'] / 60:.1f} min{' (EMA weights)' if p.get('weights') == 'ema' else ''}: "
                       + ", ".join(f"{k} {v:.2f}" for k, v in p.items() if k not in ("seconds", "step", "weights"))
                       for p in probe_log) or "none"
    sel = record.get("selected")
    if sel:
        kept = "the weights' moving average (`train.ema_decay`) at " if sel.get("weights") == "ema" else ""
        probes += (f" (validation seeds); **weights kept: {kept}step {sel['step']}** at {sel['seconds'] / 60:.1f} min, "
                   f"the best probe mean ({sel['score']:.2f}; `train.keep_best`)")
    d = cfg["data"]
    stages = training_stages(record)
    phases = "".join(f"; from {ph['from']:.0%} of training on, {ph['share']:.0%} of the chunks of "
                     + ", ".join(f"{t} with {json.dumps(v)}" for t, v in ph['task_params'].items())
                     for ph in d.get("phases") or [])
    earlier = ""
    if len(stages) > 1:
        earlier = "".join(
            f"| stage {i} of {len(stages)} | {st['steps']} steps, {st['tokens'] / 1e6:.0f}M tokens, "
            f"{st['seconds'] / 60:.1f} min on one {trained_on(st)} (compilation included), recipe "
            f"`{recipe_name(i, len(stages))}`; weights kept: "
            f"{(st.get('selected') or {}).get('weights', 'final')} at step "
            f"{(st.get('selected') or {}).get('step', st['steps'])} |\n" for i, st in enumerate(stages[:-1], 1))
        earlier += (f"| stage {len(stages)} of {len(stages)} | continued from stage {len(stages) - 1}'s weights "
                    f"(`train.init_from`); the rows below describe this stage (`recipe.yaml`) |\n")
    retrain = "; then ".join(f"`{c}`" for c in retrain_commands(size, stages))
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
| RoPE base / max positions | {t_cfg['rope_theta']:g} / {t_cfg['max_position_embeddings']} |
{earlier}| training data | {', '.join(f"{t} ({d.get('task_weights', {}).get(t, 1.0):g})" for t in d['tasks'])} (task weights) at lengths {', '.join(f"{L} ({d['length_share'][L]:g})" for L in d['lengths'])} (token shares){phases}, generated while training ({stream_samples:,} fresh samples read), seeds offset by {d['seed_offset']:,} (disjoint from evaluation) |
| objective | next-token loss, weight 1 on answer tokens and {t_cfg['context_weight']} on prompt tokens{_context_weight_note(t_cfg)} |
| training | {steps} steps of {t_cfg['tokens_per_batch']} tokens, {tokens / 1e6:.0f}M tokens (padded), {seconds / 60:.1f} min on one {trained_on(record)} (compilation included), AdamW lr {t_cfg['lr']:g} (warm-up {t_cfg['warmup_steps']} steps, cosine on elapsed time), length curriculum {t_cfg.get('curriculum', 0):g} |
| loss (weighted / answer-only) | start {first['loss']:.3f} / {first['answer_loss']:.3f}, middle {mid['loss']:.3f} / {mid['answer_loss']:.3f}, end {last['loss']:.3f} / {last['answer_loss']:.3f} |
| retrieval probes during training | {probes} |
| weights | bf16 safetensors, shards ≤ 15 MB |
{f"| note | {record['note']} |" + chr(10) if record.get('note') else ''}
## Dense accuracy (direct mode, {run['eval']['samples']} evaluation samples per cell, seeds 43 + i)

{chr(10).join(rows)}

Retrain this size exactly (needs a CUDA GPU): {retrain}; the whole family: `snakemake train_reference`
(`studies/train_reference.yaml`{', then `studies/train_reference_continue.yaml`' if len(stages) > 1 else ''}).
"""


def family_table(models_dir: Path) -> str:
    """models/README.md: the family side by side (from each size's training_log.json), smallest first: dense
    accuracy per task (mean over the evaluated lengths) and the mean over all task x length cells."""
    records = [json.loads(f.read_text()) for f in sorted(Path(models_dir).glob("*/training_log.json"))]
    records = sorted((r for r in records if r.get("eval")), key=lambda r: r["n_params"])
    tasks = list(dict.fromkeys(r["task"] for rec in records for r in rec["eval"]))
    lengths = sorted({r["length"] for rec in records for r in rec["eval"]})

    def mean(vals):
        return f"{sum(vals) / len(vals):.2f}" if vals else "n/a"

    rows = ["| model | parameters | steps | trained on | " + " | ".join(tasks) + " | **mean** |",
            "|---|---|---|---|" + "---|" * (len(tasks) + 1)]
    for rec in records:
        per_task = [mean([r["accuracy"] for r in rec["eval"] if r["task"] == t]) for t in tasks]
        stages = training_stages(rec)                  # a continued model: one entry per stage, " + " between
        steps = " + ".join(f"{st['steps']:,}" for st in stages)
        gpus = " + ".join(dict.fromkeys(trained_on(st) for st in stages))
        rows.append(f"| [{rec['size']}]({rec['size']}/README.md) | {rec['n_params'] / 1e6:.1f}M | {steps} | "
                    f"{gpus} | " + " | ".join(per_task)
                    + f" | **{mean([r['accuracy'] for r in rec['eval']])}** |")
    return f"""# Reference model family

Small Qwen2 models trained by this project on its own task generators (`studies/train_reference.yaml`, then
`studies/train_reference_continue.yaml` from those weights; `docs/reference_models.md`); the default study
(`config.yaml`) runs them offline. Dense accuracy in the direct-answer mode on the evaluation seeds (43 + i), mean
over the lengths {', '.join(str(L) for L in lengths)}; per-length tables in each model card. Steps and GPUs: one
entry per training stage. Regenerate this table with
`python -m workflow_scripts.train_reference --stage family --work models`.

{chr(10).join(rows)}
"""


def load_config(paths: list[str]) -> dict:
    """The recipe, later files deep-merged over earlier ones (e.g. an overlay that adds ablation sizes)."""
    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(dict(a[k]), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    cfg: dict = {}
    for p in paths:
        cfg = merge(cfg, yaml.safe_load(open(p)) or {})
    return cfg


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", help="recipe YAML (repeatable: later files override earlier)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--stage", choices=["all", "tokenizer", "train", "train-one", "eval", "family"], default="all",
                    help="all = tokenizer + train (+ evaluation unless eval.after_training is false); "
                         "eval = evaluate trained sizes that have no model card yet; "
                         "family = WORK/README.md, the table of the sizes in WORK (e.g. --work models)")
    ap.add_argument("--size", help="train-one: the size to train")
    ap.add_argument("--sizes", help="train: comma-separated subset of the recipe's sizes")
    a = ap.parse_args(argv)
    a.config = a.config or [str(ROOT / "studies" / "train_reference.yaml")]
    cfg = load_config(a.config)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg["data"].setdefault("stream", str(work / "stream"))
    if a.stage in ("all", "tokenizer"):
        stage_tokenizer(cfg, work)
    if a.stage == "train-one":
        train_one(cfg, work, a.size)
    if a.stage in ("all", "train"):
        sizes = a.sizes.split(",") if a.sizes else list(cfg["sizes"])
        unknown = [s for s in sizes if s not in cfg["sizes"]]
        if unknown:
            raise SystemExit(f"--sizes: unknown size(s) {unknown}; the recipe has {list(cfg['sizes'])}")
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        check_phases(cfg)                              # bad phases fail here, not in the generator processes
        for s in sizes:
            t_cfg = size_config(cfg, s)[1]["train"]
            if t_cfg.get("init_from") and not list(init_from_path(t_cfg, s).glob("*.safetensors")):
                raise SystemExit(f"train.init_from of {s}: no *.safetensors weights in {init_from_path(t_cfg, s)}")
        stream = Path(cfg["data"]["stream"])
        shutil.rmtree(stream, ignore_errors=True)      # chunks of an earlier run would skew the length mix
        gens = start_generators(cfg, work, stream)
        cmd = [sys.executable, "-m", "workflow_scripts.train_reference", "--work", str(work), "--stage", "train-one"]
        for c in a.config:
            cmd += ["--config", c]
        try:
            if cfg["train"].get("concurrent"):      # sizes share the GPU (each gets fewer steps)
                procs = [subprocess.Popen(cmd + ["--size", s], cwd=str(ROOT)) for s in sizes]
                codes = [p.wait() for p in procs]
            else:                                     # each size alone on the GPU, one after another
                codes = [subprocess.call(cmd + ["--size", s], cwd=str(ROOT)) for s in sizes]
        finally:
            for g in gens:
                g.terminate()
        if any(codes):
            raise SystemExit(f"training failed: exit codes {dict(zip(sizes, codes))}")
    if a.stage == "eval":
        for s in (a.sizes.split(",") if a.sizes else list(cfg["sizes"])):
            evaluate_size(cfg, work, s)
    if a.stage == "family":           # --work: the folder that holds the sizes (models/ for the shipped family)
        with atomic_path(work / "README.md") as tmp:
            tmp.write_text(family_table(work))


if __name__ == "__main__":
    main()
