"""Training: the loop and one optimizer step, its config and options, data, model sources (a preset or a fine-tune's
base), optimizers, schedules, budgets, checkpoints, LoRA, distributed helpers and metrics."""

from lmlab.errors import TrainingDiverged
from lmlab.train.config import TrainConfig, config_from_recipe
from lmlab.train.finetune import BaseModel
from lmlab.train.loop import TrainResult, run_training
from lmlab.train.model_source import PresetModel


def train(config: TrainConfig, run_dir, resume: bool = False, device: str | None = None, log=print) -> TrainResult:
    """Train (or, with `resume`, continue) the run in `run_dir`: the preset `config.preset` from scratch, or, when
    `config.base` is set, a fine-tune of that model."""
    source = BaseModel(config) if config.base is not None else PresetModel(config)
    return run_training(config, source, run_dir, resume=resume, device=device, log=log)


__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "config_from_recipe", "run_training", "train"]
