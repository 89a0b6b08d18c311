"""FAN layer (Fourier Analysis Network; Dong et al., FANformer): a biased projection whose first part is read as
phases.

    [P | G] = W x + b,      FAN(x) = concat(cos P, sin P, G)

with p = ⌊d_out · fan_ratio⌋ periodic channels and g = d_out − 2p linear channels, so the output is d_out wide. W, b are
one `linear` (role attn_in: N(0, σ) and bias 0 under the normal scheme). A layer whose spec has `fan=True` puts one
in front of its token mixer (after the pre-norm), so every mixer projection reads FAN(x) (NeoLLM).
"""

from __future__ import annotations

import math

import torch

from lmlab.errors import ConfigError
from lmlab.nn.component import Component
from lmlab.nn.init import linear


class FANLayer(Component):
    def __init__(self, dim_in: int, dim_out: int, ratio: float):
        super().__init__()
        self.periodic = math.floor(dim_out * ratio)
        self.linear_width = dim_out - 2 * self.periodic
        if self.periodic < 1 or self.linear_width < 0:
            raise ConfigError(f"fan_ratio {ratio} gives {self.periodic} periodic channels of a {dim_out}-wide FAN "
                              "layer; choose 1/dim_out <= fan_ratio <= 0.5")
        self.proj = linear(dim_in, self.periodic + self.linear_width, True, "attn_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases, rest = self.proj(x).split([self.periodic, self.linear_width], dim=-1)
        phases_f = phases.float()
        return torch.cat([phases_f.cos().to(rest.dtype), phases_f.sin().to(rest.dtype), rest], dim=-1)
