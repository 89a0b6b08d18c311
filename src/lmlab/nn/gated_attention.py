"""Gated softmax attention, Qwen3-Next style (`mixer="gated_attention"`).

    [q_h | gate_h] = rows 2·d_h·h .. 2·d_h·h + 2·d_h − 1 of q_proj(x)     (query and gate interleaved per head)
    q = norm(q), k = norm(k_proj x)   over head_dim, before the rotary encoding (zero-centred RMSNorm in NeoLLM:
                                       the layer's norm kind)
    o = causal_attention(rope(q), rope(k), v)          GQA, scale, rope_pct, cache as the plain attention mixer
    out = out_proj( o ⊙ σ(gate) )                       gate flattened in head order

It is `SoftmaxAttention` with two query parts per head, its QK-norm fixed to the layer's norm before the rotation,
and the gate as its output hook; everything else (k/v projections, value embeddings, rotation, KV cache, sliding
windows, kernel backends) is the plain mixer's.
"""

from __future__ import annotations

import torch

from lmlab.nn.attention import KERNEL_OPTIONS, SoftmaxAttention, describe_heads
from lmlab.nn.value_embedding import VALUE_EMBED_OPTIONS
from lmlab.registry import MIXERS


class GatedAttention(SoftmaxAttention):
    query_parts = 2

    def qk_norm_choice(self) -> tuple[str, str, float]:
        """Always the layer's norm before the rotation; the configurable qk_norm is not declared here, so validation
        refuses it unless another layer's mixer honours it."""
        return self.config.layer_spec(self.layer_idx).norm, "before_rotation", 1.0

    def gate(self, o: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return o * torch.sigmoid(extra.reshape(o.shape))


def describe_gated_attention(config, layer_idx) -> str:
    spec = config.layer_spec(layer_idx)
    value_embeds = ", value embeddings" if spec.value_embed else ""
    return (f"out(softmax(q·kᵀ·scale + mask)·v ⊙ σ(gate)), q, k ← {spec.norm}(·) per head before the rotation: "
            f"{describe_heads(config, layer_idx)}{value_embeds}")


# q and k are normalised by the layer's norm before the rotation; qk_norm, its position and scale do not apply
MIXERS.register("gated_attention", options=(*KERNEL_OPTIONS, *VALUE_EMBED_OPTIONS),
                describe=describe_gated_attention)(GatedAttention)

__all__ = ["GatedAttention"]
