"""Decoder-layer wirings against naive references: pre-norm with LNS, FAN and GPAS, and the parallel block."""

import math

import torch
import torch.nn.functional as F

from conftest import forward_context, randomise_parameters, tiny_model
from lmlab import count_parameters


def test_decoder_layer_wiring_with_lns_fan_and_gpas():
    """h ← GPAS(h + mixer(FAN(norm(h)/√ℓ))); h ← GPAS(h + mlp(norm(h)/√ℓ)) with one shared α (spec §3.1)."""
    model = tiny_model("neollm-tiny")
    randomise_parameters(model, seed=3)
    block = model.model.layers[3]  # ℓ = 4, gated attention with FAN
    h = torch.randn(2, 7, 64)
    ctx = forward_context(7, position=model.model.position)
    keep = 1 - F.silu(block.gpas.alpha)
    a = block.mixer(block.fan(block.mixer_norm(h) / 2), ctx)
    h1 = keep * (h + a)
    expected = keep * (h1 + block.mlp(block.mlp_norm(h1) / 2))
    torch.testing.assert_close(block(h, ctx=ctx), expected)


def test_parallel_block_is_one_norm_feeding_both_branches():
    model = tiny_model("nyx-tiny")
    randomise_parameters(model)
    block = model.model.layers[0]
    x = torch.randn(2, 7, model.config.hidden_size)
    ctx = forward_context(7, batch=2, position=model.model.position)
    u = block.norm(x)
    torch.testing.assert_close(block(x, ctx=ctx), x + block.mixer(u, ctx) + block.mlp(u))


def test_parallel_block_swaps_into_another_family():
    """One norm per layer instead of two: the NGen4 layout with a parallel block loses exactly one LayerNorm."""
    prenorm, parallel = tiny_model("ngen4-tiny"), tiny_model("ngen4-tiny", block="parallel")
    norm = 2 * prenorm.config.hidden_size  # weight and bias
    assert count_parameters(prenorm) - count_parameters(parallel) == prenorm.config.num_hidden_layers * norm


def test_parallel_block_with_lns_fan_and_gpas():
    """u = norm(x)/√ℓ; x ← GPAS(x + mixer(FAN(u)) + mlp(u)): FAN in front of the mixer only, one α after the add."""
    model = tiny_model("nyx-tiny", layernorm_scaling=True, gpas="layer", layers=[{}, {"fan": True}])
    randomise_parameters(model, seed=2)
    block = model.model.layers[1]  # ℓ = 2
    assert block.fan is not None and block.gpas.alpha.numel() == 1 and model.model.layers[0].fan is None
    x = torch.randn(2, 7, model.config.hidden_size)
    ctx = forward_context(7, batch=2, position=model.model.position)
    u = block.norm(x) / math.sqrt(2)
    expected = (1 - F.silu(block.gpas.alpha)) * (x + block.mixer(block.fan(u), ctx) + block.mlp(u))
    torch.testing.assert_close(block(x, ctx=ctx), expected)
