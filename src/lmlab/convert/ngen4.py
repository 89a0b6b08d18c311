"""GPT-2-layout checkpoints (NGen4 blueprint, spec ngen4.md §3.1) -> lmlab.

GPT-2's Conv1D stores weights as [in, out]; lmlab's Linear as [out, in], so every Conv1D weight is transposed.

| GPT-2 / NGen4 | lmlab |
|---|---|
| transformer.wte.weight | model.embed_tokens.weight |
| transformer.h.{i}.ln_1.* / ln_2.* | model.layers.{i}.mixer_norm.* / mlp_norm.* |
| transformer.h.{i}.attn.c_attn.* (Conv1D, [q | k | v]) | model.layers.{i}.mixer.{q,k,v}_proj.* (split in three) |
| transformer.h.{i}.attn.c_proj.* (Conv1D) | model.layers.{i}.mixer.out_proj.* |
| transformer.h.{i}.mlp.c_fc.* / c_proj.* (Conv1D) | model.layers.{i}.mlp.up_proj.* / down_proj.* |
| transformer.ln_f.* | model.norm.* |
| lm_head.weight (tied, optional) | lm_head.weight |

Legacy causal-mask buffers (`attn.bias` of shape (1, 1, n, n), `attn.masked_bias`) are dropped; everything else
loads strictly.
"""

from __future__ import annotations

import re

import torch

from lmlab.config import LMLabConfig
from lmlab.convert.base import CONVERTERS, CheckpointMismatchError, load_exactly
from lmlab.model import LMLabForCausalLM
from lmlab.presets import get_preset

_LAYER_RENAMES = {
    "ln_1": "mixer_norm", "ln_2": "mlp_norm", "attn.c_proj": "mixer.out_proj", "mlp.c_fc": "mlp.up_proj",
    "mlp.c_proj": "mlp.down_proj",
}
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_LAYER_KEY = re.compile(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)$")


def _is_mask_buffer(key: str, value: torch.Tensor) -> bool:
    return key.endswith("attn.masked_bias") or (key.endswith("attn.bias") and value.dim() == 4)


def rename_gpt2_tensor(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """{lmlab name: tensor in lmlab layout} for one GPT-2-layout tensor (unknown keys pass through unchanged)."""
    if key == "transformer.wte.weight":
        return {"model.embed_tokens.weight": value}
    if key.startswith("transformer.ln_f."):
        return {"model.norm." + key.rsplit(".", 1)[1]: value}
    match = _LAYER_KEY.match(key)
    if not match:
        return {key: value}
    layer, module, kind = match.groups()
    if module in _CONV1D and kind == "weight":
        value = value.t()
    if module == "attn.c_attn":  # rows (after transposing) are [q | k | v], each hidden_size wide
        return {f"model.layers.{layer}.mixer.{part}_proj.{kind}": chunk.contiguous()
                for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True)}
    if module in _LAYER_RENAMES:
        return {f"model.layers.{layer}.{_LAYER_RENAMES[module]}.{kind}": value.contiguous()}
    return {key: value}


def ngen4_config_from_state_dict(state: dict[str, torch.Tensor], num_heads: int,
                                 max_position_embeddings: int) -> LMLabConfig:
    for key in ("transformer.wte.weight", "transformer.h.0.mlp.c_fc.weight"):
        if key not in state:
            raise CheckpointMismatchError(f"not a GPT-2-layout state_dict: {key} is missing")
    vocab, hidden = state["transformer.wte.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k)))
    intermediate = state["transformer.h.0.mlp.c_fc.weight"].shape[1]
    return LMLabConfig(**{**get_preset("ngen4-50m").config, "vocab_size": vocab, "hidden_size": hidden,
                          "num_attention_heads": num_heads, "num_hidden_layers": layers,
                          "intermediate_size": intermediate, "max_position_embeddings": max_position_embeddings})


@CONVERTERS.register("ngen4")
def convert_ngen4(state: dict[str, torch.Tensor], num_heads: int = 8,
                  max_position_embeddings: int = 512) -> LMLabForCausalLM:
    """An lmlab model holding exactly the weights of a GPT-2-layout (Conv1D) NGen4 state_dict.

    The head count and position limit are not recoverable from the tensors; they default to the ngen4-50m values.
    """
    state = {k: v for k, v in state.items() if not _is_mask_buffer(k, v)}
    config = ngen4_config_from_state_dict(state, num_heads, max_position_embeddings)
    model = LMLabForCausalLM(config)
    renamed = {name: tensor for k, v in state.items() for name, tensor in rename_gpt2_tensor(k, v).items()}
    load_exactly(model, renamed, source="NGen4 checkpoint")
    return model.eval()
