"""Fine-tuning: a training run that starts from a trained model (`TrainConfig.base`) instead of a fresh preset model,
training every weight, or, with `TrainConfig.lora`, only LoRA adapters on the frozen base (lmlab.train.lora).

The trainer (lmlab.train.loop) is the same; `BaseModel` is the model source that supplies what differs:

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

from lmlab.config import LMLabConfig
from lmlab.data.tokenizers import TokenizerError, load_tokenizer, save_tokenizer
from lmlab.errors import UnknownNameError
from lmlab.model import LMLabForCausalLM, count_parameters
from lmlab.overrides import apply_overrides
from lmlab.presets import get_preset
from lmlab.run_layout import BASE_DIR, MODEL_CONFIG, TEMPORARY_PREFIX, resolve_model_dir
from lmlab.train import distributed as dist_utils
from lmlab.train.config import BUDGET_KEYS, RECIPE_KEYS, TrainConfig, apply_options, check_seq_len
from lmlab.train.lora import (
    LoraSettings,
    adapter_parameter_count,
    apply_lora,
    load_lora,
    load_merged,
    lora_config,
    save_lora_checkpoint,
)
from lmlab.train.model_source import ModelSource

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json")
# the base preset's recipe keys a fine-tune inherits: not its tokenizer (the base's own is used) nor its budget
INHERITED_RECIPE_KEYS = tuple(key for key in RECIPE_KEYS if key not in ("tokenizer", "chinchilla"))


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
        target, temporary = run_dir / BASE_DIR, run_dir / f"{TEMPORARY_PREFIX}{BASE_DIR}"
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


class BaseModel(ModelSource):
    """The model source of a fine-tune: the base, copied to RUN/base when the run starts; checkpoints hold every
    weight, or, with LoRA, the adapters beside links to RUN/base."""

    def start(self, run_dir: Path, env: dist_utils.Environment, log) -> None:
        write_base(self.config, run_dir, env, log)

    def tokenizer_spec(self, run_dir: Path) -> str:
        return str(run_dir / BASE_DIR)

    def build(self, tokenizer, run_dir: Path, checkpoint: Path | None, log):
        return build_model(self.config, run_dir, checkpoint, log)

    def save(self, model, folder: Path, run_dir: Path, state_dict: dict | None = None) -> None:
        if self.config.lora is None:
            super().save(model, folder, run_dir, state_dict)
        else:
            save_lora_checkpoint(model, folder, run_dir / BASE_DIR)


def lora_values(rank: int | None, alpha: float | None, targets: list[str] | None, dropout: float | None) -> dict:
    """TrainConfig.lora from LoRA options (None = the default), validated (rank 8, α = rank, every mixer
    projection, no dropout)."""
    if targets is not None and not targets:
        raise ValueError("the LoRA targets are empty; name projections such as q_proj,v_proj, or leave them out")
    values = {"rank": 8 if rank is None else rank, "alpha": alpha, "targets": targets,
              "dropout": 0.0 if dropout is None else dropout}
    lora_settings(values)  # a clear error for rank <= 0, alpha <= 0, dropout outside [0, 1)
    return values


def finetune_config(base: str, lora: dict | None, options: dict) -> TrainConfig:
    """The config of a fine-tune of `base` (a model directory, run or adapter checkpoint): its preset's recipe (when
    the preset is known; not its tokenizer or budget), the base, the LoRA settings, the tokenizer (the base's own,
    else `options["tokenizer"]`, else the recipe's), then the training `options` (a budget is required)."""
    options = dict(options)
    if all(options.get(key) is None for key in BUDGET_KEYS):
        raise ValueError("a fine-tune needs a budget: --steps N or --tokens N (or --chinchilla X)")
    tokenizer = options.pop("tokenizer", None)
    model_dir = resolve_model_dir(base).resolve()
    base_config = LMLabConfig.from_pretrained(model_dir)
    preset = base_config.preset
    try:
        recipe = get_preset(preset).recipe if preset else {}
    except UnknownNameError:
        recipe = {}
    values = {"preset": preset or "custom", **{k: recipe[k] for k in INHERITED_RECIPE_KEYS if k in recipe},
              "base": str(model_dir), "lora": lora}
    if has_tokenizer(model_dir):
        if tokenizer is not None:
            raise ValueError(f"the base {model_dir} has its own tokenizer, which a fine-tune must keep (its ids are "
                             "the embedding rows); drop --tokenizer")
        values["tokenizer"] = str(model_dir)
    elif tokenizer or recipe.get("tokenizer"):
        values["tokenizer"] = tokenizer or recipe["tokenizer"]
    else:
        raise ValueError(f"the base {model_dir} holds no tokenizer files; pass --tokenizer (the one the base was "
                         "trained with, e.g. bytes)")
    config = apply_options(values, options)
    check_seq_len(config.seq_len, base_config)
    return config


def default_run_dir(base: str, lora: dict | None) -> str:
    return f"runs/{Path(base).resolve().name}-{'lora' if lora else 'finetune'}"


__all__ = ["BaseModel", "base_tokenizer", "build_model", "default_run_dir", "finetune_config", "has_tokenizer",
           "load_base", "lora_settings", "lora_values", "write_base"]
