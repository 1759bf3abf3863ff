"""The fast decode path (static KV cache, device-side counters, graph-safe Quest selection; the function a CUDA
graph captures) against the regular decode loop, on the tiny random Qwen2 (fp32, CPU).

* same greedy tokens, same logits (tolerance), same per-row statistics and step counts as the regular path
  for dense, Quest (per q head and shared per group), SnapKV, Ada-SnapKV and a combined cell, with a
  left-padded batch of 3, through the reference, torch and (interpreted) Triton executors;
* EOS handling (rows stopping at different steps; checks every N steps);
* graph safety of the step on the CPU: two consecutive steps dispatch exactly the same aten ops on the same
  shapes (so one captured step is valid for every later one) and none of them reads a tensor on the host
  (``item`` / ``_local_scalar_dense`` / ``is_nonzero`` / ``nonzero`` / ``equal``);
* the Triton pieces it adds: ``span_decode`` (attention over a written prefix of a static cache, end read on
  the device), page lists with ``-1`` holes, and ``page_bounds(limit=..., group_rows=...)``.

The capture itself (``torch.cuda.CUDAGraph``) needs a GPU: ``bench/bench_e2e.py`` exercises it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sparse_kernels import reference  # noqa: E402
from sparse_kernels.hf import ATTN_IMPLEMENTATION, register  # noqa: E402
from sparse_kernels.hf.generate import StaticDecoder, greedy_generate, left_pad, resolve_fast_decode  # noqa: E402
from sparse_kernels.hf.session import SparseSession, limit_candidates, static_quest_pages  # noqa: E402
from sparse_kernels.methods import build_method  # noqa: E402

PAD = 3
KV = dict(token_capacity=40, window=16, kernel_size=5, local_window=8, n_sinks=2)
METHODS = {
    "dense": (None, None),
    "quest": (None, ("quest", dict(token_budget=32))),
    "quest_shared": (None, ("quest", dict(token_budget=32, share_pages=True))),
    "quest_full": (None, ("quest", dict(ratio=1.0))),
    "snapkv": (None, ("snapkv", KV)),
    "ada_snapkv": (None, ("ada_snapkv", dict(KV, min_head_ratio=0.2))),
    "vs+quest": (("vertical_slash", dict(vertical_size=8, slash_size=34, last_q=32, block_size=16)),
                 ("quest", dict(token_budget=32))),
}


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    register()
    return AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32,
                                                attn_implementation=ATTN_IMPLEMENTATION).eval()


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 2000, (n,), generator=g).tolist() for n in lengths]


def _triton_decode_executor():
    """Triton executor for the decode kernels only: the prefill (not under test here, and the slowest part
    under the interpreter) goes through the reference executor."""
    from sparse_kernels.hf.executors import NamespaceExecutor, ReferenceExecutor
    from sparse_kernels.triton import get_executor

    class TritonDecode(NamespaceExecutor):
        def dense_prefill(self, q, k, v, key_padding_mask, scale):
            return ReferenceExecutor().dense_prefill(q, k, v, key_padding_mask, scale)

        def sparse_prefill(self, q, k, v, selection, scale):
            return ReferenceExecutor().sparse_prefill(q, k, v, selection, scale)

    return TritonDecode(get_executor("triton", "cpu"))


def _session(name, executor):
    pre, dec = METHODS[name]
    pm = build_method(pre[0], **pre[1]) if pre else None
    dm = build_method(dec[0], **dec[1]) if dec else None
    if executor == "triton":
        from sparse_kernels.triton import accelerate

        if dm is not None and dm.name == "quest":
            dm = accelerate(dm)          # Triton page bounds (with the candidate limit in the static path)
        executor = _triton_decode_executor()
    return SparseSession(pm, dm, executor=executor)


def _compare(model, name, executor, lengths, new, eos=frozenset(), **kw):
    prompts = _prompts(lengths)
    ref = greedy_generate(model, prompts, new, set(eos), PAD, session=_session(name, executor), return_logits=True,
                          fast_decode=False)
    fast = greedy_generate(model, prompts, new, set(eos), PAD, session=_session(name, executor),
                           return_logits=True, fast_decode="eager", **kw)
    assert fast.extras["fast_decode"]["mode"] == "eager"
    assert fast.tokens == ref.tokens
    assert fast.stop == ref.stop
    n = min(len(ref.extras["logits"]), len(fast.extras["logits"]))
    for a, b in zip(ref.extras["logits"][:n], fast.extras["logits"][:n]):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=0)
    for sa, sb in zip(ref.extras["stats"], fast.extras["stats"]):
        assert sa.keys() == sb.keys()
        for key in sa:
            if sa[key] is None:
                assert sb[key] is None, key
            else:
                assert sb[key] == pytest.approx(sa[key], abs=1e-12), key
    return ref, fast


@pytest.mark.parametrize("name", list(METHODS))
def test_static_decode_equals_regular_reference_executor(model, name):
    ref, fast = _compare(model, name, "reference", (150, 97, 121), 9)
    assert fast.decode_steps == ref.decode_steps == 8
    if name.startswith("quest") and name != "quest_full":    # really sparse
        assert ref.extras["stats"][0]["decode_density"] < 0.5


@pytest.mark.parametrize("name", ["dense", "quest", "ada_snapkv"])
def test_static_decode_equals_regular_torch_executor(model, name):
    _compare(model, name, "torch", (150, 97, 121), 7)


@pytest.mark.parametrize("name", ["dense", "quest", "quest_shared", "ada_snapkv"])
def test_static_decode_equals_regular_triton_executor(model, name):
    """Interpreted Triton kernels: span_decode (dense / KV-compressed), Quest page bounds with the candidate
    limit (and one row per group when shared) and the page-list decode with unsorted, padded lists."""
    _compare(model, name, "triton", (70, 41), 4)


@pytest.mark.parametrize("name", ["quest", "quest_shared"])
def test_static_quest_keeps_16bit_summaries_and_chooses_as_the_regular_loop(model, name, monkeypatch):
    """fp16 model, accelerated Quest: the static step keeps the page summaries in the key dtype (the GPU bounds
    kernel then uses tensor cores; min / max of fp16 keys are fp16 values, so nothing is lost), gives the
    regular loop's tokens, and hands fp32 summaries back to the Quest state afterwards."""
    import copy

    half = copy.deepcopy(model).half()
    prompts = _prompts((70, 41))
    ref = greedy_generate(half, prompts, 4, set(), PAD, session=_session(name, "triton"), fast_decode=False)
    import sparse_kernels.triton.quest as tq

    seen, bounds = [], tq.page_bounds

    def spy(page_min, *a, **kw):      # what the static step passes to the bounds kernel
        seen.append(page_min.dtype)
        return bounds(page_min, *a, **kw)

    monkeypatch.setattr(tq, "page_bounds", spy)
    session = _session(name, "triton")
    fast = greedy_generate(half, prompts, 4, set(), PAD, session=session, fast_decode="eager")
    assert fast.extras["fast_decode"]["mode"] == "eager"
    assert fast.tokens == ref.tokens
    assert seen and set(seen) == {torch.float16}
    assert all(qs.page_min.dtype == qs.page_max.dtype == torch.float32 for qs in session.quest_states.values())


