"""Norms and MLPs against their formulas written out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from lmlab import preset_config
from lmlab.nn.mlp import ASGG
from lmlab.nn.norms import DyT, LayerNorm, ReducedDyT, RMSNorm
from lmlab.registry import MLPS, NORMS


def test_layernorm_with_and_without_bias():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    norm = LayerNorm(16, eps=1e-5).double()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias
    torch.testing.assert_close(norm(x), expected)
    nobias = LayerNorm(16, eps=1e-5, bias=False).double()
    assert nobias.bias is None and [n for n, _ in nobias.named_parameters()] == ["weight"]
    torch.testing.assert_close(nobias(x), (x - mean) / torch.sqrt(var + 1e-5))


def test_rmsnorm_formula_and_fp32_statistics():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 32)
    norm = RMSNorm(32, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), norm(x.bfloat16().float()), atol=1e-2, rtol=1e-2)


def test_dyt_paper_form_and_n4_reduced_form():
    torch.manual_seed(0)
    x = torch.randn(4, 24) * 3
    dyt = DyT(24, alpha_init=0.7)
    assert dyt.alpha.item() == pytest.approx(0.7)
    torch.nn.init.normal_(dyt.weight)
    torch.nn.init.normal_(dyt.bias)
    torch.testing.assert_close(dyt(x), dyt.weight * torch.tanh(0.7 * x) + dyt.bias)
    reduced = ReducedDyT(24)
    assert [n for n, _ in reduced.named_parameters()] == ["weight"]
    torch.nn.init.normal_(reduced.weight)
    torch.testing.assert_close(reduced(x), reduced.weight * torch.tanh(x))


def test_dyt_alpha_init_comes_from_config():
    config = preset_config("ngen4-tiny", norm="dyt", dyt_alpha_init=0.25)
    norm = NORMS["dyt"](config, 8)
    assert norm.alpha.item() == pytest.approx(0.25)


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


def test_n4_init_statistics():
    model = tiny_model("n4-127m", vocab_size=32768)
    layer = model.model.layers[0]
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(1.0, rel=0.02)
    assert layer.mixer.qkvg_proj.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 768), rel=0.02)
    assert layer.mlp.up_proj.weight.std().item() == pytest.approx(1.1547 / math.sqrt(768), rel=0.02)
    assert layer.mlp.down_proj.weight.std().item() == pytest.approx(1.1547 / math.sqrt(1536), rel=0.02)
    for norm in (layer.mixer_norm, layer.mixer_post_norm, layer.mlp_norm, layer.mlp_post_norm,
                 layer.mixer.unused_norm):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))


def test_ngen4_init_statistics():
    model = tiny_model("ngen4-50m", vocab_size=50257)
    layer = model.model.layers[0]
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.02)
    for proj in (layer.mixer.q_proj, layer.mixer.k_proj, layer.mixer.v_proj):
        assert proj.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert layer.mixer.out_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.03)
    assert layer.mlp.down_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.03)
    assert torch.count_nonzero(layer.mixer.q_proj.bias) == 0
