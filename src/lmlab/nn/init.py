"""Initialisation schemes: one named recipe per published family, applied by role.

A component never hard-codes the init of its projections: it creates them with `linear(...)` / `embedding(...)`,
which tag each with a role, and the model initialises every tagged module with the config's scheme:

| role | meaning |
|---|---|
| embed | token embedding table |
| head | untied output projection |
| attn_in / attn_out | mixer input projections (q, k, v, gates) / mixer output projection |
| mlp_in / mlp_out | MLP input projections / MLP output projection |
| value_embed | per-layer value-embedding tables (nanochat) |

Parameters whose init is part of a component's math (norm gains, gates, scalars) are set by the component's own
`reset_parameters()`. All functions come from `transformers.initialization`, which skips tensors already loaded
from a checkpoint.
"""

from __future__ import annotations

import math

from torch import nn
from transformers import initialization as init

from lmlab.registry import INIT_SCHEMES

ROLES = ("embed", "head", "attn_in", "attn_out", "mlp_in", "mlp_out", "value_embed")


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown init role {role!r}; roles are {ROLES}")
    return role


def linear(in_features: int, out_features: int, bias: bool, role: str) -> nn.Linear:
    """An nn.Linear that the model initialises as `role` under the config's scheme."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    layer.init_role = _check_role(role)
    return layer


def embedding(num_embeddings: int, dim: int, role: str = "embed") -> nn.Embedding:
    """An nn.Embedding that the model initialises as `role` under the config's scheme."""
    table = nn.Embedding(num_embeddings, dim)
    table.init_role = _check_role(role)
    return table


def initialise(module: nn.Module, config) -> None:
    """Initialise a role-tagged nn.Linear / nn.Embedding under `config.init`."""
    INIT_SCHEMES[config.init](module, module.init_role, config)


def torch_default(module: nn.Module) -> None:
    """PyTorch's own defaults: Linear weight and bias U(±1/sqrt(fan_in)); Embedding N(0, 1)."""
    if isinstance(module, nn.Embedding):
        init.normal_(module.weight, 0.0, 1.0)
        return
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    if module.bias is not None:
        bound = 1.0 / math.sqrt(module.in_features)
        init.uniform_(module.bias, -bound, bound)


def zero_bias(module: nn.Module) -> None:
    if getattr(module, "bias", None) is not None:
        init.zeros_(module.bias)


@INIT_SCHEMES.register("gpt2", options=("initializer_range",))
def gpt2_scheme(module: nn.Module, role: str, config) -> None:
    """GPT-2: every weight N(0, σ), σ = initializer_range; output projections N(0, σ/sqrt(2·n_layer)); biases 0."""
    std = config.initializer_range
    if role in ("attn_out", "mlp_out"):
        std = std / math.sqrt(2 * config.num_hidden_layers)
    init.normal_(module.weight, 0.0, std)
    zero_bias(module)


@INIT_SCHEMES.register("normal", options=("initializer_range",))
def normal_scheme(module: nn.Module, role: str, config) -> None:
    """HF default (Llama, Qwen): every weight N(0, initializer_range), biases 0."""
    init.normal_(module.weight, 0.0, config.initializer_range)
    zero_bias(module)


@INIT_SCHEMES.register("n4")
def n4_scheme(module: nn.Module, role: str, config) -> None:
    """N4 reference: PyTorch defaults (embedding N(0, 1), Linear U(±1/sqrt(fan_in))), except the MLP projections,
    which are kaiming-normal with a = sqrt(0.5), fan_in mode (std = 1.1547/sqrt(fan_in))."""
    if role in ("mlp_in", "mlp_out"):
        init.kaiming_normal_(module.weight, a=math.sqrt(0.5), mode="fan_in", nonlinearity="leaky_relu")
        if module.bias is not None:
            bound = 1.0 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)
        return
    torch_default(module)


@INIT_SCHEMES.register("flaxchat")
def flaxchat_scheme(module: nn.Module, role: str, config) -> None:
    """flaxchat's `GPT._init_weights` (the nanochat GPT the yatgpt models were trained with), s = sqrt(3/d):
    embed N(0, 0.8); head (untied) N(0, 0.001); attn_in and value_embed U(±s); mlp_in U(±0.4·s); attn_out and
    mlp_out 0 (every residual branch starts at zero); biases 0."""
    s = math.sqrt(3.0 / config.hidden_size)
    if role == "embed":
        init.normal_(module.weight, 0.0, 0.8)
    elif role == "head":
        init.normal_(module.weight, 0.0, 0.001)
    elif role in ("attn_out", "mlp_out"):
        init.zeros_(module.weight)
    elif role == "mlp_in":
        init.uniform_(module.weight, -0.4 * s, 0.4 * s)
    else:
        init.uniform_(module.weight, -s, s)
    zero_bias(module)


@INIT_SCHEMES.register("nyx", options=("initializer_range",))
def nyx_scheme(module: nn.Module, role: str, config) -> None:
    """NYX / PaLM-rlhf: token embedding (and a head, tied or not) N(0, initializer_range); every other projection
    PyTorch's default U(±1/sqrt(fan_in))."""
    if role in ("embed", "head"):
        init.normal_(module.weight, 0.0, config.initializer_range)
        zero_bias(module)
        return
    torch_default(module)