def test_eos_rows_stop_at_different_steps(model):
    prompts = _prompts((150, 97, 121))
    free = greedy_generate(model, prompts, 10, set(), PAD, session=_session("quest", "reference"), fast_decode=False)
    # an EOS that row 1 emits early and another row later (or never)
    eos = {free.tokens[1][3]}
    ref, fast = _compare(model, "quest", "reference", (150, 97, 121), 10, eos=eos)
    assert "eos" in ref.stop and fast.decode_steps == ref.decode_steps
    assert [s["decode_steps"] for s in fast.extras["stats"]] == [s["decode_steps"] for s in ref.extras["stats"]]
    # checking EOS every 4 steps: same tokens and statistics, possibly a few discarded extra steps
    _, every4 = _compare(model, "quest", "reference", (150, 97, 121), 10, eos=eos, eos_check_every=4)
    assert every4.decode_steps >= ref.decode_steps


def test_first_token_eos_and_short_budgets(model):
    prompt = _prompts((60,))[0]
    first = greedy_generate(model, [prompt], 1, set(), PAD, session=_session("dense", "reference"),
                            fast_decode="eager")
    assert len(first.tokens[0]) == 1 and first.decode_steps == 0
    out = greedy_generate(model, [prompt], 6, {first.tokens[0][0]}, PAD, session=_session("dense", "reference"),
                          fast_decode="eager")
    assert out.tokens == [[]] and out.stop == ["eos"] and out.decode_steps == 0
    none = greedy_generate(model, [prompt], 0, set(), PAD, session=_session("dense", "reference"),
                           fast_decode="eager")
    assert none.tokens == [[]]


