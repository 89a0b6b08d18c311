"""One config schema for every lmlab model.

An architecture is data: model-wide sizes and options, the component chosen for each slot (token mixer, MLP, norm,
block wiring, position encoding, init scheme), and optional per-layer overrides in `layers`. The model class
assembles whatever the config names; `config.layer_spec(i)` is the resolved choice for layer i.

Slot values are registry names (see `lmlab.registry`); an unknown name fails at config time with the valid names.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from lmlab.component_options import check_options, own_option
from lmlab.errors import ConfigError
from lmlab.layer_pattern import LAYER_FIELDS, LayerSpec, has_value_embed, pattern_window
from lmlab.registry import BLOCKS, INIT_SCHEMES, MIXERS, MLPS, NORMS, POSITIONS
from lmlab.remote_code import AUTO_MAP, write_remote_code
from lmlab.rope_scaling import normalised_rope_scaling


@strict
class LMLabConfig(PreTrainedConfig):
    r"""The lmlab model config (`model_type = "lmlab"`).

    Sizes: `vocab_size`, `hidden_size`, `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads` (None = MHA),
    `head_dim` (None = hidden_size / heads), `intermediate_size`, `max_position_embeddings` (a hard limit on
    positions; None = no limit).

    Slots (registry names): `mixer`, `mlp`, `norm`, `block`, `position`, `init`. `layers` is an optional list of
    `num_hidden_layers` dicts overriding any `LayerSpec` field for one layer.

    Every other field is an option of the components that declare it (lmlab.registry): validation refuses a value
    no component in use would honour. `component_options` holds the options components declare for themselves
    (name -> value; read with `config.component_option(name)`, which applies the declared default), so a new
    component needs no field here.
    """

    model_type = "lmlab"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the name since / before transformers 5.24
    # the fields the model itself reads (sizes, slots, token ids); every other field belongs to components
    model_fields = ("preset", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings", "mixer", "mlp",
                    "norm", "block", "position", "layers", "init", "component_options", "bos_token_id",
                    "eos_token_id", "pad_token_id", "use_cache")

    preset: str | None = None

    # sizes
    vocab_size: int = 32768
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int = 3072
    max_position_embeddings: int | None = None

    # component choices (model-wide defaults; `layers` overrides per layer)
    mixer: str = "attention"
    mlp: str = "gelu"
    norm: str = "layernorm"
    block: str = "prenorm"
    position: str = "rope"
    layers: list | None = None
    init: str = "gpt2"

    # norms
    norm_eps: float = 1e-5
    dyt_alpha_init: float = 0.5
    final_norm: bool = True

    # attention
    attention_scale: str | float = "head_dim"  # "head_dim" (1/sqrt(d_h)), "hidden_size" (1/sqrt(d), N4) or a number
    attention_bias: bool = False

    # rotary position encoding
    rope_theta: float = 10000.0
    rope_pct: float = 1.0
    rope_scaling: dict | None = None  # HF-style {"type": kind, "factor": f, ...}; kinds in lmlab.rope_scaling

    # MLP
    mlp_bias: bool = False
    gelu_approximate: str = "none"  # "none" (exact erf GELU) or "tanh"

    # embeddings, head, dropout
    tie_word_embeddings: bool = False
    lm_head_bias: bool = False
    logit_softcap: float | None = None
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    residual_dropout: float = 0.0

    # nanochat-GPT features (yatgpt); every one is off by default
    rope_sign: int = 1  # +1: x·cos φ + rotate_half(x)·sin φ; −1: rotation by −φ (nanochat / flaxchat)
    qk_norm: str | None = None  # a norm name applied per head to q and k (e.g. "rmsnorm_parameterless")
    qk_norm_position: str = "after_rotation"  # or "before_rotation" (Qwen3): where qk_norm acts
    qk_norm_scale: float = 1.0  # q, k = scale · norm(q), scale · norm(k)
    window_pattern: str | None = None  # e.g. "SSSL", tiled over layers, last layer L (see lmlab.layer_pattern)
    window_long: int | None = None  # the L window (keys visible to the left of a query)
    window_short: int | None = None  # the S window; None = ⌈⌈window_long/4⌉/128⌉·128
    value_embed_layers: str | None = None  # "alternate" (every other layer, ending with the last) or "all"
    value_embed_gate_channels: int = 12  # v += gate_scale·σ(W·u[:channels]) ⊙ VE[ids], one gate per kv head
    value_embed_gate_scale: float = 3.0
    embedding_norm: bool = False  # the model's norm right after the token embedding
    smear: bool = False  # x_t = e_t + λ·σ(w·e_t[:channels])·e_{t−1} (lmlab.nn.embedding_stage)
    smear_gate_channels: int = 24
    residual_lambdas: bool = False  # x = r_i·x + c_i·x0 before block i (lmlab.nn.residual_stream)
    backout: bool = False  # x = x − λ·(output of block n//2) after the last block
    yatnmn_epsilon: float = 1e-3  # YatNMN ε: fixed (yatnmn) or the initial softplus(ε_raw) (yatnmn_softplus)
    yatnmn_scalar_bias: bool = False  # one shared YatNMN bias instead of one per neuron
    yatnmn_constant_alpha: float | None = None  # a fixed YatNMN α; None = learnable α (init 1)

    # init
    initializer_range: float = 0.02

    # parallel-block family (NYX): feed-forward dropout (SwiGLU hidden), XPOS decay, a target the loss never scores
    mlp_dropout: float = 0.0
    xpos_scale_base: float = 512.0
    loss_ignore_token_id: int | None = None

    # NeoLLM features, usable by any preset: LayerNorm Scaling and GPAS (nn/residual_scaling.py), FAN (nn/fan.py;
    # layers with fan=True), Gated DeltaNet sizes (nn/gated_deltanet.py), the loss (nn/loss.py)
    layernorm_scaling: bool = False  # scale each pre-norm output of 1-based layer l by 1/sqrt(l)
    gpas: str | None = None  # GPAS after each residual add: None, "layer" (one alpha per layer) or "sublayer"
    fan_ratio: float = 0.125  # periodic share of a FAN layer's output
    linear_num_key_heads: int = 8
    linear_key_head_dim: int = 32
    linear_num_value_heads: int = 16
    linear_value_head_dim: int = 32
    linear_conv_kernel_dim: int = 4
    linear_chunk_size: int = 64  # chunk length of the chunked delta rule (speed only: every length gives one result)
    loss: str = "full"  # "full" (logits, then cross-entropy) or "chunked" (from hidden states; never all logits)

    # options components declare for themselves (lmlab.registry.Option with a default): name -> value
    component_options: dict | None = None

    # tokens
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.head_dim is None and self.num_attention_heads > 0:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ConfigError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                    f"({self.num_attention_heads}); choose a head count that divides it or set head_dim explicitly."
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_scaling is not None:
            self.rope_scaling, self.max_position_embeddings = normalised_rope_scaling(self.rope_scaling,
                                                                                      self.max_position_embeddings)
        super().__post_init__(**kwargs)
        self.check()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' constructor from a dict, with one repair of configs read from files (they carry
        `transformers_version`): yatgpt presets before option checking set `gelu_approximate="tanh"` for their GELU
        ablation beside an MLP that never read it. It had no effect there and is dropped, so those checkpoints
        still load; anywhere else an ignored option is refused."""
        layers = [layer or {} for layer in config_dict.get("layers") or []]
        mlps = {config_dict.get("mlp", cls.mlp), *(layer.get("mlp") for layer in layers)}
        if "transformers_version" in config_dict and "gelu" not in mlps:
            config_dict = {key: value for key, value in config_dict.items() if key != "gelu_approximate"}
        return super().from_dict(config_dict, **kwargs)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """config.json with `auto_map`, beside `modeling_lmlab.py` (lmlab.remote_code): the directory loads with
        `trust_remote_code=True` where lmlab is installed but not imported."""
        self.auto_map = dict(AUTO_MAP)
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        write_remote_code(save_directory)
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """Disabled: lmlab classes travel as `modeling_lmlab.py` (lmlab.remote_code), not as copied sources."""

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Raise ConfigError (or UnknownNameError) naming the problem; called on creation and after overrides.

        The model's own fields are checked here; every component option by the components' declarations
        (lmlab.component_options), so this module never imports the components."""
        for name, value in (("vocab_size", self.vocab_size), ("hidden_size", self.hidden_size),
                            ("num_hidden_layers", self.num_hidden_layers),
                            ("num_attention_heads", self.num_attention_heads),
                            ("intermediate_size", self.intermediate_size)):
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads})"
            )
        POSITIONS.check(self.position)
        INIT_SCHEMES.check(self.init)
        if self.layers is not None and len(self.layers) != self.num_hidden_layers:
            raise ConfigError(
                f"layers has {len(self.layers)} entries but num_hidden_layers is {self.num_hidden_layers}; "
                "give one override dict per layer (an empty dict keeps the model-wide choice)"
            )
        for i in range(self.num_hidden_layers):
            spec = self.layer_spec(i)
            MIXERS.check(spec.mixer)
            MLPS.check(spec.mlp)
            NORMS.check(spec.norm)
            BLOCKS.check(spec.block)
        check_options(self)

    def component_option(self, name: str):
        """The value of a component's own option (`component_options[name]`, else the default it declares)."""
        return own_option(self, name)

    # ------------------------------------------------------------------ derived values
    def layer_spec(self, layer_idx: int) -> LayerSpec:
        """The resolved component choice of layer `layer_idx` (0-based)."""
        spec = LayerSpec(mixer=self.mixer, mlp=self.mlp, norm=self.norm, block=self.block)
        n = self.num_hidden_layers
        if self.window_pattern is not None:
            spec = replace(spec, window=pattern_window(self.window_pattern, layer_idx, n, self.window_long,
                                                       self.window_short))
        if self.value_embed_layers is not None:
            spec = replace(spec, value_embed=has_value_embed(self.value_embed_layers, layer_idx, n))
        if self.layers is None:
            return spec
        overrides = self.layers[layer_idx] or {}
        unknown = set(overrides) - set(LAYER_FIELDS)
        if unknown:
            raise ConfigError(
                f"layers[{layer_idx}] has unknown fields {sorted(unknown)}; per-layer fields are {list(LAYER_FIELDS)}"
            )
        return replace(spec, **overrides)

    @property
    def attention_softmax_scale(self) -> float:
        """The multiplier of q·k before the softmax."""
        if self.attention_scale == "head_dim":
            return 1.0 / math.sqrt(self.head_dim)
        if self.attention_scale == "hidden_size":
            return 1.0 / math.sqrt(self.hidden_size)
        return float(self.attention_scale)

    @property
    def rotary_dim(self) -> int:
        """Rotated channels per head: int(head_dim * rope_pct), rounded down to an even number."""
        return int(self.head_dim * self.rope_pct) // 2 * 2


__all__ = ["ConfigError", "LAYER_FIELDS", "LMLabConfig", "LayerSpec"]
