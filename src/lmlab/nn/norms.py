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

The RMS norms keep only x and the per-row r = rsqrt(mean(x²) + ε) for their backward (not x in fp32 and the
normalised n = x·r as autograd would: half the memory on an fp32 residual stream) and recompute n there:
∂L/∂x = r·(ĝ − n·mean(ĝ·n)) with ĝ = ∂L/∂n = ∂L/∂y · s.
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


def statistics_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half-precision inputs, the input's own dtype otherwise (float64 stays float64)."""
    return torch.promote_types(x.dtype, torch.float32)


def rms_normalise(u: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, r): n = u·r, r = rsqrt(mean(u²) + ε) over the last dimension."""
    r = torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)
    return u * r, r


def rms_normalise_backward(grad_n: torch.Tensor, n: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """∂L/∂u of n = u·r, r = rsqrt(mean(u²) + ε), given ∂L/∂n: r·(∂L/∂n − n·mean(∂L/∂n·n))."""
    return r * (grad_n - n * (grad_n * n).mean(-1, keepdim=True))


class _RMSNorm(torch.autograd.Function):
    """y = x·r·s (s: per-channel scale or None), times SiLU(gate) when a gate is given, in the statistics dtype and
    returned in x's dtype; saves x, r and the gate in their own dtypes (∂L/∂gate = ∂L/∂y · x·r·s · SiLU′(gate))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor | None, gate: torch.Tensor | None, eps: float
                ) -> torch.Tensor:
        y, r = rms_normalise(x.to(statistics_dtype(x)), eps)
        if scale is not None:
            y = y * scale
        if gate is not None:
            y = y * F.silu(gate.to(y.dtype))
        ctx.save_for_backward(x, r, scale, gate)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, r, scale, gate = ctx.saved_tensors
        n = x.to(r.dtype) * r
        grad_n = grad_y.to(r.dtype)
        grad_scale = grad_gate = None
        if gate is not None:
            z = gate.to(r.dtype)
            sigmoid = torch.sigmoid(z)
            if ctx.needs_input_grad[2]:
                normed = n if scale is None else n * scale
                grad_gate = (grad_n * normed * sigmoid * (1 + z * (1 - sigmoid))).to(gate.dtype)
            grad_n = grad_n * (z * sigmoid)
        if scale is not None:
            if ctx.needs_input_grad[1]:
                grad_scale = (grad_n * n).reshape(-1, n.shape[-1]).sum(0).to(scale.dtype)
            grad_n = grad_n * scale
        return rms_normalise_backward(grad_n, n, r).to(x.dtype), grad_scale, grad_gate, None


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
        return None if self.weight is None else self.weight.to(statistics_dtype(self.weight))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """The norm of x, times SiLU(gate) when given (Gated DeltaNet's output gate: one pass, x and the gate kept
        for the backward instead of four tensors of x's size in fp32)."""
        return _RMSNorm.apply(x, self.scale(), gate, self.eps)


class ZeroCentredRMSNorm(RMSNorm):
    """RMSNorm whose gain is stored as its offset from 1 (w = 0 at init), so weight decay pulls the gain to 1."""

    def __init__(self, dim: int, eps: float):
        super().__init__(dim, eps)
        nn.init.zeros_(self.weight)

    def reset_parameters(self) -> None:
        init.zeros_(self.weight)

    def scale(self) -> torch.Tensor:
        return 1.0 + self.weight.to(statistics_dtype(self.weight))


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