def test_session_reused_across_calls(model):
    """The workflow reuses one session for every batch: static state is rebuilt per call."""
    session = _session("quest", "reference")
    a = greedy_generate(model, _prompts((80, 60)), 5, set(), PAD, session=session, fast_decode="eager")
    b = greedy_generate(model, _prompts((120,), seed=3), 4, set(), PAD, session=session, fast_decode="eager")
    ra = greedy_generate(model, _prompts((80, 60)), 5, set(), PAD, session=_session("quest", "reference"),
                         fast_decode=False)
    rb = greedy_generate(model, _prompts((120,), seed=3), 4, set(), PAD, session=_session("quest", "reference"),
                         fast_decode=False)
    assert a.tokens == ra.tokens and b.tokens == rb.tokens


def test_fast_decode_resolution():
    s = SparseSession()
    assert resolve_fast_decode(None, s, "cpu") == "off"            # auto: off on CPU
    assert resolve_fast_decode(True, s, "cpu") == "eager"          # a graph needs CUDA
    assert resolve_fast_decode("graph", s, "cpu") == "eager"
    assert resolve_fast_decode("auto", s, "cuda") == "graph"
    assert resolve_fast_decode(False, s, "cuda") == "off"
    assert resolve_fast_decode(True, None, "cuda") == "off"        # no session: HF's own cache
    assert resolve_fast_decode(None, SparseSession(fast_decode="eager"), "cpu") == "eager"
    assert resolve_fast_decode(True, SparseSession(hooks=[print]), "cuda") == "off"
    with pytest.raises(ValueError):
        resolve_fast_decode("fast", s, "cpu")


