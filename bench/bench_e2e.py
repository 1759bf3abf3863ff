"""End-to-end benchmark: a random-weight model with Qwen2.5-7B's architecture (no download), prefill time,
decode time per token and peak memory for dense and every method at 10x compression.

    python bench/bench_e2e.py --out results/bench_e2e_32k --lengths 32768
    python bench/bench_e2e.py --out results/bench_e2e_128k --lengths 128000 --new-tokens 16

One length per invocation is meant to stay under ~8 minutes on one H100 (estimate, not measured: ~10 s per
dense 128K prefill); ``--budget-s`` (default 450) skips the remaining configurations after that. Every
configuration is warmed up once on a short prompt first so Triton / cuDNN compilation is not timed.

Configurations (``--methods``, comma separated):

* ``hf_sdpa``   — plain transformers attention (SDPA, torch picks the backend; DynamicCache) — the dense baseline;
* ``dense``     — our attention path with no method (dense prefill / decode through ``--executor``);
* ``vertical_slash``, ``flexprefill``, ``block_sparse`` (sparse prefill, dense decode), ``snapkv``,
  ``ada_snapkv`` (dense prefill, compressed cache), ``quest`` (dense prefill, sparse decode) at ``--ratio``
  (default 10) with the paper's budgets at the nominal length. FlexPrefill has no paper budget at 128000
  (the paper did not run it there): that row reports the KeyError.

Interface used (the HF integration, ``sparse_kernels.hf``): ``attention.enable(model)``,
``build.make_session(method, ratio, nominal_length=..., executor=...)`` -> ``SparseSession`` with
``prefill_method`` / ``decode_method`` attributes, and ``generate.greedy_generate(model, prompts,
max_new_tokens, eos_ids, pad_id, session=...)`` -> object with ``prefill_s``, ``decode_s``,
``decode_steps``. With ``--gpu-selection`` (default with the triton executor) the session's methods are
wrapped by ``sparse_kernels.triton.accelerate`` (GPU Quest selection, SnapKV scoring, V-S index).
TO BE FINISHED if that interface changes: only ``run_config`` touches it.

Output: ``<out>/bench_e2e.json`` and ``<out>/bench_e2e.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Qwen2.5-7B(-Instruct) architecture (config.json of the HF release), written out so nothing is downloaded.
QWEN25_7B = dict(
    architectures=["Qwen2ForCausalLM"], hidden_act="silu", hidden_size=3584, intermediate_size=18944,
    num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
    max_position_embeddings=131072 + 4096, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
    use_sliding_window=False, sliding_window=None, max_window_layers=28, attention_dropout=0.0,
    bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16",
)
ALL_METHODS = ("hf_sdpa", "dense", "vertical_slash", "flexprefill", "block_sparse", "snapkv", "ada_snapkv", "quest")


# tiny shape for a CPU smoke run of the plumbing (--smoke-cpu; not a benchmark)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1, vocab_size=1000)
DEV = "cuda"


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def build_model(layers: int | None = None, overrides: dict | None = None, dtype=torch.bfloat16):
    """Random-weight Qwen2ForCausalLM initialised directly on the device (bf16 on the GPU)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sparse_kernels.hf.attention import enable

    cfg = dict(QWEN25_7B)
    cfg.update(overrides or {})
    if layers:
        cfg["num_hidden_layers"] = cfg["max_window_layers"] = int(layers)
    config = Qwen2Config(**cfg)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(DEV):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    model.eval()
    enable(model)  # outside a session our attention is transformers' SDPA path
    return model


def run_config(model, name: str, L: int, nominal: int, new_tokens: int, ratio: float, executor: str,
               gpu_selection: bool, seed: int = 0) -> dict:
    from sparse_kernels.hf.build import make_session
    from sparse_kernels.hf.generate import greedy_generate

    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, max(2, model.config.vocab_size - 2000), (L,), generator=g).tolist()
    session = None
    if name != "hf_sdpa":
        session = make_session(name, 1.0 if name == "dense" else ratio, nominal_length=nominal, executor=executor)
        if gpu_selection:
            from sparse_kernels.triton import accelerate

            if session.prefill_method is not None:
                session.prefill_method = accelerate(session.prefill_method)
            if session.decode_method is not None:
                session.decode_method = accelerate(session.decode_method)
    cuda = DEV == "cuda"
    _sync()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    out = greedy_generate(model, [prompt], new_tokens, eos_ids=set(), pad_id=0, session=session)
    _sync()
    row = dict(method=name, L=L, prefill_s=round(out.prefill_s, 3), decode_steps=out.decode_steps,
               decode_ms_per_token=round(1e3 * out.decode_s / max(out.decode_steps, 1), 2))
    if cuda:
        row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        row["peak_over_weights_GiB"] = round((torch.cuda.max_memory_allocated() - base) / 2 ** 30, 2)
    stats = (out.extras or {}).get("stats")
    if stats:
        row.update({k: v for k, v in stats[0].items() if k in ("prefill_sparsity", "prefill_density",
                                                                 "decode_sparsity", "decode_density")})
    return row


