"""Where a training run's model comes from, and how its checkpoints hold it.

The trainer knows nothing of presets or fine-tuning: it is handed a `ModelSource` and calls, in order,
`start` (a new run only), `tokenizer_spec`, `build` (fresh, or from the checkpoint being resumed) and, at every
checkpoint, `save`. `PresetModel` trains a preset from scratch; `lmlab.train.finetune.BaseModel` continues a trained
model (every weight, or LoRA adapters).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmlab.config import LMLabConfig
from lmlab.model import LMLabForCausalLM
from lmlab.overrides import apply_overrides, model_wide_value
from lmlab.presets import get_preset, preset_config
from lmlab.train import distributed as dist_utils
from lmlab.train.config import TrainConfig, model_vocab_size


class ModelSource:
    """The model of the run configured by `config` (see the module docstring)."""

    def __init__(self, config: TrainConfig):
        self.config = config

    def start(self, run_dir: Path, env: dist_utils.Environment, log) -> None:
        """Once, when a new run starts (before its data is read)."""

    def tokenizer_spec(self, run_dir: Path) -> str:
        return self.config.tokenizer

    def build(self, tokenizer, run_dir: Path, checkpoint: Path | None, log) -> nn.Module:
        raise NotImplementedError

    def save(self, model: nn.Module, folder: Path, run_dir: Path, state_dict: dict | None = None) -> None:
        """Write the model part of a checkpoint (`state_dict`: the full weights when the model is sharded)."""
        model.save_pretrained(folder, state_dict=state_dict)


def model_config(config: TrainConfig, tokenizer, log=lambda *_: None) -> LMLabConfig:
    """The model config a run trains: the preset's, sized for `tokenizer`, with the run's `--set` overrides."""
    preset = get_preset(config.preset)
    vocab_size, why = model_vocab_size(preset.config.get("vocab_size", 0), preset.recipe.get("tokenizer"),
                                       config.tokenizer, len(tokenizer),
                                       model_wide_value(config.model_overrides, "vocab_size"))
    log(why)
    base = preset_config(config.preset, vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return apply_overrides(base, config.model_overrides)


class PresetModel(ModelSource):
    """A preset's model, initialised with the run's seed (or the checkpoint's weights on resume)."""

    def build(self, tokenizer, run_dir: Path, checkpoint: Path | None, log) -> LMLabForCausalLM:
        if checkpoint is not None:
            return LMLabForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        resolved = model_config(self.config, tokenizer, log)
        torch.manual_seed(self.config.seed)
        return LMLabForCausalLM(resolved)


__all__ = ["ModelSource", "PresetModel", "model_config"]
