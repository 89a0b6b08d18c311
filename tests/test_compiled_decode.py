"""Compiled decoding (`compile=True`): the same tokens as eager cached decoding, never stale weights.

Each compilation takes tens of seconds on two cores, so these tests compile few graphs: one padded batch for each
preset with a decoding state beyond a plain KV cache (sliding windows, smear and value embeddings in yatgpt; Gated
DeltaNet's convolution and recurrent states in NeoLLM; N4's key sums), every attention window shorter than the
sequence so that sliding caches cross their window inside the compiled step. Plain attention (ngen4) is compiled by
the weight-change test.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import assert_logits_close, engine_logits, random_path, randomise_parameters
from lmlab.cache import KVCache
from lmlab.generation.engine import Generator, generate_tokens
from lmlab.generation.sampling import SamplingOptions
from test_generate import GREEDY, random_prompts, windowed

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("preset", ["yatgpt-tiny", "neollm-tiny", "n4-tiny"])
def test_compiled_decoding_equals_eager_decoding(preset):
    model = windowed(preset, 8)
    randomise_parameters(model)
    prompts = random_prompts((11, 4))  # left padding; the window is crossed in the prompt and while decoding
    path = random_path(2, 16, seed=1)
    eager = engine_logits(model, prompts, path)
    graphs = counters["stats"]["unique_graphs"]
    compiled = engine_logits(model, prompts, path, compile=True)
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile (dynamo falls back to eager silently)
    assert_logits_close(compiled, eager)


def test_compiled_decoding_sees_weights_changed_after_compiling():
    """Frozen weights are a snapshot: an in-place update (an optimizer step) must trigger a recompile."""
    model = windowed("ngen4-tiny", 8)
    randomise_parameters(model)
    prompts, path = random_prompts((6,)), random_path(1, 10, seed=1)
    before = engine_logits(model, prompts, path, compile=True)
    randomise_parameters(model, seed=1, scale=3.0)
    eager = engine_logits(model, prompts, path)
    assert (eager[-1] - before[-1]).abs().max() > 1e-2  # the change matters, so a stale step would be caught
    assert_logits_close(engine_logits(model, prompts, path, compile=True), eager)


def test_each_model_decodes_through_its_own_compiled_graph():
    """The compiled step skips dynamo's guards on modules: a second model of the same shape must get its own graph,
    never the first one's (whose weights are frozen into it)."""
    first, second = windowed("ngen4-tiny", 8), windowed("ngen4-tiny", 8)
    randomise_parameters(first)
    randomise_parameters(second, seed=1, scale=3.0)
    prompts, path = random_prompts((6,)), random_path(1, 10, seed=1)
    first_compiled = engine_logits(first, prompts, path, compile=True)
    eager = engine_logits(second, prompts, path)
    assert (eager[-1] - first_compiled[-1]).abs().max() > 1e-2  # reusing the first graph would be caught
    assert_logits_close(engine_logits(second, prompts, path, compile=True), eager)


def test_compiled_decoding_sees_hooks_and_config_changed_after_compiling():
    """Without dynamo's module guards, the fingerprint must notice a hook added after compiling (and removed again)
    and config values the forward reads (the logit soft-cap, the attention backend)."""
    model = windowed("ngen4-tiny", 8)
    randomise_parameters(model)
    prompts, path = random_prompts((6,)), random_path(1, 10, seed=1)
    plain = engine_logits(model, prompts, path, compile=True)
    handle = model.model.layers[0].register_forward_hook(lambda module, args, output: output * 2.0)
    hooked = engine_logits(model, prompts, path)
    assert (hooked[-1] - plain[-1]).abs().max() > 1e-2
    assert_logits_close(engine_logits(model, prompts, path, compile=True), hooked)
    handle.remove()
    assert_logits_close(engine_logits(model, prompts, path, compile=True), plain)
    model.config.logit_softcap = 0.5
    capped = engine_logits(model, prompts, path)
    assert capped[-1].abs().max() <= 0.5 + 1e-6
    assert_logits_close(engine_logits(model, prompts, path, compile=True), capped)
    graphs = counters["stats"]["unique_graphs"]
    model.config._attn_implementation = "eager"  # not in the config's JSON; the same logits, another kernel
    assert_logits_close(engine_logits(model, prompts, path, compile=True), capped)
    assert counters["stats"]["unique_graphs"] > graphs  # compiled anew for the backend asked for


def test_compiled_decoding_checks_its_positions_before_it_starts():
    """The compiled step cannot read its positions; XPOS key scales beyond fp32's safe range must still be refused,
    as an eager forward refuses them."""
    model = windowed("nyx-tiny", 8)
    model.check_positions_up_to(1000)
    with pytest.raises(ValueError, match="XPOS key scale"):
        model.check_positions_up_to(10**6)
    with pytest.raises(ValueError, match="XPOS key scale"):
        generate_tokens(model, [[1, 2, 3]], SamplingOptions(max_new_tokens=10**6, **GREEDY), compile=True)


def test_compile_needs_the_cache():
    model = windowed("ngen4-tiny", 8)
    with pytest.raises(ValueError, match="use_cache=True"):
        generate_tokens(model, [[1, 2, 3]], SamplingOptions(max_new_tokens=2), use_cache=False, compile=True)
    generator = Generator(model, tokenizer=None, compile=True)
    with pytest.raises(ValueError, match="use_cache=True"):
        generator.generate_ids([[1, 2]], SamplingOptions(max_new_tokens=2, stop_token_ids=()), use_cache=False)


def test_reserved_kv_buffers_keep_their_rows_and_are_never_reallocated():
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randn(2, 3, n, 4, generator=generator) for n in (5, 8, 7, 1)]
    cache = KVCache()
    cache.append(rows[0], rows[0] + 1)
    cache.reserve(21)  # beyond the 16 rows its first append allocated
    address = cache.keys.data_ptr()
    for row in rows[1:]:
        keys, values = cache.append(row, row + 1)
    assert cache.keys.data_ptr() == address and cache.keys.shape[2] == 21
    torch.testing.assert_close(keys, torch.cat(rows, dim=2), rtol=0, atol=0)
    torch.testing.assert_close(values, torch.cat(rows, dim=2) + 1, rtol=0, atol=0)
    cache.reserve(4)  # never shrinks
    assert cache.keys.shape[2] == 21
