"""The assembled yatgpt: published parameter counts, presets and the depth family, the recipe, init statistics,
soft-cap, and cached decoding with smear and sliding windows (flaxchat's post-smear cache bug must not recur)."""

import json
import math

import pytest
import torch

from conftest import (
    TINY_VOCAB,
    assert_logits_close,
    full_forward_logits,
    hf_generate_logits,
    random_path,
    randomise_parameters,
    tiny_model,
)
from lmlab import LMLabForCausalLM, count_parameters, get_preset, list_presets, preset_config
from lmlab.cache import KVCache, SlidingKVCache
from lmlab.cli import main
from lmlab.nn.embedding_stage import Smear
from lmlab.registry import UnknownNameError


def meta_count(name: str, **overrides) -> int:
    with torch.device("meta"):
        return count_parameters(LMLabForCausalLM(preset_config(name, **overrides)))


@pytest.mark.parametrize("overrides,count", [
    ({}, 261_133_226),                                                       # yatnmn-softplus (main model)
    ({"yatnmn_scalar_bias": True}, 261_096_374),                             # -sb
    ({"yatnmn_constant_alpha": 1.0}, 261_133_214),                           # -ca
    ({"yatnmn_scalar_bias": True, "yatnmn_constant_alpha": 1.0}, 261_096_362),  # -sb-ca (= card)
    ({"mlp": "yatnmn"}, 261_133_214),                                        # plain
    ({"mlp": "gelu"}, 261_096_338),
    ({"mlp": "relu2"}, 261_096_338),
])
def test_published_parameter_counts(overrides, count):
    assert meta_count("yatgpt-d12", **overrides) == count


def test_count_breakdown_and_tied_head():
    with torch.device("meta"):
        model = LMLabForCausalLM(preset_config("yatgpt-d12"))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tables = sum(layer.mixer.value_embed.table.weight.numel() for layer in model.model.layers
                 if layer.mixer.value_embed is not None)
    assert tables == 150_994_944
    matmuls = sum(p.numel() for name, p in model.named_parameters()
                  if p.dim() == 2 and "embed" not in name and "gate" not in name)
    assert matmuls == 84_934_656  # spec §6: the non-embedding matmul count
    assert not any(name.endswith(".bias") and "up_proj" not in name for name, _ in model.named_parameters())


def test_depth_family_follows_nanochat_width_rule():
    d12 = get_preset("yatgpt-d12").config
    assert (d12["hidden_size"], d12["num_attention_heads"], d12["intermediate_size"]) == (768, 12, 3072)
    d20 = preset_config("yatgpt-d20")
    assert (d20.hidden_size, d20.num_attention_heads, d20.head_dim, d20.num_hidden_layers) == (1280, 20, 64, 20)
    d7 = preset_config("yatgpt-d7")  # not listed, resolved by name
    assert (d7.hidden_size, d7.num_attention_heads) == (448, 7)
    assert [d7.layer_spec(i).window for i in range(7)] == [256, 256, 256, 1024, 256, 256, 1024]
    listed = {p.name for p in list_presets() if p.family == "yatgpt"}
    assert listed == {"yatgpt-d6", "yatgpt-d12", "yatgpt-d20", "yatgpt-tiny"}
    with pytest.raises(UnknownNameError, match="depth must be between 1 and 96"):
        get_preset("yatgpt-d0")
    with pytest.raises(UnknownNameError, match="Did you mean 'yatgpt-d12'"):
        get_preset("yatgpt-d12x")


def test_recipe_reproduces_the_card_step_count():
    """The trainer's budget from the preset's recipe: Chinchilla 1× of 256 × 1024-token steps = the card's count."""
    from lmlab.train.budget import resolve_steps
    from lmlab.train.config import config_from_recipe
    from lmlab.train.optim import parameter_groups

    config = config_from_recipe("yatgpt-d12", {})
    assert config.tokens_per_step == 256 * 1024
    assert resolve_steps(config, meta_count("yatgpt-d12"), log=lambda _: None) == 19_922
    assert resolve_steps(config, meta_count("yatgpt-d12", mlp="gelu"), log=lambda _: None) == 19_920
    optimizer, schedule = config.optimizer, config.schedule
    assert optimizer["name"] == "adamw" and tuple(optimizer["betas"]) == (0.9, 0.999) and optimizer["lr"] == 0.03
    assert schedule["warmup_steps"] == 500 and schedule["min_lr"] == pytest.approx(0.05 * optimizer["lr"])
    assert config.grad_clip == 1.0 and config.tokenizer == "mistral-v1"
    # optax decays every parameter, scalars (lambdas, YatNMN α and ε) included
    model = tiny_model("yatgpt-tiny")
    groups = parameter_groups(model.named_parameters(), optimizer["weight_decay"], optimizer["no_decay"])
    decayed = {id(p) for group in groups if group["weight_decay"] == 0.01 for p in group["params"]}
    assert decayed == {id(p) for p in model.parameters()}


