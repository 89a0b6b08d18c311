"""The assembled model: published parameter counts, causality, cache, save/load, HF integration, bad input."""

import pytest
import torch

from conftest import TINY_VOCAB, randomise_parameters, tiny_model
from lmlab import ConfigError, LMLabForCausalLM, count_parameters, list_presets, preset_config
from lmlab.hf_compat import enable_activation_checkpointing
from lmlab.registry import UnknownNameError

TINY_PRESETS = [p.name for p in list_presets() if p.name.endswith("-tiny")]


def meta_count(name: str, **overrides) -> int:
    with torch.device("meta"):
        return count_parameters(LMLabForCausalLM(preset_config(name, **overrides)))


def test_n4_published_parameter_counts():
    with torch.device("meta"):
        model = LMLabForCausalLM(preset_config("n4-127m"))
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    blocks = sum(p.numel() for p in model.model.layers.parameters())
    assert per_layer == 7_085_696
    assert blocks == 127_542_528
    assert count_parameters(model) == 177_874_176
    assert meta_count("n4-127m", vocab_size=32000) == 176_694_528
    assert model.lm_head.weight is not model.model.embed_tokens.weight


def test_ngen4_published_parameter_counts():
    assert meta_count("ngen4-50m") == 50_951_680
    assert meta_count("ngen4-50m", num_hidden_layers=6) == 44_646_912
    with torch.device("meta"):
        model = LMLabForCausalLM(preset_config("ngen4-50m"))
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_causality(preset):
    """Changing tokens after position t changes no logit at positions <= t."""
    model = tiny_model(preset)
    randomise_parameters(model)
    torch.manual_seed(1)
    x = torch.randint(0, TINY_VOCAB, (2, 24))
    t = 11
    y = x.clone()
    y[:, t + 1:] = torch.randint(0, TINY_VOCAB, (2, 24 - t - 1))
    a, b = model(x).logits, model(y).logits
    assert torch.equal(a[:, :t + 1], b[:, :t + 1])
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_cached_decoding_equals_full_forward(preset):
    model = tiny_model(preset)
    randomise_parameters(model)
    torch.manual_seed(2)
    x = torch.randint(0, TINY_VOCAB, (2, 40))
    full = model(x).logits
    cache = model.new_cache()
    pieces = [model(x[:, :13], cache=cache, use_cache=True).logits]
    for start, stop in [(13, 14), (14, 20), (20, 21), *[(i, i + 1) for i in range(21, 40)]]:
        out = model(x[:, start:stop], cache=cache, use_cache=True)
        pieces.append(out.logits)
    assert cache.get_seq_length() == 40
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_cached_decoding_with_left_padding(preset):
    model = tiny_model(preset)
    randomise_parameters(model)
    torch.manual_seed(3)
    rows = [torch.randint(0, TINY_VOCAB, (n,)) for n in (12, 7)]
    width = 12
    x = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, row in enumerate(rows):
        x[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    nxt = torch.randint(0, TINY_VOCAB, (2, 3))
    cache = model.new_cache()
    model(x, attention_mask=mask, cache=cache, use_cache=True)
    for step in range(3):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        out = model(nxt[:, step:step + 1], attention_mask=mask, cache=cache, use_cache=True)
    for i, row in enumerate(rows):  # each row alone, unpadded, must give the same last logits
        alone = model(torch.cat([row, nxt[i]])[None]).logits[0, -1]
        torch.testing.assert_close(out.logits[i, -1], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.hf
@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_save_and_auto_load_give_identical_logits(preset, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(preset)
    randomise_parameters(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is LMLabForCausalLM
    x = torch.randint(0, TINY_VOCAB, (2, 19))
    assert torch.equal(loaded(x).logits, model(x).logits)
    if model.config.tie_word_embeddings:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_loss_is_shifted_cross_entropy_ignoring_minus_100():
    model = tiny_model("ngen4-tiny")
    x = torch.randint(0, TINY_VOCAB, (2, 12))
    labels = x.clone()
    labels[0, 5:8] = -100
    out = model(x, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, TINY_VOCAB)
    targets = labels[:, 1:].reshape(-1)
    keep = targets != -100
    manual = -torch.log_softmax(logits[keep].double(), -1)[torch.arange(int(keep.sum())), targets[keep]].mean()
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert out.logits.dtype == torch.float32


def test_no_final_norm_and_untied_head_for_n4():
    model = tiny_model("n4-tiny")
    assert model.model.norm is None
    x = torch.randint(0, TINY_VOCAB, (1, 8))
    hidden = model.model(x).last_hidden_state
    torch.testing.assert_close(model(x).logits, hidden @ model.lm_head.weight.T)


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(checkpointing):
        model = tiny_model("ngen4-tiny").train()
        if checkpointing:
            enable_activation_checkpointing(model)
            assert all(block.gradient_checkpointing for block in model.model.layers)
        x = torch.randint(0, TINY_VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
        model(x, labels=x).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-6)


@pytest.mark.hf
def test_hf_trainer_trains_the_model(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = tiny_model("n4-tiny")
    torch.manual_seed(0)
    pattern = torch.arange(32) % 7  # a learnable sequence
    data = Dataset.from_dict({"input_ids": [pattern.tolist()] * 64, "labels": [pattern.tolist()] * 64})
    before = model(pattern[None], labels=pattern[None]).loss.item()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=30,
                             learning_rate=3e-3, report_to=[], save_strategy="no", logging_steps=10,
                             use_cpu=True)
    Trainer(model=model, args=args, train_dataset=data).train()
    model.eval()
    after = model(pattern[None], labels=pattern[None]).loss.item()
    assert after < 0.5 * before


# ---- bad input gets a clear error

def test_unknown_preset_lists_valid_names():
    from lmlab import get_preset

    with pytest.raises(UnknownNameError, match="ngen4-50m") as err:
        get_preset("ngen5-50m")
    assert "Did you mean 'ngen4-50m'" in str(err.value)


@pytest.mark.parametrize("field,value,valid", [("mixer", "mamba", "selective_copy"), ("mlp", "swish", "asgg"),
                                               ("norm", "batchnorm", "dyt_n4"), ("position", "alibi", "rope"),
                                               ("block", "weird", "sandwich")])
def test_unknown_component_lists_valid_names(field, value, valid):
    with pytest.raises(UnknownNameError, match=valid):
        preset_config("ngen4-tiny", **{field: value})


def test_hidden_size_not_divisible_by_heads():
    with pytest.raises(ConfigError, match="not divisible by num_attention_heads"):
        preset_config("ngen4-tiny", hidden_size=65)


def test_per_layer_override_with_unknown_field():
    with pytest.raises(ConfigError, match="unknown fields"):
        preset_config("ngen4-tiny", layers=[{"mixr": "attention"}, {}])


def test_token_id_outside_vocabulary():
    model = tiny_model("ngen4-tiny")
    with pytest.raises(ValueError, match=f"token id {TINY_VOCAB} is outside the vocabulary"):
        model(torch.tensor([[1, 2, TINY_VOCAB]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[1, -1]]))


def test_sequence_longer_than_the_position_limit():
    model = tiny_model("ngen4-tiny", max_position_embeddings=16)
    model(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.new_cache()
    model(torch.zeros(1, 10, dtype=torch.long), cache=cache, use_cache=True)
    with pytest.raises(ValueError, match="longer than this model's position limit"):
        model(torch.zeros(1, 7, dtype=torch.long), cache=cache, use_cache=True)


# ---- the keyword arguments transformers may pass, under every supported release

@pytest.mark.hf
def test_the_cache_is_taken_under_both_names_and_returned_under_the_installed_releases_name():
    from lmlab.hf_compat import CACHE_FIELD

    model = tiny_model("ngen4-tiny")
    randomise_parameters(model)
    x = torch.randint(0, TINY_VOCAB, (1, 9), generator=torch.Generator().manual_seed(0))
    full = model(x).logits[:, -1]
    for name in ("cache", "past_key_values"):
        out = model(x[:, :8], use_cache=True)
        cache = getattr(out, CACHE_FIELD)
        assert cache.get_seq_length() == 8 and set(out.keys()) == {"logits", CACHE_FIELD}
        step = model(x[:, 8:], use_cache=True, **{name: cache}).logits[:, -1]
        torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="given twice"):
        model(x, cache=model.new_cache(), past_key_values=model.new_cache(), use_cache=True)


@pytest.mark.hf
@pytest.mark.parametrize("forward", ["causal_lm", "base"])
def test_unknown_keyword_arguments_are_refused_not_swallowed(forward):
    model = tiny_model("ngen4-tiny")
    target = model if forward == "causal_lm" else model.model
    x = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="cache_params"):
        target(x, cache_params=None)
    with pytest.raises(TypeError, match="head_mask"):
        target(x, head_mask=torch.ones(2))
    with pytest.raises(ValueError, match="attention weights"):
        target(x, output_attentions=True)
    with pytest.raises(ValueError, match="token_type_ids"):
        target(x, token_type_ids=torch.ones_like(x))
    target(x, token_type_ids=torch.zeros_like(x), output_attentions=False)  # one segment, no attentions: fine


@pytest.mark.hf
def test_hidden_states_and_tuple_outputs():
    model = tiny_model("yatgpt-tiny")
    randomise_parameters(model)
    x = torch.randint(0, TINY_VOCAB, (2, 6))
    out = model(x, output_hidden_states=True)
    states = out.hidden_states
    assert len(states) == model.config.num_hidden_layers + 1
    assert all(s.shape == (2, 6, model.config.hidden_size) for s in states)
    torch.testing.assert_close(model.compute_logits(states[-1]), out.logits)  # the last one is the final output
    first_block_input = model.model.embedding_stage(model.model.embed_tokens(x), model_context(x))
    assert not torch.equal(states[0], model.model.embed_tokens(x))  # yatgpt: embedding norm and smear come first
    torch.testing.assert_close(states[0], first_block_input.float())
    logits, = model(x, return_dict=False, use_cache=False)
    torch.testing.assert_close(logits, out.logits)


def model_context(ids):
    from lmlab.nn.context import ForwardContext

    return ForwardContext(position_ids=torch.arange(ids.shape[1])[None], rotation=None, key_padding_mask=None,
                          cache=None, past_length=0, input_ids=ids)


@pytest.mark.hf
def test_num_items_in_batch_turns_the_mean_into_a_sum_over_the_accumulated_targets():
    """transformers' Trainer passes the target count of all accumulated micro-batches; the loss is then the sum of
    this batch's token losses divided by it, for both loss kinds."""
    for loss in ("full", "chunked"):
        model = tiny_model("ngen4-tiny", loss=loss)
        x = torch.randint(0, TINY_VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
        labels = x.clone()
        labels[0, :3] = -100
        mean = model(x, labels=labels).loss
        scored = int((labels[:, 1:] != -100).sum())
        torch.testing.assert_close(model(x, labels=labels, num_items_in_batch=40).loss, mean * scored / 40)
