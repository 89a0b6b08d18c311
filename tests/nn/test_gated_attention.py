"""Qwen3-Next gated attention against a per-head reference written from the spec (§3.6), and its partial RoPE."""


import torch

from conftest import randomise_parameters, rotate_pairs
from lmlab import preset_config
from lmlab.nn.context import ForwardContext
from lmlab.nn.gated_attention import GatedAttention
from lmlab.nn.position import RotaryEmbedding


def attention_config():
    """The 110M model's attention shape: d 512, 8 query / 2 KV heads of 64, 25% RoPE, θ = 10⁴."""
    return preset_config("neollm-110m", vocab_size=101, attention_dropout=0.0)


def zero_centred_rmsnorm(x, weight, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + weight)


def rope_first_16(x, position):
    """Rotate dims 0..15 of one head vector by `position` (pairs (i, i + 8), inv_freq_i = 10000^(−2i/16))."""
    return rotate_pairs(x, position, 10000.0, 16)


def reference_gated_attention(layer, x):
    """One head, one query at a time, from the weights (double precision)."""
    wq, wk = layer.q_proj.weight.double(), layer.k_proj.weight.double()
    wv, wo = layer.v_proj.weight.double(), layer.out_proj.weight.double()
    qn, kn = layer.q_norm.weight.double(), layer.k_norm.weight.double()
    x = x.double()[0]
    t = x.shape[0]
    heads = []
    for h in range(8):
        kv = h // 4  # KV head j serves query heads 4j .. 4j + 3
        query_rows, gate_rows = wq[128 * h:128 * h + 64], wq[128 * h + 64:128 * h + 128]
        keys = [rope_first_16(zero_centred_rmsnorm(x[s] @ wk[64 * kv:64 * kv + 64].T, kn), s) for s in range(t)]
        values = [x[s] @ wv[64 * kv:64 * kv + 64].T for s in range(t)]
        outputs = []
        for i in range(t):
            q = rope_first_16(zero_centred_rmsnorm(x[i] @ query_rows.T, qn), i)
            probs = torch.softmax(torch.stack([q @ keys[s] / 8.0 for s in range(i + 1)]), 0)
            o = sum(p * values[s] for s, p in enumerate(probs))
            outputs.append(o * torch.sigmoid(x[i] @ gate_rows.T))
        heads.append(torch.stack(outputs))
    return torch.cat(heads, -1) @ wo.T


def test_gated_attention_matches_the_per_head_reference():
    config = attention_config()
    layer = GatedAttention(config, 3).eval()
    randomise_parameters(layer, seed=0)
    assert layer.q_proj.weight.shape == (1024, 512) and layer.k_proj.weight.shape == (128, 512)
    x = torch.randn(1, 6, 512)
    positions = torch.arange(6)[None]
    ctx = ForwardContext(position_ids=positions, rotation=RotaryEmbedding(config)(positions), key_padding_mask=None,
                         cache=None, past_length=0)
    with torch.no_grad():
        out = layer(x, ctx)
    torch.testing.assert_close(out[0].double(), reference_gated_attention(layer, x), atol=1e-5, rtol=1e-5)


def test_only_the_first_16_head_dims_rotate():
    config = attention_config()
    assert config.rotary_dim == 16
    rope = RotaryEmbedding(config)
    q = torch.randn(1, 8, 5, 64)
    rotated = rope(torch.arange(5)[None]).queries(q)
    assert torch.equal(rotated[..., 16:], q[..., 16:])
    assert not torch.allclose(rotated[:, :, 1:, :16], q[:, :, 1:, :16])
    torch.testing.assert_close(rotated[:, :, :1], q[:, :, :1])  # position 0: the identity
    for h in range(8):
        torch.testing.assert_close(rotated[0, h, 3], rope_first_16(q[0, h, 3], 3).float())
