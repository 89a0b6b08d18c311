"""yatgpt's components against plain references: parameterless RMSNorm, RoPE sign, QK-norm, value embeddings,
pattern windows and windowed attention, YatNMN, smear, residual stream (lambdas, backout), init scheme."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab import ConfigError, preset_config
from lmlab.cache import SlidingKVCache
from lmlab.layer_pattern import nanochat_short_window
from lmlab.nn import attention as attention_module
from lmlab.nn.attention import SoftmaxAttention, causal_attention, visibility_mask
from lmlab.nn.context import ForwardContext
from lmlab.nn.embedding_stage import EmbeddingStage
from lmlab.nn.position import RotaryEmbedding
from lmlab.nn.residual_stream import ResidualStream
from lmlab.nn.yatnmn import YatNMN
from lmlab.registry import NORMS


def tiny_config(**overrides):
    return preset_config("yatgpt-tiny", vocab_size=101, **overrides)


def context(config, ids, cache=None, past_length=0, key_padding=None):
    positions = torch.arange(past_length, past_length + ids.shape[1])[None].expand(ids.shape[0], -1)
    return ForwardContext(position_ids=positions, rotation=RotaryEmbedding(config)(positions),
                          key_padding_mask=key_padding, cache=cache, past_length=past_length, input_ids=ids)


# ---- norms and rotation

def test_parameterless_rmsnorm_formula():
    norm = NORMS["rmsnorm_parameterless"](tiny_config(), 32)
    assert list(norm.parameters()) == []
    x = torch.randn(2, 5, 32) * 3
    torch.testing.assert_close(norm(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_rope_rotates_by_minus_phi():
    """Spec §10.5: a unit vector on channel 0 at position 1 becomes (cos φ0, 0, …, −sin φ0 on channel 32)."""
    config = preset_config("yatgpt-d12")
    x = torch.zeros(1, 1, 1, 64)
    x[..., 0] = 1.0
    y = RotaryEmbedding(config)(torch.tensor([[1]])).queries(x)[0, 0, 0]
    expected = torch.zeros(64)
    expected[0], expected[32] = math.cos(1.0), -math.sin(1.0)  # φ_0 = 1 · 100000^0
    torch.testing.assert_close(y, expected)
    # the sign is the only difference from the usual rotation: −φ at p equals +φ at −p
    plain = RotaryEmbedding(preset_config("yatgpt-d12", rope_sign=1))
    q = torch.randn(1, 2, 3, 64)
    positions = torch.tensor([[3, 50, 700]])
    torch.testing.assert_close(RotaryEmbedding(config)(positions).queries(q), plain(-positions).queries(q))


def test_rotated_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(preset_config("yatgpt-d12"))
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 64, generator=generator), torch.randn(1, 1, 1, 64, generator=generator)

    def score(pq, pk):
        return (rope(torch.tensor([[pq]])).queries(q) * rope(torch.tensor([[pk]])).keys(k)).sum().item()

    assert score(40, 7) == pytest.approx(score(340, 307), abs=1e-4)  # fp32 angles: exact up to rounding
    assert score(40, 7) != pytest.approx(score(40, 8), abs=1e-2)


def test_qk_norm_bounds_the_attention_logits():
    """Spec §10.6: with q, k = 1.2·norm(·) per head of 64, |q·k|/8 ≤ 11.52, reached when q = k."""
    config = tiny_config(hidden_size=128, num_attention_heads=2, intermediate_size=64)
    mixer = SoftmaxAttention(config, 0)
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0, 3.0)
        mixer.k_proj.weight.copy_(mixer.q_proj.weight)
    ids = torch.randint(0, 101, (2, 9))
    q, k, _ = mixer.project(torch.randn(2, 9, 128), context(config, ids))
    torch.testing.assert_close(q.norm(dim=-1), torch.full(q.shape[:-1], 1.2 * 8.0))
    logits = q @ k.transpose(-1, -2) * mixer.scale
    assert logits.abs().max().item() <= 11.52 + 1e-5
    torch.testing.assert_close(logits.diagonal(dim1=-2, dim2=-1), torch.full((2, 2, 9), 11.52))


def test_value_embedding_formula():
    config = tiny_config()
    assert [config.layer_spec(i).value_embed for i in range(4)] == [False, True, False, True]
    mixer = SoftmaxAttention(config, 1)
    assert SoftmaxAttention(config, 0).value_embed is None
    with torch.no_grad():
        mixer.value_embed.gate.normal_()
        mixer.value_embed.table.weight.normal_()
    ids = torch.randint(0, 101, (2, 7))
    x = torch.randn(2, 7, 64)
    _, _, v = mixer.project(x, context(config, ids))
    gate = 3 * torch.sigmoid(x[..., :12] @ mixer.value_embed.gate.T)  # (B, T, H) one gate per head
    expected = (mixer.v_proj(x).view(2, 7, 4, 16) + gate[..., None] * mixer.value_embed.table(ids).view(2, 7, 4, 16))
    torch.testing.assert_close(v, expected.transpose(1, 2))


def test_value_embeddings_need_token_ids():
    config = tiny_config()
    ctx = context(config, torch.zeros(1, 3, dtype=torch.long))
    ctx.input_ids = None
    with pytest.raises(ValueError, match="needs input_ids"):
        SoftmaxAttention(config, 1)(torch.randn(1, 3, 64), ctx)


# ---- windows

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
    config = tiny_config(num_hidden_layers=5, window_pattern="SL", window_long=100, window_short=7)
    assert [config.layer_spec(i).window for i in range(5)] == [7, 100, 7, 100, 100]  # last layer always long
    overridden = tiny_config(layers=[{}, {"window": 3}, {}, {"value_embed": False}])
    assert overridden.layer_spec(1).window == 3 and not overridden.layer_spec(3).value_embed
    with pytest.raises(ConfigError, match="string of S and L"):
        tiny_config(window_pattern="SSXL")
    with pytest.raises(ConfigError, match="needs window_long"):
        tiny_config(window_long=None)
    with pytest.raises(ConfigError, match="value_embed_layers"):
        tiny_config(value_embed_layers="odd")


def test_spec_mask_example():
    """Spec §10.7 at T = 1024: layer 0 (w 256) query 600 sees keys 344..600; layer 3 (w 1024) sees 0..600."""
    short = visibility_mask(1024, 1024, 0, 0, None, 256, "cpu")[0, 0, 600]
    assert short.nonzero().flatten().tolist() == list(range(344, 601))
    long = visibility_mask(1024, 1024, 0, 0, None, 1024, "cpu")[0, 0, 600]
    assert long.nonzero().flatten().tolist() == list(range(0, 601))


def dense_masked_attention(q, k, v, scale, q_start, k_start, key_padding, window):
    """Every query against every key with the full boolean mask, in float64."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    scores = q.double() @ k.transpose(-1, -2) * scale
    query = torch.arange(q_start, q_start + q.shape[2])[:, None]
    key = torch.arange(k_start, k_start + k.shape[2])[None, :]
    visible = (key <= query) & (query - key <= window)
    visible = visible[None, None]
    if key_padding is not None:
        visible = visible & key_padding[:, None, None, k_start:k_start + k.shape[2]]
    return scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("q_start,k_start,t,s,pad", [(0, 0, 300, 300, False), (50, 20, 70, 100, False),
                                                     (0, 0, 200, 200, True)])
