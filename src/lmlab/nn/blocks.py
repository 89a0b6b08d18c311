"""Decoder-layer wirings. A block owns one token mixer and one MLP (chosen by the layer spec) and the norms
around them; `block` in the config picks how they meet the residual stream:

| name | per layer |
|---|---|
| prenorm | x = x + drop(mixer(norm(x))); x = x + drop(mlp(norm(x)))  (GPT-2, Llama) |
| sandwich | x = x + drop(post(mixer(pre(x)))); x = x + drop(post(mlp(pre(x))))  (N4: DyT before and after) |
| parallel | u = norm(x); x = x + drop(mixer(u)) + drop(mlp(u))  (GPT-J, PaLM, NYX: one norm, both read u) |

Options of every wiring: each pre-norm output × 1/sqrt(l) (`layernorm_scaling`), a FAN layer in front of the mixer
(layer spec `fan`), GPAS after each residual add (`gpas`); see nn/residual_scaling.py and nn/fan.py.

Blocks are gradient-checkpointing layers: `model.activation_checkpointing_enable()` (before transformers 5.23:
`gradient_checkpointing_enable()`) recomputes them in backward.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from lmlab.nn.context import ForwardContext
from lmlab.nn.fan import FANLayer
from lmlab.nn.norms import build_norm
from lmlab.nn.residual_scaling import GPAS, layernorm_scale
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
        self.norm_scale = layernorm_scale(config, layer_idx)
        self.fan = FANLayer(config.hidden_size, config.hidden_size, config.fan_ratio) if spec.fan else None
        self.gpas = GPAS(config.gpas) if config.gpas else None

    def mixer_input(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mixer_norm(x)
        if self.norm_scale != 1.0:
            h = h * self.norm_scale
        return h if self.fan is None else self.fan(h)

    def mlp_input(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp_norm(x)
        return h if self.norm_scale == 1.0 else h * self.norm_scale

    def residual(self, x: torch.Tensor, update: torch.Tensor, sublayer: int) -> torch.Tensor:
        x = x + self.dropout(update)
        return x if self.gpas is None else self.gpas(x, sublayer)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self.residual(x, self.mixer(self.mixer_input(x), ctx), 0)
        return self.residual(x, self.mlp(self.mlp_input(x)), 1)


class SandwichBlock(PreNormBlock):
    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        spec = config.layer_spec(layer_idx)
        self.mixer_post_norm = build_norm(config, config.hidden_size, spec.norm)
        self.mlp_post_norm = build_norm(config, config.hidden_size, spec.norm)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self.residual(x, self.mixer_post_norm(self.mixer(self.mixer_input(x), ctx)), 0)
        return self.residual(x, self.mlp_post_norm(self.mlp(self.mlp_input(x))), 1)


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
