"""Learning-rate schedules: the learning rate of optimizer step t (t = 0, 1, …, total_steps − 1).

With peak η, floor η_min, warmup W and total N (W may exceed N: the N4 card's 2000-step warmup over 976 steps then
simply never reaches the peak, as published):

    cosine              t < W: η·t/W;            else η_min + (η − η_min)·½(1 + cos(π·(t − W)/(N − W)))
    linear              t < W: η·t/W;            else η_min + (η − η_min)·(1 − (t − W)/(N − W))   (HF Trainer)
    constant            t < W: η·t/W;            else η
    wsd                 t < W: η·t/W;  t < N − D: η;  else linear from η to η_min over the last D = ⌊f·N⌋ steps
    warm_start_cosine   t < W: η₀ + (η − η₀)·t/W; else as cosine (NeoLLM: 3e-4 → 6e-4 over 5000, cosine to 6e-5)

The cosine form is optax's `warmup_cosine_decay_schedule` (yatgpt: 0 → peak over 500, cosine to 5% at N).
The recipe gives the floor as `min_lr` (absolute) or `min_lr_ratio` (of the peak). After step N the learning rate
holds its value at N (an extended run that keeps its schedule: lmlab.train.extension).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("cosine", "linear", "constant", "wsd", "warm_start_cosine")


@dataclass(frozen=True)
class Schedule:
    name: str
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    start_lr: float = 0.0
    decay_fraction: float = 0.2

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; choose one of {list(SCHEDULES)}")
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"total_steps must be >= 1 and warmup_steps >= 0, got {self.total_steps} and "
                             f"{self.warmup_steps}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")

    def __call__(self, step: int) -> float:
        peak, floor, warmup, total = self.peak_lr, self.min_lr, self.warmup_steps, self.total_steps
        step = min(step, total)
        if step < warmup:
            start = self.start_lr if self.name == "warm_start_cosine" else 0.0
            return start + (peak - start) * step / warmup
        if self.name == "constant":
            return peak
        if self.name == "wsd":
            decay = int(self.decay_fraction * total)
            if step < total - decay:
                return peak
            return peak + (floor - peak) * min(1.0, (step - (total - decay)) / max(decay, 1))
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        if self.name == "linear":
            return floor + (peak - floor) * (1.0 - progress)
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(spec: dict, peak_lr: float, total_steps: int) -> Schedule:
    """A `Schedule` from a recipe's `schedule` dict (see presets/__init__.py for the keys)."""
    spec = dict(spec)
    name = spec.pop("name", "cosine")
    ratio = spec.pop("min_lr_ratio", None)
    if ratio is not None:
        if "min_lr" in spec:
            raise ValueError("give the schedule floor as min_lr or min_lr_ratio, not both")
        spec["min_lr"] = ratio * peak_lr
    unknown = set(spec) - {"warmup_steps", "min_lr", "start_lr", "decay_fraction"}
    if unknown:
        raise ValueError(f"schedule {name!r} has unknown keys {sorted(unknown)}; known: warmup_steps, min_lr, "
                         "min_lr_ratio, start_lr (warm_start_cosine), decay_fraction (wsd)")
    return Schedule(name=name, peak_lr=peak_lr, total_steps=total_steps, **spec)


def lr_schedulers(optimizers: list[torch.optim.Optimizer], schedule: Schedule) -> list:
    """One LambdaLR per optimizer, scaling each group's own base learning rate by schedule(t) / peak."""
    factor = (lambda step: schedule(step) / schedule.peak_lr) if schedule.peak_lr else (lambda step: 0.0)
    return [torch.optim.lr_scheduler.LambdaLR(optimizer, factor) for optimizer in optimizers]


__all__ = ["SCHEDULES", "Schedule", "build_schedule", "lr_schedulers"]
