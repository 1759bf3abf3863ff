"""The reference trainer's optimizer step and schedule pieces (CPU; the training itself needs a GPU)."""

import math

import pytest
import torch

from workflow_scripts.train_reference import (BestWeights, WeightEMA, _collate, context_weights, length_weights,
                                              optimizer_step)


def _model_opt():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    return model, opt


def test_non_finite_gradient_skips_the_update_without_touching_weights_or_state():
    model, opt = _model_opt()
    x = torch.randn(5, 4)
    assert float(optimizer_step(model, opt, model(x).square().mean())) == 0.0   # a normal step
    before = [p.detach().clone() for p in model.parameters()]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()]
    skipped = optimizer_step(model, opt, model(x).sum() * float("nan"))
    assert float(skipped) == 1.0
    for p, b, st in zip(model.parameters(), before, state):
        assert torch.equal(p.detach(), b)                       # weights untouched
        for k, v in st.items():
            assert torch.equal(opt.state[p][k], v), k           # moments and step count untouched (no NaN)
    # training goes on normally afterwards
    assert float(optimizer_step(model, opt, model(x).square().mean())) == 0.0
    assert all(torch.isfinite(p).all() and not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    assert all(float(opt.state[p]["step"]) == 2.0 for p in model.parameters())


def test_gradient_is_clipped_to_norm_one():
    model, opt = _model_opt()
    opt.param_groups[0]["lr"] = 0.0      # only look at the gradient
    optimizer_step(model, opt, 1000.0 * model(torch.randn(5, 4)).sum())
    norm = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))
    assert abs(norm - 1.0) < 1e-4


def test_length_curriculum_starts_short_and_ends_at_the_shares():
    share = {1024: 0.4, 2048: 0.3, 4096: 0.3}
    start = length_weights([1024, 2048, 4096], share, 2.5, 0.0)
    end = length_weights([1024, 2048, 4096], share, 2.5, 1.0)
    assert end == [0.4, 0.3, 0.3]
    assert start[0] == 0.4 and math.isclose(start[1], 0.3 * math.exp(-2.5)) and math.isclose(start[2], 0.3 * math.exp(-5.0))


def test_collate_weights_prompt_tokens_per_task_and_answer_tokens_one():
    t_cfg = {"context_weight": 0.1, "context_weight_by_task": {"story_retrieval": 0.5}}
    batch = [{"task": "story_retrieval", "ids": torch.arange(1, 7), "prompt_len": 4},
             {"task": "ruler_niah", "ids": torch.arange(1, 5), "prompt_len": 2}]
    ids, w = _collate(batch, 0, context_weights(t_cfg), torch.device("cpu"), width=8)
    assert ids.tolist() == [[1, 2, 3, 4, 5, 6, 0, 0], [1, 2, 3, 4, 0, 0, 0, 0]]
    # position 0 is never predicted; prompt tokens 1..p-1 get the task's weight, answer tokens 1, padding 0
    assert torch.allclose(w[0], torch.tensor([0, .5, .5, .5, 1, 1, 0, 0]))
    assert torch.allclose(w[1], torch.tensor([0, .1, 1, 1, 0, 0, 0, 0]))
    assert context_weights({"context_weight": 0.2}) == {"default": 0.2}


def test_best_weights_restores_the_best_probe_and_prefers_the_later_of_equal_scores():
    model, _ = _model_opt()
    best = BestWeights()
    snapshots = {}
    for step, score in [(10, 0.5), (20, 0.9), (30, 0.4), (40, 0.9), (50, 0.7)]:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)                  # different weights at every probe
        snapshots[step] = [p.detach().clone() for p in model.parameters()]
        best.offer(model, score, step, float(step))
    assert best.restore(model) == {"step": 40, "seconds": 40.0, "score": 0.9, "weights": "raw"}
    assert all(torch.equal(p.detach(), s) for p, s in zip(model.parameters(), snapshots[40]))


