"""N4's selective-copying attention against the spec's definitions (n4.md §3.3, §9 tests 3-6, 13)."""

import math

import pytest
import torch

from conftest import forward_context, randomise_parameters, rotate_pairs, tiny_model
from lmlab.nn.context import ForwardContext
from lmlab.nn.selective_copy import selective_copy_keys


def run_mixer(mixer, x, positions=None):
    b, t, _ = x.shape
    positions = torch.arange(t)[None].expand(b, t) if positions is None else positions
    ctx = ForwardContext(position_ids=positions, rotation=None, key_padding_mask=None, cache=None, past_length=0)
    return mixer(x, ctx)


def small_n4(**overrides):
    """n4-tiny at d 64 with 4 heads of 16 (the sizes the expectations below are written for)."""
    return tiny_model("n4-tiny", hidden_size=64, intermediate_size=128, **overrides)


def test_qkvg_rows_follow_the_head_major_layout():
    model = small_n4()
    mixer = model.model.layers[0].mixer
    d, h, hd = 64, 4, 16
    # weight row r reads input channel 0 with value r: the projection of e_0 is the row number itself
    with torch.no_grad():
        mixer.qkvg_proj.weight.zero_()
        mixer.qkvg_proj.weight[:, 0] = torch.arange(3 * d + h, dtype=torch.float32)
    projected = mixer.qkvg_proj(torch.eye(d)[:1])[0]
    gate_rows = projected[3 * d:]
    assert gate_rows.tolist() == list(range(3 * d, 3 * d + h))
    split = projected[:3 * d].view(h, 3 * hd)
    for head in range(h):
        assert split[head, :hd].tolist() == list(range(3 * hd * head, 3 * hd * head + hd))            # Q
        assert split[head, hd:2 * hd].tolist() == list(range(3 * hd * head + hd, 3 * hd * head + 2 * hd))  # K
        assert split[head, 2 * hd:].tolist() == list(range(3 * hd * head + 2 * hd, 3 * hd * (head + 1)))  # V


def test_cummean_weights_for_unit_gates_and_keys():
    k = torch.ones(1, 1, 6, 1, dtype=torch.float64)
    g = torch.ones(1, 1, 6, dtype=torch.float64)
    keys, _ = selective_copy_keys(k, g, torch.arange(6)[None])
    expected = [1, 0.75, 2 / 3, 0.625, 0.6, 7 / 12]
    torch.testing.assert_close(keys.double().flatten(), torch.tensor(expected, dtype=torch.float64))


def test_cumsum_form_equals_step_recurrence():
    torch.manual_seed(0)
    b, h, t, d = 2, 3, 17, 5
    k = torch.randn(b, h, t, d, dtype=torch.float64)
    g = torch.tanh(torch.randn(b, h, t, dtype=torch.float64))
    keys, final = selective_copy_keys(k, g, torch.arange(t)[None].expand(b, t))
    running = torch.zeros(b, h, d, dtype=torch.float64)
    for j in range(1, t + 1):
        running = running + j * g[:, :, j - 1, None] * k[:, :, j - 1]
        torch.testing.assert_close(keys[:, :, j - 1].double(), running / j ** 2, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(final.double(), running, atol=1e-12, rtol=1e-12)


def reference_mixer(mixer, x, scale, rotate=None):
    """Spec §3.3 step by step, with an explicit per-position loop for K'; `rotate(vector, position)`, when given,
    turns each query at its position and each mean key K'_j at its own (0-based) position, after the mean."""
    b, t, d = x.shape
    h, hd = mixer.num_heads, mixer.head_dim
    p = x.double() @ mixer.qkvg_proj.weight.double().T
    qkv, gate = p[..., :3 * d], torch.tanh(p[..., 3 * d:])
    per_head = qkv.view(b, t, h, 3 * hd)
    q, k, v = per_head[..., :hd], per_head[..., hd:2 * hd], per_head[..., 2 * hd:]
    out = torch.zeros(b, t, h, hd, dtype=torch.float64)
    for bi in range(b):
        for head in range(h):
            key_avg = []
            running = torch.zeros(hd, dtype=torch.float64)
            for j in range(1, t + 1):
                running = running + j * gate[bi, j - 1, head] * k[bi, j - 1, head]
                key_avg.append(running / j ** 2 if rotate is None else rotate(running / j ** 2, j - 1))
            key_avg = torch.stack(key_avg)
            queries = q[bi, :, head] if rotate is None else torch.stack([rotate(q[bi, i, head], i) for i in range(t)])
            scores = queries @ key_avg.T * scale
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
            out[bi, :, head] = torch.softmax(scores, -1) @ v[bi, :, head]
    return out.reshape(b, t, d) @ mixer.out_proj.weight.double().T


def test_mixer_uses_one_over_sqrt_hidden_size_not_head_dim():
    model = small_n4()
    randomise_parameters(model)
    mixer = model.model.layers[0].mixer
    torch.manual_seed(3)
    x = torch.randn(2, 9, 64)
    out = run_mixer(mixer, x).double()
    torch.testing.assert_close(out, reference_mixer(mixer, x, 1 / math.sqrt(64)), atol=1e-5, rtol=1e-5)
    wrong = reference_mixer(mixer, x, 1 / math.sqrt(16))
    assert (out - wrong).abs().max() > 1e-3


def test_rope_rotates_queries_and_the_mean_keys_after_the_mean():
    """N4 has no position encoding; with position=rope, q_i turns at i and K'_j at j (after the mean)."""
    model = small_n4(position="rope")
    randomise_parameters(model)
    mixer = model.model.layers[0].mixer
    torch.manual_seed(4)
    x = torch.randn(2, 9, 64)
    out = mixer(x, forward_context(9, batch=2, position=model.model.position)).double()
    expected = reference_mixer(mixer, x, 1 / 8, rotate=lambda vector, position: rotate_pairs(vector, position,
                                                                                               10000.0, 16))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - run_mixer(mixer, x).double()).abs().max() > 1e-3  # the rotation is not ignored


def test_left_padding_gives_the_same_outputs_as_the_unpadded_row():
    model = small_n4()
    randomise_parameters(model)
    torch.manual_seed(0)
    row = torch.randint(0, 101, (1, 10))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), row], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], 1)
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 4:], model(row).logits,
                               atol=1e-5, rtol=1e-5)


def test_pure_bf16_forward_keeps_exact_positions_beyond_256():
    model = small_n4().to(torch.bfloat16)
    x = torch.randint(0, 101, (1, 512))
    logits = model(x).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    k = torch.ones(1, 1, 512, 1, dtype=torch.bfloat16)
    g = torch.ones(1, 1, 512, dtype=torch.bfloat16)
    bf16_keys, _ = selective_copy_keys(k, g, torch.arange(512)[None])
    fp32_keys, _ = selective_copy_keys(k.float(), g.float(), torch.arange(512)[None])
    assert torch.equal(bf16_keys, fp32_keys)
    j = torch.arange(1, 513, dtype=torch.float64)
    torch.testing.assert_close(fp32_keys.flatten().double(), (j + 1) / (2 * j), atol=1e-6, rtol=1e-6)


def test_unused_norm_exists_but_is_frozen():
    mixer = small_n4().model.layers[0].mixer
    assert mixer.unused_norm.weight.shape == (16,)
    assert not mixer.unused_norm.weight.requires_grad


def test_selective_copy_refuses_grouped_kv_heads():
    from lmlab import ConfigError

    with pytest.raises(ConfigError, match="multi-head only"):
        small_n4(num_key_value_heads=2)
