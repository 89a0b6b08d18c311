"""Llama model folders (transformers' `LlamaForCausalLM.save_pretrained`) -> lmlab's `llama` components.

| Hugging Face | lmlab |
|---|---|
| model.embed_tokens.weight, model.norm.weight, lm_head.weight (absent when tied) | the same names |
| model.layers.{i}.input_layernorm / post_attention_layernorm | model.layers.{i}.mixer_norm / mlp_norm |
| model.layers.{i}.self_attn.{q,k,v}_proj / o_proj | model.layers.{i}.mixer.{q,k,v}_proj / out_proj |
| model.layers.{i}.mlp.{gate,up,down}_proj | model.layers.{i}.mlp.{gate,up,down}_proj (`gated_silu`) |

Config: sizes, head_dim, rms_norm_eps, tied head, attention / MLP biases (every projection, as lmlab's), attention
dropout, init range, token ids, RoPE θ and scaling (`rope_parameters`: default, linear, dynamic, yarn, llama3, with
the keys lmlab.rope_scaling knows). Refused by name: another activation than SiLU, partial rotary, other RoPE kinds
or keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from transformers import LlamaConfig, PreTrainedConfig

from lmlab.config import LMLabConfig
from lmlab.convert.base import load_exactly
from lmlab.convert.model_folder import (
    FOLDER_CONVERTERS,
    read_folder_config,
    read_folder_weights,
    refuse_unsupported,
)
from lmlab.model import LMLabForCausalLM
from lmlab.presets.llama import LLAMA_COMPONENTS
from lmlab.rope_scaling import ROPE_SCALINGS

LLAMA_LAYER_RENAMES = {
    "input_layernorm": "mixer_norm", "post_attention_layernorm": "mlp_norm", "self_attn.q_proj": "mixer.q_proj",
    "self_attn.k_proj": "mixer.k_proj", "self_attn.v_proj": "mixer.v_proj", "self_attn.o_proj": "mixer.out_proj",
    "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj", "mlp.down_proj": "mlp.down_proj",
}
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def rename_llama_key(key: str, renames: dict[str, str] = LLAMA_LAYER_RENAMES) -> str:
    """The lmlab name of a Hugging Face Llama-layout key (unknown keys are returned unchanged, to be reported)."""
    match = _LAYER_KEY.match(key)
    if match and match.group(2) in renames:
        layer, module, kind = match.groups()
        return f"model.layers.{layer}.{renames[module]}.{kind}"
    return key


def rope_options(hf: PreTrainedConfig) -> tuple[dict, list[str]]:
    """lmlab's rope_theta and rope_scaling for the HF config's `rope_parameters`, and what lmlab does not support."""
    parameters = dict(hf.rope_parameters)
    kind = parameters.pop("rope_type", "default")
    parameters.pop("type", None)
    theta = float(parameters.pop("rope_theta"))
    partial = parameters.pop("partial_rotary_factor", 1.0)
    problems = [f"partial_rotary_factor={partial} (the Llama layout rotates whole heads)"] if partial != 1.0 else []
    if kind == "default":
        return dict(rope_theta=theta, rope_scaling=None), problems
    if kind not in ROPE_SCALINGS:
        problems.append(f"rope_type={kind!r} (lmlab's rope scalings: {', '.join(ROPE_SCALINGS.names())})")
        return dict(rope_theta=theta, rope_scaling=None), problems
    return dict(rope_theta=theta, rope_scaling={"type": kind, **parameters}), problems


def llama_layout_config(hf: PreTrainedConfig, components: dict, family_problems: tuple[str, ...] | list[str] = ()
                        ) -> LMLabConfig:
    """The lmlab config of a Llama-layout HF config (Llama, Qwen3), built from `components` (a preset family's
    component choices); refuses, naming them all, the options lmlab would not reproduce (`family_problems`: those
    the caller found in its family's own options)."""
    rope, problems = rope_options(hf)
    problems = list(family_problems) + problems
    if hf.hidden_act != "silu":
        problems.append(f"hidden_act={hf.hidden_act!r} (the gated_silu MLP uses SiLU)")
    refuse_unsupported(problems, hf.model_type)
    return LMLabConfig(**{
        **components, "vocab_size": hf.vocab_size, "hidden_size": hf.hidden_size,
        "intermediate_size": hf.intermediate_size, "num_hidden_layers": hf.num_hidden_layers,
        "num_attention_heads": hf.num_attention_heads, "num_key_value_heads": hf.num_key_value_heads,
        "head_dim": hf.head_dim or hf.hidden_size // hf.num_attention_heads,
        "max_position_embeddings": hf.max_position_embeddings, "norm_eps": hf.rms_norm_eps,
        "tie_word_embeddings": hf.tie_word_embeddings, "attention_bias": hf.attention_bias,
        "mlp_bias": getattr(hf, "mlp_bias", False), "attention_dropout": float(hf.attention_dropout or 0.0),
        "initializer_range": hf.initializer_range, "bos_token_id": hf.bos_token_id, "eos_token_id": hf.eos_token_id,
        "pad_token_id": hf.pad_token_id, **rope, "preset": None})


def convert_llama_layout(folder: str | Path, config_class: type, components: dict, renames: dict[str, str],
                         family_problems: Callable[[PreTrainedConfig], list[str]]) -> LMLabForCausalLM:
    """An lmlab model holding exactly the weights of a Llama-layout model folder."""
    hf = read_folder_config(folder, config_class)
    config = llama_layout_config(hf, components, family_problems(hf))
    model = LMLabForCausalLM(config)
    state = {rename_llama_key(k, renames): v for k, v in read_folder_weights(folder).items()}
    load_exactly(model, state, source=f"{hf.model_type} model folder {folder}")
    return model.eval()


@FOLDER_CONVERTERS.register("llama")
def convert_llama(folder: str | Path) -> LMLabForCausalLM:
    """An lmlab `llama` model from a `LlamaForCausalLM` folder."""
    return convert_llama_layout(folder, LlamaConfig, LLAMA_COMPONENTS, LLAMA_LAYER_RENAMES, lambda hf: [])


__all__ = ["LLAMA_LAYER_RENAMES", "convert_llama", "convert_llama_layout", "llama_layout_config",
           "rename_llama_key", "rope_options"]
