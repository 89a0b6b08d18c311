"""Resuming with another budget: extending a run (`lmlab train --resume --out RUN --steps 60` on a 40-step run;
`--tokens` and `--chinchilla` work the same), or ending it earlier. The budget may end anywhere at or after the
checkpoint's step s. The learning rate follows one rule, whatever the schedule:

    the new budget's schedule, if it gives every step already taken (0 … s) the learning rate the run had: then the
    resumed run is exactly the run trained on the new budget from the start;
    else the run's own schedule, which runs to its end and then holds its final learning rate.

Per schedule (N: the old budget, N′: the new one, W: warmup, f: wsd's decay fraction):

    constant               the new schedule, always: the peak continues (== training N′ steps from the start)
    wsd                    a checkpoint before the decay began (s ≤ N − ⌊f·N⌋ and s ≤ N′ − ⌊f·N′⌋): the decay moves to
                           the end of the new budget (== training N′ steps); a run already decaying (every finished
                           run) finishes its decay, then holds min_lr
    cosine, linear,        a checkpoint inside the warmup (s ≤ W): the new schedule (== training N′ steps); later, the
    warm_start_cosine      old curve runs to step N, then its floor min_lr holds

A run whose schedule would hold a learning rate of 0 past its end is not extended (it would not train): the error
gives the `lmlab finetune` command that trains the checkpoint on with a fresh schedule.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from lmlab.errors import ConfigError
from lmlab.train.config import TrainConfig
from lmlab.train.schedules import Schedule, build_schedule


def run_schedule(config: TrainConfig) -> Schedule:
    """The learning-rate schedule a run follows (over `schedule_steps` when set, else over its budget)."""
    return build_schedule(config.schedule, config.peak_lr, config.schedule_steps or config.steps)


def continued_schedule_steps(saved: TrainConfig, config: TrainConfig, step: int, checkpoint: Path,
                             log) -> int | None:
    """`schedule_steps` for `config` resuming at `step` the checkpoint that `saved` (its config) wrote (see the
    module docstring); `config.steps` is the new budget."""
    if config.steps < step:
        raise ConfigError(f"the budget of {config.steps:,} steps ends before {checkpoint.name}, at step {step:,}; "
                          "give a larger budget (--steps, --tokens or --chinchilla) to extend the run")
    old = run_schedule(saved)
    new = build_schedule(config.schedule, config.peak_lr, config.steps)
    if all(new(t) == old(t) for t in range(step + 1)):
        if config.steps != saved.steps:
            log(f"budget: {saved.steps:,} -> {config.steps:,} steps; the {new.name} schedule of {config.steps:,} "
                "steps gave every step so far the same learning rate, so it continues the run exactly")
        return None
    final = old(old.total_steps)
    if config.steps > old.total_steps and final == 0:
        command = ["lmlab", "finetune", "--model", str(checkpoint),
                   *(part for spec in config.data for part in ("--data", spec)), "--steps", str(config.steps - step)]
        raise ConfigError(f"the run's {old.name} schedule ends at step {old.total_steps:,} with learning rate 0, "
                          f"which an extension would hold, training nothing; train the checkpoint on with a fresh "
                          f"schedule instead: {shlex.join(command)}")
    if config.steps != saved.steps:
        log(f"budget: {saved.steps:,} -> {config.steps:,} steps; the run keeps its {old.name} schedule, which ends "
            f"at step {old.total_steps:,}; the learning rate then holds {final:.3g}")
    return old.total_steps


__all__ = ["continued_schedule_steps", "run_schedule"]
