"""`--set` overrides build the intended modules and reject impossible ones."""

import pytest
import torch

from lmlab import LMLabForCausalLM, preset_config
from lmlab.cli import main
from lmlab.nn.mlp import ASGG
from lmlab.nn.norms import DyT, LayerNorm
from lmlab.overrides import (
    OverrideError,
    apply_overrides,
    format_override,
    load_overrides_file,
    parse_layers,
    parse_override,
)


def build(preset: str, overrides: list[str]) -> LMLabForCausalLM:
    return LMLabForCausalLM(apply_overrides(preset_config(preset), overrides))


def test_model_wide_override_builds_the_named_modules():
    model = build("ngen4-tiny", ["mlp=asgg", "norm=dyt"])
    for layer in model.model.layers:
        assert isinstance(layer.mlp, ASGG)
        assert isinstance(layer.mixer_norm, DyT) and isinstance(layer.mlp_norm, DyT)
    assert isinstance(model.model.norm, DyT)


def test_per_layer_override_touches_only_the_selected_layers():
    model = build("ngen4-tiny", ["num_hidden_layers=4", "norm=dyt@layers:1-2", "mlp=asgg@layers:-1"])
    kinds = [(type(layer.mixer_norm), type(layer.mlp)) for layer in model.model.layers]
    assert [k[0] for k in kinds] == [LayerNorm, DyT, DyT, LayerNorm]
    assert [k[1] is ASGG for k in kinds] == [False, False, False, True]


def test_values_are_read_as_json_and_sizes_rederive():
    config = apply_overrides(preset_config("ngen4-tiny"),
                             ["hidden_size=128", "num_attention_heads=8",
                              'rope_scaling={"type": "linear", "factor": 2}'])
    assert (config.hidden_size, config.head_dim, config.num_key_value_heads) == (128, 16, 8)
    assert config.rope_scaling["factor"] == 2.0 and config.max_position_embeddings == 1024


def test_overrides_leave_the_original_config_alone():
    original = preset_config("ngen4-tiny")
    apply_overrides(original, ["mlp=asgg"])
    assert original.mlp == "gelu_new"


@pytest.mark.parametrize("overrides,message", [
    (["mlpp=asgg"], "Did you mean 'mlp'"),
    (["mlp=swish"], "unknown mlp 'swish'"),
    (["mixer=selective_copy", "num_key_value_heads=2"], "multi-head only"),
    (["norm=dyt@layers:7"], "layer 7 does not exist"),
    (["norm=dyt@layers:a-b"], "bad layer selection"),
    (["hidden_size=65"], "not divisible"),
    (["hidden_size=abc"], "hidden_size takes int"),
    (["nrom=dyt@layers:0"], "unknown per-layer field 'nrom'"),
    (["mlp"], "is not KEY=VALUE"),
])
def test_impossible_overrides_are_rejected(overrides, message):
    with pytest.raises(OverrideError, match=message):
        apply_overrides(preset_config("ngen4-tiny"), overrides)


def test_layer_selection_syntax():
    assert parse_layers("0-2,5,-1", 8) == [0, 1, 2, 5, 7]


def test_info_accepts_overrides(capsys):
    assert main(["info", "--preset", "ngen4-tiny", "--set", "mlp=asgg", "--set", "norm=dyt@layers:0"]) == 0
    out = capsys.readouterr().out
    assert "mlp=asgg norm=dyt" in out and "mlp=asgg norm=layernorm" in out
    with torch.device("meta"):
        expected = build("ngen4-tiny", ["mlp=asgg", "norm=dyt@layers:0"])
    assert f"{sum(p.numel() for p in expected.parameters()):,}" in out


@pytest.mark.parametrize("value", ["asgg", "1", "true", 1, 1.5, 1e-5, True, None, [1, 2],
                                   {"type": "linear", "factor": 2}])
