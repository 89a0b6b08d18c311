"""Official NYX checkpoints (dykyivladk1/NYX, class NYX, spec nyx.md §2) -> lmlab.

NYX computes q, the shared k and v heads and the SwiGLU input with one fused projection; lmlab keeps them as separate
projections (so each can be swapped or adapted), which is the same computation with the fused weight's rows split:

| official | lmlab |
|---|---|
| token_embedding.weight | model.embed_tokens.weight |
| to_output_logits.weight (the embedding, tied) | lm_head.weight (must equal the embedding) |
| layers.{i}.func.norm_layer.gamma | model.layers.{i}.norm.weight |
| layers.{i}.func.fused_attention_feedforward.weight rows [q, k, v, ff] | model.layers.{i}.mixer.{q,k,v}_proj.weight, |
| (widths h·d_h, d_h, d_h, 2f; ff is [value, gate]) | model.layers.{i}.mlp.up_proj.weight (same [value, gate]) |
| layers.{i}.func.attn_output_proj.weight | model.layers.{i}.mixer.out_proj.weight |
| layers.{i}.func.feedforward_net.2.weight | model.layers.{i}.mlp.down_proj.weight |
| norm_layer.gamma | model.norm.weight |

Buffers are checked, then dropped: every LayerNorm `beta` must be zero (NYX never trains it, and lmlab's NYX norm
has no bias); `rotary_pos_emb.inv_frequency` must be 10000^(−2i/d_h) and `scaling_factors` XPOS's ζ, which lmlab
rebuilds from the config. The XPOS scale base is not stored in the checkpoint (NYX's default is 512).
"""

from __future__ import annotations

import re

import torch

from lmlab.config import LMLabConfig
from lmlab.convert.base import CONVERTERS, CheckpointMismatchError, load_exactly
from lmlab.model import LMLabForCausalLM
from lmlab.nn.position import rope_inv_freq
from lmlab.nn.xpos import xpos_decay_bases
from lmlab.presets import get_preset

_LAYER_KEY = re.compile(r"layers\.(\d+)\.func\.(.+)$")
_LAYER_RENAMES = {
    "norm_layer.gamma": "norm.weight",
    "attn_output_proj.weight": "mixer.out_proj.weight",
    "feedforward_net.2.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "token_embedding.weight": "model.embed_tokens.weight",
    "to_output_logits.weight": "lm_head.weight",
    "norm_layer.gamma": "model.norm.weight",
}
_FUSED = "fused_attention_feedforward.weight"
NYX_ROPE_THETA = 10000.0


def split_fused_projection(weight: torch.Tensor, heads: int, head_dim: int, ff_inner: int) -> dict[str, torch.Tensor]:
    """The fused weight's rows as {"q", "k", "v", "ff"} of widths (h·d_h, d_h, d_h, 2f)."""
    widths = (heads * head_dim, head_dim, head_dim, 2 * ff_inner)
    if weight.shape[0] != sum(widths):
        raise CheckpointMismatchError(
            f"{_FUSED} has {weight.shape[0]} rows; {heads} heads of {head_dim} and feed-forward width {ff_inner} "
            f"need {sum(widths)} (q {widths[0]}, k {head_dim}, v {head_dim}, feed-forward {widths[3]})")
    return {name: part.contiguous() for name, part in zip(("q", "k", "v", "ff"), weight.split(widths), strict=True)}


