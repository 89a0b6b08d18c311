"""A token mixer that lives in the tests alone, with an option of its own: what adding a mixer to lmlab takes (this
file; no edit of config.py). Importing it registers `mixer="toy_decay"`.

    h_t = λ·h_(t−1) + in_proj(x_t),   out_t = out_proj(h_t)      (h_0 = 0, λ = the option `toy_decay`)

Causal by construction; the decoding state is h (B, d). Padding tokens are zeroed before the sum, so a left-padded
row keeps h = 0 until its first real token, like the unpadded row.
"""

from __future__ import annotations

import torch

from lmlab.nn.component import Component
from lmlab.nn.init import linear
from lmlab.registry import MIXERS, Option


def decay_in_unit_interval(value, config) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    return None if ok else "must be a number in (0, 1)"


TOY_DECAY = Option("toy_decay", default=0.5, check=decay_in_unit_interval, doc="λ, the decay of the running sum")


class ToyDecayMixer(Component):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.decay = config.component_option("toy_decay")
        self.in_proj = linear(config.hidden_size, config.hidden_size, False, "attn_in")
        self.out_proj = linear(config.hidden_size, config.hidden_size, False, "attn_out")

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        u = self.in_proj(x)
        if ctx.token_mask is not None:
            u = u * ctx.token_mask[..., None].to(u.dtype)
        h = ctx.layer_state(self.layer_idx)
        h = torch.zeros_like(u[:, 0]) if h is None else h
        states = []
        for t in range(u.shape[1]):
            h = self.decay * h + u[:, t]
            states.append(h)
        ctx.set_layer_state(self.layer_idx, h)
        return self.out_proj(torch.stack(states, dim=1))


MIXERS.register("toy_decay", options=(TOY_DECAY,),
                describe=lambda config, layer_idx: f"out(h_t), h_t = {config.component_option('toy_decay')}"
                                                   "·h_(t−1) + in(x_t)")(ToyDecayMixer)
