"""Sparse attention inside a real HF model (tiny random Qwen2, fp32, CPU) through our registered attention.

Every check compares with a computation written here from the spec, not with the code under test:
* full budget (ratio 1) of every method, and of combined pairs, reproduces transformers' own SDPA model;
* a prefill method's selection and output inside the model equal the method + reference executor applied
  to that layer's captured q/k/v, and the model uses that output (o_proj of it is the layer's output);
* KV compression keeps exactly the selected tokens per kv head (Ada-SnapKV: different lengths per head),
  and every decode step equals softmax attention over the full uncompressed cache with an explicit mask of
  the kept positions; a whole-model cross-check against transformers' DynamicCache with the same tokens
  evicted and explicit positions;
* Quest decode equals attention over brute-force chosen pages (per q head and shared per group), and the
  page summaries are kept up to date;
* left-padded batches of 4 give the same tokens, logits and per-row sparsity as one prompt at a time.
"""

from __future__ import annotations

import pytest
import torch

from sparse_kernels import reference
from sparse_kernels.hf import ATTN_IMPLEMENTATION, register
from sparse_kernels.hf.build import make_session
from sparse_kernels.hf.generate import greedy_generate, left_pad
from sparse_kernels.hf.session import SparseSession
from sparse_kernels.methods import build_method

PAD = 3
NEW = 5
LENGTHS = (210, 141)          # two prompts of different lengths -> a left-padded batch


@pytest.fixture(scope="module")
def models(tiny_model):
    from transformers import AutoModelForCausalLM

    register()
    sparse = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32,
                                                  attn_implementation=ATTN_IMPLEMENTATION).eval()
    dense = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    return sparse, dense


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 2000, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def dense_ref(models):
    return greedy_generate(models[1], _prompts(LENGTHS), NEW, set(), PAD, return_logits=True)


