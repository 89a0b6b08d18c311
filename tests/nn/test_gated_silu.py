"""The gated SiLU MLP (Llama / Qwen layout) against its formula, and its relation to NYX's packed swiglu."""

import torch

from conftest import randomise_parameters
from lmlab import preset_config
from lmlab.nn.gated_silu import GatedSiLU
from lmlab.nn.mlp import SwiGLU


def test_gated_silu_is_down_of_silu_gate_times_up():
    config = preset_config("llama-tiny", mlp_bias=True)
    mlp = GatedSiLU(config)
    randomise_parameters(mlp, scale=1.0)
    x = torch.randn(2, 5, 64, dtype=torch.float64)
    w = {name: p.double() for name, p in mlp.named_parameters()}
    gate = x @ w["gate_proj.weight"].T + w["gate_proj.bias"]
    up = x @ w["up_proj.weight"].T + w["up_proj.bias"]
    expected = (gate * torch.sigmoid(gate) * up) @ w["down_proj.weight"].T + w["down_proj.bias"]
    torch.testing.assert_close(mlp.double()(x), expected)


def test_same_function_as_the_packed_swiglu_with_the_projections_stacked():
    config = preset_config("llama-tiny")
    split, packed = GatedSiLU(config), SwiGLU(config)
    randomise_parameters(split, scale=1.0)
    with torch.no_grad():
        packed.up_proj.weight.copy_(torch.cat([split.up_proj.weight, split.gate_proj.weight]))  # [value | gate]
        packed.down_proj.weight.copy_(split.down_proj.weight)
    x = torch.randn(3, 64)
    torch.testing.assert_close(split(x), packed.eval()(x))
