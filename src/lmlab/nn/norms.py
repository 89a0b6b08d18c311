"""Normalisation layers. Statistics are always computed in fp32 and the result cast back to the input dtype; DyT has
no statistics (an elementwise tanh) and runs in the input's dtype.

| name | formula | parameters |
|---|---|---|
| layernorm | (x − mean)/sqrt(var + ε) · w + b | w = 1, b = 0 |
| layernorm_nobias | (x − mean)/sqrt(var + ε) · w | w = 1 |
| rmsnorm | x · rsqrt(mean(x²) + ε) · w | w = 1 |
| zero_centred_rmsnorm | x · rsqrt(mean(x²) + ε) · (1 + w) (Gemma, Qwen3-Next, NeoLLM) | w = 0 |
| rmsnorm_parameterless | x · rsqrt(mean(x²) + ε) (nanochat, yatgpt) | none |
| dyt | γ · tanh(α x) + β (Zhu et al. 2025, arXiv 2503.10622) | α scalar = dyt_alpha_init, γ = 1, β = 0 |
| dyt_n4 | w · tanh(x) (N4's reduced DyT: α ≡ 1, β ≡ 0) | w = 1 |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from lmlab.nn.component import Component
from lmlab.registry import NORMS


class LayerNorm(Component):
    def __init__(self, dim: int, eps: float, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32 and (self.bias is None or self.bias.dtype == x.dtype):
            # fp32 already: no casts to dispatch (a decoding step normalises a few rows, so they cost)
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        bias = None if self.bias is None else self.bias.float()
        y = F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), bias, self.eps)
        return y.to(x.dtype)


class RMSNorm(Component):
    """x · rsqrt(mean(x²) + ε), times a learnable gain w unless `gain=False` (parameterless)."""

    def __init__(self, dim: int, eps: float, gain: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if gain else None

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)

    def scale(self) -> torch.Tensor | None:
        """The per-channel multiplier of the normalised input (None: parameterless)."""
        return None if self.weight is None else self.weight.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        scale = self.scale()
        if scale is not None:
            y = y * scale
        return y.to(x.dtype)


class ZeroCentredRMSNorm(RMSNorm):
    """RMSNorm whose gain is stored as its offset from 1 (w = 0 at init), so weight decay pulls the gain to 1."""

    def __init__(self, dim: int, eps: float):
        super().__init__(dim, eps)
        nn.init.zeros_(self.weight)

    def reset_parameters(self) -> None:
        init.zeros_(self.weight)

    def scale(self) -> torch.Tensor:
        return 1.0 + self.weight.float()


class DyT(Component):
    """Dynamic Tanh: γ·tanh(αx) + β with a learnable scalar α."""

    def __init__(self, dim: int, alpha_init: float):
        super().__init__()
        self.alpha_init = alpha_init
        self.alpha = nn.Parameter(torch.full((1,), alpha_init))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def reset_parameters(self) -> None:
        init.constant_(self.alpha, self.alpha_init)
        init.ones_(self.weight)
        init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha.to(x.dtype) * x) * self.weight.to(x.dtype) + self.bias.to(x.dtype)


class ReducedDyT(Component):
    """N4's DyT: w·tanh(x), no α, no β."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * self.weight.to(x.dtype)


EPS = ("norm_eps",)


def _formula(text: str):
    """A describe() for a norm: its formula, with ε where it has one."""
    return lambda config, layer_idx: text.format(eps=config.norm_eps, alpha=config.dyt_alpha_init)


NORMS.register("layernorm", options=EPS, describe=_formula("(x − mean)/sqrt(var + {eps})·w + b"))(
    lambda config, dim: LayerNorm(dim, config.norm_eps, bias=True))
NORMS.register("layernorm_nobias", options=EPS, describe=_formula("(x − mean)/sqrt(var + {eps})·w"))(
    lambda config, dim: LayerNorm(dim, config.norm_eps, bias=False))
NORMS.register("rmsnorm", options=EPS, describe=_formula("x·rsqrt(mean x² + {eps})·w"))(
    lambda config, dim: RMSNorm(dim, config.norm_eps))
NORMS.register("zero_centred_rmsnorm", options=EPS, describe=_formula("x·rsqrt(mean x² + {eps})·(1 + w)"))(
    lambda config, dim: ZeroCentredRMSNorm(dim, config.norm_eps))
NORMS.register("rmsnorm_parameterless", options=EPS, describe=_formula("x·rsqrt(mean x² + {eps})"))(
    lambda config, dim: RMSNorm(dim, config.norm_eps, gain=False))
NORMS.register("dyt", options=("dyt_alpha_init",), describe=_formula("γ·tanh(α·x) + β, α from {alpha}"))(
    lambda config, dim: DyT(dim, config.dyt_alpha_init))
NORMS.register("dyt_n4", describe=_formula("w·tanh(x)"))(lambda config, dim: ReducedDyT(dim))


def build_norm(config, dim: int, kind: str | None = None) -> Component:
    """The norm named `kind` (default: the config's model-wide norm) over `dim` channels."""
    return NORMS[kind or config.norm](config, dim)