def test_formatted_overrides_parse_back_to_the_same_value(value):
    assert parse_override(format_override("key", value)) == ("key", value, None)
    assert parse_override(format_override("mixer@layers:0-2", value)) == ("mixer", value, "0-2")


def test_overrides_files_in_yaml_and_json_build_the_intended_modules(tmp_path, capsys):
    yaml_file = tmp_path / "o.yaml"
    yaml_file.write_text("num_hidden_layers: 3\nnorm_eps: 1e-5\nmlp: asgg\nnorm@layers:0,2: dyt\n")
    config = apply_overrides(preset_config("ngen4-tiny"), load_overrides_file(yaml_file))
    assert config.norm_eps == 1e-5 and isinstance(config.norm_eps, float)  # YAML 1.1 would read a string
    model = LMLabForCausalLM(config)
    assert [type(layer.mixer_norm) for layer in model.model.layers] == [DyT, LayerNorm, DyT]
    assert all(isinstance(layer.mlp, ASGG) for layer in model.model.layers)

    json_file = tmp_path / "o.json"
    json_file.write_text('["mlp=asgg", "norm=dyt@layers:-1"]')
    assert load_overrides_file(json_file) == ["mlp=asgg", "norm=dyt@layers:-1"]
    # files first, then --set: the command line wins
    assert main(["info", "--preset", "ngen4-tiny", "--set-file", str(json_file), "--set", "mlp=gelu"]) == 0
    out = capsys.readouterr().out
    assert "mlp=gelu norm=dyt" in out and "asgg" not in out


@pytest.mark.parametrize("text,message", [
    ("- 1\n- 2\n", "list of 'KEY=VALUE"),
    ("mlp: [unclosed\n", "not valid YAML/JSON"),
    ("mlpp: asgg\n", "Did you mean 'mlp'"),
    ("norm@layers:9: dyt\n", "layer 9 does not exist"),
])
def test_bad_overrides_files_are_rejected_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(OverrideError, match=message):
        apply_overrides(preset_config("ngen4-tiny"), load_overrides_file(path))
    with pytest.raises(OverrideError, match="no such file"):
        load_overrides_file(tmp_path / "missing.yaml")


def test_train_config_keeps_one_override_form():
    from lmlab.train import TrainConfig

    config = TrainConfig(preset="ngen4-tiny", model_overrides={"hidden_size": 32, "norm@layers:0": "dyt"})
    assert config.model_overrides == ["hidden_size=32", "norm=dyt@layers:0"]
    assert TrainConfig.from_dict(config.to_dict()).model_overrides == config.model_overrides
    with pytest.raises(OverrideError, match="must be a list"):
        TrainConfig(preset="ngen4-tiny", model_overrides="mlp=asgg")


def test_position_and_per_layer_mixer_overrides_build_those_modules():
    from lmlab.nn.selective_copy import SelectiveCopyAttention
    from lmlab.nn.xpos import XPosEmbedding

    model = build("ngen4-tiny", ["position=xpos", "mixer=selective_copy@layers:0"])
    assert any(isinstance(module, XPosEmbedding) for module in model.modules())
    assert [isinstance(layer.mixer, SelectiveCopyAttention) for layer in model.model.layers] == [True, False]


def test_train_takes_override_files_then_set_and_checks_them_before_the_data(tmp_path):
    from lmlab.cli import build_parser
    from lmlab.commands.train import build_config

    path = tmp_path / "o.yaml"
    path.write_text("mlp: asgg\n")
    args = build_parser().parse_args(["train", "--preset", "ngen4-tiny", "--data", str(tmp_path / "missing.txt"),
                                      "--set-file", str(path), "--set", "norm=dyt@layers:0"])
    config, _ = build_config(args)
    assert config.model_overrides == ["mlp=asgg", "norm=dyt@layers:0"]
    args.model_overrides = ["norm=dyt@layers:5"]
    with pytest.raises(OverrideError, match="layer 5 does not exist"):
        build_config(args)
