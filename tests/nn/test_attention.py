"""The attention kernel (eager and sdpa) against a per-query loop, windowed attention against a dense masked
reference, and the attention mixer's options: grouped KV heads, QK-norm, value embeddings, dropout."""

import math

import pytest
import torch

from conftest import TINY_VOCAB, forward_context, randomise_parameters, tiny_config, tiny_model
from lmlab.cache import SlidingKVCache
from lmlab.nn import attention as attention_module
from lmlab.nn.attention import SoftmaxAttention, causal_attention, visibility_mask
from lmlab.nn.position import RotaryEmbedding


def loop_attention(q, k, v, scale, q_start, k_start, key_padding, window):
    """One query at a time: softmax over the keys it may see, in float64."""
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    out = torch.zeros(b, hq, t, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for h in range(hq):
            g = h // (hq // hkv)
            for i in range(t):
                qi = q_start + i
                keys = [j for j in range(s) if k_start + j <= qi
                        and (window is None or qi - (k_start + j) <= window)
                        and (key_padding is None or bool(key_padding[bi, k_start + j]))]
                if not keys:
                    continue
                scores = torch.stack([(q[bi, h, i].double() * k[bi, g, j].double()).sum() * scale for j in keys])
                probs = torch.softmax(scores, 0)
                out[bi, h, i] = sum(p * v[bi, g, j].double() for p, j in zip(probs, keys, strict=True))
    return out


CASES = [
    # heads q/kv, T, S, q_start, k_start, padding, window
    dict(hq=4, hkv=4, t=7, s=7, q_start=0, k_start=0, pad=False, window=None),   # plain causal (is_causal path)
    dict(hq=4, hkv=2, t=7, s=7, q_start=0, k_start=0, pad=False, window=None),   # GQA
    dict(hq=4, hkv=1, t=7, s=7, q_start=0, k_start=0, pad=False, window=None),   # MQA
    dict(hq=4, hkv=2, t=1, s=9, q_start=8, k_start=0, pad=False, window=None),   # decode step
    dict(hq=4, hkv=2, t=3, s=9, q_start=6, k_start=0, pad=False, window=None),   # chunked prefill with cache
    dict(hq=4, hkv=4, t=9, s=9, q_start=0, k_start=0, pad=True, window=None),    # left padding
    dict(hq=4, hkv=4, t=9, s=9, q_start=0, k_start=0, pad=False, window=3),      # sliding window
    dict(hq=4, hkv=4, t=2, s=5, q_start=10, k_start=7, pad=False, window=4),     # windowed cache keeping 5 keys
]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_kernel_matches_per_query_loop(backend, case):
    torch.manual_seed(0)
    b, d = 2, 8
    q = torch.randn(b, case["hq"], case["t"], d)
    k = torch.randn(b, case["hkv"], case["s"], d)
    v = torch.randn(b, case["hkv"], case["s"], d)
    padding = None
    if case["pad"]:
        padding = torch.ones(b, case["q_start"] + case["t"], dtype=torch.bool)
        padding[1, :3] = False
    scale = 1 / math.sqrt(d)
    out = causal_attention(q, k, v, scale=scale, q_start=case["q_start"], k_start=case["k_start"],
                           key_padding=padding, window=case["window"], backend=backend)
    expected = loop_attention(q, k, v, scale, case["q_start"], case["k_start"], padding, case["window"])
    if padding is not None:  # padding queries are unspecified
        keep = padding[:, -case["t"]:][:, None, :, None].expand_as(out)
        out, expected = out[keep], expected[keep]
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_sdpa_equals_eager_in_the_full_model():
    sdpa = tiny_model("ngen4-tiny", attn_implementation="sdpa")
    eager = tiny_model("ngen4-tiny", attn_implementation="eager")
    eager.load_state_dict(sdpa.state_dict())
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    x = torch.randint(0, 101, (2, 33))
    mask = torch.ones_like(x)
    mask[0, :5] = 0
    for kwargs in ({}, {"attention_mask": mask}):
        torch.testing.assert_close(eager(x, **kwargs).logits, sdpa(x, **kwargs).logits, atol=1e-5, rtol=1e-5)


def test_attention_dropout_is_active_in_training_only():
    model = tiny_model("ngen4-tiny", attention_dropout=0.5)
    x = torch.randint(0, 101, (1, 16))
    assert torch.equal(model(x).logits, model(x).logits)
    model.train()
    assert not torch.equal(model(x).logits, model(x).logits)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_attention_dropout_on_a_cpu_is_recomputed_with_the_same_mask(backend):
    """With dropout, the kernel keeps q, k, v only (no T×S probabilities) and its output and gradients equal the
    plain kernel's drawing the same dropout mask."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 32, 8, requires_grad=True) for _ in range(3))
    upstream = torch.randn(2, 4, 32, 8)
    run = attention_module._eager if backend == "eager" else attention_module._sdpa
    torch.manual_seed(1)
    plain = run(q, k, v, 0.3, None, True, 0.5)
    expected = torch.autograd.grad((plain * upstream).sum(), (q, k, v))
    saved = []
    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = causal_attention(q, k, v, scale=0.3, q_start=0, dropout_p=0.5, backend=backend)
    assert max(t.numel() for t in saved) == q.numel()  # nothing of size T×S
    torch.testing.assert_close(out, plain)
    for got, want in zip(torch.autograd.grad((out * upstream).sum(), (q, k, v)), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_one_shared_key_value_head_serves_every_query_head():
    model = tiny_model("nyx-tiny")
    randomise_parameters(model)
    attention = model.model.layers[0].mixer
    head_dim, heads = model.config.head_dim, model.config.num_attention_heads
    assert attention.k_proj.out_features == attention.v_proj.out_features == head_dim
    merged = []
    hook = attention.out_proj.register_forward_pre_hook(lambda module, args: merged.append(args[0]))
    x = torch.randint(0, TINY_VOCAB, (1, 9))
    with torch.no_grad():
        model(x)
        attention.v_proj.weight.add_(0.5 * torch.randn_like(attention.v_proj.weight))
        model(x)
    hook.remove()
    before, after = (m.view(1, 9, heads, head_dim) for m in merged)
    changed = (after - before).abs().amax(dim=(0, 1, 3))
    assert changed.shape == (heads,) and bool((changed > 1e-3).all())


def yatgpt_context(config, ids):
    """The context of a yatgpt mixer reading `ids` (value embeddings) at positions 0 .., rotated by its RoPE."""
    return forward_context(ids.shape[1], batch=ids.shape[0], position=RotaryEmbedding(config), input_ids=ids)


def test_qk_norm_bounds_the_attention_logits():
    """Spec §10.6: with q, k = 1.2·norm(·) per head of 64, |q·k|/8 ≤ 11.52, reached when q = k."""
    config = tiny_config("yatgpt-tiny", hidden_size=128, num_attention_heads=2, intermediate_size=64)
    mixer = SoftmaxAttention(config, 0)
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0, 3.0)
        mixer.k_proj.weight.copy_(mixer.q_proj.weight)
    ids = torch.randint(0, 101, (2, 9))
    q, k, _ = mixer.project(torch.randn(2, 9, 128), yatgpt_context(config, ids))
    torch.testing.assert_close(q.norm(dim=-1), torch.full(q.shape[:-1], 1.2 * 8.0))
    logits = q @ k.transpose(-1, -2) * mixer.scale
    assert logits.abs().max().item() <= 11.52 + 1e-5
    torch.testing.assert_close(logits.diagonal(dim1=-2, dim2=-1), torch.full((2, 2, 9), 11.52))


def test_value_embedding_formula():
    config = tiny_config("yatgpt-tiny")
    assert [config.layer_spec(i).value_embed for i in range(4)] == [False, True, False, True]
    mixer = SoftmaxAttention(config, 1)
    assert SoftmaxAttention(config, 0).value_embed is None
    with torch.no_grad():
        mixer.value_embed.gate.normal_()
        mixer.value_embed.table.weight.normal_()
    ids = torch.randint(0, 101, (2, 7))
    x = torch.randn(2, 7, 64)
    _, _, v = mixer.project(x, yatgpt_context(config, ids))
    gate = 3 * torch.sigmoid(x[..., :12] @ mixer.value_embed.gate.T)  # (B, T, H) one gate per head
    expected = (mixer.v_proj(x).view(2, 7, 4, 16) + gate[..., None] * mixer.value_embed.table(ids).view(2, 7, 4, 16))
    torch.testing.assert_close(v, expected.transpose(1, 2))


def test_value_embeddings_need_token_ids():
    config = tiny_config("yatgpt-tiny")
    ctx = yatgpt_context(config, torch.zeros(1, 3, dtype=torch.long))
    ctx.input_ids = None
    with pytest.raises(ValueError, match="needs input_ids"):
        SoftmaxAttention(config, 1)(torch.randn(1, 3, 64), ctx)


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
