"""Gated softmax attention, Qwen3-Next style (`mixer="gated_attention"`).

    [q_h | gate_h] = rows 2·d_h·h .. 2·d_h·h + 2·d_h − 1 of q_proj(x)     (query and gate interleaved per head)
    q = norm(q), k = norm(k_proj x)   over head_dim, before the rotary encoding (zero-centred RMSNorm in NeoLLM:
                                       the layer's norm kind)
    o = causal_attention(rope(q), rope(k), v)          GQA, scale, rope_pct, cache as the plain attention mixer
    out = out_proj( o ⊙ σ(gate) )                       gate flattened in head order

The q_proj is twice as wide as the plain mixer's; everything else (k/v projections, value embeddings, rotation, KV
cache, sliding windows, kernel backends) is `SoftmaxAttention`'s.
"""

from __future__ import annotations

import torch

from lmlab.nn.attention import KERNEL_OPTIONS, SoftmaxAttention, describe_heads
from lmlab.nn.context import ForwardContext
from lmlab.nn.norms import build_norm
from lmlab.nn.value_embedding import VALUE_EMBED_OPTIONS
from lmlab.registry import MIXERS


class GatedAttention(SoftmaxAttention):
    query_parts = 2

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        norm = config.layer_spec(layer_idx).norm
        self.q_norm = build_norm(config, self.head_dim, norm)
        self.k_norm = build_norm(config, self.head_dim, norm)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        b, t, _ = x.shape
        q, gate = self.q_proj(x).view(b, t, self.num_heads, 2 * self.head_dim).chunk(2, dim=-1)
        q = self.q_norm(q).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.value_embed is not None:
            v = self.value_embed(v, x, ctx.input_ids)
        if ctx.rotation is not None:
            q, k = ctx.rotation.queries(q), ctx.rotation.keys(k)
        o = self.attend(q, k, v, ctx)
        return self.out_proj(o * torch.sigmoid(gate.reshape(b, t, self.num_heads * self.head_dim)))


def describe_gated_attention(config, layer_idx) -> str:
    spec = config.layer_spec(layer_idx)
    value_embeds = ", value embeddings" if spec.value_embed else ""
    return (f"out(softmax(q·kᵀ·scale + mask)·v ⊙ σ(gate)), q, k ← {spec.norm}(·) per head before the rotation: "
            f"{describe_heads(config, layer_idx)}{value_embeds}")


# q and k are normalised by the layer's norm before the rotation; the after-rotation qk_norm does not apply
MIXERS.register("gated_attention", options=(*KERNEL_OPTIONS, *VALUE_EMBED_OPTIONS),
                describe=describe_gated_attention)(GatedAttention)

__all__ = ["GatedAttention"]
