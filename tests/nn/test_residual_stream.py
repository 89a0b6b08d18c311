"""The residual stream's lambdas and backout against the plain loop."""

import pytest
import torch

from conftest import tiny_config
from lmlab import preset_config
from lmlab.nn.residual_stream import ResidualStream


class ScaleBlock(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x, ctx):
        return torch.tanh(self.factor * x) + x


def test_residual_stream_lambdas_and_backout_against_the_plain_loop():
    config = preset_config("yatgpt-d12")
    stream = ResidualStream(config)
    stream.reset_parameters()
    ramp = torch.arange(12) / 11
    torch.testing.assert_close(stream.resid_lambdas.data, 1.15 - 0.10 * ramp)
    torch.testing.assert_close(stream.x0_lambdas.data, 0.20 - 0.15 * ramp)
    assert stream.backout_lambda.item() == pytest.approx(0.2)
    with torch.no_grad():
        stream.resid_lambdas.normal_()
        stream.x0_lambdas.normal_()
        stream.backout_lambda.fill_(0.35)
    blocks = torch.nn.ModuleList(ScaleBlock(0.1 * (i + 1)) for i in range(12))
    x = torch.randn(2, 3, 8)
    h, outputs = x, []
    for i, block in enumerate(blocks):
        h = block(stream.resid_lambdas[i] * h + stream.x0_lambdas[i] * x, None)
        outputs.append(h)
    expected = h - 0.35 * outputs[6]  # the output of the 7th block (index 12 // 2)
    torch.testing.assert_close(stream(x, blocks, None), expected)
    plain = ResidualStream(tiny_config("yatgpt-tiny", residual_lambdas=False, backout=False))
    assert list(plain.parameters()) == []
    h = x
    for block in blocks:
        h = block(h, None)
    torch.testing.assert_close(plain(x, blocks, None), h)
