"""Gated DeltaNet: the chunked WY form against the recurrence, the recurrence against the matrix formula, the packing,
the short convolution, the decoding state, padding, and the optional flash-linear-attention dispatch."""

import re
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import forward_context, randomise_parameters, tiny_config
from lmlab import ConfigError, preset_config
from lmlab.cache import LMLabCache
from lmlab.nn import delta_rule
from lmlab.nn.delta_rule import (
    chunk_gated_delta_rule,
    gated_delta_rule,
    gated_delta_step,
    recurrent_gated_delta_rule,
)
from lmlab.nn.gated_deltanet import GatedDeltaNet, causal_depthwise_conv


def delta_inputs(t, dtype, b=2, h=3, dk=8, dv=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, dk, generator=g, dtype=dtype)
    k = F.normalize(torch.randn(b, t, h, dk, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(b, t, h, dv, generator=g, dtype=dtype)
    decay = -torch.rand(b, t, h, generator=g, dtype=dtype) * 1.5
    beta = torch.rand(b, t, h, generator=g, dtype=dtype)
    state = torch.randn(b, h, dk, dv, generator=g, dtype=dtype)
    return q, k, v, decay, beta, state


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("t", [1, 37, 64, 130])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_form_equals_the_recurrence(dtype, tol, t, with_state):
    q, k, v, g, beta, state = delta_inputs(t, dtype)
    initial = state if with_state else None
    o_rec, s_rec = recurrent_gated_delta_rule(q, k, v, g, beta, scale=0.35, initial_state=initial)
    o_chunk, s_chunk = chunk_gated_delta_rule(q, k, v, g, beta, scale=0.35, initial_state=initial, chunk_size=64)
    assert o_chunk.dtype == dtype and o_chunk.shape == v.shape
    assert (o_chunk - o_rec).abs().max() <= tol
    assert (s_chunk - s_rec).abs().max() <= tol


def test_chunked_gradients_equal_the_recurrence():
    inputs = [x.requires_grad_() for x in delta_inputs(70, torch.float64)]

    def grads(fn, **kw):
        q, k, v, g, beta, state = inputs
        o, s = fn(q, k, v, g, beta, scale=0.5, initial_state=state, **kw)
        return torch.autograd.grad((o.sin().sum() + s.cos().sum()), inputs)

    for a, b in zip(grads(recurrent_gated_delta_rule), grads(chunk_gated_delta_rule, chunk_size=16), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_step_is_the_matrix_form_of_the_delta_rule():
    """S_t = α_t (I − β_t k kᵀ) S_{t−1} + β_t k vᵀ and o_t = S_tᵀ q, written with explicit matrices."""
    q, k, v, g, beta, state = delta_inputs(1, torch.float64, b=1, h=1)
    o, new_state = gated_delta_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state)
    kk, vv, qq, s0 = k[0, 0, 0], v[0, 0, 0], q[0, 0, 0], state[0, 0]
    alpha, b = g[0, 0, 0].exp(), beta[0, 0, 0]
    expected = alpha * (torch.eye(8, dtype=torch.float64) - b * torch.outer(kk, kk)) @ s0 + b * torch.outer(kk, vv)
    torch.testing.assert_close(new_state[0, 0], expected)
    torch.testing.assert_close(o[0, 0], expected.T @ qq)


def test_strong_decay_never_overflows():
    """Decays of e^−60 per step: exponentiating γ_r − γ_s above the diagonal would overflow to inf."""
    q, k, v, g, beta, _ = delta_inputs(64, torch.float32)
    g = torch.full_like(g, -60.0).requires_grad_()
    o, state = chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0)
    (o.sum() + state.sum()).backward()
    assert torch.isfinite(o).all() and torch.isfinite(g.grad).all()
    o_rec, _ = recurrent_gated_delta_rule(q, k, v, g.detach(), beta, scale=1.0)
    torch.testing.assert_close(o, o_rec, atol=1e-5, rtol=1e-5)


def test_kernels_run_in_fp32_under_bf16_autocast():
    q, k, v, g, beta, _ = delta_inputs(40, torch.float32)
    reference, _ = chunk_gated_delta_rule(q, k, v, g, beta, scale=0.3, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, state = chunk_gated_delta_rule(q, k, v, g, beta, scale=0.3, chunk_size=16)
    assert o.dtype == torch.float32 and state.dtype == torch.float32
    torch.testing.assert_close(o, reference, atol=1e-6, rtol=1e-6)


# ---- the layer

def gdn_config(**overrides):
    """The 110M model's Gated DeltaNet shape (d 512, 8 key heads and 16 value heads of 32)."""
    return preset_config("neollm-110m", **{"vocab_size": 101, **overrides})


def test_packing_follows_the_qwen3_next_group_layout():
    layer = GatedDeltaNet(gdn_config(), 0)
    b, t = 1, 1
    rows_qkvz = torch.arange(1536.0).view(b, t, -1)  # a projection whose output i is the row number i
    rows_ba = torch.arange(32.0).view(b, t, -1)
    q, k, v, z, beta_logit, a = layer.unpack(rows_qkvz, rows_ba)
    assert q.shape == k.shape == (1, 1, 8, 32) and v.shape == z.shape == (1, 1, 16, 32)
    for group in range(8):
        base = 192 * group  # [q 32 | k 32 | v 64 | z 64]
        assert q[0, 0, group].tolist() == list(range(base, base + 32))
        assert k[0, 0, group].tolist() == list(range(base + 32, base + 64))
        for j in range(2):  # value heads 2g, 2g + 1
            assert v[0, 0, 2 * group + j].tolist() == list(range(base + 64 + 32 * j, base + 96 + 32 * j))
            assert z[0, 0, 2 * group + j].tolist() == list(range(base + 128 + 32 * j, base + 160 + 32 * j))
            assert beta_logit[0, 0, 2 * group + j] == 4 * group + j  # [b 2 | a 2]
            assert a[0, 0, 2 * group + j] == 4 * group + 2 + j


def test_causal_depthwise_conv_formula_and_continuation():
    torch.manual_seed(0)
    x, weight = torch.randn(2, 9, 5), torch.randn(5, 1, 4)
    y, window = causal_depthwise_conv(x, weight)
    padded = F.pad(x, (0, 0, 3, 0))  # zeros before the first token
    expected = torch.stack([sum(weight[:, 0, i] * padded[:, t + i] for i in range(4)) for t in range(9)], dim=1)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(window, x[:, -3:])
    first, window = causal_depthwise_conv(x[:, :2], weight)  # shorter than the window
    rest, _ = causal_depthwise_conv(x[:, 2:], weight, window)
    torch.testing.assert_close(torch.cat([first, rest], 1), y)


def test_init_follows_the_spec():
    torch.manual_seed(0)
    layer = GatedDeltaNet(gdn_config(), 0)
    a = layer.A_log.exp()
    assert (a > 0).all() and (a < 16).all() and a.std() > 1  # log(U(0, 16))
    assert torch.equal(layer.dt_bias, torch.ones(16)) and torch.equal(layer.norm.weight, torch.ones(32))
    assert layer.conv_weight.shape == (1024, 1, 4) and abs(layer.conv_weight.std().item() - 0.02) < 0.003


@pytest.mark.parametrize("chunk", [16, 64])
def test_prefill_then_decode_equals_the_full_forward(chunk):
    """Prefill 37 tokens, decode 10 one by one: the same outputs as one 47-token forward."""
    config = gdn_config(linear_chunk_size=chunk)
    layer = GatedDeltaNet(config, 0).eval()
    randomise_parameters(layer, seed=1)
    x = torch.randn(2, 47, 512)
    with torch.no_grad():
        full = layer(x, forward_context(47))
        cache = LMLabCache(1)
        pieces = [layer(x[:, :37], forward_context(37, cache=cache))]
        assert cache.layers[0].conv.shape == (2, 3, 1024) and cache.layers[0].recurrent.dtype == torch.float32
        for i in range(37, 47):
            pieces.append(layer(x[:, i:i + 1], forward_context(1, past=i, cache=cache)))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("option,refusal", [
    ({"layers": [{"window": 8}, {}, {}, {}]}, "window=8 on layer 0: ignored by mixer 'gated_deltanet'"),
    ({"layers": [{}, {"value_embed": True}, {}, {}]}, "value_embed=True on layer 1: ignored by mixer 'gated_deltanet'"),
    ({"qk_norm": "rmsnorm"}, "qk_norm='rmsnorm': ignored by mixer 'gated_deltanet'"),
    ({"position": "rope"}, "position 'rope': no layer's mixer rotates queries and keys"),
    ({"attention_scale": "hidden_size"}, "attention_scale='hidden_size': ignored by mixer 'gated_deltanet'"),
])
def test_attention_options_are_refused_by_name(option, refusal):
    """The recurrence has no window, value embeddings, QK-norm, rotation or softmax scale: setting one is an error."""
    plain = dict(layers=None, position="none", rope_pct=1.0)
    assert tiny_config("neollm-tiny", **plain).mixer == "gated_deltanet"
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        tiny_config("neollm-tiny", **{**plain, **option})


def test_left_padding_gives_the_unpadded_outputs_and_states():
    """Pads (garbage inputs, mask 0) in front change neither the real tokens' outputs nor the decoding state."""
    layer = GatedDeltaNet(gdn_config(), 0).eval()
    randomise_parameters(layer, seed=2)
    x, pads = torch.randn(1, 12, 512), torch.randn(1, 5, 512)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 12, dtype=torch.bool)], 1)
    alone_cache, padded_cache = LMLabCache(1), LMLabCache(1)
    with torch.no_grad():
        alone = layer(x, forward_context(12, cache=alone_cache))
        padded = layer(torch.cat([pads, x], 1), forward_context(17, cache=padded_cache, key_padding=mask))
    torch.testing.assert_close(padded[:, 5:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded_cache.layers[0].recurrent, alone_cache.layers[0].recurrent)
    torch.testing.assert_close(padded_cache.layers[0].conv, alone_cache.layers[0].conv)


# ---- optional flash-linear-attention dispatch

def fake_fla(calls):
    """A stand-in for fla.ops.gated_delta_rule with fla's keyword signature (q, k, v, g, beta, scale, ...)."""

    def kernel(name):
        def run(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
            calls.append(name)
            return recurrent_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state)
        return run

    ops = types.ModuleType("fla.ops.gated_delta_rule")
    ops.chunk_gated_delta_rule = kernel("chunk")
    ops.fused_recurrent_gated_delta_rule = kernel("recurrent")
    return ops


def test_fla_is_used_only_when_importable_and_on_cuda(monkeypatch):
    delta_rule._fla_kernels.cache_clear()
    monkeypatch.setitem(sys.modules, "fla", None)  # not installed
    assert delta_rule.fla_kernels_for(torch.device("cuda")) is None
    delta_rule._fla_kernels.cache_clear()
    ops = fake_fla([])
    monkeypatch.setitem(sys.modules, "fla", types.ModuleType("fla"))
    monkeypatch.setitem(sys.modules, "fla.ops", types.ModuleType("fla.ops"))
    monkeypatch.setitem(sys.modules, "fla.ops.gated_delta_rule", ops)
    assert delta_rule.fla_kernels_for(torch.device("cpu")) is None
    assert delta_rule.fla_kernels_for(torch.device("cuda")) == (ops.chunk_gated_delta_rule,
                                                                ops.fused_recurrent_gated_delta_rule)
    delta_rule._fla_kernels.cache_clear()


def test_fla_dispatch_passes_the_arguments_in_fla_layout(monkeypatch):
    calls = []
    ops = fake_fla(calls)
    monkeypatch.setattr(delta_rule, "fla_kernels_for",
                        lambda device: (ops.chunk_gated_delta_rule, ops.fused_recurrent_gated_delta_rule))
    q, k, v, g, beta, state = delta_inputs(20, torch.float32)
    for t in (20, 1):
        got = gated_delta_rule(q[:, :t], k[:, :t], v[:, :t], g[:, :t], beta[:, :t], scale=0.4, initial_state=state)
        expected = chunk_gated_delta_rule(q[:, :t], k[:, :t], v[:, :t], g[:, :t], beta[:, :t], scale=0.4,
                                          initial_state=state)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert calls == ["chunk", "recurrent"]
