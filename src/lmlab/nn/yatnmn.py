"""The YatNMN layer (Yat neural-matter network, mlnomadpy/nmn v0.2.29) and the MLPs built on it (yatgpt).

For an input u (d channels) and neuron j with weight row w_j:

    y_j = α · (u·w_j + b̃_j)² / (max(‖u‖² + ‖w_j‖² − 2·u·w_j, 0) + ε̃)

- the denominator is the squared distance ‖u − w_j‖², expanded and clamped at 0 against cancellation;
- b̃ = softplus(b) (`yatnmn_softplus`) or b (`yatnmn`); b has one entry per neuron, or one shared entry when
  `yatnmn_scalar_bias`; it enters the numerator only;
- ε̃ = softplus(ε_raw), learnable (`yatnmn_softplus`), or the constant `yatnmn_epsilon` (`yatnmn`);
- α is learnable (init 1) or the constant `yatnmn_constant_alpha`.

The ratio is the nonlinearity: the MLP is down(YatNMN(u)) with no other activation. The whole score runs in at
least fp32 (autocast off, inputs and weights upcast) and is cast back to the input dtype.

Init: weight by the config's scheme as an MLP input projection (role "mlp_in"); b = 0; ε_raw = ln(expm1(ε)) so
that softplus(ε_raw) = yatnmn_epsilon; α = 1.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from lmlab.nn.component import Component
from lmlab.nn.mlp import MLP_OPTIONS, TwoLayerMLP, describe_mlp
from lmlab.registry import INIT_SCHEMES, MLPS, Option, positive


def autocast_disabled(device: torch.device):
    """A context in which matmuls on `device` run in the dtype of their inputs (no autocast)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()  # e.g. the meta device, used for shape-only runs


class YatNMN(Component):
    """d -> I YatNMN layer (see the module docstring). `weight` is (I, d) like an nn.Linear's; the published
    kernel is its transpose."""

    def __init__(self, config, softplus: bool):
        super().__init__()
        self.config = config
        self.softplus = softplus
        self.in_features = config.hidden_size
        self.out_features = config.intermediate_size
        self.epsilon = config.yatnmn_epsilon
        self.constant_alpha = config.yatnmn_constant_alpha
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.bias = nn.Parameter(torch.empty(1 if config.yatnmn_scalar_bias else self.out_features))
        self.raw_epsilon = nn.Parameter(torch.empty(1)) if softplus else None
        self.alpha = nn.Parameter(torch.empty(1)) if self.constant_alpha is None else None

    def reset_parameters(self) -> None:
        INIT_SCHEMES[self.config.init](self, "mlp_in", self.config)
        init.zeros_(self.bias)
        if self.raw_epsilon is not None:
            init.constant_(self.raw_epsilon, math.log(math.expm1(self.epsilon)))
        if self.alpha is not None:
            init.ones_(self.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # at least fp32; fp64 stays fp64
        with autocast_disabled(x.device):
            u, w = x.to(dtype), self.weight.to(dtype)
            dot = F.linear(u, w)
            distance = (u.square().sum(-1, keepdim=True) + w.square().sum(-1) - 2.0 * dot).clamp_min(0.0)
            bias = self.bias.to(dtype)
            if self.softplus:
                bias = F.softplus(bias)
            epsilon = F.softplus(self.raw_epsilon.to(dtype)) if self.raw_epsilon is not None else self.epsilon
            alpha = self.alpha.to(dtype) if self.alpha is not None else self.constant_alpha
            y = (dot + bias).square() / (distance + epsilon) * alpha
        return y.to(x.dtype)


YATNMN_OPTIONS = (
    *MLP_OPTIONS,
    Option("yatnmn_epsilon", check=positive, doc="ε: fixed (yatnmn) or the initial softplus(ε_raw)"),
    Option("yatnmn_scalar_bias", doc="one shared bias instead of one per neuron"),
    Option("yatnmn_constant_alpha", doc="a fixed α instead of a learnable one"),
)


def describe_yatnmn(bias: str, epsilon: str):
    def describe(config, layer_idx) -> str:
        alpha = "α" if config.yatnmn_constant_alpha is None else f"{config.yatnmn_constant_alpha}"
        shared = " (one shared b)" if config.yatnmn_scalar_bias else ""
        eps = epsilon.format(eps=config.yatnmn_epsilon)
        formula = f"down(y), y_j = {alpha}·(x·w_j + {bias})² / (‖x − w_j‖² + {eps}){shared}"
        return describe_mlp(formula)(config, layer_idx)
    return describe


@MLPS.register("yatnmn", options=YATNMN_OPTIONS, describe=describe_yatnmn("b", "{eps}"))
def yatnmn_mlp(config, layer_idx: int) -> TwoLayerMLP:
    """Plain YatNMN: raw bias, fixed ε."""
    return TwoLayerMLP(config, None, up_proj=YatNMN(config, softplus=False))


@MLPS.register("yatnmn_softplus", options=YATNMN_OPTIONS,
               describe=describe_yatnmn("softplus(b)", "softplus(ε_raw), ε_raw from {eps}"))
def yatnmn_softplus_mlp(config, layer_idx: int) -> TwoLayerMLP:
    """YatNMN-Softplus: softplus bias, learnable ε through softplus."""
    return TwoLayerMLP(config, None, up_proj=YatNMN(config, softplus=True))


__all__ = ["YatNMN", "autocast_disabled"]
