"""The reference trainer's optimizer step and schedule pieces (CPU; the training itself needs a GPU)."""

import math

import torch

from workflow_scripts.train_reference import length_weights, optimizer_step


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
