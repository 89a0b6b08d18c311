"""Per-layer rules: nanochat's window pattern and value-embedding layers."""

import math

import pytest

from conftest import tiny_config
from lmlab import ConfigError, preset_config
from lmlab.layer_pattern import nanochat_short_window


def test_d12_windows_and_value_embedding_layers():
    """Spec §10.3."""
    config = preset_config("yatgpt-d12")
    assert [config.layer_spec(i).window for i in range(12)] == [256, 256, 256, 1024] * 3
    assert [i for i in range(12) if config.layer_spec(i).value_embed] == [1, 3, 5, 7, 9, 11]


@pytest.mark.parametrize("long,short", [(1024, 256), (2048, 512), (100, 128), (513, 256), (64, 128)])
def test_short_window_is_a_quarter_rounded_up_to_128(long, short):
    assert nanochat_short_window(long) == short
    assert nanochat_short_window(long) == math.ceil(math.ceil(long / 4) / 128) * 128


def test_window_pattern_options_and_errors():
    config = tiny_config("yatgpt-tiny", num_hidden_layers=5, window_pattern="SL", window_long=100, window_short=7)
    assert [config.layer_spec(i).window for i in range(5)] == [7, 100, 7, 100, 100]  # last layer always long
    overridden = tiny_config("yatgpt-tiny", layers=[{}, {"window": 3}, {}, {"value_embed": False}])
    assert overridden.layer_spec(1).window == 3 and not overridden.layer_spec(3).value_embed
    with pytest.raises(ConfigError, match="string of S and L"):
        tiny_config("yatgpt-tiny", window_pattern="SSXL")
    with pytest.raises(ConfigError, match="needs window_long"):
        tiny_config("yatgpt-tiny", window_long=None)
    with pytest.raises(ConfigError, match="value_embed_layers"):
        tiny_config("yatgpt-tiny", value_embed_layers="odd")
