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


def test_polynorm_gradients_equal_autograd_through_the_formula():
    """The hand-written backward (x, w, b) against autograd through the plain formula, in float64."""
    torch.manual_seed(0)
    act = PolyNorm().double()
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.2, -0.7, 1.3]))
        act.bias.fill_(0.5)
    x = torch.randn(3, 4, 32, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 4, 32, dtype=torch.float64)
    ours = torch.autograd.grad((act(x) * upstream).sum(), (x, act.weight, act.bias))
    w, b = act.weight.detach().requires_grad_(), act.bias.detach().requires_grad_()
    formula = w[0] * normalised(x ** 3) + w[1] * normalised(x ** 2) + w[2] * normalised(x) + b
    expected = torch.autograd.grad((formula * upstream).sum(), (x, w, b))
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_polynorm_keeps_only_its_input_and_row_factors_for_backward():
    """Saved for the backward: x in its own dtype (bf16 here) and three per-row factors, nothing of x's size in fp32."""
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        PolyNorm()(x)
    large = [t for t in saved if t.numel() == x.numel()]
    assert len(large) == 1 and large[0].dtype == torch.bfloat16
    assert sum(t.numel() for t in saved if t.numel() != x.numel()) == 3 * 2 * 8 + 3
