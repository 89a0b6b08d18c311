"""The FAN layer against its formula."""

import pytest
import torch

from lmlab.config import ConfigError
from lmlab.nn.fan import FANLayer


def test_fan_layer_is_cos_sin_and_linear_parts():
    fan = FANLayer(512, 512, 0.125)
    assert fan.proj.weight.shape == (448, 512) and fan.proj.bias.shape == (448,)
    torch.nn.init.normal_(fan.proj.bias)
    x = torch.randn(2, 3, 512)
    out = fan(x)
    z = x @ fan.proj.weight.T + fan.proj.bias
    assert out.shape == (2, 3, 512)
    torch.testing.assert_close(out[..., :64], torch.cos(z[..., :64]))
    torch.testing.assert_close(out[..., 64:128], torch.sin(z[..., :64]))
    torch.testing.assert_close(out[..., 128:], z[..., 64:])
    with torch.no_grad():
        fan.proj.bias[:64] += 1.0  # the bias moves the phases
    assert not torch.allclose(fan(x)[..., :128], out[..., :128])
    with pytest.raises(ConfigError, match="fan_ratio"):
        FANLayer(512, 512, 0.75)
