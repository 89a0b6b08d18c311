"""XPOS rotary: tables against the direct formula (spec nyx.md §3.4, §11.4), relativity (§11.5), exact caching at
long lengths, causal-only, and the overflow guard."""

import math

import pytest
import torch

from conftest import TINY_VOCAB, randomise_parameters, tiny_model
from lmlab import ConfigError, preset_config
from lmlab.nn.xpos import XPosEmbedding, xpos_decay_bases
from reference.nyx_official import RotaryEmbedding as ReferenceRotary
from reference.nyx_official import xpos_rotate


def xpos(head_dim=64, scale_base=512.0, **overrides):
    config = preset_config("nyx-tiny", head_dim=head_dim, xpos_scale_base=scale_base, **overrides)
    return XPosEmbedding(config)


def direct_rotation(x, t, head_dim, scale_base, sign, theta=10000.0):
    """(x ⊙ cos φ(t) + rotate_half(x) ⊙ sin φ(t)) ⊙ s(t)^sign in float64, one position at a time, centre 0."""
    half = head_dim // 2
    out = torch.empty(x.shape, dtype=torch.float64)
    for p, pos in enumerate(t.tolist()):
        for i in range(half):
            angle = pos * theta ** (-2 * i / head_dim)
            zeta = (2 * i + 0.4 * head_dim) / (1.4 * head_dim)
            s = zeta ** (sign * pos / scale_base)
            a, b = x[..., p, i].double(), x[..., p, i + half].double()
            out[..., p, i] = (a * math.cos(angle) - b * math.sin(angle)) * s
            out[..., p, i + half] = (b * math.cos(angle) + a * math.sin(angle)) * s
    return out


def test_decay_bases_match_the_spec_values():
    zeta = xpos_decay_bases(64)
    assert zeta.shape == (32,)
    assert zeta[0].item() == pytest.approx(0.285714, abs=1e-6)
    assert zeta[31].item() == pytest.approx(0.977679, abs=1e-6)


