"""Components own their options: validation refuses what no component in use would honour, naming the option and the
components; a component's own options live in `component_options` (the toy mixer of toy_mixer.py, registered from
the tests alone)."""

from dataclasses import fields

import pytest
import torch
import toy_mixer  # noqa: F401  (registers mixer="toy_decay")

from conftest import forward_context, randomise_parameters, tiny_config, tiny_model
from lmlab import LMLabConfig, LMLabForCausalLM, list_presets, preset_config
from lmlab.component_options import REGISTRIES, declarations, own_option_names
from lmlab.errors import ConfigError, OverrideError
from lmlab.overrides import apply_overrides
from lmlab.registry import BLOCKS, MIXERS


def toy_config(**overrides):
    return tiny_config("ngen4-tiny", mixer="toy_decay", position="none", attention_bias=False, **overrides)


def refusal(config: LMLabConfig, **changes) -> str:
    """The ConfigError text of `config` with `changes`."""
    values = {key: value for key, value in config.to_dict().items() if key != "transformers_version"}
    with pytest.raises(ConfigError) as err:
        LMLabConfig.from_dict(values | changes)
    return str(err.value)


def test_every_preset_validates():
    for preset in list_presets():
        assert preset_config(preset.name).preset == preset.name


def test_every_config_field_is_the_models_or_declared_by_a_component():
    own = [f.name for f in fields(LMLabConfig) if f.name in vars(LMLabConfig)["__annotations__"]]
    model = set(LMLabConfig.model_fields)
    declared = {name for name in own if declarations(name)}
    assert set(own) == model | declared, sorted(set(own) - model - declared)
    assert not model & declared


# ---- a component's own options

def test_a_new_mixer_declares_its_own_option_with_a_default():
    config = toy_config()
    assert config.component_options is None and config.component_option("toy_decay") == 0.5
    assert "toy_decay" in own_option_names(LMLabConfig)
    set_by_dict = toy_config(component_options={"toy_decay": 0.25})
    assert set_by_dict.component_option("toy_decay") == 0.25
    set_by_override = apply_overrides(toy_config(), ["toy_decay=0.25"])
    assert set_by_override.component_options == {"toy_decay": 0.25}


def test_the_toy_mixer_computes_the_decayed_sum_with_its_option():
    model = LMLabForCausalLM(toy_config(component_options={"toy_decay": 0.25})).eval()
    randomise_parameters(model)
    mixer = model.model.layers[0].mixer
    x = torch.randn(2, 6, model.config.hidden_size)
    u = mixer.in_proj(x)
    expected = torch.stack([sum(0.25 ** (t - s) * u[:, s] for s in range(t + 1)) for t in range(6)], dim=1)
    torch.testing.assert_close(mixer(x, forward_context(6, batch=2)), mixer.out_proj(expected))


def test_the_own_option_survives_save_and_load(tmp_path):
    model = tiny_model("ngen4-tiny", mixer="toy_decay", position="none", attention_bias=False,
                       component_options={"toy_decay": 0.75})
    model.save_pretrained(tmp_path)
    loaded = LMLabForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.component_option("toy_decay") == 0.75
    assert loaded.model.layers[0].mixer.decay == 0.75


def test_own_options_are_checked_and_refused_where_unused():
    assert "toy_decay must be a number in (0, 1), got 1.5 (mixer 'toy_decay')" in refusal(
        toy_config(), component_options={"toy_decay": 1.5})
    unused = refusal(tiny_config("ngen4-tiny"), component_options={"toy_decay": 0.25})
    assert "toy_decay=0.25: ignored by mixer 'attention'" in unused
    assert "toy_decay is honoured by mixer 'toy_decay'" in unused
    misspelt = refusal(toy_config(), component_options={"toy_decy": 0.25})
    assert "component option 'toy_decy' is not declared by any registered component. Did you mean 'toy_decay'?" \
        in misspelt
    with pytest.raises(OverrideError, match="toy_decay must be a number in"):
        apply_overrides(toy_config(), ["toy_decay=2"])
    with pytest.raises(OverrideError, match="unknown config field or component option 'toy_decy'"):
        apply_overrides(toy_config(), ["toy_decy=0.2"])


# ---- options nobody in use honours

@pytest.mark.parametrize("preset,option,value,owner", [
    ("n4-tiny", "mlp_dropout", 0.1, "mlp 'swiglu'"),
    ("ngen4-tiny", "gelu_approximate", "tanh", "mlp 'gelu'"),
    ("ngen4-tiny", "dyt_alpha_init", 0.3, "norm 'dyt'"),
    ("n4-tiny", "rope_theta", 500.0, "position 'rope'"),
    ("ngen4-tiny", "xpos_scale_base", 100.0, "position 'xpos'"),
    ("ngen4-tiny", "yatnmn_epsilon", 0.01, "mlp 'yatnmn'"),
    ("ngen4-tiny", "linear_num_key_heads", 4, "mixer 'gated_deltanet'"),
    ("ngen4-tiny", "gpas", None, None),
    ("n4-tiny", "attention_bias", True, None),
    ("neollm-tiny", "qk_norm", "rmsnorm", "mixer 'attention'"),
])
def test_a_model_wide_option_nobody_in_use_honours_is_refused(preset, option, value, owner):
    if owner is None:  # an option every preset's components honour: accepted
        assert getattr(tiny_config(preset, **{option: value}), option) == value
        return
    message = refusal(tiny_config(preset), **{option: value})
    assert message.startswith(f"{option}={value!r}: ignored by ")
    assert f"{option} is honoured by {owner}" in message


