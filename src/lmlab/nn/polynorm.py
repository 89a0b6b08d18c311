"""PolyNorm activation (Zhuo et al., PolyCom) and the gated PolyNorm MLP (NeoLLM).

    N(y) = y · rsqrt(mean_lastdim(y²) + 1e-6)                      (no gain)
    PolyNorm(x) = w0·N(x³) + w1·N(x²) + w2·N(x) + b                  (w0 multiplies the cube)
    MLP(x) = down_proj( PolyNorm(gate_proj x) ⊙ up_proj x )          (no biases)

w = (1/3, 1/3, 1/3) and b = 0 at init, one set per layer; the activation is computed in fp32. `mlp="polynorm"`.

The backward keeps x (in its own dtype) and the three per-row factors r_p = rsqrt(mean(x^{2p}) + ε) and recomputes
the rest (autograd would keep six fp32 tensors of x's size: 12× the memory of a bf16 x):
∂L/∂x = Σ_p p·x^{p−1} · r_p·(ĝ_p − n_p·mean(ĝ_p·n_p)) with n_p = x^p·r_p and ĝ_p = w_p·∂L/∂y;
∂L/∂w_p = Σ ∂L/∂y·n_p, ∂L/∂b = Σ ∂L/∂y.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from lmlab.nn.component import Component
from lmlab.nn.init import linear
from lmlab.nn.mlp import MLP_OPTIONS, describe_mlp
from lmlab.nn.norms import rms_normalise, rms_normalise_backward, statistics_dtype
from lmlab.registry import MLPS

POLYNORM_EPS = 1e-6  # the reference's fixed ε (independent of the model's norm_eps)


POWERS = (3, 2, 1)  # weight[i] multiplies N(x^POWERS[i])


class _PolyNorm(torch.autograd.Function):
    """PolyNorm in the statistics dtype, returned in x's dtype; saves x and r_p (module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        xf = x.to(statistics_dtype(x))
        w = weight.to(xf.dtype)
        y, factors = 0, []
        for i, power in enumerate(POWERS):
            n, r = rms_normalise(xf.pow(power), POLYNORM_EPS)
            y = y + w[i] * n
            factors.append(r)
        ctx.save_for_backward(x, weight, *factors)
        return (y + bias.to(xf.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight, *factors = ctx.saved_tensors
        g = grad_y.to(factors[0].dtype)
        xf, w = x.to(g.dtype), weight.to(g.dtype)
        grad_x, grad_w = torch.zeros_like(xf), []
        for i, (power, r) in enumerate(zip(POWERS, factors, strict=True)):
            n = xf.pow(power) * r
            grad_w.append((g * n).sum())
            grad_u = rms_normalise_backward(w[i] * g, n, r)
            grad_x += grad_u if power == 1 else grad_u * (power * xf.pow(power - 1))
        grad_bias = g.sum().reshape(1).to(weight.dtype)
        return grad_x.to(x.dtype), torch.stack(grad_w).to(weight.dtype), grad_bias


class PolyNorm(Component):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((3,), 1.0 / 3.0))
        self.bias = nn.Parameter(torch.zeros(1))

    def reset_parameters(self) -> None:
        init.constant_(self.weight, 1.0 / 3.0)
        init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PolyNorm.apply(x, self.weight, self.bias)


class PolyNormMLP(Component):
    def __init__(self, config):
        super().__init__()
        d, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = linear(d, inner, config.mlp_bias, "mlp_in")
        self.up_proj = linear(d, inner, config.mlp_bias, "mlp_in")
        self.down_proj = linear(inner, d, config.mlp_bias, "mlp_out")
        self.act_fn = PolyNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@MLPS.register("polynorm", options=MLP_OPTIONS, describe=describe_mlp(
    "down(PolyNorm(gate x) ⊙ up x), PolyNorm(y) = w0·N(y³) + w1·N(y²) + w2·N(y) + b", up_factor=2))
def polynorm_mlp(config, layer_idx: int) -> PolyNormMLP:
    return PolyNormMLP(config)
