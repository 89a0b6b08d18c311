"""LayerNorm Scaling and GPAS against their formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import randomise_parameters, tiny_model
from lmlab import preset_config
from lmlab.config import ConfigError
from lmlab.nn.blocks import PreNormBlock
from lmlab.nn.residual_scaling import GPAS


def test_gpas_forward_and_gradients():
    gpas = GPAS("layer")
    x = torch.randn(3, 8, requires_grad=True)
    assert torch.equal(gpas(x, 0), x)  # α = 0: the identity
    with torch.no_grad():
        gpas.alpha.fill_(0.7)
    y = gpas(x, 1)
    torch.testing.assert_close(y, (1 - F.silu(torch.tensor(0.7))) * x)
    upstream = torch.randn(3, 8)
    grad_x, grad_alpha = torch.autograd.grad((y * upstream).sum(), [x, gpas.alpha])
    torch.testing.assert_close(grad_x, upstream)  # stop-gradient: ∂y/∂x is the identity
    a = torch.tensor(0.7)
    silu_prime = torch.sigmoid(a) * (1 + a * (1 - torch.sigmoid(a)))
    torch.testing.assert_close(grad_alpha, -silu_prime * (upstream * x).sum()[None])


def test_gpas_per_sublayer_has_two_alphas():
    gpas = GPAS("sublayer")
    with torch.no_grad():
        gpas.alpha.copy_(torch.tensor([0.5, -1.0]))
    x = torch.randn(4)
    torch.testing.assert_close(gpas(x, 0), (1 - F.silu(torch.tensor(0.5))) * x)
    torch.testing.assert_close(gpas(x, 1), (1 - F.silu(torch.tensor(-1.0))) * x)
    with pytest.raises(ConfigError, match="gpas must be one of 'layer', 'sublayer', got 'block'"):
        preset_config("neollm-tiny", gpas="block")


def test_layernorm_scaling_multipliers():
    config = preset_config("neollm-110m")
    with torch.device("meta"):
        scales = [PreNormBlock(config, i).norm_scale for i in range(12)]
    assert scales == pytest.approx([1 / math.sqrt(ell) for ell in range(1, 13)])
    assert scales[0] == 1.0 and scales[-1] == pytest.approx(0.2887, abs=1e-4)


def test_the_final_norm_is_not_scaled():
    model = tiny_model("neollm-tiny")
    randomise_parameters(model, seed=4)
    seen = {}
    model.model.norm.register_forward_pre_hook(lambda module, args: seen.update(residual=args[0]))
    hidden = model.model(torch.randint(0, 101, (1, 9))).last_hidden_state
    r = seen["residual"]
    torch.testing.assert_close(hidden, r / torch.sqrt(r.pow(2).mean(-1, keepdim=True) + 1e-6)
                               * (1 + model.model.norm.weight))