def test_mlp_variant_is_one_flag():
    gelu = tiny_model("yatgpt-tiny", mlp="gelu_new")  # the card's GELU runs: JAX's default, tanh
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(gelu.model.layers[0].mlp.activation(x), torch.nn.functional.gelu(x, approximate="tanh"))
    relu2 = tiny_model("yatgpt-tiny", mlp="relu2")
    torch.testing.assert_close(relu2.model.layers[0].mlp.activation(x), torch.relu(x) ** 2)


def test_init_statistics_and_initial_loss():
    """Spec §4 and §10.12 at d12 width (two layers, small vocabulary to keep it fast)."""
    model = tiny_model("yatgpt-d12", num_hidden_layers=2, vocab_size=4096)
    s = math.sqrt(3 / 768)
    layer0, layer1 = model.model.layers
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(0.8, rel=0.01)
    for proj in (layer0.mixer.q_proj, layer0.mixer.k_proj, layer0.mixer.v_proj):
        assert proj.weight.abs().max().item() <= s
        assert proj.weight.std().item() == pytest.approx(s / math.sqrt(3), rel=0.01)
    up = layer0.mlp.up_proj.weight
    assert up.abs().max().item() <= 0.4 * s and up.std().item() == pytest.approx(0.4 * s / math.sqrt(3), rel=0.01)
    for zero in (layer0.mixer.out_proj.weight, layer0.mlp.down_proj.weight):
        assert torch.count_nonzero(zero) == 0
    table, gate = layer1.mixer.value_embed.table.weight, layer1.mixer.value_embed.gate
    assert table.abs().max().item() <= s and table.std().item() == pytest.approx(s / math.sqrt(3), rel=0.01)
    assert 0 <= gate.min().item() and gate.max().item() <= 0.02
    assert torch.nn.functional.softplus(layer0.mlp.up_proj.raw_epsilon).item() == pytest.approx(1e-3)
    assert layer0.mlp.up_proj.alpha.item() == 1.0 and torch.count_nonzero(layer0.mlp.up_proj.bias) == 0
    smear = model.model.embedding_stage.smear
    assert smear.strength.item() == 0.0
    assert smear.gate.abs().max().item() <= 2 / math.sqrt(24) / 0.8796 and smear.gate.std().item() > 0.05
    stream = model.model.residual_stream
    torch.testing.assert_close(stream.resid_lambdas.data, torch.tensor([1.15, 1.05]))
    torch.testing.assert_close(stream.x0_lambdas.data, torch.tensor([0.20, 0.05]))
    assert stream.backout_lambda.item() == pytest.approx(0.2)
    ids = torch.randint(0, 4096, (2, 64), generator=torch.Generator().manual_seed(0))
    loss = model(ids, labels=ids).loss.item()
    assert loss > 2 * math.log(4096)  # the tied N(0, 0.8) head scores the current token: ≈ 22 here, not ln V


def test_logits_are_soft_capped():
    model = tiny_model("yatgpt-tiny")
    randomise_parameters(model)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(50)
    ids = torch.randint(0, TINY_VOCAB, (2, 20))
    logits = model(ids).logits
    uncapped = model.lm_head(model.model(ids).last_hidden_state)
    assert uncapped.abs().max().item() > 100.0
    assert logits.abs().max().item() <= 15.0  # 15·tanh(x/15); tanh rounds to 1 in fp32 for |x| ≳ 135
    torch.testing.assert_close(logits, 15 * torch.tanh(uncapped / 15))


def test_bf16_autocast_runs_close_to_fp32():
    model = tiny_model("yatgpt-tiny")
    randomise_parameters(model)
    ids = torch.randint(0, TINY_VOCAB, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(ids).logits
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, model(ids).logits, atol=0.15, rtol=0.05)


# ---- cached decoding: smear's pre-smear cache and sliding windows

