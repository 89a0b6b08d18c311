"""LoRA through PEFT on every preset: a fresh adapter is the zero function, a fine-tuning step moves only the adapters
and changes outputs, adapters save and load on their own, merging is exact (spec nyx.md §7, §11.11), and
`lmlab export --merge-lora` writes a plain model directory."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from conftest import TINY_VOCAB, randomise_parameters, tiny_model
from lmlab import LMLabForCausalLM, list_presets, preset_config
from lmlab.cli import main
from lmlab.train.lora import (
    LoraSettings,
    adapter_parameter_count,
    apply_lora,
    load_lora,
    merge_lora,
    mixer_projections,
    save_lora,
    trainable_parameters,
)

TINY_PRESETS = [p.name for p in list_presets() if p.name.endswith("-tiny")]

pytestmark = pytest.mark.hf


def tokens(seed=0, length=20):
    return torch.randint(0, TINY_VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))


def base_model(preset, **overrides):
    model = tiny_model(preset, **overrides)
    randomise_parameters(model)
    return model


def finetune(model, steps=2, seed=1):
    """A few AdamW steps (no weight decay) on the adapters."""
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2, weight_decay=0.0)
    model.train()
    for step in range(steps):
        x = tokens(seed + step)
        model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def plain_state(model):
    """The base weights under their plain names (PEFT moves a wrapped projection's weight to `.base_layer`)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_fresh_adapters_change_nothing_and_only_they_train(preset):
    model = base_model(preset)
    x = tokens()
    with torch.no_grad():
        before = model(x).logits
    projections = mixer_projections(model)
    lora = apply_lora(model)
    with torch.no_grad():
        assert torch.equal(lora(x).logits, before)
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    adapted = {name.split(".lora_")[0].removeprefix("base_model.model.") for name in trainable}
    assert adapted == set(projections)  # every projection of every token mixer, nothing else


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_finetuning_moves_only_adapters_and_merges_exactly(preset):
    model = base_model(preset)
    x = tokens(9)
    with torch.no_grad():
        before = model(x).logits
    base = plain_state(model)
    lora = finetune(apply_lora(model))
    after = plain_state(lora.get_base_model())
    assert after.keys() == base.keys()
    assert all(torch.equal(after[k], base[k]) for k in base), "a base weight changed"
    with torch.no_grad():
        adapted = lora(x).logits
    assert (adapted - before).abs().max() > 1e-4, "fine-tuning did not change the outputs"
    with lora.disable_adapter(), torch.no_grad():  # PaLM-rlhf's disable_lora: the base model, untouched
        assert torch.equal(lora(x).logits, before)
    merged = merge_lora(lora)
    assert type(merged) is LMLabForCausalLM
    assert set(merged.state_dict()) == set(base)
    with torch.no_grad():
        assert (merged(x).logits - adapted).abs().max().item() <= 1e-5


def test_merge_adds_scaled_low_rank_product():
    """W_merged = W + (α/r)·B·A for every adapted projection, here with α = 2r."""
    model = base_model("nyx-tiny")
    base = plain_state(model)
    lora = finetune(apply_lora(model, LoraSettings(rank=4, alpha=8.0)))
    q = lora.get_base_model().model.layers[1].mixer.q_proj
    delta = 2.0 * q.lora_B["default"].weight @ q.lora_A["default"].weight
    assert delta.abs().max() > 0
    merged = merge_lora(lora)
    torch.testing.assert_close(merged.model.layers[1].mixer.q_proj.weight,
                               base["model.layers.1.mixer.q_proj.weight"] + delta, atol=1e-6, rtol=1e-6)


def test_adapter_size_matches_the_palm_design():
    """Separate q, k, v and out adapters: r·(d + 512) + 2·r·(d + 64) + r·(512 + d) = 25,600 per nyx-30m layer."""
    with torch.device("meta"):
        lora = apply_lora(LMLabForCausalLM(preset_config("nyx-30m")))
    assert adapter_parameter_count(lora) == 204_800
    layer = sum(p.numel() for name, p in lora.named_parameters() if ".layers.0." in name and "lora_" in name)
    assert layer == 25_600
    assert sum(p.numel() for p in trainable_parameters(lora)) == 204_800
    assert sum(p.numel() for name, p in lora.named_parameters() if "lora_" not in name) == 30_020_096


def test_targets_are_configurable_and_checked():
    lora = apply_lora(base_model("nyx-tiny"), LoraSettings(rank=2, targets=("q_proj", "v_proj")))
    d, heads, head_dim, layers = 64, 4, 16, 2
    assert adapter_parameter_count(lora) == layers * 2 * ((d + heads * head_dim) + (d + head_dim))
    with pytest.raises(ValueError, match="matches no linear projection.*'q_proj'"):
        apply_lora(base_model("nyx-tiny"), LoraSettings(targets=("query",)))
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoraSettings(rank=0)
    with pytest.raises(ValueError, match="already carries adapters"):
        apply_lora(lora)


def test_adapters_save_alone_and_load_back(tmp_path):
    model = base_model("nyx-tiny")
    base = plain_state(model)
    lora = finetune(apply_lora(model))
    x = tokens(5)
    with torch.no_grad():
        adapted = lora(x).logits
    save_lora(lora, tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert all("lora_" in key for key in saved)
    assert sum(t.numel() for t in saved.values()) == adapter_parameter_count(lora)
    fresh = tiny_model("nyx-tiny")
    fresh.load_state_dict(base)
    loaded = load_lora(fresh, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, adapted)
    assert not trainable_parameters(loaded)  # inference by default
    resumed = load_lora(tiny_model("nyx-tiny"), tmp_path, trainable=True)  # a checkpoint holding adapter/
    assert {n for n, p in resumed.named_parameters() if p.requires_grad} == \
        {n for n, p in lora.named_parameters() if p.requires_grad}


def test_adapters_that_do_not_fit_are_refused(tmp_path):
    lora = finetune(apply_lora(base_model("nyx-tiny")))
    save_lora(lora, tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="holds no adapter_config.json"):
        load_lora(tiny_model("nyx-tiny"), tmp_path / "adapter" / "absent")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    saved = load_file(str(weights))
    del saved[sorted(saved)[0]]
    save_file(saved, str(weights))
    with pytest.raises(ValueError, match="do not fit this base model"):
        load_lora(tiny_model("nyx-tiny"), tmp_path / "adapter")


def test_export_merges_adapters_into_a_plain_model_directory(tmp_path, capsys):
    model = base_model("ngen4-tiny")
    model.save_pretrained(tmp_path / "base")
    (tmp_path / "base" / "tokenizer.json").write_text("{}")
    (tmp_path / "base" / "optimizer.pt").write_bytes(b"trainer state")
    lora = finetune(apply_lora(model))
    save_lora(lora, tmp_path / "adapter")
    x = tokens(3)
    with torch.no_grad():
        adapted = lora(x).logits
    out = tmp_path / "merged"
    assert main(["export", str(tmp_path / "base"), str(out), "--merge-lora", str(tmp_path / "adapter")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(exported) is LMLabForCausalLM
    with torch.no_grad():
        assert (exported(x).logits - adapted).abs().max().item() <= 1e-5
    assert (out / "tokenizer.json").is_file() and not (out / "optimizer.pt").exists()
    assert "peft" not in json.loads((out / "config.json").read_text()).get("architectures", [""])[0].lower()
    assert main(["export", str(tmp_path / "base"), str(tmp_path / "x"), "--merge-lora", str(tmp_path / "base")]) == 2
    assert "holds no adapter_config.json" in capsys.readouterr().err


def test_export_of_a_training_run_without_adapters(tmp_path):
    model = base_model("nyx-tiny")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000010"
    model.save_pretrained(checkpoint)
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("step-00000010")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "plain")]) == 0
    x = tokens(4)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    with torch.no_grad():
        assert torch.equal(exported(x).logits, model(x).logits)