def test_blocked_window_attention_equals_dense_masked_reference(backend, q_start, k_start, t, s, pad, monkeypatch):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, t, 8), torch.randn(2, 2, s, 8), torch.randn(2, 2, s, 8)
    padding = None
    if pad:
        padding = torch.ones(2, q_start + t, dtype=torch.bool)
        padding[1, :45] = False
    shapes = []

    def recording_mask(*args, **kwargs):
        mask = visibility_mask(*args, **kwargs)
        shapes.append(tuple(mask.shape[-2:]))
        return mask

    monkeypatch.setattr(attention_module, "visibility_mask", recording_mask)
    window, block = 37, 32
    out = causal_attention(q, k, v, scale=0.3, q_start=q_start, k_start=k_start, key_padding=padding, window=window,
                           backend=backend, query_block=block)
    expected = dense_masked_attention(q, k, v, 0.3, q_start, k_start, padding, window)
    if padding is not None:  # padding queries are unspecified
        keep = padding[:, -t:][:, None, :, None].expand_as(out)
        out, expected = out[keep], expected[keep]
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    assert len(shapes) == math.ceil(t / block)  # block by block, never the whole T × S mask
    assert all(rows <= block and cols <= block + window for rows, cols in shapes)


def test_sliding_cache_returns_the_visible_keys_and_stays_small():
    cache, window = SlidingKVCache(window=5), 5
    rows = [torch.full((1, 1, 1, 2), float(i)) for i in range(100)]
    for i, row in enumerate(rows):
        keys, values = cache.append(row, row)
        expected = torch.cat(rows[max(0, i - window):i + 1], dim=2)  # the query at i sees i − 5 .. i
        assert torch.equal(keys, expected) and torch.equal(values, expected)
        assert cache.keys.shape[2] <= 16
    chunk = torch.arange(100, 110, dtype=torch.float32).view(1, 1, 10, 1).expand(1, 1, 10, 2)
    keys, _ = cache.append(chunk, chunk)
    assert keys[0, 0, :, 0].tolist() == list(range(95, 110))  # the chunk's first query at 100 sees 95..100
    assert cache.keys.shape[2] <= 2 * (window + 10)


