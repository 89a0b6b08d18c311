"""Fine-tuning: a training run that starts from a trained model (`TrainConfig.base`) instead of a fresh preset model,
training every weight, or, with `TrainConfig.lora`, only LoRA adapters on the frozen base (lmlab.lora).

The trainer (lmlab.train.loop) is the same; this module supplies what differs:

    RUN/base/                 the base as loaded (fp32, model overrides applied) with its tokenizer, written once
                              when the run starts: resuming, loading and exporting never depend on the original base
                              staying where it was (a base run keeps pruning its checkpoints)
    RUN/checkpoints/step-N/   full fine-tuning: a model directory, as `lmlab train` writes
                              LoRA: an adapter checkpoint (lora.save_lora_checkpoint): the adapters only, with
                              config.json and the weights linked to ../../base/, so `from_pretrained` (generate, eval,
                              transformers, lm-eval) loads base + adapters; plus tokenizer and trainer state

The base may be a model directory, a training run (its newest checkpoint), or an adapter checkpoint (merged first).
The tokenizer is the base's own when its directory holds one; a base without tokenizer files (converted weights)
takes `TrainConfig.tokenizer` (a built-in or a Hugging Face tokenizer: one whose ids the base was trained on).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from lmlab.data.tokenizers import TokenizerError, load_tokenizer, save_tokenizer
from lmlab.lora import LoraSettings, adapter_parameter_count, apply_lora, load_lora, load_merged, lora_config
from lmlab.model import LMLabForCausalLM, count_parameters
from lmlab.overrides import apply_overrides
from lmlab.run_layout import BASE_DIR, MODEL_CONFIG, resolve_model_dir
from lmlab.train import distributed as dist_utils

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json")


def has_tokenizer(model_dir: Path) -> bool:
    return any((model_dir / name).is_file() for name in TOKENIZER_MARKERS)


def lora_settings(values: dict) -> LoraSettings:
    """`TrainConfig.lora` (a JSON dict) as LoraSettings, validated."""
    values = dict(values)
    if values.get("targets") is not None:
        values["targets"] = tuple(values["targets"])
    return LoraSettings(**values)


def load_base(path: str | Path, model_overrides: list[str]) -> tuple[LMLabForCausalLM, Path]:
    """The base model named by `path` (merged if it carries adapters) with `model_overrides` applied to its config,
    and its model directory. Overrides may change what does not change a weight's shape (dropout, attention
    implementation, ...); a shape-changing one is refused by the strict reload."""
    model_dir = resolve_model_dir(path)
    model = load_merged(model_dir).float()
    if model_overrides:
        config = apply_overrides(model.config, model_overrides)
        state = model.state_dict()
        model = LMLabForCausalLM(config)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"model overrides {model_overrides} change the shapes of the base's weights; a "
                             "fine-tune keeps the base's sizes (override only dropout and the like)") from err
    return model.eval(), model_dir


def base_tokenizer(model_dir: Path, spec: str, vocab_size: int):
    """The base's own tokenizer, or, when its directory holds none, the one `spec` names."""
    if has_tokenizer(model_dir):
        tokenizer = load_tokenizer(str(model_dir))
    elif spec.startswith("bpe:"):
        raise TokenizerError(f"the base {model_dir} holds no tokenizer, and {spec} would train a new one whose ids "
                             "mean nothing to the base; pass the tokenizer the base was trained with")
    else:
        tokenizer = load_tokenizer(spec)
    if len(tokenizer) > vocab_size:
        raise TokenizerError(f"the tokenizer has {len(tokenizer):,} ids but the base model's vocabulary is "
                             f"{vocab_size:,}; use the tokenizer the base was trained with")
    return tokenizer


def write_base(config, run_dir: Path, env: dist_utils.Environment, log) -> None:
    """Copy the base (and its tokenizer) to RUN/base when a fine-tuning run starts; every process waits for it."""
    if env.is_main:
        model, model_dir = load_base(config.base, config.model_overrides)
        tokenizer = base_tokenizer(model_dir, config.tokenizer, model.config.vocab_size)
        if config.lora is not None:
            lora_config(model, lora_settings(config.lora))  # refuses targets that match nothing, before writing
        log(f"base: {model_dir} ({count_parameters(model):,} parameters), tokenizer "
            f"{'of the base' if has_tokenizer(model_dir) else config.tokenizer} ({len(tokenizer):,} ids)")
        target, temporary = run_dir / BASE_DIR, run_dir / f".tmp-{BASE_DIR}"
        shutil.rmtree(temporary, ignore_errors=True)
        model.save_pretrained(temporary)
        save_tokenizer(tokenizer, temporary, model.config.max_position_embeddings or config.seq_len)
        shutil.rmtree(target, ignore_errors=True)
        temporary.rename(target)
    dist_utils.barrier(env)


def build_model(config, run_dir: Path, checkpoint: Path | None, log):
    """The model a fine-tuning run trains: the base from RUN/base (with fresh or, on resume, saved adapters), or
    the checkpoint's full weights when resuming a full fine-tune."""
    if checkpoint is not None and config.lora is None:
        return LMLabForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    if not (run_dir / BASE_DIR / MODEL_CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir / BASE_DIR} is missing: a fine-tune keeps the model it started from there; "
                                "restore it, or start a new run")
    model = LMLabForCausalLM.from_pretrained(run_dir / BASE_DIR, dtype=torch.float32)
    if config.lora is None:
        log("full fine-tuning: every weight trains")
        return model
    if checkpoint is not None:
        model = load_lora(model, checkpoint, trainable=True)
    else:
        torch.manual_seed(config.seed)  # the adapters' random A matrices
        model = apply_lora(model, lora_settings(config.lora))
    adapters, total = adapter_parameter_count(model), count_parameters(model)
    log(f"LoRA {config.lora}: {adapters:,} trainable adapter parameters ({100 * adapters / total:.2f}% of "
        f"{total:,}); the base stays frozen")
    return model


__all__ = ["base_tokenizer", "build_model", "has_tokenizer", "load_base", "lora_settings", "write_base"]
