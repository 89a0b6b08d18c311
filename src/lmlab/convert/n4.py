"""Official N4 checkpoints (Rikka-Botan/Nova-Nox-Neural-Network, class N4C) -> lmlab.

Official names (spec n4.md §2) and their lmlab counterparts:

| official | lmlab |
|---|---|
| n4b.embedding.weight | model.embed_tokens.weight |
| n4b.n4d.{i}.n4.qkvh_linear.* | model.layers.{i}.mixer.qkvg_proj.* (same head-major layout) |
| n4b.n4d.{i}.n4.out_linear.* | model.layers.{i}.mixer.out_proj.* |
| n4b.n4d.{i}.n4.norm.weight | model.layers.{i}.mixer.unused_norm.weight |
| n4b.n4d.{i}.mlp.{up,down}_proj.* | model.layers.{i}.mlp.{up,down}_proj.* |
| n4b.n4d.{i}.{pre,post}_n4_norm.weight | model.layers.{i}.mixer_{,post_}norm.weight |
| n4b.n4d.{i}.{pre,post}_mlp_norm.weight | model.layers.{i}.mlp_{,post_}norm.weight |
| lm_head.* | lm_head.* |

The config is read off the tensor shapes, so any N4 size converts.
"""

from __future__ import annotations

import re

import torch

from lmlab.config import LMLabConfig
from lmlab.convert.base import CONVERTERS, CheckpointMismatchError, load_exactly
from lmlab.model import LMLabForCausalLM
from lmlab.presets import get_preset

_LAYER_RENAMES = {
    "n4.qkvh_linear": "mixer.qkvg_proj",
    "n4.out_linear": "mixer.out_proj",
    "n4.norm": "mixer.unused_norm",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
    "pre_n4_norm": "mixer_norm",
    "post_n4_norm": "mixer_post_norm",
    "pre_mlp_norm": "mlp_norm",
    "post_mlp_norm": "mlp_post_norm",
}
_LAYER_KEY = re.compile(r"n4b\.n4d\.(\d+)\.(.+)\.(weight|bias)$")


def rename_n4_key(key: str) -> str:
    """The lmlab name of an official N4 key (unknown keys are returned unchanged, to be reported)."""
    if key == "n4b.embedding.weight":
        return "model.embed_tokens.weight"
    match = _LAYER_KEY.match(key)
    if match and match.group(2) in _LAYER_RENAMES:
        layer, module, kind = match.groups()
        return f"model.layers.{layer}.{_LAYER_RENAMES[module]}.{kind}"
    return key


def n4_config_from_state_dict(state: dict[str, torch.Tensor]) -> LMLabConfig:
    """The N4 config whose parameter shapes these are."""
    for key in ("n4b.embedding.weight", "n4b.n4d.0.n4.qkvh_linear.weight", "n4b.n4d.0.mlp.down_proj.weight"):
        if key not in state:
            raise CheckpointMismatchError(f"not an N4 state_dict: {key} is missing (found e.g. "
                                          f"{', '.join(sorted(state)[:5])})")
    vocab, hidden = state["n4b.embedding.weight"].shape
    heads = state["n4b.n4d.0.n4.qkvh_linear.weight"].shape[0] - 3 * hidden
    layers = 1 + max(int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k)))
    intermediate = state["n4b.n4d.0.mlp.down_proj.weight"].shape[1]
    bias = "n4b.n4d.0.n4.qkvh_linear.bias" in state
    components = get_preset("n4-127m").config
    return LMLabConfig(**{**components, "vocab_size": vocab, "hidden_size": hidden, "num_attention_heads": heads,
                          "num_hidden_layers": layers, "intermediate_size": intermediate, "attention_bias": bias,
                          "mlp_bias": bias, "lm_head_bias": bias, "preset": None})


@CONVERTERS.register("n4")
def convert_n4(state: dict[str, torch.Tensor]) -> LMLabForCausalLM:
    """An lmlab model holding exactly the weights of an official N4 state_dict."""
    config = n4_config_from_state_dict(state)
    model = LMLabForCausalLM(config)
    load_exactly(model, {rename_n4_key(k): v for k, v in state.items()}, source="N4 checkpoint")
    return model.eval()
