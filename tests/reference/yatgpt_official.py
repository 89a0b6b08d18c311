"""yatgpt written from the spec (shared/specs/yatgpt.md §2-3) with the released PyTorch port's names.

An independent reading of the published model for parity tests: it shares no code with lmlab. Plain math: dense
masks, the YatNMN distance computed directly as ‖u − w_j‖², the rotation written per channel half.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def norm(z):
    return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6)


def rotate(x, cos, sin):
    """Split-half rotation by −φ: y1 = x1 cos + x2 sin, y2 = −x1 sin + x2 cos. x (B, T, H, D)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)


def windows(n_layer, sequence_len, pattern):
    long = sequence_len
    short = math.ceil(math.ceil(long / 4) / 128) * 128
    sizes = [long if pattern[i % len(pattern)] == "L" else short for i in range(n_layer)]
    sizes[-1] = long
    return sizes


def has_ve(i, n_layer):
    return i % 2 == (n_layer - 1) % 2


class YatNMN(nn.Module):
    def __init__(self, n_in, n_out, softplus, scalar_bias, constant_alpha):
        super().__init__()
        self.softplus, self.constant_alpha = softplus, constant_alpha
        self.kernel = nn.Parameter(torch.randn(n_in, n_out) / math.sqrt(n_in))  # (in, out)
        self.bias = nn.Parameter(torch.zeros(1 if scalar_bias else n_out))
        if softplus:
            self.epsilon_param = nn.Parameter(torch.full((1,), math.log(math.expm1(1e-3))))
        if constant_alpha:
            self.register_buffer("_alpha_const", torch.ones(1))
        else:
            self.alpha = nn.Parameter(torch.ones(1))

    def forward(self, u):
        dot = u @ self.kernel
        distance = (u[..., :, None] - self.kernel).pow(2).sum(-2)  # ‖u − w_j‖² per neuron j
        b = F.softplus(self.bias) if self.softplus else self.bias
        eps = F.softplus(self.epsilon_param) if self.softplus else 1e-3
        alpha = self._alpha_const if self.constant_alpha else self.alpha
        return alpha * (dot + b) ** 2 / (distance + eps)


class MLP(nn.Module):
    def __init__(self, d, kind, softplus=True, scalar_bias=False, constant_alpha=False):
        super().__init__()
        self.kind = kind
        if kind == "yatnmn":
            self.c_fc = YatNMN(d, 4 * d, softplus, scalar_bias, constant_alpha)
        else:
            self.c_fc = nn.Linear(d, 4 * d, bias=False)
        self.c_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, u):
        h = self.c_fc(u)
        if self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")
        elif self.kind == "relu2":
            h = F.relu(h) ** 2
        return self.c_proj(h)


class CausalSelfAttention(nn.Module):
    def __init__(self, d, n_head, layer_idx, n_layer):
        super().__init__()
        self.n_head, self.head_dim = n_head, d // n_head
        self.c_q = nn.Linear(d, d, bias=False)
        self.c_k = nn.Linear(d, d, bias=False)
        self.c_v = nn.Linear(d, d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.ve_gate = nn.Linear(12, n_head, bias=False) if has_ve(layer_idx, n_layer) else None

    def forward(self, u, ve, cos, sin, window):
        b, t, d = u.shape
        q = self.c_q(u).view(b, t, self.n_head, self.head_dim)
        k = self.c_k(u).view(b, t, self.n_head, self.head_dim)
        v = self.c_v(u).view(b, t, self.n_head, self.head_dim)
        if self.ve_gate is not None:
            gate = 3 * torch.sigmoid(self.ve_gate(u[..., :12]))  # (B, T, H)
            v = v + gate[..., None] * ve.view(b, t, self.n_head, self.head_dim)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        q, k = 1.2 * norm(q), 1.2 * norm(k)
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(self.head_dim)
        query, key = torch.arange(t)[:, None], torch.arange(t)[None, :]
        visible = (key <= query) & (query - key <= window)
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        y = torch.einsum("bhts,bshd->bthd", probs, v).reshape(b, t, d)
        return self.c_proj(y)


class Block(nn.Module):
    def __init__(self, d, n_head, layer_idx, n_layer, mlp_kwargs):
        super().__init__()
        self.attn = CausalSelfAttention(d, n_head, layer_idx, n_layer)
        self.mlp = MLP(d, **mlp_kwargs)

    def forward(self, x, ve, cos, sin, window):
        x = x + self.attn(norm(x), ve, cos, sin, window)
        return x + self.mlp(norm(x))


class Yat_GPT(nn.Module):
    """The released model (`torch_port/yatnmn_gpt.py` names); `model.` + these keys in the HF repos."""

    def __init__(self, vocab_size, n_layer, n_head, n_embd, sequence_len=1024, window_pattern="SSSL",
                 rope_base=100000.0, **mlp_kwargs):
        super().__init__()
        self.window_sizes = windows(n_layer, sequence_len, window_pattern)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, i, n_layer, mlp_kwargs) for i in range(n_layer))
        self.resid_lambdas = nn.Parameter(torch.ones(n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(n_layer))
        self.smear_gate = nn.Linear(24, 1, bias=False)
        self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.backout_lambda = nn.Parameter(0.2 * torch.ones(1))
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(vocab_size, n_embd)
                                           for i in range(n_layer) if has_ve(i, n_layer)})
        head_dim = n_embd // n_head
        # φ_{t,m} = t · base^(−2m/D), in fp32 like the released port's persistent tables
        inv_freq = 1.0 / rope_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(10 * sequence_len, dtype=torch.float32), inv_freq)
        self.register_buffer("rope_cos", angles.cos()[None, :, None, :])
        self.register_buffer("rope_sin", angles.sin()[None, :, None, :])

    def forward(self, idx):
        t = idx.shape[1]
        cos, sin = self.rope_cos[:, :t], self.rope_sin[:, :t]
        e = norm(self.wte(idx))
        gate = self.smear_lambda * torch.sigmoid(self.smear_gate(e[:, 1:, :24]))
        x = torch.cat([e[:, :1], e[:, 1:] + gate * e[:, :-1]], dim=1)
        x0, x_backout = x, None
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, self.window_sizes[i])
            if i == len(self.blocks) // 2:
                x_backout = x
        x = norm(x - self.backout_lambda * x_backout)
        logits = x @ self.wte.weight.t()
        return 15 * torch.tanh(logits / 15)
