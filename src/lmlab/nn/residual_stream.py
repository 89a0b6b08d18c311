"""The residual stream through the decoder blocks, with nanochat's optional model-level scalars.

    x0 = x                                            the stream entering block 0 (after the embedding stage)
    for each block i:
        x = r_i · x + c_i · x0                        config.residual_lambdas
        x = block_i(x)
    x = x − λ · x_b,  x_b = output of block b = n//2  config.backout (subtract the mid-depth residual)

With both options off this is the plain loop `x = block_i(x)`. Init (flaxchat, n layers, f_i = i/(n − 1)):
r_i = 1.15 − 0.10·f_i (1.15 -> 1.05), c_i = 0.20 − 0.15·f_i (0.20 -> 0.05), λ = 0.2.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from lmlab.nn.component import Component
from lmlab.nn.context import ForwardContext
from lmlab.registry import PARTS

RESID_LAMBDA_RAMP = (1.15, 1.05)  # (first layer, last layer)
X0_LAMBDA_RAMP = (0.20, 0.05)
BACKOUT_LAMBDA_INIT = 0.2


def layer_ramp(num_layers: int, first: float, last: float) -> torch.Tensor:
    """first + (last − first)·i/(n − 1) for i = 0 .. n − 1 (just `first` for one layer)."""
    if num_layers == 1:
        return torch.tensor([first])
    return first + (last - first) * torch.arange(num_layers, dtype=torch.float64) / (num_layers - 1)


class ResidualStream(Component):
    def __init__(self, config):
        super().__init__()
        n = config.num_hidden_layers
        self.backout_layer = n // 2
        self.resid_lambdas = self.x0_lambdas = self.backout_lambda = None
        if config.residual_lambdas:
            self.resid_lambdas = nn.Parameter(torch.empty(n))
            self.x0_lambdas = nn.Parameter(torch.empty(n))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.empty(1))

    def reset_parameters(self) -> None:
        if self.resid_lambdas is not None:
            n = self.resid_lambdas.numel()
            init.copy_(self.resid_lambdas, layer_ramp(n, *RESID_LAMBDA_RAMP))
            init.copy_(self.x0_lambdas, layer_ramp(n, *X0_LAMBDA_RAMP))
        if self.backout_lambda is not None:
            init.constant_(self.backout_lambda, BACKOUT_LAMBDA_INIT)

    def forward(self, x: torch.Tensor, blocks: nn.ModuleList, ctx: ForwardContext,
                hidden_states: list | None = None) -> torch.Tensor:
        """The stream after the last block; `hidden_states`, when given, receives the stream before each block (the
        embedding output first), as transformers' `output_hidden_states` does."""
        x0, mid = x, None
        for i, block in enumerate(blocks):
            if hidden_states is not None:
                hidden_states.append(x)
            if self.resid_lambdas is not None:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, ctx=ctx)
            if i == self.backout_layer:
                mid = x
        if self.backout_lambda is not None:
            x = x - self.backout_lambda * mid
        return x


def describe_residual_stream(config, layer_idx) -> str | None:
    steps = []
    if config.residual_lambdas:
        steps.append("before block i: x = r_i·x + c_i·x0 (x0 = the embedding output)")
    if config.backout:
        steps.append(f"after the last block: x = x − λ·(output of block {config.num_hidden_layers // 2}) (backout)")
    return "; ".join(steps) or None


PARTS.register("residual stream", options=("residual_lambdas", "backout"), describe=describe_residual_stream)(
    ResidualStream)

__all__ = ["ResidualStream", "layer_ramp"]
