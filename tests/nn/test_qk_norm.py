"""QK-norm as a hook of the attention mixer: before or after the rotation (a per-head RMSNorm with a gain does not
commute with the rotation, so the two differ), checked against explicit formulas; gated attention keeps its own
pre-rotation norm through the same hook."""

import pytest
import torch

from conftest import randomise_parameters
from lmlab import ConfigError, preset_config
from lmlab.nn.attention import SoftmaxAttention
from lmlab.nn.context import ForwardContext
from lmlab.nn.gated_attention import GatedAttention
from lmlab.nn.position import RotaryEmbedding


def rms_norm(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def heads_and_context(config, layer_cls=SoftmaxAttention, t=7):
    layer = layer_cls(config, 0).eval()
    randomise_parameters(layer, seed=1, scale=1.0)
    x = torch.randn(2, t, config.hidden_size, generator=torch.Generator().manual_seed(2))
    positions = torch.arange(3, 3 + t)[None].expand(2, -1)
    ctx = ForwardContext(position_ids=positions, rotation=RotaryEmbedding(config)(positions), key_padding_mask=None,
                         cache=None, past_length=0)
    return layer, x, ctx


def split_heads(y, heads, head_dim):
    b, t, _ = y.shape
    return y.view(b, t, heads, head_dim).transpose(1, 2)


@pytest.mark.parametrize("position", ["before_rotation", "after_rotation"])
def test_qk_norm_acts_where_the_config_says(position):
    config = preset_config("qwen3-tiny", vocab_size=101, qk_norm_position=position, qk_norm_scale=1.3)
    layer, x, ctx = heads_and_context(config)
    with torch.no_grad():
        q, k, v = layer.project(x, ctx)
        raw_q = split_heads(x @ layer.q_proj.weight.T, 4, 32)
        raw_k = split_heads(x @ layer.k_proj.weight.T, 2, 32)
    eps = config.norm_eps

    def norm_q(a):
        return 1.3 * rms_norm(a, layer.q_norm.weight, eps)

    def norm_k(a):
        return 1.3 * rms_norm(a, layer.k_norm.weight, eps)

    if position == "before_rotation":
        expected_q, expected_k = ctx.rotation.queries(norm_q(raw_q)), ctx.rotation.keys(norm_k(raw_k))
    else:
        expected_q, expected_k = norm_q(ctx.rotation.queries(raw_q)), norm_k(ctx.rotation.keys(raw_k))
    torch.testing.assert_close(q, expected_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, expected_k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, split_heads(x @ layer.v_proj.weight.T, 2, 32), atol=1e-5, rtol=1e-5)


def test_the_two_positions_differ_with_a_gain():
    results = []
    for position in ("before_rotation", "after_rotation"):
        config = preset_config("qwen3-tiny", vocab_size=101, qk_norm_position=position)
        layer, x, ctx = heads_and_context(config)
        with torch.no_grad():
            results.append(layer.project(x, ctx)[0])
    assert not torch.allclose(results[0], results[1], atol=1e-3)


def test_gated_attention_normalises_before_the_rotation_with_the_layer_norm():
    config = preset_config("neollm-tiny", vocab_size=101, attention_dropout=0.0)
    layer, x, ctx = heads_and_context(config, GatedAttention)
    assert (layer.q_norm.weight.shape, layer.qk_norm_position) == ((16,), "before_rotation")
    with torch.no_grad():
        q, _, _ = layer.project(x, ctx)
        rows = (x @ layer.q_proj.weight.T).view(2, 7, 4, 32)
        expected = ctx.rotation.queries(rms_norm(rows[..., :16], 1 + layer.q_norm.weight, 1e-6).transpose(1, 2))
    torch.testing.assert_close(q, expected, atol=1e-5, rtol=1e-5)


def test_unknown_position_is_refused():
    with pytest.raises(ConfigError, match="qk_norm_position"):
        preset_config("qwen3-tiny", qk_norm_position="after")