def nyx_config_from_state_dict(state: dict[str, torch.Tensor], xpos_scale_base: float = 512.0) -> LMLabConfig:
    """The NYX config whose tensor shapes these are."""
    required = ("token_embedding.weight", "layers.0.func.rotary_pos_emb.inv_frequency",
                "layers.0.func.attn_output_proj.weight", "layers.0.func.feedforward_net.2.weight")
    for key in required:
        if key not in state:
            raise CheckpointMismatchError(f"not a NYX state_dict: {key} is missing (found e.g. "
                                          f"{', '.join(sorted(state)[:5])})")
    if any(key.endswith((".q_scale", ".k_scale")) for key in state):
        raise CheckpointMismatchError("this NYX checkpoint was trained with use_qk_rmsnorm=True, which lmlab's NYX "
                                      "does not implement (the published model has it off)")
    vocab, hidden = state["token_embedding.weight"].shape
    head_dim = 2 * state["layers.0.func.rotary_pos_emb.inv_frequency"].numel()
    inner = state["layers.0.func.attn_output_proj.weight"].shape[1]
    if inner % head_dim:
        raise CheckpointMismatchError(f"attn_output_proj reads {inner} channels, not a multiple of the head size "
                                      f"{head_dim} given by inv_frequency")
    layers = 1 + max(int(m.group(1)) for key in state if (m := _LAYER_KEY.match(key)))
    return LMLabConfig(**{**get_preset("nyx-30m").config, "vocab_size": vocab, "hidden_size": hidden,
                          "num_hidden_layers": layers, "num_attention_heads": inner // head_dim,
                          "head_dim": head_dim,
                          "intermediate_size": state["layers.0.func.feedforward_net.2.weight"].shape[1],
                          "xpos_scale_base": xpos_scale_base})


def _check_buffer(key: str, value: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    if value.shape != expected.shape or not torch.allclose(value.float(), expected, rtol=1e-6, atol=1e-7):
        raise CheckpointMismatchError(f"buffer {key} is not {what}; lmlab rebuilds it from the config and cannot "
                                      "represent this checkpoint")


def _drop_checked_buffer(key: str, value: torch.Tensor, config: LMLabConfig) -> bool:
    """True for a NYX buffer that matches what lmlab computes (and can be dropped); raises for one that does not."""
    if key.endswith("norm_layer.beta"):
        _check_buffer(key, value, torch.zeros(config.hidden_size), "zero (a trained LayerNorm bias)")
        return True
    if key.endswith("rotary_pos_emb.inv_frequency"):
        _check_buffer(key, value, rope_inv_freq(NYX_ROPE_THETA, config.head_dim),
                      f"10000^(-2i/{config.head_dim}) (the standard rotary frequencies)")
        return True
    if key.endswith("rotary_pos_emb.scaling_factors"):
        _check_buffer(key, value, xpos_decay_bases(config.head_dim), "XPOS's (2i + 0.4·d_h)/(1.4·d_h)")
        return True
    return False


def rename_nyx_tensor(key: str, value: torch.Tensor, config: LMLabConfig) -> dict[str, torch.Tensor]:
    """{lmlab name: tensor} for one NYX parameter (unknown keys pass through unchanged, to be reported)."""
    if key in _TOP_RENAMES:
        return {_TOP_RENAMES[key]: value}
    match = _LAYER_KEY.match(key)
    if not match:
        return {key: value}
    layer, name = match.groups()
    prefix = f"model.layers.{layer}."
    if name == _FUSED:
        parts = split_fused_projection(value, config.num_attention_heads, config.head_dim, config.intermediate_size)
        return {prefix + "mixer.q_proj.weight": parts["q"], prefix + "mixer.k_proj.weight": parts["k"],
                prefix + "mixer.v_proj.weight": parts["v"], prefix + "mlp.up_proj.weight": parts["ff"]}
    if name in _LAYER_RENAMES:
        return {prefix + _LAYER_RENAMES[name]: value}
    return {key: value}


@CONVERTERS.register("nyx")
def convert_nyx(state: dict[str, torch.Tensor], xpos_scale_base: float = 512.0) -> LMLabForCausalLM:
    """An lmlab model holding exactly the weights of an official NYX state_dict."""
    config = nyx_config_from_state_dict(state, xpos_scale_base)
    model = LMLabForCausalLM(config)
    renamed = {name: tensor for key, value in state.items() if not _drop_checked_buffer(key, value, config)
               for name, tensor in rename_nyx_tensor(key, value, config).items()}
    load_exactly(model, renamed, source="NYX checkpoint")
    return model.eval()
