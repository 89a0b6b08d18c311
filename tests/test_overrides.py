"""`--set` overrides build the intended modules and reject impossible ones."""

import pytest
import torch

from lmlab import LMLabForCausalLM, preset_config
from lmlab.cli import main
from lmlab.nn.mlp import ASGG
from lmlab.nn.norms import DyT, LayerNorm
from lmlab.overrides import OverrideError, apply_overrides, parse_layers


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
