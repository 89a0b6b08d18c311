"""Optimizers and schedules against their published formulas and values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import tiny_model
from lmlab import get_preset, list_presets
from lmlab.train import optim
from lmlab.train.config import config_from_recipe
from lmlab.train.optim import AdEMAMix, ademamix_alpha, ademamix_beta3, build_optimizers, parameter_groups
from lmlab.train.schedules import Schedule, build_schedule, lr_schedulers


def test_ademamix_beta3_and_alpha_schedules_hit_the_spec_values():
    # neollm.md §8: β1 0.9 → β3 0.999 over T = 5000
    expected = {1: 0.901940, 100: 0.966436, 1000: 0.995192, 2500: 0.998020, 5000: 0.999, 9000: 0.999}
    for step, value in expected.items():
        assert ademamix_beta3(step, 0.9, 0.999, 5000) == pytest.approx(value, abs=5e-7)
    assert ademamix_beta3(7, 0.9, 0.999, None) == 0.999
    assert [ademamix_alpha(t, 5.0, 5000) for t in (0, 2500, 5000, 6000)] == [0.0, 2.5, 5.0, 5.0]


def test_ademamix_two_steps_equal_a_hand_computed_update():
    lr, (b1, b2, b3), alpha, eps, wd = 0.1, (0.9, 0.99, 0.999), 2.0, 1e-8, 0.05
    p = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    optimizer = AdEMAMix([p], lr=lr, betas=(b1, b2, b3), alpha=alpha, t_alpha=4, t_beta3=4, eps=eps,
                         weight_decay=wd)
    theta, m1, m2, nu = 1.0, 0.0, 0.0, 0.0
    for t, g in ((1, 0.5), (2, -0.25)):
        p.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        s = t / 4
        beta3_t = math.exp(math.log(b1) * math.log(b3) / ((1 - s) * math.log(b3) + s * math.log(b1)))
        alpha_t = alpha * t / 4
        m1 = b1 * m1 + (1 - b1) * g
        m2 = beta3_t * m2 + (1 - beta3_t) * g
        nu = b2 * nu + (1 - b2) * g * g
        theta = theta - lr * ((m1 / (1 - b1**t) + alpha_t * m2) / (math.sqrt(nu) / math.sqrt(1 - b2**t) + eps)
                              + wd * theta)
        assert p.item() == pytest.approx(theta, rel=1e-12)


def test_ademamix_with_alpha_zero_is_adamw():
    torch.manual_seed(0)
    a = torch.randn(5, 3, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ours = AdEMAMix([a], lr=1e-2, betas=(0.9, 0.999, 0.9999), alpha=0.0, weight_decay=0.1)
    reference = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1)
    for _ in range(5):
        grad = torch.randn(5, 3)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_lion_step_equals_its_formula():
    lr, (b1, b2), wd = 0.01, (0.9, 0.99), 0.1
    model = nn.Linear(4, 3, bias=False)
    optimizer, = build_optimizers(model, {"name": "lion", "lr": lr, "betas": (b1, b2), "weight_decay": wd})
    theta = model.weight.detach().clone()
    m = torch.zeros_like(theta)
    for _ in range(3):
        grad = torch.randn_like(theta)
        model.weight.grad = grad.clone()
        optimizer.step()
        theta = theta * (1 - lr * wd)
        theta = theta - lr * torch.sign(b1 * m + (1 - b1) * grad)
        m = b2 * m + (1 - b2) * grad
        torch.testing.assert_close(model.weight.detach(), theta)


def test_parameter_groups_follow_the_no_decay_rule():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    named = list(model.named_parameters())
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in parameter_groups(named, 0.1)}
    assert by_decay[0.1] == {id(model[0].weight), id(model[1].weight)}
    assert by_decay[0.0] == {id(model[1].bias), id(model[2].weight), id(model[2].bias)}
    assert len(parameter_groups(named, 0.1, "none")) == 1
    patterned = parameter_groups(named, 0.1, ["0.*"])
    assert {id(p) for p in patterned[1]["params"]} == {id(model[0].weight)}
    with pytest.raises(ValueError, match="no_decay"):
        parameter_groups(named, 0.1, "bogus")


def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    from conftest import tiny_model

    model = tiny_model("ngen4-tiny")
    muon, adamw = build_optimizers(model, {"name": "muon", "lr": 0.02, "weight_decay": 0.0})
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    assert id(model.model.embed_tokens.weight) not in muon_ids
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    everything = muon_ids | {id(p) for g in adamw.param_groups for p in g["params"]}
    assert everything == {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizers(model, {"name": "sgd", "lr": 1.0})
    with pytest.raises(ValueError, match="unknown settings"):
        build_optimizers(model, {"name": "lion", "lr": 1.0, "eps": 1e-8})


def test_yatgpt_warmup_cosine_to_five_percent():
    # yatgpt.md §8: 0 → 0.03 over 500 steps, cosine to 0.05·peak at N = 19,922
    schedule = build_schedule({"name": "cosine", "warmup_steps": 500, "min_lr_ratio": 0.05}, 0.03, 19922)
    assert schedule(0) == 0.0 and schedule(250) == pytest.approx(0.015)
    assert schedule(500) == pytest.approx(0.03)
    assert schedule(500 + (19922 - 500) // 2) == pytest.approx(0.0015 + 0.0285 * 0.5, rel=1e-4)
    assert schedule(19922) == pytest.approx(0.0015)


def test_neollm_warm_start_cosine_values():
    # neollm.md §8, N = 20,000
    schedule = build_schedule({"name": "warm_start_cosine", "warmup_steps": 5000, "start_lr": 3e-4,
                               "min_lr": 6e-5}, 6e-4, 20000)
    for step, value in {0: 3e-4, 2500: 4.5e-4, 5000: 6e-4, 12500: 3.3e-4, 20000: 6e-5}.items():
        assert schedule(step) == pytest.approx(value, rel=1e-9)


def test_linear_constant_and_wsd_schedules():
    linear = Schedule("linear", 1.0, total_steps=10, warmup_steps=0)  # HF Trainer default: decay to 0
    assert [linear(t) for t in (0, 5, 10)] == [1.0, 0.5, 0.0]
    assert [Schedule("constant", 2.0, 10, warmup_steps=4)(t) for t in (0, 2, 4, 9)] == [0.0, 1.0, 2.0, 2.0]
    wsd = Schedule("wsd", 1.0, total_steps=100, warmup_steps=10, min_lr=0.1, decay_fraction=0.2)
    assert [wsd(t) for t in (5, 10, 79, 80, 90, 100)] == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.55, 0.1])
    n4 = Schedule("cosine", 6e-4, total_steps=976, warmup_steps=2000, min_lr=6e-5)  # the N4 card's warmup > N
    assert n4(975) == pytest.approx(6e-4 * 975 / 2000)
    with pytest.raises(ValueError, match="unknown keys"):
        build_schedule({"name": "cosine", "warmup": 3}, 1.0, 10)


def test_lr_schedulers_scale_every_group_by_the_schedule():
    p = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([p], lr=0.5)
    schedule = Schedule("cosine", 0.5, total_steps=4, warmup_steps=2)
    scheduler, = lr_schedulers([optimizer], schedule)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([schedule(t) for t in range(4)])


@pytest.mark.parametrize("preset", [p.name for p in list_presets()])
def test_every_preset_recipe_builds_its_optimizer_and_schedule(preset):
    """A preset's published recipe is valid input for the trainer (catches recipe keys the trainer does not know)."""
    config = config_from_recipe(preset, {})
    model = tiny_model(f"{get_preset(preset).family}-tiny")
    optimizers = build_optimizers(model, config.optimizer)
    schedule = build_schedule(config.schedule, config.peak_lr, total_steps=100)
    assert optimizers and schedule(0) >= 0


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_adamw_implementation_matches_the_per_parameter_loop(name):
    """build_optimizers picks fused AdamW on a CPU (for Muon: its AdamW part); after a few steps the parameters equal
    those of torch's per-parameter loop, the reference implementation, with the same groups and settings."""
    model = tiny_model("ngen4-tiny")
    reference_model = tiny_model("ngen4-tiny")
    spec = {"name": name, "lr": 0.01, "weight_decay": 0.1}
    *_, adamw = build_optimizers(model, spec)
    *_, reference = build_optimizers(reference_model, spec)
    assert all(group["fused"] for group in adamw.param_groups)
    for group in reference.param_groups:  # the same groups, run by the loop
        group["fused"], group["foreach"] = None, False
    torch.manual_seed(1)
    for _ in range(4):
        for p, q in zip(model.parameters(), reference_model.parameters(), strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        adamw.step()
        reference.step()
    for p, q in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_ademamix_in_slices_equals_whole_tensor_updates(monkeypatch):
    """The CPU path updates flat slices of CPU_SLICE elements; the same steps on whole tensors give the same values."""
    torch.manual_seed(0)
    sliced = [torch.randn(7, 9, requires_grad=True), torch.randn(5, requires_grad=True)]
    whole = [p.detach().clone().requires_grad_() for p in sliced]
    settings = dict(lr=1e-2, betas=(0.9, 0.99, 0.999), alpha=3.0, t_alpha=3, t_beta3=3, weight_decay=0.1)
    optimizers = AdEMAMix(sliced, **settings), AdEMAMix(whole, **settings)
    for _ in range(4):
        for a, b in zip(sliced, whole, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        monkeypatch.setattr(optim, "CPU_SLICE", 4)  # 7 × 9 in 16 slices, the last one short
        optimizers[0].step()
        monkeypatch.setattr(optim, "CPU_SLICE", 1 << 30)
        optimizers[1].step()
    for a, b in zip(sliced, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