# ---- YatNMN

def yat_config(**overrides):
    return tiny_config(hidden_size=32, num_attention_heads=2, intermediate_size=24, **overrides)


def randomised_yat(softplus=True, **overrides):
    torch.manual_seed(0)
    layer = YatNMN(yat_config(**overrides), softplus=softplus).double()
    with torch.no_grad():
        layer.weight.normal_(0, 0.5)
        layer.bias.normal_()
        if layer.raw_epsilon is not None:
            layer.raw_epsilon.fill_(-2.0)
        if layer.alpha is not None:
            layer.alpha.fill_(1.7)
    return layer


@pytest.mark.parametrize("softplus", [True, False])
def test_yatnmn_equals_direct_per_neuron_distance(softplus):
    """Spec §10.4: the expanded-distance formula against ‖u − w_j‖² computed per neuron, fp64, relative 1e-10."""
    layer = randomised_yat(softplus)
    u = torch.randn(2, 3, 32, dtype=torch.float64)
    out = layer(u)
    assert out.dtype == torch.float64
    expected = torch.empty_like(out)
    epsilon = F.softplus(layer.raw_epsilon) if softplus else 1e-3
    for j in range(24):
        w_j = layer.weight[j]
        b_j = F.softplus(layer.bias[j]) if softplus else layer.bias[j]
        squared_distance = ((u - w_j) ** 2).sum(-1)
        expected[..., j] = 1.7 * ((u * w_j).sum(-1) + b_j) ** 2 / (squared_distance + epsilon)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=0)


