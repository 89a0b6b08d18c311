"""Depth-dependent scaling of the residual stream: two block options usable by any preset.

LayerNorm Scaling (LNS; Sun et al. 2025, arXiv 2502.05795), `layernorm_scaling=True`: the output of each pre-norm of
1-based layer ℓ is multiplied by the constant 1/√ℓ (layer 1 unscaled, layer 12 × 0.2887); the final norm is not.
No parameters.

GPAS (Gradient-Preserving Activation Scaling; arXiv 2506.22049), `gpas="layer"` or `"sublayer"`: after each residual
add,

    y = x − SiLU(α) · sg(x)          (sg = stop-gradient)

so the forward value is (1 − SiLU(α))·x while ∂y/∂x is the identity, and ∂L/∂α = −SiLU′(α)·⟨∂L/∂y, x⟩. α starts at 0
(SiLU(0) = 0: the identity). "layer" shares one α between both adds of a layer (the official code); "sublayer" gives
each add its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from lmlab.nn.component import Component

GPAS_MODES = ("layer", "sublayer")


def layernorm_scale(config, layer_idx: int) -> float:
    """The LNS multiplier of layer `layer_idx` (0-based): 1/√(layer_idx + 1), or 1 when LNS is off."""
    return 1.0 / math.sqrt(layer_idx + 1) if config.layernorm_scaling else 1.0


class GPAS(Component):
    """x − SiLU(α)·sg(x) with one learnable α per layer or per sublayer (see the module docstring)."""

    def __init__(self, mode: str):
        super().__init__()
        if mode not in GPAS_MODES:
            raise ValueError(f"gpas must be one of {GPAS_MODES} (or None for no GPAS), got {mode!r}")
        self.alpha = nn.Parameter(torch.zeros(2 if mode == "sublayer" else 1))

    def reset_parameters(self) -> None:
        init.zeros_(self.alpha)

    def forward(self, x: torch.Tensor, sublayer: int) -> torch.Tensor:
        """`sublayer` is 0 after the mixer's add and 1 after the MLP's; a shared α serves both."""
        alpha = self.alpha[sublayer if self.alpha.numel() > 1 else 0]
        return x - (F.silu(alpha.float()) * x.detach().float()).to(x.dtype)
