"""Decoder-layer wirings. A block owns one token mixer and one MLP (chosen by the layer spec) and the norms
around them; `block` in the config picks how they meet the residual stream:

| name | per layer |
|---|---|
| prenorm | x = x + drop(mixer(norm(x))); x = x + drop(mlp(norm(x)))  (GPT-2, Llama) |
| sandwich | x = x + drop(post(mixer(pre(x)))); x = x + drop(post(mlp(pre(x))))  (N4: DyT before and after) |
| parallel | u = norm(x); x = x + drop(mixer(u)) + drop(mlp(u))  (GPT-J, PaLM, NYX: one norm, both read u) |

Blocks are gradient-checkpointing layers: `model.gradient_checkpointing_enable()` recomputes them in backward.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from lmlab.nn.context import ForwardContext
from lmlab.nn.norms import build_norm
from lmlab.registry import BLOCKS, MIXERS, MLPS


class PreNormBlock(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        spec = config.layer_spec(layer_idx)
        self.layer_idx = layer_idx
        self.mixer_norm = build_norm(config, config.hidden_size, spec.norm)
        self.mixer = MIXERS[spec.mixer](config, layer_idx)
        self.mlp_norm = build_norm(config, config.hidden_size, spec.norm)
        self.mlp = MLPS[spec.mlp](config, layer_idx)
        self.dropout = nn.Dropout(config.residual_dropout)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = x + self.dropout(self.mixer(self.mixer_norm(x), ctx))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class SandwichBlock(PreNormBlock):
    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        spec = config.layer_spec(layer_idx)
        self.mixer_post_norm = build_norm(config, config.hidden_size, spec.norm)
        self.mlp_post_norm = build_norm(config, config.hidden_size, spec.norm)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = x + self.dropout(self.mixer_post_norm(self.mixer(self.mixer_norm(x), ctx)))
        return x + self.dropout(self.mlp_post_norm(self.mlp(self.mlp_norm(x))))


class ParallelBlock(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        spec = config.layer_spec(layer_idx)
        self.layer_idx = layer_idx
        self.norm = build_norm(config, config.hidden_size, spec.norm)
        self.mixer = MIXERS[spec.mixer](config, layer_idx)
        self.mlp = MLPS[spec.mlp](config, layer_idx)
        self.dropout = nn.Dropout(config.residual_dropout)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        u = self.norm(x)
        return x + self.dropout(self.mixer(u, ctx)) + self.dropout(self.mlp(u))


BLOCKS.register("prenorm")(PreNormBlock)
BLOCKS.register("sandwich")(SandwichBlock)
BLOCKS.register("parallel")(ParallelBlock)
