"""The numbers of a comparison, read back from each run's metrics.jsonl, and their mean ± std over seeds.

Per run:
    loss_last     training loss of the last optimizer step (one batch: noisy)
    loss_smooth   exponential moving average of the per-step training loss, weight 0.05 on the newest step,
                  started at the first step's loss: s₁ = ℓ₁, sₜ = 0.95·sₜ₋₁ + 0.05·ℓₜ (flaxchat's train_gpt2.py, the
                  "smooth loss" of the yatgpt cards — whose tables mixed it with last-step values)
    val_loss      validation loss at the end (nats per token) and val_bpb, bits per UTF-8 byte of the text
    tokens_per_s  training tokens / training seconds; wall_s the training seconds (validation and checkpoints
                  excluded, as the trainer counts elapsed_s)
Over seeds: the mean and the sample standard deviation (n − 1 in the denominator; undefined, shown as "—", for one
seed) of the runs that finished; a diverged run is counted apart and left out of both.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.train.metrics import read_metrics

SMOOTHING = 0.05
METRICS = ("loss_last", "loss_smooth", "val_loss", "val_bpb", "tokens_per_s", "wall_s")


def smoothed(losses: list[float], weight: float = SMOOTHING) -> list[float]:
    """The EMA of `losses` after each step (see the module doc)."""
    out: list[float] = []
    for loss in losses:
        out.append(loss if not out else (1.0 - weight) * out[-1] + weight * loss)
    return out


@dataclass
class RunSummary:
    variant: str
    seed: int
    status: str  # finished | diverged
    steps: int = 0
    tokens: int = 0
    values: dict = field(default_factory=dict)  # METRICS -> float
    curves: dict = field(default_factory=dict)  # step, tokens, elapsed_s, loss, loss_smooth; val_step, val_loss


def summarize_run(run_dir: Path, variant: str, seed: int, status: str) -> RunSummary:
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    summary = RunSummary(variant, seed, status)
    if not train:
        return summary
    losses = [r["loss"] for r in train]
    smooth = smoothed(losses)
    elapsed = {r["step"]: r["elapsed_s"] for r in train}
    summary.steps, summary.tokens = train[-1]["step"], train[-1]["tokens"]
    wall = train[-1]["elapsed_s"]
    summary.values = {"loss_last": losses[-1], "loss_smooth": smooth[-1],
                      "val_loss": val[-1]["val_loss"] if val else math.nan,
                      "val_bpb": val[-1]["val_bpb"] if val else math.nan,
                      "tokens_per_s": summary.tokens / wall if wall > 0 else math.nan, "wall_s": wall}
    summary.curves = {"step": [r["step"] for r in train], "tokens": [r["tokens"] for r in train],
                      "elapsed_s": [r["elapsed_s"] for r in train], "loss": losses, "loss_smooth": smooth,
                      "val_step": [r["step"] for r in val], "val_loss": [r["val_loss"] for r in val],
                      "val_elapsed_s": [elapsed.get(r["step"], math.nan) for r in val]}
    return summary


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for fewer than two values) of the finite `values`."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else math.nan


@dataclass
class VariantSummary:
    name: str
    runs: list[RunSummary]

    @property
    def finished(self) -> list[RunSummary]:
        return [run for run in self.runs if run.status == "finished"]

    @property
    def diverged(self) -> list[RunSummary]:
        return [run for run in self.runs if run.status == "diverged"]

    def stat(self, metric: str) -> tuple[float, float]:
        return mean_std([run.values[metric] for run in self.finished])
