"""NeoLLM's smaller parts against their formulas: zero-centred RMSNorm, FAN, PolyNorm, LayerNorm Scaling, GPAS, and
the decoder layer wiring of spec §3.1."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import randomise_parameters, tiny_model
from lmlab import preset_config
from lmlab.config import ConfigError
from lmlab.nn.blocks import PreNormBlock
from lmlab.nn.context import ForwardContext
from lmlab.nn.fan import FANLayer
from lmlab.nn.norms import ZeroCentredRMSNorm
from lmlab.nn.polynorm import PolyNorm, PolyNormMLP
from lmlab.nn.residual_scaling import GPAS


def test_zero_centred_rmsnorm_formula_and_init():
    norm = ZeroCentredRMSNorm(16, eps=1e-6)
    assert torch.equal(norm.weight, torch.zeros(16))
    x = torch.randn(3, 16)
    plain = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), plain)
    torch.nn.init.normal_(norm.weight)
    torch.testing.assert_close(norm(x), plain * (1 + norm.weight))


def test_fan_layer_is_cos_sin_and_linear_parts():
    fan = FANLayer(512, 512, 0.125)
    assert fan.proj.weight.shape == (448, 512) and fan.proj.bias.shape == (448,)
    torch.nn.init.normal_(fan.proj.bias)
    x = torch.randn(2, 3, 512)
    out = fan(x)
    z = x @ fan.proj.weight.T + fan.proj.bias
    assert out.shape == (2, 3, 512)
    torch.testing.assert_close(out[..., :64], torch.cos(z[..., :64]))
    torch.testing.assert_close(out[..., 64:128], torch.sin(z[..., :64]))
    torch.testing.assert_close(out[..., 128:], z[..., 64:])
    with torch.no_grad():
        fan.proj.bias[:64] += 1.0  # the bias moves the phases
    assert not torch.allclose(fan(x)[..., :128], out[..., :128])
    with pytest.raises(ConfigError, match="fan_ratio"):
        FANLayer(512, 512, 0.75)


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
    with pytest.raises(ConfigError, match="gpas must be None or one of"):
        preset_config("neollm-tiny", gpas="block")


def test_layernorm_scaling_multipliers():
    config = preset_config("neollm-110m")
    with torch.device("meta"):
        scales = [PreNormBlock(config, i).norm_scale for i in range(12)]
    assert scales == pytest.approx([1 / math.sqrt(ell) for ell in range(1, 13)])
    assert scales[0] == 1.0 and scales[-1] == pytest.approx(0.2887, abs=1e-4)


def test_decoder_layer_wiring_with_lns_fan_and_gpas():
    """h ← GPAS(h + mixer(FAN(norm(h)/√ℓ))); h ← GPAS(h + mlp(norm(h)/√ℓ)) with one shared α (spec §3.1)."""
    model = tiny_model("neollm-tiny")
    randomise_parameters(model, seed=3)
    block = model.model.layers[3]  # ℓ = 4, gated attention with FAN
    h = torch.randn(2, 7, 64)
    positions = torch.arange(7)[None]
    ctx = ForwardContext(position_ids=positions, rotation=model.model.position(positions), key_padding_mask=None,
                         cache=None, past_length=0)
    keep = 1 - F.silu(block.gpas.alpha)
    a = block.mixer(block.fan(block.mixer_norm(h) / 2), ctx)
    h1 = keep * (h + a)
    expected = keep * (h1 + block.mlp(block.mlp_norm(h1) / 2))
    torch.testing.assert_close(block(h, ctx=ctx), expected)


def test_the_final_norm_is_not_scaled():
    model = tiny_model("neollm-tiny")
    randomise_parameters(model, seed=4)
    seen = {}
    model.model.norm.register_forward_pre_hook(lambda module, args: seen.update(residual=args[0]))
    hidden = model.model(torch.randint(0, 101, (1, 9))).last_hidden_state
    r = seen["residual"]
    torch.testing.assert_close(hidden, r / torch.sqrt(r.pow(2).mean(-1, keepdim=True) + 1e-6)
                               * (1 + model.model.norm.weight))
