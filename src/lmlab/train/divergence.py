"""What a run says when its training loss becomes NaN or infinite: the last good checkpoint, with its loss.

A kept checkpoint is good when the training loss logged at its step (RUN/metrics.jsonl: the last record at or before
the step) is finite and at most twice the run's first logged loss: a model far worse than at its start has diverged
already, even while its loss is still a number (say 1.2e9).
"""

from __future__ import annotations

import math
from pathlib import Path

from lmlab.run_layout import METRICS_FILE
from lmlab.train.checkpoint import complete_checkpoints
from lmlab.train.metrics import read_metrics

GOOD_LOSS_FACTOR = 2.0  # a checkpoint whose loss exceeds this multiple of the first logged loss has diverged


def checkpoint_losses(run_dir: Path) -> list[tuple[Path, float | None]]:
    """Each complete checkpoint of the run (oldest first) with the training loss logged at its step."""
    losses = {record["step"]: record["loss"] for record in read_metrics(run_dir) if "loss" in record}
    found = []
    for checkpoint in complete_checkpoints(run_dir):
        step = int(checkpoint.name.rsplit("-", 1)[1])
        logged = [s for s in losses if s <= step]
        found.append((checkpoint, losses[max(logged)] if logged else None))
    return found


def diverged_message(reason: str, step: int, run_dir: Path) -> str:
    """The error of a run stopped at `step` because `reason` (e.g. "the training loss became nan")."""
    found = checkpoint_losses(run_dir)
    records = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    ceiling = GOOD_LOSS_FACTOR * records[0] if records and math.isfinite(records[0]) else math.inf
    good = [(path, loss) for path, loss in found if loss is not None and math.isfinite(loss) and loss <= ceiling]
    if good:
        path, loss = good[-1]
        where = f"The last good checkpoint is {path} (training loss {loss:.4g} in {METRICS_FILE})"
        if found[-1][0] != path:
            where += f"; the newest, {found[-1][0].name}, had diverged already (loss {found[-1][1]:.3g})"
        fix = (f"start a new run with a lower --lr, or train on from its weights with a lower learning rate: "
               f"lmlab finetune --model {path} --lr X --steps N")
    else:
        where = ("No checkpoint was written yet" if not found else
                 "No kept checkpoint is good (losses " + ", ".join(f"{p.name}: {loss}" for p, loss in found) + ")")
        fix = "start a new run with a lower --lr"
    return (f"{reason} at step {step}; stopping. {where}. Lower the learning rate (or enable --grad-clip, or use "
            f"bf16 instead of fp16): {fix}")


__all__ = ["checkpoint_losses", "diverged_message"]
