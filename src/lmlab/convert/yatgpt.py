"""Released yatgpt checkpoints (flaxchat's PyTorch port; the HF `-pytorch` repos) -> lmlab. Spec yatgpt.md §2.

Official names (the HF repos prefix every key with `model.`, which is stripped) and their lmlab counterparts:

| official | lmlab |
|---|---|
| wte.weight | model.embed_tokens.weight (also the head) |
| blocks.{i}.attn.c_q / c_k / c_v / c_proj.weight | model.layers.{i}.mixer.q_proj / k_proj / v_proj / out_proj.weight |
| blocks.{i}.attn.ve_gate.weight (H_kv, 12) | model.layers.{i}.mixer.value_embed.gate |
| value_embeds.{i}.weight | model.layers.{i}.mixer.value_embed.table.weight |
| blocks.{i}.mlp.c_fc.kernel (in, out) | model.layers.{i}.mlp.up_proj.weight, transposed to (out, in) |
| blocks.{i}.mlp.c_fc.bias / epsilon_param / alpha | model.layers.{i}.mlp.up_proj.bias / raw_epsilon / alpha |
| blocks.{i}.mlp.c_fc.weight (GELU / ReLU² variants) | model.layers.{i}.mlp.up_proj.weight |
| blocks.{i}.mlp.c_proj.weight | model.layers.{i}.mlp.down_proj.weight |
| resid_lambdas, x0_lambdas, backout_lambda | model.residual_stream.* (same names) |
| smear_gate.weight (1, 24), smear_lambda | model.embedding_stage.smear.gate, .strength |
| lm_head.weight (untied checkpoints only) | lm_head.weight |

`rope_cos` / `rope_sin` are dropped (lmlab computes the rotation; their length, 10·T, gives the training length T
when present). A constant-α checkpoint's `c_fc._alpha_const` buffer sets the constant α (the PyTorch port stores
1). Everything else loads strictly.

The config is read off the tensors: sizes, heads (from the value-embedding gates), MLP variant (YatNMN kernel with
or without `epsilon_param`, scalar or per-neuron bias, learnable or constant α). What the tensors cannot tell is
asked for: GELU vs ReLU² (`mlp`), and the training length when no rope buffer is stored (`sequence_len`, default
1024) — it sets the sliding windows.
"""

from __future__ import annotations

import re

import torch

from lmlab.config import LMLabConfig
from lmlab.convert.base import CONVERTERS, CheckpointMismatchError, load_exactly
from lmlab.layer_pattern import VALUE_EMBED_RULES, has_value_embed
from lmlab.model import LMLabForCausalLM
from lmlab.presets import get_preset

LINEAR_MLPS = ("gelu", "relu2")  # variants whose c_fc is a plain Linear: identical tensors, told apart by the user
ROPE_TABLE_FACTOR = 10  # the port's rope tables cover 10 × the training length
_TOP_LEVEL = {
    "wte.weight": "model.embed_tokens.weight",
    "resid_lambdas": "model.residual_stream.resid_lambdas",
    "x0_lambdas": "model.residual_stream.x0_lambdas",
    "backout_lambda": "model.residual_stream.backout_lambda",
    "smear_gate.weight": "model.embedding_stage.smear.gate",
    "smear_lambda": "model.embedding_stage.smear.strength",
    "lm_head.weight": "lm_head.weight",
}
_BLOCK_RENAMES = {
    "attn.c_q.weight": "mixer.q_proj.weight", "attn.c_k.weight": "mixer.k_proj.weight",
    "attn.c_v.weight": "mixer.v_proj.weight", "attn.c_proj.weight": "mixer.out_proj.weight",
    "attn.ve_gate.weight": "mixer.value_embed.gate", "mlp.c_fc.kernel": "mlp.up_proj.weight",
    "mlp.c_fc.weight": "mlp.up_proj.weight", "mlp.c_fc.bias": "mlp.up_proj.bias",
    "mlp.c_fc.epsilon_param": "mlp.up_proj.raw_epsilon", "mlp.c_fc.alpha": "mlp.up_proj.alpha",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)$")
_VALUE_EMBED_KEY = re.compile(r"value_embeds\.(\d+)\.weight$")
_GATE_KEY = re.compile(r"blocks\.(\d+)\.attn\.ve_gate\.weight$")


def _is_recomputed_buffer(key: str) -> bool:
    return key in ("rope_cos", "rope_sin") or key.endswith("._alpha_const")


