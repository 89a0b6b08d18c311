"""Init schemes: the statistics of N4's and NGen4's published inits."""

import math

import pytest
import torch

from conftest import tiny_model


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
