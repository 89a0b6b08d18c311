"""What happens between the token lookup and the first block. Identity unless the config asks for more:

    e = norm(embedding)                                  config.embedding_norm (the model's norm)
    x_t = e_t + λ · σ(w · e_t[:c]) · e_{t−1},  x_0 = e_0   config.smear (nanochat's "smear", c = smear_gate_channels)

Smear mixes the *pre-smear* embedding of the previous token into each token. With a cache, the previous embedding
of the first new token is the pre-smear embedding of the last cached token, kept in `cache.model_state` — never the
smeared one (flaxchat's engine caches the smeared value, so its cached logits drift from the full forward as soon
as λ ≠ 0). With left padding, a token whose predecessor is padding gets nothing mixed in, like a first token.

Parameters (smear): w (1, c), lecun-normal (truncated at ±2σ, std 1/sqrt(c)); λ (1,) = 0, so smear starts as the
identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

from lmlab.nn.component import Component
from lmlab.nn.context import ForwardContext
from lmlab.nn.norms import build_norm
from lmlab.registry import PARTS, Option, channel_count

TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of a standard normal truncated to [−2, 2]


class Smear(Component):
    STATE_KEY = "smear_previous_embedding"  # (B, 1, d): the pre-smear embedding of the last token seen

    def __init__(self, config):
        super().__init__()
        self.channels = config.smear_gate_channels
        self.gate = nn.Parameter(torch.empty(1, self.channels))
        self.strength = nn.Parameter(torch.empty(1))

    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.channels) / TRUNCATED_NORMAL_STD
        init.trunc_normal_(self.gate, 0.0, std, -2.0 * std, 2.0 * std)
        init.zeros_(self.strength)

    def forward(self, e: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        b, t, _ = e.shape
        if ctx.past_length > 0:
            first_previous = ctx.cache.model_state.get(self.STATE_KEY)
            if first_previous is None:
                raise RuntimeError("the cache holds no pre-smear embedding of the previous token; it was not filled "
                                   "by this model — start generation with an empty cache")
        else:
            first_previous = torch.zeros_like(e[:, :1])
        previous = torch.cat([first_previous.to(e.dtype), e[:, :-1]], dim=1)
        index = torch.arange(ctx.past_length, ctx.past_length + t, device=e.device)
        has_previous = (index >= 1)[None, :].expand(b, t)
        if ctx.key_padding_mask is not None:
            has_previous = has_previous & ctx.key_padding_mask[:, (index - 1).clamp_min(0)]
        gate = self.strength * torch.sigmoid(e[..., :self.channels] @ self.gate.t().to(e.dtype))  # (B, T, 1)
        if ctx.cache is not None:
            ctx.cache.model_state[self.STATE_KEY] = e[:, -1:].clone()
        return e + gate * previous * has_previous[..., None]


class EmbeddingStage(Component):
    """The optional embedding norm and smear, in that order (see the module docstring)."""

    def __init__(self, config):
        super().__init__()
        self.norm = build_norm(config, config.hidden_size) if config.embedding_norm else None
        self.smear = Smear(config) if config.smear else None

    def forward(self, embeddings: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        e = embeddings if self.norm is None else self.norm(embeddings)
        return e if self.smear is None else self.smear(e, ctx)


def describe_embedding(config, layer_idx) -> str:
    steps = [f"x = embed(ids)   ({config.vocab_size} × {config.hidden_size} table)"]
    if config.embedding_norm:
        steps.append(f"x = {config.norm}(x)")
    if config.smear:
        steps.append(f"x_t = x_t + λ·σ(w·x_t[:{config.smear_gate_channels}])·x_(t−1)   (smear, λ = 0 at init)")
    if config.embedding_dropout:
        steps.append(f"x = drop_{config.embedding_dropout:g}(x)")
    return "; ".join(steps)


PARTS.register("embedding", options=(
    "embedding_norm", "embedding_dropout", "smear",
    Option("smear_gate_channels", check=channel_count, requires="smear", doc="input channels of the smear gate"),
), describe=describe_embedding)(EmbeddingStage)

__all__ = ["EmbeddingStage", "Smear"]
