"""The gated SiLU feed-forward of Llama, Qwen and Mistral (Shazeer's SwiGLU with separate projections):

    mlp(x) = down( SiLU(gate x) ⊙ up x ),    gate, up: d -> I,  down: I -> d   (biases when `mlp_bias`)

The same function as `swiglu` (NYX's layout packs value and gate into one d -> 2I projection); here each projection
is its own Linear, named as in Hugging Face's Llama (`gate_proj`, `up_proj`, `down_proj`), so checkpoints map name
for name and adapters can target each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.nn.component import Component
from lmlab.nn.init import linear
from lmlab.nn.mlp import MLP_OPTIONS, describe_mlp
from lmlab.registry import MLPS


class GatedSiLU(Component):
    def __init__(self, config):
        super().__init__()
        d, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = linear(d, inner, bias, "mlp_in")
        self.up_proj = linear(d, inner, bias, "mlp_in")
        self.down_proj = linear(inner, d, bias, "mlp_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@MLPS.register("gated_silu", options=MLP_OPTIONS,
               describe=describe_mlp("down(SiLU(gate x) ⊙ up x)", up_factor=2))
def gated_silu_mlp(config, layer_idx: int) -> GatedSiLU:
    return GatedSiLU(config)


__all__ = ["GatedSiLU"]