def _close_logits(a, b, atol=2e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


def _kpm(prompts):
    return left_pad(prompts, PAD, "cpu")[1].bool()


# ------------------------------------------------------------------------------------------ full budget = dense
FULL = ["dense", "vertical_slash", "flexprefill", "block_sparse", "snapkv", "ada_snapkv", "quest",
        "vertical_slash+quest", "block_sparse+ada_snapkv"]


@pytest.mark.parametrize("method", FULL)
def test_full_budget_reproduces_dense_model(models, dense_ref, method):
    ratio = (1, 1) if "+" in method else 1
    session = make_session(method, ratio, nominal_length=512)
    out = greedy_generate(models[0], _prompts(LENGTHS), NEW, set(), PAD, session=session, return_logits=True)
    assert out.tokens == dense_ref.tokens
    _close_logits(out.extras["logits"], dense_ref.extras["logits"])
    for st in out.extras["stats"]:
        assert st["prefill_density"] == pytest.approx(1.0) and st["decode_density"] == pytest.approx(1.0)
        assert st["decode_steps"] == NEW - 1


# ------------------------------------------------------------------------------------------ prefill methods
PREFILL = {
    "vertical_slash": dict(vertical_size=8, slash_size=66, last_q=64, block_size=32),
    "flexprefill": dict(alpha=0.1, min_budget=16, last_q=64, block_size=16),
    "block_sparse": dict(top_chunks=5),
}


@pytest.mark.parametrize("executor", ["reference", "torch"])
@pytest.mark.parametrize("name", list(PREFILL))
def test_prefill_inside_model_equals_reference_on_same_selection(models, name, executor):
    sparse = models[0]
    prompts = _prompts((333, 251), seed=1)
    layer = 1
    events, attn_out = [], []
    session = SparseSession(build_method(name, **PREFILL[name]), None, executor=executor,
                            hooks=[lambda ev: events.append(ev) if ev.phase == "prefill" else None])
    handle = sparse.model.layers[layer].self_attn.register_forward_hook(
        lambda mod, args, out: attn_out.append(out[0].detach().clone()))
    try:
        greedy_generate(sparse, prompts, 1, set(), PAD, session=session)
    finally:
        handle.remove()
    ev = next(e for e in events if e.layer == layer)
    kpm = _kpm(prompts)
    sel = build_method(name, **PREFILL[name]).select(ev.q, ev.k, kpm, ev.scale)   # independent selection
    for f in ("seq_lens", "pad_offsets"):
        assert torch.equal(getattr(sel, f), getattr(ev.selection, f))
    if name == "block_sparse":
        assert torch.equal(sel.indices, ev.selection.indices) and torch.equal(sel.counts, ev.selection.counts)
    else:
        for f in ("vertical_idx", "vertical_counts", "slash_offsets", "slash_counts"):
            assert torch.equal(getattr(sel, f), getattr(ev.selection, f)), f
    expected = reference.prefill_attention(ev.q, ev.k, ev.v, sel, ev.scale)
    real = kpm.view(2, 1, -1, 1)
    torch.testing.assert_close(ev.out * real, expected * real, atol=1e-5, rtol=0)
    # the model used exactly this output: the attention module's output is o_proj of it
    B, H, L, D = expected.shape
    o = sparse.model.layers[layer].self_attn.o_proj(expected.transpose(1, 2).reshape(B, L, H * D))
    torch.testing.assert_close(attn_out[0] * kpm.unsqueeze(-1), o * kpm.unsqueeze(-1), atol=1e-5, rtol=0)
    # and it is really sparse: well below full density, and different from dense attention
    dens = sel.density_computed()
    assert float(dens.max()) < 0.8
    dense = reference.dense_attention(ev.q, ev.k, ev.v, kpm, ev.scale)
    assert float((dense - expected).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------ KV compression
KV = {"snapkv": dict(token_capacity=80, window=32, kernel_size=5, local_window=16, n_sinks=4),
      "ada_snapkv": dict(token_capacity=80, window=32, kernel_size=5, local_window=16, n_sinks=4,
                         min_head_ratio=0.2)}


def _softmax_attend(q, k, v, keep, scale):
    """q [H, D] one decode query, k/v [Hkv, T, D], keep [Hkv, T] -> [H, D] (written from the definition)."""
    H, G = q.shape[0], k.shape[0]
    g = H // G
    out = torch.empty_like(q)
    for h in range(H):
        j = h // g
        s = (k[j] @ q[h]) * scale
        s = s.masked_fill(~keep[j], float("-inf"))
        out[h] = torch.softmax(s, -1) @ v[j]
    return out


@pytest.mark.parametrize("name", list(KV))
def test_kv_compression_keeps_selected_tokens_and_decodes_over_them(models, name):
    sparse = models[0]
    prompts = _prompts(LENGTHS, seed=2)
    kpm = _kpm(prompts)
    pre, dec, snap = {}, {}, {}

    def hook(ev):
        if ev.phase == "prefill":
            pre[ev.layer] = ev
            K, V, valid = ev.cache.view()
            snap[ev.layer] = (K.clone(), V.clone(), valid.clone())
        else:
            dec[(ev.layer, ev.step)] = ev

    session = SparseSession(None, build_method(name, **KV[name]), hooks=[hook])
    greedy_generate(sparse, prompts, NEW, set(), PAD, session=session)
    B, L = kpm.shape
    off = (~kpm).sum(-1)
    for layer, ev in pre.items():
        sel = build_method(name, **KV[name]).compress(ev.q, ev.k, kpm, ev.scale)      # independent
        assert torch.equal(sel.lengths, ev.kv_selection.lengths)
        K, V, valid = snap[layer]
        for b in range(B):
            for j in range(ev.k.shape[1]):
                n = int(sel.lengths[b, j])
                idx = sel.indices[b, j, :n] + off[b]
                assert torch.equal(idx, ev.kv_selection.indices[b, j, :n] + off[b])
                assert int(valid[b, j].sum()) == n and bool(valid[b, j, K.shape[2] - n:].all())
                torch.testing.assert_close(K[b, j, K.shape[2] - n:], ev.k[b, j, idx], atol=0, rtol=0)
                torch.testing.assert_close(V[b, j, K.shape[2] - n:], ev.v[b, j, idx], atol=0, rtol=0)
        assert int(sel.lengths.max()) < L - 50            # really compressed
        if name == "ada_snapkv":                          # per-head lengths differ within a row
            assert any(len(set(sel.lengths[b].tolist())) > 1 for b in range(B))
    assert len(dec) == 2 * (NEW - 1)
    for (layer, step), ev in dec.items():
        p = pre[layer]
        news = [dec[(layer, t)] for t in range(1, step + 1)]
        Kf = torch.cat([p.k] + [e.k for e in news], 2)
        Vf = torch.cat([p.v] + [e.v for e in news], 2)
        for b in range(B):
            keep = torch.zeros(Kf.shape[1], Kf.shape[2], dtype=torch.bool)
            for j in range(Kf.shape[1]):
                n = int(p.kv_selection.lengths[b, j])
                keep[j, p.kv_selection.indices[b, j, :n] + off[b]] = True
            keep[:, L:] = True
            expected = _softmax_attend(ev.q[b, :, 0], Kf[b], Vf[b], keep, ev.scale)
            torch.testing.assert_close(ev.out[b, :, 0], expected, atol=1e-5, rtol=0)


def test_snapkv_whole_model_matches_dynamic_cache_surgery(models):
    """Independent path: transformers' own SDPA + DynamicCache, the same tokens evicted per layer and head,
    decode positions continuing from the prompt length."""
    from transformers import DynamicCache

    sparse, dense = models
    prompt = _prompts((300,), seed=3)[0]
    kept = {}
    session = SparseSession(None, build_method("snapkv", **KV["snapkv"]),
                            hooks=[lambda ev: kept.__setitem__(ev.layer, ev.kv_selection) if ev.phase == "prefill"
                                   else None])
    ours = greedy_generate(sparse, [prompt], NEW, set(), PAD, session=session, return_logits=True)
    with torch.inference_mode():
        cache = DynamicCache(config=dense.config)
        ids = torch.tensor([prompt])
        out = dense(input_ids=ids, past_key_values=cache, use_cache=True)
        for i, lay in enumerate(cache.layers):
            idx = kept[i].indices[0]                                  # [Hkv, C] (same length per head)
            gi = idx.unsqueeze(-1).expand(-1, -1, lay.keys.shape[-1]).unsqueeze(0)
            lay.keys = lay.keys.gather(2, gi).contiguous()
            lay.values = lay.values.gather(2, gi).contiguous()
        logits = [out.logits[:, -1]]
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        toks = [int(nxt)]
        for t in range(NEW - 1):
            o = dense(input_ids=nxt, past_key_values=cache, use_cache=True,
                      position_ids=torch.tensor([[len(prompt) + t]]))
            logits.append(o.logits[:, -1])
            nxt = o.logits[:, -1].argmax(-1, keepdim=True)
            toks.append(int(nxt))
    assert ours.tokens[0] == toks
    _close_logits(ours.extras["logits"], [x.float() for x in logits], atol=5e-5)
    # a wrong decode position (e.g. from the shortened cache length) would change the logits
    full = greedy_generate(dense, [prompt], NEW, set(), PAD, return_logits=True)
    assert float((full.extras["logits"][-1] - ours.extras["logits"][-1]).abs().max()) > 1e-4


# ------------------------------------------------------------------------------------------ Quest
@pytest.mark.parametrize("share", [False, True], ids=["per_q_head", "share_pages"])
def test_quest_decode_equals_bruteforce_pages(models, share):
    sparse = models[0]
    prompts = _prompts(LENGTHS, seed=4)
    kpm = _kpm(prompts)
    T, p = 64, 16
    pre, dec = {}, {}
    session = SparseSession(None, build_method("quest", token_budget=T, page_size=p, share_pages=share),
                            hooks=[lambda ev: (pre if ev.phase == "prefill" else dec).__setitem__(
                                ev.layer if ev.phase == "prefill" else (ev.layer, ev.step), ev)])
    greedy_generate(sparse, prompts, NEW, set(), PAD, session=session)
    B, L = kpm.shape
    off = (~kpm).sum(-1)
    lens = kpm.sum(-1)
    for (layer, step), ev in dec.items():
        Kf = torch.cat([pre[layer].k] + [dec[(layer, t)].k for t in range(1, step + 1)], 2)
        Vf = torch.cat([pre[layer].v] + [dec[(layer, t)].v for t in range(1, step + 1)], 2)
        assert ev.mask.shape[-1] == Kf.shape[2]                   # attended over the full cache
        torch.testing.assert_close(ev.cache.view()[0][:, :, :Kf.shape[2]], Kf, atol=0, rtol=0)
        H, G = ev.q.shape[1], Kf.shape[1]
        g = H // G
        for b in range(B):
            o, n = int(off[b]), int(lens[b]) + step                  # real tokens incl. the newest
            keys = Kf[b, :, o:]                                      # row-local [Hkv, n, D]
            npages = -(-n // p)
            pmin = torch.stack([keys[:, i * p:(i + 1) * p].amin(1) for i in range(npages)], 1)  # [Hkv, P, D]
            pmax = torch.stack([keys[:, i * p:(i + 1) * p].amax(1) for i in range(npages)], 1)
            if layer == max(pre):
                st = session.quest_states[layer]
                if step == NEW - 1:                                  # summaries up to date after all appends
                    torch.testing.assert_close(st.page_min[b, :, :npages], pmin, atol=0, rtol=0)
                    torch.testing.assert_close(st.page_max[b, :, :npages], pmax, atol=0, rtol=0)
            q = ev.q[b, :, 0]                                        # [H, D]
            bound = torch.stack([(torch.maximum(q[h] * pmin[h // g], q[h] * pmax[h // g])).sum(-1)
                                 for h in range(H)])                 # [H, P]
            if share:
                bound = bound.view(G, g, -1).sum(1).repeat_interleave(g, 0)
            cur = (n - 1) // p
            keep = torch.zeros(H, Kf.shape[2], dtype=torch.bool)
            for h in range(H):
                hist = list(range(cur)) if cur <= T // p else \
                    sorted(torch.topk(bound[h, :cur], T // p).indices.tolist())
                pages = hist + [cur]
                assert ev.selection.pages[b, h, :int(ev.selection.counts[b, h])].tolist() == pages
                for i in pages:
                    keep[h, o + i * p:o + min((i + 1) * p, n)] = True
            assert int(keep.sum(-1).max()) <= T + p and cur > T // p
            exp = torch.stack([torch.softmax(((Kf[b, h // g] @ q[h]) * ev.scale).masked_fill(~keep[h], float("-inf")),
                                             -1) @ Vf[b, h // g] for h in range(H)])
            torch.testing.assert_close(ev.out[b, :, 0], exp, atol=1e-5, rtol=0)
    assert len(dec) == 2 * (NEW - 1)


# ------------------------------------------------------------------------------------------ batching
BATCH_METHODS = {
    "dense": lambda: SparseSession(None, None),
    "vertical_slash": lambda: SparseSession(build_method("vertical_slash", **PREFILL["vertical_slash"]),
                                          None),
    "quest": lambda: SparseSession(None, build_method("quest", token_budget=64)),
    "ada_snapkv": lambda: SparseSession(None, build_method("ada_snapkv", **KV["ada_snapkv"])),
    "block_sparse+snapkv": lambda: SparseSession(build_method("block_sparse", top_chunks=5),
                                                 build_method("snapkv", **KV["snapkv"])),
}


@pytest.mark.parametrize("name", list(BATCH_METHODS))
def test_batch_of_4_equals_one_at_a_time(models, name):
    prompts = _prompts((150, 231, 190, 170), seed=5)
    four = greedy_generate(models[0], prompts, NEW, set(), PAD, session=BATCH_METHODS[name](), return_logits=True)
    for i, p in enumerate(prompts):
        one = greedy_generate(models[0], [p], NEW, set(), PAD, session=BATCH_METHODS[name](), return_logits=True)
        assert four.tokens[i] == one.tokens[0]
        _close_logits([x[i:i + 1] for x in four.extras["logits"]], one.extras["logits"], atol=5e-5)
        for key, val in one.extras["stats"][0].items():
            assert four.extras["stats"][i][key] == pytest.approx(val, abs=1e-9), key


# ------------------------------------------------------------------------------------------ executors
def test_executors_agree_inside_the_model(models):
    """The memory-bounded torch executor and an adapter for reference-signature namespaces (how the Triton
    kernels plug in) give the reference executor's logits, for prefill, per-head-length decode and Quest."""
    from types import SimpleNamespace

    from sparse_kernels.hf.executors import NamespaceExecutor, TorchExecutor

    ns = SimpleNamespace(name="ns", dense_attention=reference.dense_attention,
                         prefill_attention=reference.prefill_attention, quest_attention=reference.quest_attention)
    prompts = _prompts(LENGTHS, seed=6)
    combos = [(dict(PREFILL["vertical_slash"]), "vertical_slash", "quest", dict(token_budget=64)),
              (dict(top_chunks=5), "block_sparse", "ada_snapkv", dict(KV["ada_snapkv"]))]
    for pkw, pname, dname, dkw in combos:
        runs = {}
        for ex in ("reference", TorchExecutor(max_elements=4096), NamespaceExecutor(ns)):
            s = SparseSession(build_method(pname, **pkw), build_method(dname, **dkw), executor=ex)
            runs[getattr(ex, "name", ex)] = greedy_generate(models[0], prompts, NEW, set(), PAD, session=s,
                                                            return_logits=True)
        for name in ("torch", "ns"):
            assert runs[name].tokens == runs["reference"].tokens
            _close_logits(runs[name].extras["logits"], runs["reference"].extras["logits"], atol=2e-5)


def test_namespace_executor_can_route_dense_prefill_to_sdpa(models):
    """With ``sdpa_dense_prefill`` (how the Triton executor runs on CUDA) a dense prefill of a left-padded batch
    goes to the SDPA path, never to the namespace's kernel, and the logits stay the reference executor's."""
    from types import SimpleNamespace

    from sparse_kernels.hf.executors import NamespaceExecutor

    prefill_calls = []

    def dense(q, k, v, key_padding_mask=None, scale=None):
        if q.shape[2] == k.shape[2]:
            prefill_calls.append(q.shape)
        return reference.dense_attention(q, k, v, key_padding_mask, scale)

    ns = SimpleNamespace(name="ns", dense_attention=dense, prefill_attention=reference.prefill_attention,
                         quest_attention=reference.quest_attention)
    prompts = _prompts(LENGTHS, seed=7)
    runs = {}
    for name, ex in (("reference", "reference"), ("kernel", NamespaceExecutor(ns)),
                     ("sdpa", NamespaceExecutor(ns, sdpa_dense_prefill=True))):
        before = len(prefill_calls)
        runs[name] = greedy_generate(models[0], prompts, NEW, set(), PAD, session=SparseSession(executor=ex),
                                     return_logits=True)
        runs[name + "_calls"] = len(prefill_calls) - before
    assert runs["kernel_calls"] > 0 and runs["sdpa_calls"] == 0
    for name in ("kernel", "sdpa"):
        assert runs[name].tokens == runs["reference"].tokens
        _close_logits(runs[name].extras["logits"], runs["reference"].extras["logits"], atol=2e-5)


@pytest.mark.parametrize("kv_heads,group", [(1, 1), (2, 4), (1, 7)])
@pytest.mark.parametrize("name", ["vertical_slash", "block_sparse"])
def test_torch_executor_sparse_prefill_gathers_exactly_the_selection(name, kv_heads, group):
    """The torch executor's gathered sparse prefill equals masked reference attention, with left padding, an odd
    length, GQA, and heads that keep nothing in some query blocks (their rows must come out 0)."""
    from sparse_kernels.hf.executors import TorchExecutor
    from sparse_kernels.triton.testing import left_pad_mask, qkv

    H, L = kv_heads * group, 203
    q, k, v = qkv(2, H, kv_heads, L, 16, torch.float32, seed=kv_heads + group)
    kpm = left_pad_mask(2, L, (0, 37))
    params = {"vertical_slash": dict(vertical_size=12, slash_size=20, last_q=16, block_size=32),
              "block_sparse": dict(top_chunks=3, block_size=32)}[name]
    sel = build_method(name, **params).select(q, k, kpm, 0.25)
    if name == "block_sparse":           # blank out the second head's query blocks 2..4
        h = min(1, H - 1)
        sel.indices[:, h, 2:5] = -1
        sel.counts[:, h, 2:5] = 0
    want = reference.prefill_attention(q, k, v, sel, 0.25)
    got = TorchExecutor().sparse_prefill(q, k, v, sel, 0.25)
    real = kpm.view(2, 1, -1, 1)
    torch.testing.assert_close(got * real, want * real, atol=1e-5, rtol=0)
    if name == "block_sparse":
        rows = slice(2 * 32, 5 * 32)
        assert torch.all(got[0, min(1, H - 1), rows] == 0)


def test_auto_executor_is_the_fastest_exact_one_per_device():
    """``executor: auto`` (the study default) means the Triton kernels on CUDA and the exact SDPA-based torch
    executor on CPU, never the slow reference; explicit names are kept and unknown ones refused."""
    from sparse_kernels.hf.executors import TorchExecutor, make_executor, resolve_executor_name

    assert resolve_executor_name("auto", torch.device("cuda", 0)) == "triton"
    assert resolve_executor_name(None, "cuda") == "triton"
    assert resolve_executor_name("auto", "cpu") == "torch"
    assert isinstance(make_executor("auto", "cpu"), TorchExecutor)
    assert resolve_executor_name("reference", "cuda") == "reference"
    with pytest.raises(KeyError, match="unknown executor"):
        resolve_executor_name("flash", "cuda")
