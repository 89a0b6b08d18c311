"""The rope-scaling registry: Llama 3.1's llama3 frequencies against a naive element-by-element implementation and
against transformers' own functions (transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS), key checks by name, and
the rotary module using an entry."""

import json
import math

import pytest
import torch
from transformers import AutoConfig, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from lmlab import ConfigError, preset_config
from lmlab.nn.position import RotaryEmbedding
from lmlab.rope_scaling import ROPE_SCALINGS, Llama3Scaling, rope_scaling_rule

LLAMA31 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


def naive_llama3(theta: float, dim: int, factor: float, low: float, high: float, original: int) -> list[float]:
    """Llama 3.1's reference rule (its `apply_scaling`), one frequency at a time, in Python floats."""
    out = []
    for i in range(0, dim, 2):
        freq = 1.0 / theta ** (i / dim)
        wavelength = 2 * math.pi / freq
        if wavelength < original / high:
            out.append(freq)
        elif wavelength > original / low:
            out.append(freq / factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


def transformers_frequencies(kind: str, head_dim: int, theta: float, max_positions: int, seq_len=None, **keys):
    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, max_position_embeddings=max_positions,
                         rope_parameters={"rope_type": kind, "rope_theta": theta, **keys})
    return ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=seq_len)


@pytest.mark.parametrize("theta, dim, scaling", [
    (500000.0, 128, LLAMA31),  # Llama 3.1 8B
    (500000.0, 64, dict(LLAMA31, factor=32.0)),  # Llama 3.2 1B
    (10000.0, 32, dict(factor=4.0, low_freq_factor=2.0, high_freq_factor=8.0, original_max_position_embeddings=64)),
])
def test_llama3_frequencies_equal_the_naive_rule_and_transformers(theta, dim, scaling):
    rule = rope_scaling_rule({"type": "llama3", **scaling})
    ours = rule.inv_freq(theta, dim)
    naive = torch.tensor(naive_llama3(theta, dim, scaling["factor"], scaling["low_freq_factor"],
                                      scaling["high_freq_factor"], scaling["original_max_position_embeddings"]),
                         dtype=torch.float64)
    torch.testing.assert_close(ours.double(), naive, rtol=1e-6, atol=0)
    theirs, attention_factor = transformers_frequencies("llama3", dim, theta, 131072, **scaling)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    assert rule.attention_scaling() == attention_factor == 1.0
    plain = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ratio = plain / ours.double()
    assert ratio[0] == pytest.approx(1.0) and ratio[-1] == pytest.approx(scaling["factor"])  # both ends reached
    assert ((ratio > 1.001) & (ratio < scaling["factor"] - 1e-3)).any()  # and the smooth band between


@pytest.mark.parametrize("kind, keys", [("linear", {"factor": 4.0}),
                                        ("yarn", {"factor": 4.0, "original_max_position_embeddings": 64}),
                                        ("yarn", {"factor": 8.0, "original_max_position_embeddings": 512,
                                                  "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.1})])
def test_static_kinds_equal_transformers(kind, keys):
    ours = rope_scaling_rule({"type": kind, "original_max_position_embeddings": 64, **keys})
    theirs, attention_factor = transformers_frequencies(kind, 32, 10000.0, 1024, **keys)
    torch.testing.assert_close(ours.inv_freq(10000.0, 32), theirs, rtol=1e-6, atol=0)
    assert ours.attention_scaling() == pytest.approx(attention_factor, rel=1e-12)


def test_dynamic_equals_transformers_beyond_the_original_length():
    ours = rope_scaling_rule({"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 64})
    assert ours.length_dependent
    for length in (10, 64, 100, 300):
        theirs, _ = transformers_frequencies("dynamic", 32, 10000.0, 64, seq_len=length, factor=2.0)
        torch.testing.assert_close(ours.inv_freq(10000.0, 32, length), theirs, rtol=1e-6, atol=0)


def test_the_rotary_module_uses_the_entry():
    config = preset_config("llama-tiny", rope_theta=10000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    rope = RotaryEmbedding(config)
    assert isinstance(rope.scaling, Llama3Scaling)
    torch.testing.assert_close(rope.inv_freq, rope.scaling.inv_freq(10000.0, config.rotary_dim), rtol=0, atol=0)
    positions = torch.tensor([[0, 3, 1000]])
    angles = positions[0, :, None].double() * rope.inv_freq.double()
    torch.testing.assert_close(rope(positions).cos[0, 0, :, :config.rotary_dim // 2].double(), angles.cos(),
                               atol=1e-5, rtol=0)


def test_registered_kinds():
    assert ROPE_SCALINGS.names() == ["dynamic", "linear", "llama3", "yarn"]


def test_hf_style_dicts_of_either_spelling_load_and_are_stored_under_type():
    for key in ("type", "rope_type"):
        config = preset_config("llama-tiny", rope_scaling={key: "llama3", **LLAMA31})
        assert config.rope_scaling == {"type": "llama3", **LLAMA31}
        assert config.max_position_embeddings == 2048  # L0 given: the limit stays
        assert type(config).from_dict(config.to_dict()).rope_scaling == config.rope_scaling


@pytest.mark.parametrize("scaling, message", [
    ({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}, r"missing keys \['high_freq_factor'\]"),
    ({"type": "llama3", **LLAMA31, "high_freq_factor": 1.0}, "low_freq_factor < high_freq_factor"),
    ({"type": "yarn", "factor": 4.0, "mscale": 0.7}, r"unsupported keys \['mscale'\]"),
    ({"type": "linear", "factor": 2.0, "low_freq_factor": 1.0}, r"unsupported keys \['low_freq_factor'\]"),
    ({"type": "linear", "rope_type": "yarn", "factor": 2.0}, "two kinds"),
    ({"rope_type": "longrope", "factor": 2.0}, "must be one of"),
    ({"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 0}, "positive integer"),
    ("linear", "must be a dict"),
])
def test_bad_keys_are_refused_by_name(scaling, message):
    with pytest.raises(ConfigError, match=message):
        preset_config("llama-tiny", rope_scaling=scaling)


@pytest.mark.parametrize("stored", [
    {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},  # as lmlab wrote it
    {"rope_type": "dynamic", "factor": 2.0},  # HF's newer spelling, no original length
    {"type": "linear", "rope_type": "linear", "factor": 2.0, "original_max_position_embeddings": 512},
])
def test_saved_config_files_with_rope_scaling_load(tmp_path, stored):
    config = preset_config("ngen4-tiny", max_position_embeddings=512)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "rope_scaling": stored}))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.rope_scaling["type"] == stored.get("type", stored.get("rope_type"))
    assert "rope_type" not in loaded.rope_scaling
    assert loaded.max_position_embeddings == (1024 if "original_max_position_embeddings" not in stored else 512)
    assert rope_scaling_rule(loaded.rope_scaling) == ROPE_SCALINGS[loaded.rope_scaling["type"]](
        **{k: v for k, v in loaded.rope_scaling.items() if k != "type"})
