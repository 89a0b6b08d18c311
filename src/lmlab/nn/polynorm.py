"""PolyNorm activation (Zhuo et al., PolyCom) and the gated PolyNorm MLP (NeoLLM).

    N(y) = y · rsqrt(mean_lastdim(y²) + 1e-6)                      (no gain)
    PolyNorm(x) = w0·N(x³) + w1·N(x²) + w2·N(x) + b                  (w0 multiplies the cube)
    MLP(x) = down_proj( PolyNorm(gate_proj x) ⊙ up_proj x )          (no biases)

w = (1/3, 1/3, 1/3) and b = 0 at init, one set per layer; the activation is computed in fp32. `mlp="polynorm"`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from lmlab.nn.component import Component
from lmlab.nn.init import linear
from lmlab.nn.mlp import MLP_OPTIONS, describe_mlp
from lmlab.registry import MLPS

POLYNORM_EPS = 1e-6  # the reference's fixed ε (independent of the model's norm_eps)


def _rms_normalise(y: torch.Tensor) -> torch.Tensor:
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + POLYNORM_EPS)


class PolyNorm(Component):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((3,), 1.0 / 3.0))
        self.bias = nn.Parameter(torch.zeros(1))

    def reset_parameters(self) -> None:
        init.constant_(self.weight, 1.0 / 3.0)
        init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        w = self.weight.float()
        y = (w[0] * _rms_normalise(xf.pow(3)) + w[1] * _rms_normalise(xf.pow(2)) + w[2] * _rms_normalise(xf)
             + self.bias.float())
        return y.to(x.dtype)


class PolyNormMLP(Component):
    def __init__(self, config):
        super().__init__()
        d, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = linear(d, inner, config.mlp_bias, "mlp_in")
        self.up_proj = linear(d, inner, config.mlp_bias, "mlp_in")
        self.down_proj = linear(inner, d, config.mlp_bias, "mlp_out")
        self.act_fn = PolyNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@MLPS.register("polynorm", options=MLP_OPTIONS, describe=describe_mlp(
    "down(PolyNorm(gate x) ⊙ up x), PolyNorm(y) = w0·N(y³) + w1·N(y²) + w2·N(y) + b", up_factor=2))
def polynorm_mlp(config, layer_idx: int) -> PolyNormMLP:
    return PolyNormMLP(config)
