"""Feed-forward blocks. Every MLP maps hidden_size -> hidden_size through `up_proj` and `down_proj`.

| name | formula |
|---|---|
| gelu | down(GELU(up x)), GELU exact (erf) or tanh-approximate per `gelu_approximate` |
| gelu_new | down(GELU_tanh(up x)), GELU_tanh(x) = 0.5x(1 + tanh(sqrt(2/π)(x + 0.044715x³))) (GPT-2's "gelu_new") |
| relu2 | down(relu(up x)²) (nanochat) |
| asgg | down(GELU_erf(r) ⊙ σ(g) ⊙ v), [g | r | v] = up x with up: d -> 3I, chunk order (gate, ref, x) (N4) |
| yatnmn, yatnmn_softplus | down(YatNMN(x)) (yatgpt; lmlab.nn.yatnmn) |
| swiglu | down(dropout(a ⊙ SiLU(g))), [a | g] = up x with up: d -> 2I, value half first, gate second (NYX / PaLM) |
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.nn.component import Component
from lmlab.nn.init import linear
from lmlab.registry import MLPS, Option, one_of


class TwoLayerMLP(Component):
    """down(act(up x)) with `up`: d -> I, a Linear unless another d -> I layer is given (YatNMN, whose ratio is the
    nonlinearity: then `activation` is None)."""

    def __init__(self, config, activation, up_proj: nn.Module | None = None):
        super().__init__()
        self.activation = activation
        self.up_proj = up_proj if up_proj is not None else linear(config.hidden_size, config.intermediate_size,
                                                                  config.mlp_bias, "mlp_in")
        self.down_proj = linear(config.intermediate_size, config.hidden_size, config.mlp_bias, "mlp_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.up_proj(x)
        return self.down_proj(hidden if self.activation is None else self.activation(hidden))


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


class ASGG(Component):
    """N4's MLP: a GEGLU (exact GELU) multiplied by a sigmoid gate, from one d -> 3I projection."""

    def __init__(self, config):
        super().__init__()
        self.up_proj = linear(config.hidden_size, 3 * config.intermediate_size, config.mlp_bias, "mlp_in")
        self.down_proj = linear(config.intermediate_size, config.hidden_size, config.mlp_bias, "mlp_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, ref, value = self.up_proj(x).chunk(3, dim=-1)
        return self.down_proj(F.gelu(ref) * torch.sigmoid(gate) * value)


class SwiGLU(Component):
    """Shazeer's SwiGLU in NYX's layout: one d -> 2I projection whose first half is the value a and second half the
    gate g; `mlp_dropout` acts on a ⊙ SiLU(g) before the down projection."""

    def __init__(self, config):
        super().__init__()
        self.up_proj = linear(config.hidden_size, 2 * config.intermediate_size, config.mlp_bias, "mlp_in")
        self.dropout = nn.Dropout(config.mlp_dropout)
        self.down_proj = linear(config.intermediate_size, config.hidden_size, config.mlp_bias, "mlp_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.dropout(value * F.silu(gate)))


MLP_OPTIONS = ("mlp_bias",)


def describe_mlp(formula, up_factor: int = 1):
    """A describe() for an MLP: its formula (text, or a function of the config giving it) and the widths."""
    def describe(config, layer_idx) -> str:
        d, inner = config.hidden_size, config.intermediate_size
        up = f"{up_factor}×{inner}" if up_factor > 1 else str(inner)
        bias = ", biases" if config.mlp_bias else ""
        text = formula(config) if callable(formula) else formula
        return f"{text}   (up {d} -> {up}, down {inner} -> {d}{bias})"
    return describe


@MLPS.register("gelu", options=(*MLP_OPTIONS, Option("gelu_approximate", check=one_of("none", "tanh"),
                                                     doc="'none' (exact erf GELU) or 'tanh'")),
               describe=describe_mlp(lambda config: "down(GELU_tanh(up x))" if config.gelu_approximate == "tanh"
                                     else "down(GELU(up x)), exact erf GELU"))
def gelu_mlp(config, layer_idx: int) -> TwoLayerMLP:
    return TwoLayerMLP(config, partial(F.gelu, approximate=config.gelu_approximate))


@MLPS.register("gelu_new", options=MLP_OPTIONS, describe=describe_mlp("down(GELU_tanh(up x))"))
def gelu_new_mlp(config, layer_idx: int) -> TwoLayerMLP:
    return TwoLayerMLP(config, partial(F.gelu, approximate="tanh"))


@MLPS.register("relu2", options=MLP_OPTIONS, describe=describe_mlp("down(relu(up x)²)"))
def relu2_mlp(config, layer_idx: int) -> TwoLayerMLP:
    return TwoLayerMLP(config, relu_squared)


@MLPS.register("asgg", options=MLP_OPTIONS,
               describe=describe_mlp("down(GELU(r) ⊙ σ(g) ⊙ v), [g | r | v] = up x", up_factor=3))
def asgg_mlp(config, layer_idx: int) -> ASGG:
    return ASGG(config)


@MLPS.register("swiglu", options=(*MLP_OPTIONS, Option("mlp_dropout", doc="dropout on a ⊙ SiLU(g)")),
               describe=describe_mlp(lambda config: (f"down(drop_{config.mlp_dropout:g}(a ⊙ SiLU(g)))" if
                                                     config.mlp_dropout else "down(a ⊙ SiLU(g))") + ", [a | g] = up x",
                                     up_factor=2))
def swiglu_mlp(config, layer_idx: int) -> SwiGLU:
    return SwiGLU(config)
