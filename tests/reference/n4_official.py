"""N4 written from the spec (shared/specs/n4.md §2-3) with the official module and parameter names.

An independent reading of the published model for parity tests: it shares no code with lmlab.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class BotanDyT(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * torch.tanh(x)


class N4(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.hidden, self.heads, self.head_dim = hidden, heads, hidden // heads
        self.qkvh_linear = nn.Linear(hidden, 3 * hidden + heads, bias=False)
        self.out_linear = nn.Linear(hidden, hidden, bias=False)
        self.norm = BotanDyT(self.head_dim)  # defined, never used

    def forward(self, x):
        b, t, d = x.shape
        p = self.qkvh_linear(x)
        qkv, gate = p[..., :3 * d], p[..., 3 * d:]
        g = torch.tanh(gate).transpose(1, 2)[..., None]
        q, k, v = qkv.view(b, t, self.heads, 3 * self.head_dim).transpose(1, 2).split(self.head_dim, -1)
        j = torch.arange(1, t + 1, dtype=torch.float32).view(1, 1, t, 1)
        k = torch.cumsum(j * g * k, dim=2) / j ** 2
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        scores = scores + torch.full((t, t), float("-inf")).triu(1)
        out = torch.softmax(scores, -1) @ v
        return self.out_linear(out.transpose(1, 2).reshape(b, t, d))


class BotanMLP(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.up_proj = nn.Linear(hidden, 3 * inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        gate, ref, value = self.up_proj(x).chunk(3, -1)
        return self.down_proj(F.gelu(ref) * torch.sigmoid(gate) * value)


class N4D(nn.Module):
    def __init__(self, hidden, inter, heads):
        super().__init__()
        self.n4 = N4(hidden, heads)
        self.mlp = BotanMLP(hidden, inter)
        self.pre_mlp_norm, self.post_mlp_norm = BotanDyT(hidden), BotanDyT(hidden)
        self.pre_n4_norm, self.post_n4_norm = BotanDyT(hidden), BotanDyT(hidden)

    def forward(self, x):
        x = x + self.post_n4_norm(self.n4(self.pre_n4_norm(x)))
        return x + self.post_mlp_norm(self.mlp(self.pre_mlp_norm(x)))


class N4B(nn.Module):
    def __init__(self, vocab, hidden, inter, heads, layers):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.n4d = nn.ModuleList(N4D(hidden, inter, heads) for _ in range(layers))

    def forward(self, ids):
        x = self.embedding(ids)
        for layer in self.n4d:
            x = layer(x)
        return x


class N4C(nn.Module):
    def __init__(self, vocab_size, hidden_size, inter_size, heads, layers):
        super().__init__()
        self.n4b = N4B(vocab_size, hidden_size, inter_size, heads, layers)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, input_ids):
        return self.lm_head(self.n4b(input_ids)).float()