def markdown(res) -> str:
    cols = [("method", "method"), ("L", "L"), ("prefill s", "prefill_s"), ("x hf_sdpa prefill", "prefill_speedup"),
            ("decode ms/token", "decode_ms_per_token"), ("x hf_sdpa decode", "decode_speedup"),
            ("peak GiB", "peak_mem_GiB"), ("prefill density", "prefill_density"),
            ("decode density", "decode_density"), ("error", "error")]
    md = ["# End-to-end benchmark (random-weight Qwen2.5-7B architecture, bf16, batch 1)", "",
          f"device {res['device']}; torch {res['torch']}; executor {res['args']['executor']}; "
          f"gpu selection {res['args']['gpu_selection']}; {res['args']['new_tokens']} new tokens; "
          f"wall {res.get('wall_s')} s",
          "", "| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in res["rows"]:
        vals = []
        for _, key in cols:
            v = r.get(key)
            vals.append("—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        md.append("| " + " | ".join(vals) + " |")
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="32768")
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--executor", default="triton", help="HF executor name: triton | torch | reference")
    ap.add_argument("--gpu-selection", default=None, choices=["on", "off"],
                    help="wrap methods with sparse_kernels.triton.accelerate (default: on with --executor triton)")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers (smoke runs)")
    ap.add_argument("--warmup-len", type=int, default=4096)
    ap.add_argument("--budget-s", type=float, default=450.0)
    ap.add_argument("--smoke-cpu", action="store_true", help="tiny model on the CPU: checks the plumbing only")
    args = ap.parse_args(argv)
    global DEV
    if args.smoke_cpu:
        DEV = "cpu"
    elif not torch.cuda.is_available():
        print("CUDA is required (or --smoke-cpu)")
        return 2
    try:
        import sparse_kernels.hf.build  # noqa: F401
        import sparse_kernels.hf.generate  # noqa: F401
    except ImportError as exc:
        print(f"the HF integration (sparse_kernels.hf) is not available yet: {exc}")
        return 3
    args.gpu_selection = (args.executor == "triton") if args.gpu_selection is None else args.gpu_selection == "on"
    lengths = [int(x) for x in args.lengths.split(",") if x]
    methods = [m for m in args.methods.split(",") if m]
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)", torch=torch.__version__,
               args=vars(args), rows=[])
    if args.smoke_cpu:
        model = build_model(args.layers or 2, TINY, torch.float32)
    else:
        model = build_model(args.layers)
    res["model_build_s"] = round(time.time() - t0, 1)
    if DEV == "cuda":
        res["weights_GiB"] = round(torch.cuda.memory_allocated() / 2 ** 30, 2)
    nominal_of = {16384: 16384, 32768: 32768, 65536: 65536, 128000: 128000, 131072: 128000}

    def save():
        res["wall_s"] = round(time.time() - t0, 1)
        (out / "bench_e2e.json").write_text(json.dumps(res, indent=1, default=str))
        (out / "bench_e2e.md").write_text(markdown(res))

    warmed = set()
    for L in lengths:
        nominal = nominal_of.get(L, L)
        base = None
        for name in methods:
            if time.time() - t0 > args.budget_s:
                res["rows"].append(dict(method=name, L=L, error="skipped: time budget"))
                continue
            try:
                if name not in warmed:  # compile kernels / pick backends on a short prompt (budget of L)
                    run_config(model, name, args.warmup_len, nominal, 2, args.ratio, args.executor, args.gpu_selection)
                    warmed.add(name)
                row = run_config(model, name, L, nominal, args.new_tokens, args.ratio, args.executor,
                                 args.gpu_selection)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                row = dict(method=name, L=L, error=f"{type(exc).__name__}: {exc}"[:300])
            if name == "hf_sdpa" and "prefill_s" in row:
                base = row
            if base and "prefill_s" in row:
                row["prefill_speedup"] = round(base["prefill_s"] / row["prefill_s"], 2)
                row["decode_speedup"] = round(base["decode_ms_per_token"] / row["decode_ms_per_token"], 2)
            res["rows"].append(row)
            print(row, flush=True)
            save()
    save()
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
