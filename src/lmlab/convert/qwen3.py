"""Qwen3 model folders (transformers' `Qwen3ForCausalLM.save_pretrained`) -> lmlab's `qwen3` components.

The Llama layout (lmlab.convert.llama: names, config, refusals) plus the per-head q / k norms:
model.layers.{i}.self_attn.{q,k}_norm.weight -> model.layers.{i}.mixer.{q,k}_norm.weight. Also refused by name:
sliding-window layers (`use_sliding_window`, `layer_types` with "sliding_attention").
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedConfig, Qwen3Config

from lmlab.convert.llama import LLAMA_LAYER_RENAMES, convert_llama_layout
from lmlab.convert.model_folder import FOLDER_CONVERTERS
from lmlab.model import LMLabForCausalLM
from lmlab.presets.qwen3 import QWEN3_COMPONENTS

QWEN3_LAYER_RENAMES = {**LLAMA_LAYER_RENAMES, "self_attn.q_norm": "mixer.q_norm", "self_attn.k_norm": "mixer.k_norm"}


def qwen3_problems(hf: PreTrainedConfig) -> list[str]:
    """What a Qwen3 config uses beyond the Llama layout that lmlab's qwen3 components do not reproduce."""
    sliding = [i for i, kind in enumerate(hf.layer_types or []) if kind != "full_attention"]
    if sliding:
        return [f"layer_types {sorted({hf.layer_types[i] for i in sliding})} on layers {sliding} "
                f"(use_sliding_window={hf.use_sliding_window}, sliding_window={hf.sliding_window}): lmlab converts "
                "full-attention Qwen3 models only"]
    return []


@FOLDER_CONVERTERS.register("qwen3")
def convert_qwen3(folder: str | Path) -> LMLabForCausalLM:
    """An lmlab `qwen3` model from a `Qwen3ForCausalLM` folder."""
    return convert_llama_layout(folder, Qwen3Config, QWEN3_COMPONENTS, QWEN3_LAYER_RENAMES, qwen3_problems)


__all__ = ["QWEN3_LAYER_RENAMES", "convert_qwen3", "qwen3_problems"]