@pytest.mark.parametrize("option,value,requirement", [
    ("smear_gate_channels", 8, "smear"), ("window_long", 8, "window_pattern"), ("qk_norm_scale", 1.2, "qk_norm"),
    ("value_embed_gate_scale", 2.0, "value_embed"), ("fan_ratio", 0.25, "fan"),
])
def test_an_option_that_needs_another_is_refused_without_it(option, value, requirement):
    message = refusal(tiny_config("ngen4-tiny"), **{option: value})
    assert f"{option}={value!r}: " in message and f"honours it only with {requirement} set" in message


def test_qk_norm_applies_to_the_attention_layers_of_a_hybrid():
    hybrid = tiny_config("ngen4-tiny", qk_norm="rmsnorm", layers=[{"mixer": "gated_deltanet"}, {}])
    assert hybrid.layer_spec(1).mixer == "attention"
    model = LMLabForCausalLM(hybrid)
    assert model.model.layers[1].mixer.q_norm is not None


# ---- per-layer options

@pytest.mark.parametrize("layer_option,mixer", [
    ({"window": 8}, "gated_deltanet"), ({"value_embed": True}, "gated_deltanet"),
    ({"value_embed": True}, "selective_copy"), ({"window": 8}, "toy_decay"),
])
def test_a_per_layer_option_the_layer_ignores_is_refused_by_name(layer_option, mixer):
    (name, value), = layer_option.items()
    message = refusal(toy_config(), layers=[{"mixer": mixer}, {"mixer": mixer, **layer_option}])
    assert message.startswith(f"{name}={value!r} on layer 1: ignored by mixer {mixer!r} (options it honours: ")
    assert f"set {name}=" in message and "@layers:1" in message


def test_window_and_value_embeddings_from_the_layer_rules_name_their_layers():
    message = refusal(tiny_config("yatgpt-tiny"), layers=[{"mixer": "gated_deltanet"}] * 4)
    assert "window=16 on layers 0-2: ignored by mixer 'gated_deltanet'" in message
    assert "value_embed=True on layers 1, 3" in message


def test_a_rotary_encoding_needs_a_mixer_that_rotates():
    message = refusal(toy_config(), position="rope")
    assert "position 'rope': no layer's mixer rotates queries and keys (mixers in use: toy_decay)" in message
    assert "set position=none" in message
    with pytest.raises(ConfigError, match="mixers in use: gated_deltanet.*set position=none"):
        tiny_config("neollm-tiny", layers=None)  # every layer Gated DeltaNet
    assert tiny_config("neollm-tiny", layers=None, position="none", rope_pct=1.0).position == "none"


def test_a_component_check_names_the_component_and_its_layers():
    message = refusal(tiny_config("nyx-tiny"), gpas="sublayer")
    assert message.startswith("block 'parallel' on layers 0-1: has one residual add")
    assert "mixer 'selective_copy' on layers 0-3: multi-head only" in refusal(tiny_config("n4-tiny"),
                                                                               num_key_value_heads=2)


def test_several_problems_are_listed_together():
    message = refusal(tiny_config("ngen4-tiny"), mlp_dropout=0.1, rope_pct=2.0)
    assert message.startswith("2 problems: mlp_dropout=0.1: ") and "rope_pct must be in (0, 1], got 2.0" in message


def test_saved_yatgpt_configs_keep_loading_without_their_unused_gelu_flavour():
    """yatgpt presets once set gelu_approximate='tanh' beside their YatNMN MLP; such a config.json still loads."""
    saved = tiny_config("yatgpt-tiny").to_dict() | {"gelu_approximate": "tanh"}
    assert "transformers_version" in saved
    assert LMLabConfig.from_dict(saved).gelu_approximate == "none"
    saved.pop("transformers_version")  # not from a file: refused like any ignored option
    with pytest.raises(ConfigError, match="gelu_approximate='tanh': ignored by mlp 'yatnmn_softplus'"):
        LMLabConfig.from_dict(saved)


def test_no_split_modules_are_the_registered_blocks():
    model = tiny_model("nyx-tiny")
    assert model._no_split_modules == {BLOCKS[name].__name__ for name in BLOCKS.names()}
    assert type(model.model.layers[0]).__name__ in model._no_split_modules


def test_the_registries_describe_every_component():
    for registry in REGISTRIES:
        for name in registry.names():
            if registry.kind != "init scheme":
                assert registry.entry(name).describe is not None, f"{registry.kind} {name!r}"
    assert MIXERS.entry("toy_decay").honours("toy_decay") and not MIXERS.entry("gated_deltanet").honours("window")