# ------------------------------------------------------------------------------------------ graph safety
class _OpLog:
    """Records every aten op (name and argument shapes) dispatched inside the context."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        log = self.ops = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                log.append((str(func), tuple(tuple(a.shape) for a in tree_leaves((args, kwargs))
                                             if isinstance(a, torch.Tensor))))
                return out

        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


HOST_READS = ("_local_scalar_dense", "aten.item", "is_nonzero", "aten.nonzero", "aten.equal")


@pytest.mark.parametrize("name,executor", [("dense", "torch"), ("quest", "torch"), ("quest_shared", "reference"),
                                           ("ada_snapkv", "reference"), ("quest", "triton"),
                                           ("snapkv", "triton")])
def test_decode_step_is_static_and_sync_free(model, name, executor):
    prompts = _prompts((70, 41))
    session = _session(name, executor)
    ids, mask = left_pad(prompts, PAD, "cpu")
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        session.begin(2, ids.shape[1], mask.bool(), 8, torch.device("cpu"))
        with session.activate():
            out = model(input_ids=ids, position_ids=pos, use_cache=False)
            session.start_static_decode(7)
            dec = StaticDecoder(model, session, out.logits[:, -1].argmax(-1), pos[:, -1] + 1, 8, {5}, False)
            assert dec.mask_arg is not None      # the mask dict that skips HF's packed-sequence check
            dec.step()                           # warm-up (lazy buffers)
            logs = []
            for _ in range(2):
                with _OpLog() as log:
                    dec.step()
                logs.append(log.ops)
    assert logs[0] == logs[1]
    bad = sorted({op for op, _ in logs[0] if any(h in op for h in HOST_READS)})
    assert not bad, bad
    assert int(dec.col) == 4 and torch.equal(dec.pos.view(-1), pos[:, -1] + 4)


# ------------------------------------------------------------------------------------------ kernels
def test_span_decode_over_static_cache_prefix():
    from sparse_kernels.triton.decode import span_decode

    g = torch.Generator().manual_seed(0)
    B, H, G, C, D = 2, 8, 2, 96, 32
    q = torch.randn(B, H, 1, D, generator=g)
    k = torch.randn(B, G, C, D, generator=g)
    v = torch.randn(B, G, C, D, generator=g)
    start = torch.tensor([[0, 17], [40, 5]], dtype=torch.int32)
    end = torch.tensor([71, 71], dtype=torch.int32)
    k[:, :, 71:] = float("nan")                         # unwritten slots are never read
    v[:, :, 71:] = float("nan")
    ar = torch.arange(C)
    mask = (ar >= start.unsqueeze(-1)) & (ar < end.view(-1, 1, 1))
    want = reference.masked_attention(q, k.nan_to_num(), v.nan_to_num(),
                                      mask.repeat_interleave(H // G, 1).unsqueeze(2))
    got = span_decode(q, k, v, start, end)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    from sparse_kernels.hf.executors import ReferenceExecutor, TorchExecutor

    kz, vz = k.nan_to_num(), v.nan_to_num()
    for ex in (ReferenceExecutor(), TorchExecutor()):
        torch.testing.assert_close(ex.span_decode(q, kz, vz, start, end, D ** -0.5), want, atol=1e-5, rtol=1e-5)


def test_page_list_with_holes_and_bounds_limit():
    from sparse_kernels.triton.decode import gathered_decode
    from sparse_kernels.triton.quest import page_bounds

    g = torch.Generator().manual_seed(1)
    B, H, G, L, D, p = 1, 4, 1, 64, 16, 8
    q = torch.randn(B, H, 1, D, generator=g)
    k = torch.randn(B, G, L, D, generator=g)
    v = torch.randn(B, G, L, D, generator=g)
    pages = torch.tensor([[[5, -1, 2, 7, -1]]])
    out = gathered_decode(q, k, v, pages=pages, counts=torch.tensor([[5]]), page_size=p)
    keep = torch.zeros(L, dtype=torch.bool)
    for pg in (5, 2, 7):
        keep[pg * p:(pg + 1) * p] = True
    want = reference.masked_attention(q, k, v, keep.view(1, 1, 1, L))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    # bounds with the candidate limit = limit_candidates of the plain bounds; one row per group when shared
    pmin = torch.randn(2, 2, 9, D, generator=g)
    pmax = pmin + torch.rand(2, 2, 9, D, generator=g)
    qq = torch.randn(2, 4, 1, D, generator=g)
    cur = torch.tensor([6, 2])
    for shared in (False, True):
        plain = page_bounds(pmin, pmax, qq, shared)
        rows = plain[:, ::2] if shared else plain
        got = page_bounds(pmin, pmax, qq, shared, limit=cur, group_rows=shared)
        want = limit_candidates(rows, cur)
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # fixed-size choice: current page always in, then the best earlier pages; rows with smaller budgets
    cand = limit_candidates(torch.tensor([[[5.0, 1.0, 4.0, 3.0, 2.0, 9.0]]]).repeat(2, 1, 1), torch.tensor([4, 1]))
    sel = static_quest_pages(cand, 2, None, 1)
    assert sorted(sel[0, 0].tolist()) == [0, 2, 4]
    r1 = sorted(sel[1, 0].tolist())                # 1 earlier page only: the third entry is a later (empty) page
    assert r1[:2] == [0, 1] and r1[2] > 1
    sel = static_quest_pages(cand, 2, torch.tensor([1, 2]), 2)
    assert sel.shape == (2, 2, 3) and sorted(sel[0, 1].tolist()) == [-1, 0, 4]
    # the fused Triton top-k (accelerated Quest) makes the same choice, ascending
    sel = static_quest_pages(cand, 2, None, 1, fused=True)
    assert sel[0, 0].tolist() == [0, 2, 4] and sel[1, 0].tolist()[:2] == [0, 1] and sel[1, 0, 2] > 1
    sel = static_quest_pages(cand, 2, torch.tensor([1, 2]), 2, fused=True)
    assert sel.shape == (2, 2, 3) and sel[0, 1].tolist() == [0, 4, -1] and sel[1, 0].tolist()[:2] == [0, 1]


# ------------------------------------------------------------------------------------------ the e2e bench
def test_bench_e2e_tiny_runs_end_to_end(tmp_path):
    """bench/bench_e2e.py --tiny: every configuration runs on the CPU (reference executor, static-cache decode
    where the GPU run captures graphs), the decode variants reproduce the fast path's tokens, the report has
    the target section."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_e2e.py"
    spec = importlib.util.spec_from_file_location("bench_e2e_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--out", str(tmp_path), "--lengths", "160", "--new-tokens", "5"]) == 0
    res = json.loads((tmp_path / "bench_e2e.json").read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == set(bench.METHODS) | set(bench.VARIANTS)
    # 160 tokens cannot reach 1/10 computed density with the forced sinks and local diagonals: a named error
    assert "below the smallest reachable" in rows.pop("vertical_slash_calibrated")["error"]
    for name, r in rows.items():
        assert "error" not in r and "skipped" not in r, (name, r)
        assert r["prefill_s"] > 0 and r["decode_steps"] == 4 and r["decode_ms_per_token"] > 0
    assert rows["dense"]["decode_mode"] == "eager" and rows["hf_sdpa"]["decode_mode"] == "hf_eager"
    for v in bench.VARIANTS:    # (fp32 on the CPU: even the other executor gives the same tokens)
        assert rows[v]["same_tokens_as"].endswith("yes"), rows[v]
    assert rows["quest"]["decode_density"] < 0.5 and rows["snapkv"]["decode_density"] < 0.5
    assert res["targets"]["L"] == 160 and res["targets"]["quest_decode_speedup_vs_dense"] is not None
    assert "Issue 8 targets" in (tmp_path / "bench_e2e.md").read_text()


def test_bench_e2e_calibrated_vertical_slash_hits_the_target_density(tmp_path):
    """``vertical_slash_calibrated``: the workflow's calibration on the bench model finds counts whose computed
    density is 1/10 within 5 %, and the timed run realises that density (the paper's counts compute far more
    on random weights)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_e2e.py"
    spec = importlib.util.spec_from_file_location("bench_e2e_calibrated", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--out", str(tmp_path), "--lengths", "1024", "--new-tokens", "2",
                       "--methods", "vertical_slash,vertical_slash_calibrated", "--variants", ""]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "bench_e2e.json").read_text())["rows"]}
    cal = rows["vertical_slash_calibrated"]
    assert "error" not in cal, cal
    assert abs(cal["calibrated_density"] - 0.1) <= 0.005
    assert abs(cal["prefill_density"] - 0.1) <= 0.01            # the same prompt: the run realises it
    assert rows["vertical_slash"]["prefill_density"] > 0.5      # tiny budgets of the uncalibrated row