def test_scale_at_1024_positions_matches_the_spec_values():
    """s(t) = ζ^((t − c)/B): with NYX's centre c = ⌊1024/2⌋, s(0)_0 = 3.5 and s(1023)_0 = 0.2864. lmlab's centre is
    0, and the ratio of two scales does not depend on the centre."""
    rotation = xpos()(torch.arange(1024)[None])
    q_scale = torch.hypot(rotation.cos, rotation.sin)[0, 0, :, 0].double()  # |cos·s, sin·s| = s
    k_scale = torch.hypot(rotation.key_rotation.cos, rotation.key_rotation.sin)[0, 0, :, 0].double()
    assert (q_scale[0] / q_scale[512]).item() == pytest.approx(3.5, rel=1e-5)
    assert (q_scale[1023] / q_scale[512]).item() == pytest.approx(0.2864, abs=1e-4)
    torch.testing.assert_close(q_scale * k_scale, torch.ones(1024, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale_base", [512.0, 16.0])
def test_rotation_equals_the_direct_formula(scale_base):
    torch.manual_seed(0)
    head_dim, positions = 8, torch.tensor([0, 1, 5, 37, 200])
    q = torch.randn(1, 2, len(positions), head_dim)
    k = torch.randn(1, 1, len(positions), head_dim)
    rotation = xpos(head_dim, scale_base)(positions[None])
    torch.testing.assert_close(rotation.queries(q).double(), direct_rotation(q, positions, head_dim, scale_base, +1),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rotation.keys(k).double(), direct_rotation(k, positions, head_dim, scale_base, -1),
                               rtol=1e-5, atol=1e-6)


def logit(rotation_module, q, k, p_query, p_key):
    rotation = rotation_module(torch.tensor([[p_query, p_key]]))
    qr = rotation.queries(q[None, None, None].expand(1, 1, 2, -1))[0, 0, 0]
    kr = rotation.keys(k[None, None, None].expand(1, 1, 2, -1))[0, 0, 1]
    return (qr.double() @ kr.double()).item()


def test_logit_is_relative_and_decays_per_frequency_pair():
    """The (10, 3) logit equals the (20, 13) logit, equals NYX's centred tables at n = 32 and n = 1024, and is the RoPE
    logit with pair i weighted by ζ_i^((p − p′)/B)."""
    torch.manual_seed(1)
    head_dim, base = 64, 512.0
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    module = xpos(head_dim, base)
    ours = logit(module, q, k, 10, 3)
    assert logit(module, q, k, 20, 13) == pytest.approx(ours, rel=1e-6)
    reference = ReferenceRotary(head_dim, base)
    for n in (32, 1024):
        freqs, scale = reference(n)
        for p, p_key in ((10, 3), (20, 13)):
            expected = xpos_rotate(q, freqs[p], scale[p]) @ xpos_rotate(k, freqs[p_key], scale[p_key] ** -1)
            assert expected.item() == pytest.approx(ours, rel=1e-5)
    plain = xpos(head_dim, 1e30)  # ζ^(7/1e30) = 1: plain RoPE
    zeta = xpos_decay_bases(head_dim).double()
    half = head_dim // 2
    per_pair = []
    for i in range(half):
        qi, ki = torch.zeros(head_dim), torch.zeros(head_dim)
        qi[[i, i + half]], ki[[i, i + half]] = q[[i, i + half]], k[[i, i + half]]
        per_pair.append(logit(plain, qi, ki, 10, 3))
    decayed = sum(c * zeta[i].item() ** (7 / base) for i, c in enumerate(per_pair))
    assert ours == pytest.approx(decayed, rel=1e-5)
    assert abs(ours - sum(per_pair)) > 1e-3  # the decay is visible


def test_non_causal_xpos_is_an_error():
    with pytest.raises(ConfigError, match="causal attention only"):
        XPosEmbedding(preset_config("nyx-tiny"), causal=False)
    with pytest.raises(ConfigError, match="xpos_scale_base must be a positive number"):
        tiny_model("nyx-tiny", xpos_scale_base=0.0)


def test_cached_decoding_equals_full_forward_at_long_lengths():
    """Key scales reach 3.5^(600/64) ≈ 1.3e5: cached keys must stay exact."""
    model = tiny_model("nyx-tiny", xpos_scale_base=64.0)
    randomise_parameters(model)
    x = torch.randint(0, TINY_VOCAB, (2, 600), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache()
        pieces = [model(x[:, :250], cache=cache, use_cache=True).logits]
        for start, stop in [(250, 251), (251, 400), *[(i, i + 1) for i in range(400, 420)], (420, 600)]:
            out = model(x[:, start:stop], cache=cache, use_cache=True)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_stays_finite_and_close():
    model = tiny_model("nyx-tiny", xpos_scale_base=64.0)
    x = torch.randint(0, TINY_VOCAB, (1, 600), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).logits
    assert torch.isfinite(low).all()
    assert (low - full).abs().max() < 0.05 * full.abs().max()


def test_positions_beyond_the_dtype_range_are_an_error():
    module = xpos(64, 16.0)
    k = torch.randn(1, 1, 2, 64)
    module(torch.tensor([[0, 560]])).keys(k)  # key scale 3.5^35 ≈ 1e19 fits fp32
    with pytest.raises(ValueError, match="beyond what torch.float32"):
        module(torch.tensor([[0, 600]])).keys(k)
    with pytest.raises(ValueError, match="beyond what torch.float16"):
        module(torch.tensor([[0, 100]])).keys(k.half())


def test_xpos_swaps_into_another_family_with_partial_rotary():
    """Position encodings are parts: XPOS in the NGen4 layout with half the channels rotated stays causal and exact
    under caching; the unrotated channels are left unscaled."""
    model = tiny_model("ngen4-tiny", position="xpos", rope_pct=0.5, xpos_scale_base=32.0)
    randomise_parameters(model)
    rotation = model.model.position(torch.arange(50)[None])
    head_dim = model.config.head_dim
    k = torch.randn(1, 1, 50, head_dim)
    assert torch.equal(rotation.keys(k)[..., head_dim // 2:], k[..., head_dim // 2:])
    x = torch.randint(0, TINY_VOCAB, (1, 50), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache()
        out = model(x[:, :30], cache=cache, use_cache=True)
        step = model(x[:, 30:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([out.logits, step], 1), full, atol=1e-5, rtol=1e-5)
