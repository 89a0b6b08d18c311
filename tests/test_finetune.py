"""`lmlab finetune`: LoRA fine-tunes leave the base bit-identical, train and save only adapters, resume exactly, load
as base + adapters and export merged with the adapted model's logits; full fine-tunes continue from the base's
weights; bad input is refused by name."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import REPO, randomise_parameters, tiny_model
from lmlab.cli import main
from lmlab.data.tokenizers import bytes_tokenizer
from lmlab.model import count_parameters
from lmlab.run_layout import resolve_model_dir
from lmlab.train.checkpoint import load_trainer_state
from lmlab.train.lora import adapter_parameter_count, load_base_weights, load_lora, load_merged
from lmlab.train.metrics import read_metrics

SMALL = {"nyx-tiny": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
         "ngen4-tiny": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}}
COMMON = ["--seq-len", "32", "--batch-size", "4", "--eval-batches", "1", "--sample-tokens", "0", "--no-progress",
          "--no-tensorboard"]


@pytest.fixture
def corpus():
    """A small local text: the trainer's own sources (~50 KB of Python)."""
    return REPO / "src" / "lmlab" / "train" / "*.py"


def make_base(preset, directory):
    """A small 'trained' base model directory (random weights, byte tokenizer saved beside them)."""
    model = tiny_model(preset, vocab_size=256, **SMALL[preset])
    randomise_parameters(model)
    model.save_pretrained(directory)
    bytes_tokenizer().save_pretrained(directory)
    return directory


def cli(tmp_path, *args):
    return main([*args, "--cache-dir", str(tmp_path / "cache")] if args[0] in ("train", "finetune") else list(args))


def finetune(tmp_path, base, out, corpus, *extra):
    return cli(tmp_path, "finetune", "--model", str(base), "--out", str(out), "--data", str(corpus), *COMMON, *extra)


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def logits(model, seed=0):
    x = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x).logits


def optimized_parameters(trainer_state) -> int:
    """Elements of the parameters every optimizer holds a moment for (Muon's momentum, AdamW's exp_avg)."""
    return sum(max(v.numel() for v in s.values()) for states in trainer_state["optimizers"]
               for s in states["state"].values())


def weights(directory):
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("preset", ["nyx-tiny", "ngen4-tiny"])
def test_lora_finetune_trains_saves_loads_and_merges_only_adapters(preset, corpus, tmp_path):
    base = make_base(preset, tmp_path / "base")
    run = tmp_path / "run"
    assert finetune(tmp_path, base, run, corpus, "--lora", "--rank", "4", "--steps", "4", "--lr", "1e-2",
                    "--warmup-steps", "1", "--checkpoint-every", "2") == 0  # 4 steps: no 100-step warm-up

    # the base is kept bit-identical, and only the adapters were ever in the optimizer
    original = weights(base)
    copied = weights(run / "base")
    assert copied.keys() == original.keys() and all(torch.equal(copied[k], original[k]) for k in original)
    checkpoint = resolve_model_dir(run)
    state = load_trainer_state(checkpoint)
    optimized = optimized_parameters(state)
    adapted = load_lora(load_base_weights(checkpoint), checkpoint)
    assert optimized == adapter_parameter_count(adapted) > 0
    plain = {k.replace(".base_layer", ""): v for k, v in adapted.get_base_model().state_dict().items()
             if "lora_" not in k}
    assert all(torch.equal(plain[k], original[k]) for k in original)

    # the checkpoint stores the adapters alone; its weights are links to RUN/base
    saved = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert saved and all("lora_" in key for key in saved)
    assert (checkpoint / "model.safetensors").is_symlink()
    assert (checkpoint / "adapter_model.safetensors").stat().st_size < 0.1 * (base / "model.safetensors").stat().st_size
    assert json.loads((run / "train_config.json").read_text())["lora"]["rank"] == 4

    # the fine-tune changed the outputs; from_pretrained on the run gives base + adapters, never the bare base
    expected = logits(adapted)
    assert (expected - logits(load_base_weights(base))).abs().max() > 1e-3
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(checkpoint)), expected)

    # export merges: from the run itself, or a base plus the run's adapters; unmerged export is refused
    assert cli(tmp_path, "export", str(run), str(tmp_path / "merged"), "--merge-lora") == 0
    assert cli(tmp_path, "export", str(base), str(tmp_path / "merged2"), "--merge-lora", str(run)) == 0
    for out in ("merged", "merged2"):
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / out)
        assert not (tmp_path / out / "adapter_config.json").exists()
        assert (logits(exported) - expected).abs().max().item() <= 1e-5
    assert cli(tmp_path, "export", str(run), str(tmp_path / "unmerged")) == 2