def test_yatnmn_init_and_scalar_bias_and_constant_alpha():
    layer = YatNMN(yat_config(), softplus=True)
    layer.reset_parameters()
    assert F.softplus(layer.raw_epsilon).item() == pytest.approx(1e-3, rel=1e-6)
    assert layer.raw_epsilon.item() == pytest.approx(-6.907255, abs=1e-6)
    assert torch.equal(layer.bias, torch.zeros(24)) and layer.alpha.item() == 1.0
    scalar = randomised_yat(yatnmn_scalar_bias=True)
    assert scalar.bias.shape == (1,)
    per_neuron = randomised_yat()
    with torch.no_grad():
        per_neuron.weight.copy_(scalar.weight)
        per_neuron.bias.fill_(scalar.bias.item())  # the shared bias broadcast to every neuron
    u = torch.randn(4, 32, dtype=torch.float64)
    torch.testing.assert_close(scalar(u), per_neuron(u))
    constant = randomised_yat(yatnmn_constant_alpha=2.5)
    assert constant.alpha is None
    with torch.no_grad():
        constant.weight.copy_(per_neuron.weight)
        constant.bias.copy_(per_neuron.bias)
    torch.testing.assert_close(constant(u), per_neuron(u) / 1.7 * 2.5)


def test_yatnmn_runs_in_fp32_and_returns_the_input_dtype():
    layer = randomised_yat().float()
    u = torch.randn(3, 32).bfloat16()
    out = layer(u)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, layer(u.float()).bfloat16())  # fp32 math on the bf16 values, one rounding at the end
    x = torch.randn(3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = layer(x)
    assert torch.equal(under_autocast, layer(x))  # autocast does not reach the score


def test_yatnmn_distance_is_clamped_at_zero():
    layer = randomised_yat().float()
    with torch.no_grad():
        layer.weight.mul_(300.0)  # large norms: for u = w_j the expanded distance cancels to rounding noise
        layer.raw_epsilon.fill_(math.log(math.expm1(1e-3)))
    u = layer.weight.detach().clone()  # input j is neuron j's own weight
    dot = u @ u.T
    expanded = (u.square().sum(-1, keepdim=True) + u.square().sum(-1) - 2 * dot).diagonal()
    assert (expanded < -1e-3).any()  # unclamped, ε would not save these from a negative denominator
    out = layer(u)
    assert torch.isfinite(out).all() and (out >= 0).all()
    numerator = 1.7 * (dot.diagonal() + F.softplus(layer.bias)) ** 2
    torch.testing.assert_close(out.diagonal(), numerator / (expanded.clamp_min(0) + 1e-3))


# ---- smear and the residual stream

def test_smear_formula_and_zero_strength_identity():
    config = tiny_config()
    stage = EmbeddingStage(config)
    stage.smear.reset_parameters()
    embeddings = torch.randn(2, 9, 64) * 2
    ids = torch.zeros(2, 9, dtype=torch.long)
    e = embeddings / torch.sqrt(embeddings.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(stage(embeddings, context(config, ids)), e)  # λ = 0 at init: identity
    with torch.no_grad():
        stage.smear.strength.fill_(0.7)
    out = stage(embeddings, context(config, ids))
    expected = e.clone()
    for t in range(1, 9):
        gate = 0.7 * torch.sigmoid(e[:, t, :24] @ stage.smear.gate[0])
        expected[:, t] = e[:, t] + gate[:, None] * e[:, t - 1]
    torch.testing.assert_close(out, expected)


def test_smear_skips_a_padding_predecessor():
    config = tiny_config()
    stage = EmbeddingStage(config)
    stage.smear.reset_parameters()
    with torch.no_grad():
        stage.smear.strength.fill_(0.9)
    embeddings = torch.randn(1, 6, 64)
    padding = torch.tensor([[False, False, True, True, True, True]])
    padded = stage(embeddings, context(config, torch.zeros(1, 6, dtype=torch.long), key_padding=padding))
    alone = stage(embeddings[:, 2:], context(config, torch.zeros(1, 4, dtype=torch.long)))
    torch.testing.assert_close(padded[:, 2:], alone)


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
    plain = ResidualStream(tiny_config(residual_lambdas=False, backout=False))
    assert list(plain.parameters()) == []
    h = x
    for block in blocks:
        h = block(h, None)
    torch.testing.assert_close(plain(x, blocks, None), h)