def test_weight_ema_follows_the_hand_computed_average_and_applies_it_only_inside_the_context():
    model, opt = _model_opt()
    ema = WeightEMA(model, 0.9)
    w0 = [p.detach().clone() for p in model.parameters()]
    avg = [w.clone() for w in w0]
    addresses = [p.data_ptr() for p in model.parameters()]
    for n in range(1, 31):
        optimizer_step(model, opt, model(torch.randn(5, 4)).square().mean())
        ema.update()
        d = min(0.9, (1 + n) / (10 + n))      # warm-up: the early average forgets the initial weights fast
        avg = [d * a + (1 - d) * p.detach() for a, p in zip(avg, model.parameters())]
    raw = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.allclose(a, r) for a, r in zip(avg, raw))
    with ema.applied():
        assert all(torch.allclose(p.detach(), a, atol=1e-6) for p, a in zip(model.parameters(), avg))
        best = BestWeights()
        best.offer(model, 0.5, 30, 1.0, "ema")
    assert all(torch.equal(p.detach(), r) for p, r in zip(model.parameters(), raw))     # raw weights back
    assert [p.data_ptr() for p in model.parameters()] == addresses    # in place (CUDA graphs keep their inputs)
    assert best.restore(model)["weights"] == "ema"
    assert all(torch.allclose(p.detach(), a, atol=1e-6) for p, a in zip(model.parameters(), avg))


def _phase_cfg(phases):
    return {"data": {"tasks": ["ruler_niah", "story_retrieval"], "phases": phases}}


def test_phase_variant_follows_progress_share_and_task():
    from workflow_scripts.train_reference import check_phases, phase_variant

    phases = check_phases(_phase_cfg([
        {"from": 0.25, "share": 0.5, "task_params": {"story_retrieval": {"first_chapter": [1, 40]}}},
        {"from": 0.75, "share": 1.0, "task_params": {"story_retrieval": {"first_chapter": 20}}}]))
    assert phase_variant(phases, "story_retrieval", 0.2, 0.0) == -1          # before the first phase
    assert phase_variant(phases, "story_retrieval", 0.25, 0.49) == 0
    assert phase_variant(phases, "story_retrieval", 0.5, 0.5) == -1          # outside the share
    assert phase_variant(phases, "ruler_niah", 0.5, 0.0) == -1               # a task the phase leaves alone
    assert phase_variant(phases, "story_retrieval", 0.8, 0.99) == 1          # the latest phase that has begun


@pytest.mark.parametrize("phase, key", [
    ({"from": 1.0, "share": 0.5, "task_params": {"story_retrieval": {}}}, "from"),
    ({"from": 0.5, "share": 0.0, "task_params": {"story_retrieval": {}}}, "share"),
    ({"from": 0.5, "share": 0.5, "task_params": {"ruler_vt": {}}}, "ruler_vt"),
    ({"from": 0.5, "share": 0.5, "task_params": {"story_retrieval": {"first_chapter": 0}}}, "first_chapter"),
    ({"from": 0.5, "task_params": {"story_retrieval": {}}}, "exactly the keys"),
])
def test_bad_phases_are_rejected_naming_the_key(phase, key):
    from workflow_scripts.train_reference import check_phases

    with pytest.raises(ValueError, match=key):
        check_phases(_phase_cfg([phase]))


def test_progress_file_round_trip_takes_the_furthest_trainer(tmp_path):
    from workflow_scripts.train_reference import read_progress, write_progress

    assert read_progress(tmp_path, ["a", "b"]) == 0.0
    write_progress(tmp_path, "a", 0.3)
    write_progress(tmp_path, "b", 0.6)
    write_progress(tmp_path, "a", 0.4)
    assert read_progress(tmp_path, ["a", "b"]) == 0.6
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]   # never mistaken for a chunk


def test_init_from_loads_the_shipped_weights_and_rejects_another_architecture():
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workflow_scripts.train_reference import init_weights, new_model

    path = Path(__file__).resolve().parent.parent / "models" / "ref-2m"
    tok = AutoTokenizer.from_pretrained(str(path))
    t_cfg = {"rope_theta": 1e5, "max_position_embeddings": 16384}
    arch = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 384}
    model = new_model(arch, t_cfg, len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    init_weights(model, tok, path)
    ref = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    ids = torch.tensor([tok("Chapter 3:\nMarek went to the mill.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-5)
    wider = new_model({**arch, "hidden_size": 256}, t_cfg, len(tok), eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="init_from"):
        init_weights(wider, tok, path)
