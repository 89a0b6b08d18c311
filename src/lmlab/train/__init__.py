"""Training: config, optimizers, schedules, checkpoints, distributed helpers, metrics and the loop."""

from lmlab.train.config import TrainConfig, config_from_recipe
from lmlab.train.loop import TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "config_from_recipe", "train"]
