"""The NeoLLM presets: layer pattern, exact parameter counts (spec §6), init, tying, recipe, `lmlab info`'s breakdown,
and whole-model invariants beyond the generic tiny-preset tests (chunk-64 boundaries, FAN before Gated DeltaNet under
left padding, bf16 training)."""

import json

import pytest
import torch

from conftest import TINY_VOCAB, randomise_parameters, tiny_model
from lmlab import LMLabForCausalLM, get_preset, list_presets, preset_config
from lmlab.cli import main
from lmlab.info import parameter_breakdown, parameter_counts


def meta_model(name, **overrides):
    with torch.device("meta"):
        return LMLabForCausalLM(preset_config(name, **overrides))


def test_full_attention_at_layers_4_8_12_and_fan_placement():
    config = preset_config("neollm-110m")
    specs = [config.layer_spec(i) for i in range(12)]
    assert [i + 1 for i, s in enumerate(specs) if s.mixer == "gated_attention"] == [4, 8, 12]
    assert all(s.mixer == "gated_deltanet" for i, s in enumerate(specs) if (i + 1) % 4)
    assert [i + 1 for i, s in enumerate(specs) if s.fan] == [4, 8, 12]
    everywhere = preset_config("neollm-110m-fan-all")
    assert all(everywhere.layer_spec(i).fan for i in range(12))


def test_published_parameter_counts():
    model = meta_model("neollm-110m")
    counts = parameter_counts(model)
    assert (counts.total, counts.embedding, counts.non_embedding) == (109_604_156, 77_652_480, 31_951_676)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert parameter_counts(meta_model("neollm-110m-fan-all")).total == 111_672_572
    assert parameter_counts(meta_model("neollm-110m", gpas="sublayer")).total == 109_604_156 + 12


def test_per_module_counts_of_spec_section_6():
    rows = {row["component"]: row for row in parameter_breakdown(meta_model("neollm-110m"))}
    expected = {"embedding": (1, 77_652_480), "mixer gated_attention": (3, 917_632),
                "mixer gated_deltanet": (9, 1_069_120), "fan": (3, 229_824), "mlp polynorm": (12, 1_572_868),
                "norm": (25, 512), "gpas": (12, 1)}
    assert {name: (row["modules"], row["each"]) for name, row in rows.items()} == expected


@pytest.mark.parametrize("preset", [p.name for p in list_presets()])
def test_breakdown_adds_up_to_the_total(preset):
    model = meta_model(preset)
    assert sum(row["parameters"] for row in parameter_breakdown(model)) == parameter_counts(model).total


def test_info_prints_the_breakdown(capsys):
    assert main(["info", "--preset", "neollm-110m"]) == 0
    text = capsys.readouterr().out
    assert "109,604,156" in text
    assert "mixer gated_deltanet" in text and "1,069,120" in text and "229,824" in text
    assert main(["info", "--preset", "neollm-tiny", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert {row["component"] for row in facts["components"]} >= {"embedding", "mixer gated_attention", "fan"}


def test_init_of_the_component_parameters():
    model = tiny_model("neollm-tiny")
    gdn, attention_block = model.model.layers[0].mixer, model.model.layers[3]
    assert torch.equal(model.model.norm.weight, torch.zeros(64))  # zero-centred norms start at 0
    assert torch.equal(attention_block.mixer.q_norm.weight, torch.zeros(16))
    assert torch.equal(gdn.norm.weight, torch.ones(16)) and torch.equal(gdn.dt_bias, torch.ones(4))
    assert ((gdn.A_log.exp() > 0) & (gdn.A_log.exp() < 16)).all()
    assert torch.equal(attention_block.fan.proj.bias, torch.zeros(56))
    assert torch.allclose(attention_block.mlp.act_fn.weight, torch.full((3,), 1 / 3))
    assert torch.equal(attention_block.gpas.alpha, torch.zeros(1))
    big = torch.cat([gdn.in_proj_qkvz.weight.flatten(), attention_block.mixer.out_proj.weight.flatten()])
    assert abs(big.std().item() - 0.02) < 0.002  # plain N(0, 0.02): no depth-scaled output init with LNS


def test_recipe_follows_the_card():
    recipe = get_preset("neollm-110m").recipe
    assert recipe["tokenizer"] == "qwen" and recipe["grad_clip"] == 1.0
    assert recipe["optimizer"] == dict(name="ademamix", lr=6e-4, betas=(0.9, 0.999, 0.999), alpha=5.0,
                                       t_alpha=5000, t_beta3=5000, eps=1e-8, weight_decay=0.1)
    assert recipe["schedule"] == dict(name="warm_start_cosine", warmup_steps=5000, start_lr=3e-4, min_lr=6e-5)


def test_cached_decoding_across_chunk_64_boundaries():
    """The generic test uses chunk 16; here the published chunk of 64: a 70-token prefill, single steps, and a
    64-token chunked continuation from the cached state, against one 140-token forward."""
    model = tiny_model("neollm-tiny", linear_chunk_size=64)
    randomise_parameters(model, seed=6)
    x = torch.randint(0, TINY_VOCAB, (1, 140), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache()
        pieces = [model(x[:, :70], cache=cache, use_cache=True).logits]
        for start, stop in [(70, 71), (71, 135), *[(i, i + 1) for i in range(135, 140)]]:
            out = model(x[:, start:stop], cache=cache, use_cache=True)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_with_fan_in_front_of_gated_deltanet():
    """FAN has a bias, so FAN(pad) is not zero: the Gated DeltaNet layer must zero its own input at pads."""
    model = tiny_model("neollm-tiny", layers=[{"fan": True}, {"fan": True}, {}, {"mixer": "gated_attention"}])
    randomise_parameters(model, seed=7)
    row = torch.randint(0, TINY_VOCAB, (9,), generator=torch.Generator().manual_seed(2))
    x = torch.cat([torch.zeros(4, dtype=torch.long), row])[None]
    mask = torch.cat([torch.zeros(4, dtype=torch.long), torch.ones(9, dtype=torch.long)])[None]
    with torch.no_grad():
        torch.testing.assert_close(model(x, attention_mask=mask).logits[:, 4:], model(row[None]).logits,
                                   atol=1e-5, rtol=1e-5)


def test_bf16_autocast_training_step():
    model = tiny_model("neollm-tiny").train()
    x = torch.randint(0, TINY_VOCAB, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, labels=x).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
