"""Gated DeltaNet token mixer, Qwen3-Next flavour (Yang et al. 2024, arXiv 2412.06464; `mixer="gated_deltanet"`).

Sizes: n_k key heads of d_k, n_v = r·n_k value heads of d_v (`linear_num_key_heads`, `linear_key_head_dim`,
`linear_num_value_heads`, `linear_value_head_dim`), conv kernel K (`linear_conv_kernel_dim`).

1. Projections with the Qwen3-Next packing: `in_proj_qkvz(x)` is n_k groups of [q d_k | k d_k | v r·d_v | z r·d_v],
   `in_proj_ba(x)` is n_k groups of [b r | a r]; the v, z, b, a of group j belong to value heads r·j .. r·j + r − 1.
2. Short convolution: [q | k | v] flattened (n_k·d_k + n_k·d_k + n_v·d_v channels) through a depthwise causal conv
   y_t[c] = Σ_i w[c, 0, i] · x_{t−K+1+i}[c] (zeros before the first token), no bias, then SiLU. z, a, b are not
   convolved.
3. β = σ(b); g = −exp(A_log) · softplus(a + dt_bias) (fp32); value head j reads key head ⌊j / r⌋.
4. q, k L2-normalised per head (x · rsqrt(Σx² + 1e-6)); q scaled by d_k^−½; the gated delta rule
   (`lmlab.nn.delta_rule`) in fp32.
5. Per value head: RMSNorm(o) · w (w = 1), then ⊙ SiLU(z) in fp32; heads flattened; `out_proj`.

Parameters and init: in_proj_qkvz, in_proj_ba (role attn_in), out_proj (attn_out) by the init scheme; conv_weight
(channels, 1, K; the layout of Qwen3-Next's conv1d.weight) N(0, initializer_range); A_log = log(U(0, 16)); dt_bias = 1;
norm weight 1. No biases.

Decoding state (`GatedDeltaNetState`): the last K − 1 pre-convolution inputs and S (B, n_v, d_k, d_v) in fp32. A
forward with a cache continues both (prefill: chunked form from the cached S; one token: one recurrence step).
Left padding (as Qwen3-Next): the layer's input is zeroed at padding positions, so pads write nothing (k = v = 0) into
a state that is still zero, and the convolution sees them as the zeros before the first token: a left-padded row gives
exactly the outputs and states of the unpadded row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from lmlab.nn.component import Component
from lmlab.nn.context import ForwardContext
from lmlab.nn.delta_rule import gated_delta_rule
from lmlab.nn.init import linear
from lmlab.nn.norms import RMSNorm
from lmlab.registry import MIXERS, Option, at_least_one

L2_EPS = 1e-6


@dataclass
class GatedDeltaNetState:
    """Decoding state of one Gated DeltaNet layer: conv (B, K − 1, channels) pre-conv inputs; recurrent (B, n_v, d_k,
    d_v) fp32."""

    conv: torch.Tensor
    recurrent: torch.Tensor


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, window: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution of x (B, T, C) with weight (C, 1, K), continuing `window` (B, K − 1, C), the
    inputs before x (zeros when None). Returns (y (B, T, C), the new window: the last K − 1 inputs).

    K shifted multiply-adds rather than F.conv1d: on CPU they are faster forward + backward, and oneDNN's depthwise
    kernel stalls on busy machines (tens of ms for one decoding step)."""
    b, t, channels = x.shape
    taps = weight.shape[-1]
    if window is None:
        window = x.new_zeros(b, taps - 1, channels)
    full = torch.cat([window.to(x.dtype), x], dim=1)
    w = weight.reshape(channels, taps).to(x.dtype)
    y = full[:, :t] * w[:, 0]
    for i in range(1, taps):
        y = y + full[:, i:i + t] * w[:, i]
    return y, full[:, full.shape[1] - (taps - 1):]


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + L2_EPS)


