"""N4's token mixer: causal softmax attention whose keys are a gated, position-weighted causal mean ("selective
copying", Rikka-Botan/Nova-Nox-Neural-Network).

One projection gives, per token, Q, K, V for every head in a head-major interleaved layout plus one gate logit per
head: rows [3·d_h·h, +d_h) are Q of head h, the next d_h rows K, the next d_h rows V, and the last H rows the gate
logits. With g_j = tanh(gate_j) and 1-based position j,

    K'_j = (Σ_{k ≤ j} k · g_k · K_k) / j²        (running sum S_j = S_{j−1} + j·g_j·K_j, K'_j = S_j / j²)

and the output is out_proj(softmax(Q·K'ᵀ·scale + causal)·V), with N4's scale 1/sqrt(hidden_size). Positions, the
weighted cumulative sum and the division run in fp32 whatever the activation dtype. Padding tokens (left padding)
contribute nothing to the sum and positions restart at the first real token.

N4 itself has no position encoding. With one (e.g. `position="rope"`), Q_i is rotated at its position i and the
mean key K'_j at its position j, after the mean: softmax(rot_i(Q_i)·rot_j(K'_j)ᵀ·scale). The running sum S stays
unrotated; the cache holds rotated K' rows, so cached decoding equals the full forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmlab.cache import KVCache
from lmlab.nn.attention import KERNEL_OPTIONS, attention_backend, causal_attention, describe_heads
from lmlab.nn.component import Component
from lmlab.nn.context import ForwardContext
from lmlab.nn.init import linear
from lmlab.nn.norms import ReducedDyT
from lmlab.registry import MIXERS


@dataclass
class SelectiveCopyState:
    """Decoding state of one N4 layer: cached K' rows and V, and the running key sum S (B, H, d_h) in fp32."""

    kv: KVCache = field(default_factory=KVCache)
    key_sum: torch.Tensor | None = None


def selective_copy_keys(k: torch.Tensor, gate: torch.Tensor, positions: torch.Tensor,
                        key_sum: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """K' for keys k (B, H, T, d_h), gates g (B, H, T) in (−1, 1) and 0-based positions (B, T).

    Returns (K' in at least fp32, the running sum S after the last token); `key_sum` continues an earlier sum.
    """
    dtype = torch.promote_types(k.dtype, torch.float32)  # at least fp32; fp64 stays fp64
    j = (positions + 1).to(dtype)[:, None, :, None]
    weighted = j * gate.to(dtype)[..., None] * k.to(dtype)
    sums = weighted.cumsum(dim=2) if weighted.shape[2] > 1 else weighted  # one token (decoding): nothing to sum
    if key_sum is not None:
        sums = sums + key_sum[:, :, None, :]
    return sums / j.square(), sums[:, :, -1]


class SelectiveCopyAttention(Component):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.window = config.layer_spec(layer_idx).window
        inner = self.num_heads * self.head_dim
        self.qkvg_proj = linear(config.hidden_size, 3 * inner + self.num_heads, config.attention_bias, "attn_in")
        self.out_proj = linear(inner, config.hidden_size, config.attention_bias, "attn_out")
        # The published N4 layer defines a DyT over d_h that its forward never uses. It is kept (frozen) so that
        # official checkpoints load strictly and parameter counts match the published ones.
        self.unused_norm = ReducedDyT(self.head_dim)
        self.unused_norm.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        b, t, _ = x.shape
        inner = self.num_heads * self.head_dim
        projected = self.qkvg_proj(x)
        gate = torch.tanh(projected[..., inner * 3:].float()).transpose(1, 2)  # (B, H, T)
        if ctx.token_mask is not None:
            gate = gate * ctx.token_mask[:, None, :]
        per_head = projected[..., :inner * 3].view(b, t, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = per_head.split(self.head_dim, dim=-1)
        state = ctx.layer_state(self.layer_idx) if ctx.cache is not None else None
        if ctx.cache is not None and state is None:
            state = SelectiveCopyState()
        keys, key_sum = selective_copy_keys(k, gate, ctx.position_ids, None if state is None else state.key_sum)
        keys = keys.to(q.dtype)
        if ctx.rotation is not None:
            q, keys = ctx.rotation.queries(q), ctx.rotation.keys(keys)
        if state is not None:
            state.key_sum = key_sum
            keys, v = state.kv.append(keys, v)
            ctx.set_layer_state(self.layer_idx, state)
        o = causal_attention(q, keys, v, scale=self.config.attention_softmax_scale, q_start=ctx.past_length,
                             k_start=ctx.past_length + t - keys.shape[2], key_padding=ctx.key_padding_mask,
                             window=self.window, dropout_p=self.config.attention_dropout if self.training else 0.0,
                             backend=attention_backend(self.config))
        return self.out_proj(o.transpose(1, 2).reshape(b, t, inner))


def multi_head_only(config, layer_idx) -> str | None:
    if config.num_key_value_heads == config.num_attention_heads:
        return None
    return ("multi-head only: set num_key_value_heads = num_attention_heads "
            f"({config.num_attention_heads})")


def describe_selective_copy(config, layer_idx) -> str:
    return ("out(softmax(q·K'ᵀ·scale + mask)·v), K'_j = Σ_{k≤j} k·tanh(g_k)·K_k / j² (selective copying): "
            f"{describe_heads(config, layer_idx)}")


MIXERS.register("selective_copy", options=KERNEL_OPTIONS, check=multi_head_only,
                describe=describe_selective_copy)(SelectiveCopyAttention)
