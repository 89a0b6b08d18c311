"""The attention kernel (eager and sdpa) against a per-query loop, and the attention mixer's invariants."""

import math

import pytest
import torch

from conftest import tiny_model
from lmlab.nn.attention import causal_attention


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