class GatedDeltaNet(Component):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.config = config
        self.num_k_heads = config.linear_num_key_heads
        self.num_v_heads = config.linear_num_value_heads
        self.head_k_dim = config.linear_key_head_dim
        self.head_v_dim = config.linear_value_head_dim
        self.ratio = self.num_v_heads // self.num_k_heads
        self.key_dim = self.num_k_heads * self.head_k_dim
        self.value_dim = self.num_v_heads * self.head_v_dim
        self.conv_channels = 2 * self.key_dim + self.value_dim
        d = config.hidden_size
        self.in_proj_qkvz = linear(d, 2 * self.key_dim + 2 * self.value_dim, False, "attn_in")
        self.in_proj_ba = linear(d, 2 * self.num_v_heads, False, "attn_in")
        self.conv_weight = nn.Parameter(torch.empty(self.conv_channels, 1, config.linear_conv_kernel_dim))
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads))
        self.dt_bias = nn.Parameter(torch.empty(self.num_v_heads))
        self.norm = RMSNorm(self.head_v_dim, config.norm_eps)
        self.out_proj = linear(self.value_dim, d, False, "attn_out")
        self.reset_parameters()  # usable on its own, not only inside a model that initialises it

    def reset_parameters(self) -> None:
        init.normal_(self.conv_weight, 0.0, self.config.initializer_range)
        init.copy_(self.A_log, torch.empty_like(self.A_log).uniform_(0, 16).log())
        init.ones_(self.dt_bias)

    def unpack(self, qkvz: torch.Tensor, ba: torch.Tensor):
        """Split the packed projections (Qwen3-Next layout, module docstring) into q, k (B, T, n_k, d_k), v, z
        (B, T, n_v, d_v), b, a (B, T, n_v)."""
        b, t, _ = qkvz.shape
        r, dk, dv = self.ratio, self.head_k_dim, self.head_v_dim
        q, k, v, z = qkvz.view(b, t, self.num_k_heads, 2 * dk + 2 * r * dv).split([dk, dk, r * dv, r * dv], dim=-1)
        beta_logit, a = ba.view(b, t, self.num_k_heads, 2 * r).split([r, r], dim=-1)
        v, z = (x.reshape(b, t, self.num_v_heads, dv) for x in (v, z))
        beta_logit, a = (x.reshape(b, t, self.num_v_heads) for x in (beta_logit, a))
        return q, k, v, z, beta_logit, a

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        b, t, _ = x.shape
        real = ctx.token_mask
        if real is not None:
            x = x * real[..., None].to(x.dtype)
        q, k, v, z, beta_logit, a = self.unpack(self.in_proj_qkvz(x), self.in_proj_ba(x))
        state = ctx.layer_state(self.layer_idx)

        mixed = torch.cat([q.reshape(b, t, -1), k.reshape(b, t, -1), v.reshape(b, t, -1)], dim=-1)
        mixed, window = causal_depthwise_conv(mixed, self.conv_weight, None if state is None else state.conv)
        q, k, v = F.silu(mixed).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = l2_normalise(q.reshape(b, t, self.num_k_heads, self.head_k_dim))
        k = l2_normalise(k.reshape(b, t, self.num_k_heads, self.head_k_dim))
        if self.ratio > 1:
            q, k = q.repeat_interleave(self.ratio, dim=2), k.repeat_interleave(self.ratio, dim=2)
        v = v.reshape(b, t, self.num_v_heads, self.head_v_dim)

        beta = torch.sigmoid(beta_logit.float())
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())
        o, recurrent = gated_delta_rule(q, k, v, g, beta, scale=self.head_k_dim ** -0.5,
                                        initial_state=None if state is None else state.recurrent,
                                        chunk_size=self.config.linear_chunk_size)
        if ctx.cache is not None:
            ctx.set_layer_state(self.layer_idx, GatedDeltaNetState(conv=window, recurrent=recurrent))

        o = self.norm(o, gate=z)  # RMSNorm(o) ⊙ SiLU(z), in fp32
        return self.out_proj(o.to(x.dtype).reshape(b, t, self.value_dim))


def value_heads_share_key_heads(config, layer_idx) -> str | None:
    if config.linear_num_value_heads % config.linear_num_key_heads == 0:
        return None
    return (f"linear_num_value_heads ({config.linear_num_value_heads}) must be a multiple of linear_num_key_heads "
            f"({config.linear_num_key_heads})")


def describe_gated_deltanet(config, layer_idx) -> str:
    return (f"out(RMSNorm(o) ⊙ SiLU(z)), o_t = S_tᵀ·q_t/√d_k, S_t = e^(g_t)·(I − β_t·k_t·k_tᵀ)·S_(t−1) + β_t·k_t·v_tᵀ "
            f"(gated delta rule, L2-normed q, k after a causal conv {config.linear_conv_kernel_dim} + SiLU): "
            f"{config.linear_num_key_heads} key heads × {config.linear_key_head_dim}, "
            f"{config.linear_num_value_heads} value heads × {config.linear_value_head_dim}, "
            f"chunks of {config.linear_chunk_size}, no position encoding")


# no attention window, value embeddings, qk_norm or rotation: its recurrence has none of them
MIXERS.register("gated_deltanet", options=(
    Option("linear_num_key_heads", check=at_least_one, doc="key heads n_k"),
    Option("linear_key_head_dim", check=at_least_one, doc="key head width d_k"),
    Option("linear_num_value_heads", check=at_least_one, doc="value heads n_v (a multiple of n_k)"),
    Option("linear_value_head_dim", check=at_least_one, doc="value head width d_v"),
    Option("linear_conv_kernel_dim", check=at_least_one, doc="short convolution length"),
    Option("linear_chunk_size", check=at_least_one, doc="chunk length of the chunked form (speed only)"),
    "norm_eps", "initializer_range",
), check=value_heads_share_key_heads, describe=describe_gated_deltanet)(GatedDeltaNet)

__all__ = ["GatedDeltaNet", "GatedDeltaNetState", "causal_depthwise_conv", "l2_normalise"]