def test_lora_finetune_resumes_exactly(corpus, tmp_path, monkeypatch):
    import lmlab.train.loop as loop

    base = make_base("nyx-tiny", tmp_path / "base")
    args = ["--lora", "--rank", "2", "--lora-dropout", "0.2", "--targets", "q_proj,v_proj", "--steps", "6",
            "--lr", "1e-2", "--checkpoint-every", "3"]
    assert finetune(tmp_path, base, tmp_path / "straight", corpus, *args) == 0

    class Interrupted(Exception):
        pass

    real_save = loop.save_checkpoint

    def save_then_stop(run_dir, step, *rest, **kwargs):
        real_save(run_dir, step, *rest, **kwargs)
        if step == 3:
            raise Interrupted

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
    monkeypatch.setenv("LMLAB_DEBUG", "1")  # the command line passes the unexpected error on instead of a bug line
    with pytest.raises(Interrupted):
        finetune(tmp_path, base, tmp_path / "resumed", corpus, *args)
    monkeypatch.undo()
    assert sorted(losses(tmp_path / "resumed")) == [1, 2, 3]
    assert cli(tmp_path, "finetune", "--resume", "--out", str(tmp_path / "resumed"), "--no-progress") == 0
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 7)) and resumed == straight  # bitwise, dropout included
    assert cli(tmp_path, "finetune", "--resume", "--out", str(tmp_path / "resumed"), "--lora", "--rank", "4") == 2


    # a LoRA run as the base of another fine-tune: its adapters are merged into the new run's base
    assert finetune(tmp_path, tmp_path / "straight", tmp_path / "again", corpus, "--steps", "1") == 0
    merged = load_merged(tmp_path / "straight").state_dict()
    again = weights(tmp_path / "again" / "base")
    assert all(torch.equal(again[k], merged[k]) for k in again)


def test_full_finetune_continues_from_the_base_weights(corpus, tmp_path):
    small = [f"--set={k}={v}" for k, v in SMALL["ngen4-tiny"].items()]
    assert cli(tmp_path, "train", "--preset", "ngen4-tiny", "--tokenizer", "bytes", "--data", str(corpus), "--out",
               str(tmp_path / "pretrain"), *COMMON, "--batch-size", "8", "--steps", "40", "--lr", "5e-3",
               "--warmup-steps", "2", *small) == 0
    pretrained = losses(tmp_path / "pretrain")
    base_final = np.mean([pretrained[s] for s in range(36, 41)])
    assert base_final < 0.7 * math.log(256)  # the base learned something: far below a fresh model's ~ln 256

    run = tmp_path / "full"
    assert finetune(tmp_path, tmp_path / "pretrain", run, corpus, "--batch-size", "8", "--steps", "2",
                    "--lr", "1e-4") == 0
    first = losses(run)[1]
    assert abs(first - base_final) < 0.15 * base_final, (first, base_final)
    checkpoint = resolve_model_dir(run)
    assert not (checkpoint / "adapter_config.json").exists()  # a plain model directory, every weight trained
    optimized = optimized_parameters(load_trainer_state(checkpoint))
    assert optimized == count_parameters(AutoModelForCausalLM.from_pretrained(checkpoint))
    assert json.loads((run / "train_config.json").read_text())["preset"] == "ngen4-tiny"


def test_bad_input_is_refused_by_name(corpus, tmp_path, capsys):
    base = make_base("nyx-tiny", tmp_path / "base")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--model", str(tmp_path / "empty"), "--lora", "--steps", "1"], "neither a model directory"),
        (["--model", str(base), "--lora", "--rank", "0", "--steps", "1"], "rank must be a positive integer"),
        (["--model", str(base), "--lora", "--targets", "query", "--steps", "1"], "'query' matches no linear"),
        (["--model", str(base), "--rank", "4", "--steps", "1"], "--rank configure LoRA adapters; add --lora"),
        (["--model", str(base), "--lora"], "needs a budget"),
        (["--model", str(base), "--tokenizer", "gpt2", "--steps", "1"], "has its own tokenizer"),
        (["--model", str(base), "--lora", "--distributed", "fsdp", "--steps", "1"], "not FSDP"),
        (["--model", str(base), "--set", "hidden_size=64", "--steps", "1"], "change the shapes of the base"),
        (["--lora", "--steps", "1"], "give --model"),
    ]
    for args, message in cases:
        code = cli(tmp_path, "finetune", "--out", str(tmp_path / "run"), "--data", str(corpus), *COMMON, *args)
        assert code == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "run" / "checkpoints").exists()