def strip_model_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The HF `-pytorch` repos wrap the model as `model.`: drop that prefix when every key carries it."""
    if state and all(key.startswith("model.") for key in state):
        return {key[len("model."):]: value for key, value in state.items()}
    return dict(state)


def rename_yatgpt_tensor(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    """(lmlab name, tensor in lmlab layout) for one official tensor; unknown keys pass through to be reported."""
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key], value
    if match := _VALUE_EMBED_KEY.match(key):
        return f"model.layers.{match.group(1)}.mixer.value_embed.table.weight", value
    if (match := _BLOCK_KEY.match(key)) and match.group(2) in _BLOCK_RENAMES:
        layer, name = match.groups()
        if name == "mlp.c_fc.kernel":
            value = value.t().contiguous()
        return f"model.layers.{layer}.{_BLOCK_RENAMES[name]}", value
    return key, value


def _mlp_choice(state: dict[str, torch.Tensor], mlp: str | None) -> dict:
    if "blocks.0.mlp.c_fc.kernel" in state:
        if mlp is not None and not mlp.startswith("yatnmn"):
            raise CheckpointMismatchError(f"this checkpoint has a YatNMN MLP (c_fc.kernel), not {mlp!r}")
        softplus = "blocks.0.mlp.c_fc.epsilon_param" in state
        constant_alpha = None
        if "blocks.0.mlp.c_fc.alpha" not in state:
            stored = {float(v.reshape(-1)[0]) for k, v in state.items() if k.endswith("._alpha_const") and v.numel()}
            if len(stored) > 1:
                raise CheckpointMismatchError(f"the layers store different constant α values {sorted(stored)}")
            constant_alpha = stored.pop() if stored else 1.0
        return dict(mlp="yatnmn_softplus" if softplus else "yatnmn",
                    yatnmn_scalar_bias=state["blocks.0.mlp.c_fc.bias"].numel() == 1,
                    yatnmn_constant_alpha=constant_alpha,
                    intermediate_size=state["blocks.0.mlp.c_fc.kernel"].shape[1])
    if "blocks.0.mlp.c_fc.weight" not in state:
        raise CheckpointMismatchError("not a yatgpt state_dict: blocks.0.mlp.c_fc (kernel or weight) is missing")
    if mlp not in LINEAR_MLPS:
        raise CheckpointMismatchError("this checkpoint's MLP is a Linear c_fc, which GELU and ReLU² share; say which "
                                      f"with mlp= one of {LINEAR_MLPS} (CLI: --mlp gelu|relu2)")
    flavour = {"gelu_approximate": "tanh"} if mlp == "gelu" else {}  # the port's GELU is JAX's default, tanh
    return dict(mlp=mlp, intermediate_size=state["blocks.0.mlp.c_fc.weight"].shape[0], **flavour)


def _training_length(state: dict[str, torch.Tensor], sequence_len: int | None) -> int:
    if sequence_len is not None:
        return sequence_len
    if "rope_cos" in state:
        return state["rope_cos"].shape[1] // ROPE_TABLE_FACTOR
    return 1024


def _value_embed_rule(layers: set[int], num_layers: int) -> str:
    for rule in VALUE_EMBED_RULES:
        if layers == {i for i in range(num_layers) if has_value_embed(rule, i, num_layers)}:
            return rule
    raise CheckpointMismatchError(f"value embeddings on layers {sorted(layers)} follow none of the rules "
                                  f"{VALUE_EMBED_RULES}")


def yatgpt_config_from_state_dict(state: dict[str, torch.Tensor], mlp: str | None = None,
                                  sequence_len: int | None = None, window_pattern: str = "SSSL") -> LMLabConfig:
    """The yatgpt config whose tensors these are (official names, `model.` prefix already stripped)."""
    for key in ("wte.weight", "blocks.0.attn.c_q.weight", "blocks.0.attn.c_k.weight", "smear_gate.weight"):
        if key not in state:
            raise CheckpointMismatchError(f"not a yatgpt state_dict: {key} is missing (found e.g. "
                                          f"{', '.join(sorted(state)[:5])})")
    vocab, hidden = state["wte.weight"].shape
    num_layers = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)))
    gates = {int(m.group(1)): v for k, v in state.items() if (m := _GATE_KEY.match(k))}
    if not gates:
        raise CheckpointMismatchError("no blocks.{i}.attn.ve_gate.weight found: the head count of a yatgpt "
                                      "checkpoint is read off its value-embedding gates")
    kv_heads, gate_channels = next(iter(gates.values())).shape
    kv_width, q_width = state["blocks.0.attn.c_k.weight"].shape[0], state["blocks.0.attn.c_q.weight"].shape[0]
    head_dim = kv_width // kv_heads
    length = _training_length(state, sequence_len)
    components = get_preset("yatgpt-d12").config
    return LMLabConfig(**{
        **components, "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": num_layers,
        "num_attention_heads": q_width // head_dim, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "value_embed_layers": _value_embed_rule(set(gates), num_layers), "value_embed_gate_channels": gate_channels,
        "smear_gate_channels": state["smear_gate.weight"].shape[1], "window_pattern": window_pattern,
        "window_long": length, "tie_word_embeddings": "lm_head.weight" not in state,
        **_mlp_choice(state, mlp), "preset": None})


@CONVERTERS.register("yatgpt")
def convert_yatgpt(state: dict[str, torch.Tensor], mlp: str | None = None, sequence_len: int | None = None,
                   window_pattern: str = "SSSL") -> LMLabForCausalLM:
    """An lmlab model holding exactly the weights of a released yatgpt (PyTorch-port) state_dict."""
    state = strip_model_prefix(state)
    config = yatgpt_config_from_state_dict(state, mlp, sequence_len, window_pattern)
    model = LMLabForCausalLM(config)
    renamed = dict(rename_yatgpt_tensor(k, v) for k, v in state.items() if not _is_recomputed_buffer(k))
    load_exactly(model, renamed, source="yatgpt checkpoint")
    return model.eval()
