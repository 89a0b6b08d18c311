"""Value embeddings (ResFormer-style, nanochat): a per-layer token table added to the attention values.

With u the block input (B, T, d) (the normed residual stream), ids the current token ids, E a (vocab, H_kv·d_h)
table read per kv head, W_g (H_kv, c) and s = value_embed_gate_scale:

    v_h ← v_h + s · σ(W_g · u[..., :c])_h · E[ids]_h        (one gate per kv head, in (0, s))

The values are never rotated or normalised, so it does not matter whether this runs before or after RoPE/QK-norm.
Init: E by the config's scheme (role "value_embed"); W_g ~ U(0, 0.02), so every gate starts near s/2.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from lmlab.nn.component import Component
from lmlab.nn.init import embedding
from lmlab.registry import Option, channel_count

# what a mixer that adds value embeddings (layer spec `value_embed`) honours
VALUE_EMBED_OPTIONS = (
    "value_embed",
    Option("value_embed_gate_channels", check=channel_count, requires="value_embed",
           doc="input channels of the gate"),
    Option("value_embed_gate_scale", requires="value_embed", doc="the gate's maximum"),
)


class ValueEmbedding(Component):
    def __init__(self, config):
        super().__init__()
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.channels = config.value_embed_gate_channels
        self.scale = config.value_embed_gate_scale
        self.table = embedding(config.vocab_size, self.num_kv_heads * self.head_dim, role="value_embed")
        self.gate = nn.Parameter(torch.empty(self.num_kv_heads, self.channels))

    def reset_parameters(self) -> None:
        init.uniform_(self.gate, 0.0, 0.02)

    def forward(self, v: torch.Tensor, u: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
        """v (B, H_kv, T, d_h) plus the gated embeddings of `input_ids` (B, T); u (B, T, d) feeds the gate."""
        if input_ids is None:
            raise ValueError("this model adds value embeddings (a table indexed by token id) in some layers, so it "
                             "needs input_ids; it cannot run from inputs_embeds alone")
        b, t = input_ids.shape
        gate = self.scale * torch.sigmoid(u[..., :self.channels] @ self.gate.t().to(u.dtype))  # (B, T, H_kv)
        values = self.table(input_ids).view(b, t, self.num_kv_heads, self.head_dim)
        added = gate[..., None] * values
        return v + added.transpose(1, 2).to(v.dtype)


__all__ = ["VALUE_EMBED_OPTIONS", "ValueEmbedding"]
