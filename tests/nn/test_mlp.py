"""MLPs against their formulas written out by hand: ASGG, the two-layer MLPs, SwiGLU, gated PolyNorm."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import randomise_parameters, tiny_model
from lmlab import preset_config
from lmlab.nn.mlp import ASGG
from lmlab.nn.polynorm import PolyNorm, PolyNormMLP
from lmlab.registry import MLPS


def test_asgg_chunk_order_is_gate_ref_value():
    config = preset_config("n4-tiny")
    mlp = ASGG(config)
    d, inter = config.hidden_size, config.intermediate_size
    torch.manual_seed(1)
    x = torch.randn(2, 3, d)
    with torch.no_grad():
        torch.nn.init.normal_(mlp.up_proj.weight)
    u = x @ mlp.up_proj.weight.T
    gate, ref, value = u[..., :inter], u[..., inter:2 * inter], u[..., 2 * inter:]
    erf_gelu = 0.5 * ref * (1 + torch.erf(ref / math.sqrt(2)))
    expected = (erf_gelu * torch.sigmoid(gate) * value) @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), expected)


@pytest.mark.parametrize("name,activation", [
    ("gelu_new", lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))),
    ("gelu", lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))),
    ("relu2", lambda h: torch.clamp(h, min=0) ** 2),
])
def test_two_layer_mlps(name, activation):
    config = preset_config("ngen4-tiny", mlp=name)
    mlp = MLPS[name](config, 0)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_()
    x = torch.randn(2, 5, config.hidden_size)
    h = x @ mlp.up_proj.weight.T + mlp.up_proj.bias
    torch.testing.assert_close(mlp(x), activation(h) @ mlp.down_proj.weight.T + mlp.down_proj.bias,
                               atol=1e-4, rtol=1e-4)


def test_gelu_tanh_option_changes_plain_gelu():
    exact = MLPS["gelu"](preset_config("ngen4-tiny", mlp="gelu"), 0)
    x = torch.linspace(-4, 4, 9)
    assert torch.allclose(exact.activation(x), F.gelu(x))
    tanh = MLPS["gelu"](preset_config("ngen4-tiny", mlp="gelu", gelu_approximate="tanh"), 0)
    assert torch.allclose(tanh.activation(x), F.gelu(x, approximate="tanh"))
    assert not torch.allclose(tanh.activation(x), F.gelu(x))


def test_swiglu_reads_value_first_and_gate_second():
    model = tiny_model("nyx-tiny")
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, model.config.hidden_size)
    hidden = x @ mlp.up_proj.weight.T
    value, gate = hidden[:, :model.config.intermediate_size], hidden[:, model.config.intermediate_size:]
    expected = (value * gate * torch.sigmoid(gate)) @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), expected)


def normalised(y):
    return y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)


def test_polynorm_formula_init_and_cube_weight():
    act = PolyNorm()
    x = torch.randn(4, 32)
    torch.testing.assert_close(act(x), (normalised(x ** 3) + normalised(x ** 2) + normalised(x)) / 3)
    with torch.no_grad():
        act.weight.copy_(torch.tensor([1.0, 0.0, 0.0]))
        act.bias.fill_(0.5)
    torch.testing.assert_close(act(x), normalised(x ** 3) + 0.5)  # w0 multiplies the cube
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.2, -0.7, 1.3]))
    torch.testing.assert_close(act(x), 0.2 * normalised(x ** 3) - 0.7 * normalised(x ** 2) + 1.3 * normalised(x) + 0.5)


def test_polynorm_mlp_is_gated():
    mlp = PolyNormMLP(preset_config("neollm-tiny"))
    randomise_parameters(mlp)
    x = torch.randn(2, 5, 64)
    expected = mlp.down_proj(mlp.act_fn(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T))
    torch.testing.assert_close(mlp(x), expected)
    assert sum(p.numel() for p in PolyNormMLP(preset_config("neollm-110m")).parameters()) == 1_572_868
