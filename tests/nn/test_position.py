"""RoPE, partial rotary, the rotation sign and rope scaling against explicit formulas."""

import math

import pytest
import torch

from lmlab import ConfigError, preset_config
from lmlab.nn.position import RotaryEmbedding


def explicit_rotation(x: torch.Tensor, positions: torch.Tensor, theta: float, rotary_dim: int,
                      inv_freq: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate each channel pair (i, i + r/2) of the first r channels by the angle p·inv_freq_i, one by one."""
    out = x.clone().double()
    half = rotary_dim // 2
    for b in range(x.shape[0]):
        for t in range(x.shape[2]):
            p = float(positions[b, t])
            for i in range(half):
                freq = float(inv_freq[i]) if inv_freq is not None else theta ** (-2 * i / rotary_dim)
                angle = p * freq
                a, c = x[b, :, t, i].double(), x[b, :, t, i + half].double()
                out[b, :, t, i] = a * math.cos(angle) - c * math.sin(angle)
                out[b, :, t, i + half] = c * math.cos(angle) + a * math.sin(angle)
    return out


def rope(**overrides) -> RotaryEmbedding:
    return RotaryEmbedding(preset_config("ngen4-tiny", **overrides))


@pytest.mark.parametrize("rope_pct", [1.0, 0.25])
def test_rope_equals_explicit_pairwise_rotation(rope_pct):
    module = rope(rope_pct=rope_pct, rope_theta=500.0)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 16)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 9, 11, 30, 31, 200]])
    rotated = module(positions).queries(x)
    expected = explicit_rotation(x, positions, 500.0, module.rotary_dim)
    torch.testing.assert_close(rotated.double(), expected, atol=1e-5, rtol=1e-5)
    assert module.rotary_dim == int(16 * rope_pct)
    if rope_pct < 1:
        assert torch.equal(rotated[..., module.rotary_dim:], x[..., module.rotary_dim:])


def test_rotary_dim_rounds_down_to_even():
    assert preset_config("ngen4-tiny", rope_pct=0.3).rotary_dim == 4  # int(16 * 0.3) = 4
    assert preset_config("ngen4-tiny", rope_pct=0.35).rotary_dim == 4  # int(5.6) = 5 -> 4


def test_rope_scores_depend_only_on_relative_position():
    module = rope()
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        return (module(torch.tensor([[pq]])).queries(q) * module(torch.tensor([[pk]])).keys(k)).sum()

    assert score(10, 3).item() == pytest.approx(score(110, 103).item(), abs=1e-5)
    assert score(10, 3).item() != pytest.approx(score(10, 4).item(), abs=1e-3)


def test_linear_scaling_at_2p_equals_no_scaling_at_p():
    plain = rope(max_position_embeddings=512)
    linear = rope(max_position_embeddings=512, rope_scaling={"type": "linear", "factor": 2.0})
    x = torch.randn(1, 2, 5, 16)
    p = torch.tensor([[0, 3, 10, 100, 255]])
    torch.testing.assert_close(linear(2 * p).queries(x), plain(p).queries(x))


def test_rope_scaling_extends_the_position_limit_and_keeps_the_original():
    config = preset_config("ngen4-tiny", max_position_embeddings=512, rope_scaling={"type": "dynamic", "factor": 4})
    assert config.max_position_embeddings == 2048
    assert config.rope_scaling["original_max_position_embeddings"] == 512
    reloaded = type(config).from_dict(config.to_dict())
    assert reloaded.max_position_embeddings == 2048  # not scaled twice


def test_dynamic_ntk_is_a_noop_up_to_the_original_length_then_follows_its_formula():
    plain = rope(max_position_embeddings=64)
    dynamic = rope(max_position_embeddings=64, rope_scaling={"type": "dynamic", "factor": 2.0})
    x = torch.randn(1, 2, 64, 16)
    short = torch.arange(64)[None]
    torch.testing.assert_close(dynamic(short).queries(x), plain(short).queries(x))
    long = torch.arange(100)[None]
    r, f, length = 16, 2.0, 100
    theta = 10000.0 * (f * length / 64 - (f - 1)) ** (r / (r - 2))
    y = torch.randn(1, 1, 100, 16)
    expected = explicit_rotation(y, long, theta, r)
    torch.testing.assert_close(dynamic(long).queries(y).double(), expected, atol=1e-4, rtol=1e-4)


def test_yarn_frequencies_and_attention_factor_follow_the_paper():
    theta, r, f, original = 10000.0, 16, 4.0, 64
    module = rope(max_position_embeddings=original, rope_theta=theta,
                  rope_scaling={"type": "yarn", "factor": f})
    expected = []
    for i in range(r // 2):
        inv = theta ** (-2 * i / r)
        # pair index at which the wavelength equals original / rotations (β_fast = 32, β_slow = 1)
        low = math.floor(r * math.log(original / (32 * 2 * math.pi)) / (2 * math.log(theta)))
        high = math.ceil(r * math.log(original / (1 * 2 * math.pi)) / (2 * math.log(theta)))
        low, high = max(low, 0), min(high, r - 1)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        expected.append(inv / f * ramp + inv * (1 - ramp))
    torch.testing.assert_close(module.inv_freq.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-6, atol=0)
    mscale = 0.1 * math.log(f) + 1
    x = torch.randn(1, 1, 3, 16)
    positions = torch.tensor([[0, 5, 40]])
    torch.testing.assert_close(module(positions).queries(x).double(),
                               mscale * explicit_rotation(x, positions, theta, r, module.inv_freq),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scaling", [{"type": "ntk", "factor": 2.0}, {"type": "linear", "factor": 0.5},
                                     {"type": "linear"}])
def test_bad_rope_scaling_is_refused(scaling):
    with pytest.raises(ConfigError):
        preset_config("ngen4-tiny", rope_scaling=scaling)


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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (−b, a) on the last dim: the formula's rotate_half, written out."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


@pytest.mark.parametrize("options", [dict(rope_pct=0.5), dict(), dict(rope_sign=-1, rope_scaling={"type": "yarn",
                                                                                                     "factor": 4.0})])
def test_rotation_runs_in_the_activation_dtype(options):
    """fp32 activations rotate exactly (bit for bit) as x·cos + rotate_half(x)·sin with the fp32 tables, partial or
    full rotation, either sign, scaled tables; bf16 ones in bf16 with the tables cast once (GPT-NeoX's way), close
    to the fp32 rotation."""
    config = preset_config("ngen4-tiny", **options)
    rope = RotaryEmbedding(config)
    rotation = rope(torch.arange(7)[None])
    x = torch.randn(1, 4, 7, config.head_dim)
    r = rotation.cos.shape[-1]
    expected = torch.cat((x[..., :r] * rotation.cos + rotate_half(x[..., :r]) * rotation.sin, x[..., r:]), -1)
    assert torch.equal(rotation.queries(x), expected)
    low = rotation.keys(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), expected, atol=0.05, rtol=0.02)
