"""The output head: logits from the last block's output.

    h = norm(x)                  the model's norm, unless final_norm is False (N4)
    z = h·Wᵀ (+ b)               W is the token embedding when tie_word_embeddings; b when lm_head_bias
    logits = cap·tanh(z / cap)   when logit_softcap = cap (nanochat); always fp32
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.registry import PARTS, Option, positive


def head_logits(lm_head: nn.Linear, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """fp32 logits of hidden states (B, T, d), soft-capped when `softcap` is given."""
    logits = lm_head(hidden).float()
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def describe_head(config, layer_idx) -> str:
    steps = [f"h = {config.norm}(x)" if config.final_norm else "h = x (no final norm)"]
    weight = "Eᵀ (tied to the embedding)" if config.tie_word_embeddings else "Wᵀ (untied)"
    z = f"h·{weight}" + (" + b" if config.lm_head_bias else "")
    cap = config.logit_softcap
    steps.append(f"logits = {cap:g}·tanh(z/{cap:g}), z = {z}" if cap is not None else f"logits = {z}")
    return "; ".join(steps)


PARTS.register("head", options=(
    "final_norm", "tie_word_embeddings", "lm_head_bias",
    Option("logit_softcap", check=positive, doc="cap·tanh(z/cap) on the logits"),
), describe=describe_head)(head_logits)

__all__ = ["describe_head", "head_logits"]