def decoding_model(seed=0, **overrides):
    model = tiny_model("yatgpt-tiny", seed=seed, **overrides)
    randomise_parameters(model, seed=seed)  # random c_proj, lambdas, gates...
    with torch.no_grad():
        model.model.embedding_stage.smear.strength.fill_(0.5)
    return model


def decode(model, ids, prefill):
    """Logits of ids fed as the given prefill chunks, then one token at a time."""
    pieces, cache, start = [], model.new_cache(), 0
    for stop in [*prefill, *range(prefill[-1] + 1, ids.shape[1] + 1)]:
        pieces.append(model(ids[:, start:stop], cache=cache, use_cache=True).logits)
        start = stop
    return torch.cat(pieces, dim=1), cache


@pytest.mark.parametrize("overrides,length", [({}, 80),  # windows 16 / 64 both crossed
                                              ({"window_long": 512, "window_short": None}, 140)])  # rule: S = 128
def test_cached_decoding_equals_full_forward_with_smear_and_windows(overrides, length):
    """Spec §10.11: λ_smear = 0.5, random c_proj, two prefill chunks, then token by token past every window."""
    model = decoding_model(**overrides)
    ids = torch.randint(0, TINY_VOCAB, (2, length), generator=torch.Generator().manual_seed(1))
    full = model(ids).logits
    prefill = [length // 3, length // 2]
    cached, cache = decode(model, ids, prefill)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    windows = [model.config.layer_spec(i).window for i in range(4)]
    assert min(windows) < length - 1  # the last queries cannot see the first keys
    largest_chunk = max(prefill[0], prefill[1] - prefill[0])
    for window, state in zip(windows, cache.layers, strict=True):
        assert isinstance(state, SlidingKVCache) and state.window == window
        assert state.keys.shape[2] <= 2 * (min(window, length) + largest_chunk)  # not the whole sequence


def test_caching_the_post_smear_embedding_would_be_caught():
    """The regression test above fails for flaxchat's bug: caching the smeared embedding changes the next logits."""
    model = decoding_model()
    ids = torch.randint(0, TINY_VOCAB, (1, 12), generator=torch.Generator().manual_seed(2))
    full = model(ids).logits
    cache = model.new_cache()
    model(ids[:, :11], cache=cache, use_cache=True)
    smeared = model.model.embedding_stage(model.model.embed_tokens(ids[:, :11]), model_context(model, ids[:, :11]))
    cache.model_state[Smear.STATE_KEY] = smeared[:, -1:]
    buggy = model(ids[:, 11:], cache=cache, use_cache=True).logits
    assert (buggy[:, -1] - full[:, -1]).abs().max().item() > 1e-3


def model_context(model, ids):
    from lmlab.nn.context import ForwardContext

    positions = torch.arange(ids.shape[1])[None]
    return ForwardContext(position_ids=positions, rotation=None, key_padding_mask=None, cache=None, past_length=0,
                          input_ids=ids)


def test_unwindowed_layers_keep_a_growing_cache():
    model = tiny_model("yatgpt-tiny", window_pattern=None, window_long=None, window_short=None)
    cache = model.new_cache()
    model(torch.randint(0, TINY_VOCAB, (1, 5)), cache=cache, use_cache=True)
    assert all(type(state) is KVCache for state in cache.layers)


@pytest.mark.hf
def test_transformers_generate_with_the_cache_equals_recomputation_past_the_windows():
    model = decoding_model()
    prompts = torch.randint(0, TINY_VOCAB, (2, 10), generator=torch.Generator().manual_seed(3)).tolist()
    path = random_path(2, 60, seed=4)
    assert_logits_close(hf_generate_logits(model, prompts, path), full_forward_logits(model, prompts, path))


def test_cache_batch_operations_carry_the_smear_state():
    model = decoding_model()
    ids = torch.randint(0, TINY_VOCAB, (2, 30), generator=torch.Generator().manual_seed(4))
    cache = model.new_cache()
    model(ids[:, :25], cache=cache, use_cache=True)
    cache.reorder_cache(torch.tensor([1, 0]))
    swapped = model(ids[[1, 0], 25:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(swapped, model(ids[[1, 0]]).logits[:, 25:], atol=1e-5, rtol=1e-5)


def test_info_describes_the_published_model(capsys):
    assert main(["info", "--preset", "yatgpt-d12", "--seq-len", "64", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["parameters"]["total"] == 261_133_226
    assert facts["parameters"]["embedding"] == 25_165_824 + 150_994_944  # token table + six value-embedding tables
