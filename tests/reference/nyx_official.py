"""NYX written from the spec (shared/specs/nyx.md §2-4, §6) with the official module and buffer names.

An independent reading of the published model for parity tests: plain math, one fused projection, XPOS centred at
⌊n/2⌋ as in the original, no cache. It shares no code with lmlab. Non-causal mode and QK-RMSNorm are left out.
"""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """γ ⊙ (x − mean)/sqrt(var + 1e-5); β a persistent zero buffer."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim_head, scale_base):
        super().__init__()
        i = torch.arange(0, dim_head, 2).float()
        self.register_buffer("inv_frequency", 1.0 / 10000 ** (i / dim_head))
        self.register_buffer("scaling_factors", (i + 0.4 * dim_head) / (1.4 * dim_head))
        self.scale_base = scale_base

    def forward(self, n):
        t = torch.arange(n).float()
        freqs = torch.einsum("i,j->ij", t, self.inv_frequency)
        freqs = torch.cat((freqs, freqs), dim=-1)
        power = (t - n // 2) / self.scale_base
        scale = self.scaling_factors ** power[:, None]
        return freqs, torch.cat((scale, scale), dim=-1)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def xpos_rotate(x, freqs, scale):
    return (x * freqs.cos() + rotate_half(x) * freqs.sin()) * scale


class SwiGLU(nn.Module):
    def forward(self, x):
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x


class ParallelTransformerLayer(nn.Module):
    def __init__(self, dim, dim_head, heads, ff_mult, xpos_scale_base):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        ff_inner = dim * ff_mult
        self.norm_layer = LayerNorm(dim)
        self.fused_dims = (heads * dim_head, dim_head, dim_head, 2 * ff_inner)
        self.rotary_pos_emb = RotaryEmbedding(dim_head, xpos_scale_base)
        self.fused_attention_feedforward = nn.Linear(dim, sum(self.fused_dims), bias=False)
        self.attn_output_proj = nn.Linear(heads * dim_head, dim, bias=False)
        self.feedforward_net = nn.Sequential(SwiGLU(), nn.Dropout(0.0), nn.Linear(ff_inner, dim, bias=False))

    def forward(self, x):
        b, n, _ = x.shape
        u = self.norm_layer(x)
        q, k, v, ff = self.fused_attention_feedforward(u).split(self.fused_dims, dim=-1)
        q = q.view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (b, h, n, d_h); k, v stay (b, n, d_h)
        freqs, scale = self.rotary_pos_emb(n)
        q = xpos_rotate(q, freqs, scale)
        k = xpos_rotate(k, freqs, scale ** -1)
        sim = torch.einsum("bhid,bjd->bhij", q, k) * self.dim_head ** -0.5
        causal = torch.ones(n, n, dtype=torch.bool).triu(1)
        attn = sim.masked_fill(causal, float("-inf")).softmax(dim=-1)
        out = torch.einsum("bhij,bjd->bhid", attn, v)
        attn_out = self.attn_output_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))
        return attn_out + self.feedforward_net(ff)


class Residual(nn.Module):
    def __init__(self, func):
        super().__init__()
        self.func = func

    def forward(self, x):
        return self.func(x) + x


class NYX(nn.Module):
    def __init__(self, num_tokens, dim, depth, heads=8, dim_head=64, ff_mult=4, xpos_scale_base=512):
        super().__init__()
        self.token_embedding = nn.Embedding(num_tokens, dim)
        self.layers = nn.ModuleList(
            Residual(ParallelTransformerLayer(dim, dim_head, heads, ff_mult, xpos_scale_base)) for _ in range(depth))
        self.norm_layer = LayerNorm(dim)
        self.to_output_logits = nn.Linear(dim, num_tokens, bias=False)
        self.to_output_logits.weight = self.token_embedding.weight
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, x, compute_loss=False):
        if compute_loss:
            x, targets = x[:, :-1], x[:, 1:]
        h = self.token_embedding(x)
        for layer in self.layers:
            h = layer(h)
        logits = self.to_output_logits(self.norm_layer(h))
        if not compute_loss:
            return logits
        return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=0)
