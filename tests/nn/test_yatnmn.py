"""The YatNMN layer against a direct per-neuron distance, its init, ablation options and numerics."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from lmlab.nn.yatnmn import YatNMN


def yat_config(**overrides):
    return tiny_config("yatgpt-tiny", hidden_size=32, num_attention_heads=2, intermediate_size=24, **overrides)


def randomised_yat(softplus=True, **overrides):
    torch.manual_seed(0)
    layer = YatNMN(yat_config(**overrides), softplus=softplus).double()
    with torch.no_grad():
        layer.weight.normal_(0, 0.5)
        layer.bias.normal_()
        if layer.raw_epsilon is not None:
            layer.raw_epsilon.fill_(-2.0)
        if layer.alpha is not None:
            layer.alpha.fill_(1.7)
    return layer


@pytest.mark.parametrize("softplus", [True, False])
def test_yatnmn_equals_direct_per_neuron_distance(softplus):
    """Spec §10.4: the expanded-distance formula against ‖u − w_j‖² computed per neuron, fp64, relative 1e-10."""
    layer = randomised_yat(softplus)
    u = torch.randn(2, 3, 32, dtype=torch.float64)
    out = layer(u)
    assert out.dtype == torch.float64
    expected = torch.empty_like(out)
    epsilon = F.softplus(layer.raw_epsilon) if softplus else 1e-3
    for j in range(24):
        w_j = layer.weight[j]
        b_j = F.softplus(layer.bias[j]) if softplus else layer.bias[j]
        squared_distance = ((u - w_j) ** 2).sum(-1)
        expected[..., j] = 1.7 * ((u * w_j).sum(-1) + b_j) ** 2 / (squared_distance + epsilon)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=0)


def test_yatnmn_init_and_scalar_bias_and_constant_alpha():
    layer = YatNMN(yat_config(), softplus=True)
    layer.reset_parameters()
    assert F.softplus(layer.raw_epsilon).item() == pytest.approx(1e-3, rel=1e-6)
    assert layer.raw_epsilon.item() == pytest.approx(-6.907255, abs=1e-6)
    assert torch.equal(layer.bias, torch.zeros(24)) and layer.alpha.item() == 1.0
    scalar = randomised_yat(yatnmn_scalar_bias=True)
    assert scalar.bias.shape == (1,)
    per_neuron = randomised_yat()
    with torch.no_grad():
        per_neuron.weight.copy_(scalar.weight)
        per_neuron.bias.fill_(scalar.bias.item())  # the shared bias broadcast to every neuron
    u = torch.randn(4, 32, dtype=torch.float64)
    torch.testing.assert_close(scalar(u), per_neuron(u))
    constant = randomised_yat(yatnmn_constant_alpha=2.5)
    assert constant.alpha is None
    with torch.no_grad():
        constant.weight.copy_(per_neuron.weight)
        constant.bias.copy_(per_neuron.bias)
    torch.testing.assert_close(constant(u), per_neuron(u) / 1.7 * 2.5)


def test_yatnmn_runs_in_fp32_and_returns_the_input_dtype():
    layer = randomised_yat().float()
    u = torch.randn(3, 32).bfloat16()
    out = layer(u)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, layer(u.float()).bfloat16())  # fp32 math on the bf16 values, one rounding at the end
    x = torch.randn(3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = layer(x)
    assert torch.equal(under_autocast, layer(x))  # autocast does not reach the score


def test_yatnmn_distance_is_clamped_at_zero():
    layer = randomised_yat().float()
    with torch.no_grad():
        layer.weight.mul_(300.0)  # large norms: for u = w_j the expanded distance cancels to rounding noise
        layer.raw_epsilon.fill_(math.log(math.expm1(1e-3)))
    u = layer.weight.detach().clone()  # input j is neuron j's own weight
    dot = u @ u.T
    expanded = (u.square().sum(-1, keepdim=True) + u.square().sum(-1) - 2 * dot).diagonal()
    assert (expanded < -1e-3).any()  # unclamped, ε would not save these from a negative denominator
    out = layer(u)
    assert torch.isfinite(out).all() and (out >= 0).all()
    numerator = 1.7 * (dot.diagonal() + F.softplus(layer.bias)) ** 2
    torch.testing.assert_close(out.diagonal(), numerator / (expanded.clamp_min(0) + 1e-3))
