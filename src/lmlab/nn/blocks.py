"""Decoder-layer wirings. A block owns one token mixer and one MLP (chosen by the layer spec) and the norms
around them; `block` in the config picks how they meet the residual stream:

| name | per layer |
|---|---|
| prenorm | x = x + drop(mixer(norm(x))); x = x + drop(mlp(norm(x)))  (GPT-2, Llama) |
| sandwich | x = x + drop(post(mixer(pre(x)))); x = x + drop(post(mlp(pre(x))))  (N4: DyT before and after) |
| parallel | u = norm(x); x = x + drop(mixer(u)) + drop(mlp(u))  (GPT-J, PaLM, NYX: one norm, both read u) |

Options of every wiring: each pre-norm output × 1/sqrt(l) (`layernorm_scaling`; the parallel block's one norm
output, read by both branches), a FAN layer in front of the mixer (layer spec `fan`; in the parallel block in front
of the mixer only, the MLP reads u), GPAS after each residual add (`gpas`; the parallel block has one add, so one
GPAS after it, and `gpas="sublayer"` is refused there); see nn/residual_scaling.py and nn/fan.py.

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
from lmlab.nn.residual_scaling import GPAS, GPAS_MODES, layernorm_scale
from lmlab.registry import BLOCKS, MIXERS, MLPS, Option, one_of

BLOCK_OPTIONS = (
    "residual_dropout", "layernorm_scaling", "fan",
    Option("fan_ratio", requires="fan", doc="periodic share of a FAN layer's output"),
    Option("gpas", check=one_of(*GPAS_MODES), doc="GPAS after each residual add: 'layer' or 'sublayer' α"),
)


class Block(GradientCheckpointingLayer):
    """What every wiring shares besides its norms: residual dropout, LNS, FAN and GPAS (module docstring)."""

    def add_residual_options(self, config, layer_idx: int) -> None:
        """Create the shared options; called by each wiring after its norms, mixer and MLP (creation order is
        parameter order, which fixes the init's random stream)."""
        self.dropout = nn.Dropout(config.residual_dropout)
        self.norm_scale = layernorm_scale(config, layer_idx)
        self.fan = FANLayer(config.hidden_size, config.hidden_size, config.fan_ratio) \
            if config.layer_spec(layer_idx).fan else None
        self.gpas = GPAS(config.gpas) if config.gpas else None

    def scaled(self, h: torch.Tensor) -> torch.Tensor:
        """A pre-norm output times the LNS factor."""
        return h if self.norm_scale == 1.0 else h * self.norm_scale

    def into_mixer(self, h: torch.Tensor) -> torch.Tensor:
        """The mixer's input: FAN(h) when the layer has one."""
        return h if self.fan is None else self.fan(h)

    def drop(self, h: torch.Tensor) -> torch.Tensor:
        """Residual dropout; skipped outright where it is the identity (eval mode or p = 0: every decoding step)."""
        return self.dropout(h) if self.training and self.dropout.p > 0 else h

    def residual(self, x: torch.Tensor, update: torch.Tensor, sublayer: int) -> torch.Tensor:
        x = x + self.drop(update)
        return x if self.gpas is None else self.gpas(x, sublayer)


class PreNormBlock(Block):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        spec = config.layer_spec(layer_idx)
        self.layer_idx = layer_idx
        self.mixer_norm = build_norm(config, config.hidden_size, spec.norm)
        self.mixer = MIXERS[spec.mixer](config, layer_idx)
        self.mlp_norm = build_norm(config, config.hidden_size, spec.norm)
        self.mlp = MLPS[spec.mlp](config, layer_idx)
        self.add_residual_options(config, layer_idx)

    def mixer_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.into_mixer(self.scaled(self.mixer_norm(x)))

    def mlp_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(self.mlp_norm(x))

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


class ParallelBlock(Block):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        spec = config.layer_spec(layer_idx)
        self.layer_idx = layer_idx
        self.norm = build_norm(config, config.hidden_size, spec.norm)
        self.mixer = MIXERS[spec.mixer](config, layer_idx)
        self.mlp = MLPS[spec.mlp](config, layer_idx)
        self.add_residual_options(config, layer_idx)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        u = self.scaled(self.norm(x))
        return self.residual(x + self.drop(self.mixer(self.into_mixer(u), ctx)), self.mlp(u), 0)


def one_residual_add(config, layer_idx) -> str | None:
    """The parallel block's check: one residual add leaves nothing for a second GPAS α."""
    if config.gpas == "sublayer":
        return "has one residual add, so gpas='sublayer' (an α per add) means nothing there; use gpas='layer'"
    return None


class Terms:
    """The pieces of a wiring's formula with the layer's options written in (for describe()); LNS reads /√ℓ with ℓ
    the 1-based layer, so layers that differ only in ℓ share one description."""

    def __init__(self, config, layer_idx: int):
        self.normed = "norm(x)/√ℓ" if config.layernorm_scaling else "norm(x)"
        self.note = " (LNS: ℓ = the 1-based layer)" if config.layernorm_scaling else ""
        self.fan = config.layer_spec(layer_idx).fan
        self.dropout = config.residual_dropout
        self.gpas = config.gpas is not None

    def into_mixer(self, h: str) -> str:
        return f"FAN({h})" if self.fan else h

    def drop(self, h: str) -> str:
        return f"drop_{self.dropout:g}({h})" if self.dropout else h

    def add(self, *updates: str) -> str:
        total = " + ".join(["x", *map(self.drop, updates)])
        return f"x = GPAS({total})" if self.gpas else f"x = {total}"


def describe_prenorm(config, layer_idx) -> str:
    t = Terms(config, layer_idx)
    return f"{t.add(f'mixer({t.into_mixer(t.normed)})')}; {t.add(f'mlp({t.normed})')}{t.note}"


def describe_sandwich(config, layer_idx) -> str:
    t = Terms(config, layer_idx)
    return (f"{t.add(f'post_norm(mixer({t.into_mixer(t.normed)}))')}; "
            f"{t.add(f'post_norm(mlp({t.normed}))')}{t.note}")


def describe_parallel(config, layer_idx) -> str:
    t = Terms(config, layer_idx)
    mixer = f"mixer({t.into_mixer('u')})"
    return f"u = {t.normed}; {t.add(mixer, 'mlp(u)')}{t.note}"


BLOCKS.register("prenorm", options=BLOCK_OPTIONS, describe=describe_prenorm)(PreNormBlock)
BLOCKS.register("sandwich", options=BLOCK_OPTIONS, describe=describe_sandwich)(SandwichBlock)
BLOCKS.register("parallel", options=BLOCK_OPTIONS, check=one_residual_add, describe=describe_parallel)(ParallelBlock)
