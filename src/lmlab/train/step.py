"""One optimizer step, shared by the trainer and by anything that times it (`lmlab compare`'s seconds budget).

    for each micro-batch m of A:  loss_m = model(batch_m, labels=batch_m).loss / A;  backward (scaled under fp16;
                                  gradients synced across processes on the last m only)
    loss = Σ_m loss_m, averaged over processes     → not finite: TrainingDiverged, before any weight changes
    unscale; clip the global gradient norm; step every optimizer; update the loss scale; zero the gradients;
    step every learning-rate scheduler

The micro-batches share one autocast region (each backward runs with autocast off, nested inside it): torch.autocast
caches the bf16 copy of each weight until the outermost region ends, so a weight is cast once per step, not once per
micro-batch. The model is asked for the loss only (`return_logits=False`): it is computed from the hidden states
chunk by chunk, never holding the batch × sequence × vocabulary logits (lmlab.nn.loss).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import TrainingDiverged
from lmlab.hardware import device_runs_bf16_fast
from lmlab.nn.numerics import autocast_disabled
from lmlab.train import distributed as dist_utils
from lmlab.train.config import PRECISIONS
from lmlab.train.optim import build_optimizers
from lmlab.train.schedules import lr_schedulers

CPU_BF16_MIN_WIDTH = 256  # narrower models train faster in fp32 even on AMX CPUs: bf16 over fp32 step time measured
# 0.51–0.72× at d 64, 0.83–0.93× at d 128, 1.10–1.19× at d 256 (llama/n4/nyx tiny recipes, 2-core Xeon with AMX)


def choose_precision(precision: str, device_type: str, bf16_fast: bool, hidden_size: int | None = None
                     ) -> tuple[str, str]:
    """(the precision a run uses, why): `auto` is bf16 autocast where the device runs bf16 matmuls fast and, on a
    CPU, the model is wide enough for them to outweigh the casts (hidden_size ≥ CPU_BF16_MIN_WIDTH; unknown counts
    as wide), else fp32; any other name stands."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision, "asked for"
    if not bf16_fast:
        return "fp32", f"auto: bf16 matmuls are not faster than fp32 on this {device_type} device"
    if device_type == "cpu" and hidden_size is not None and hidden_size < CPU_BF16_MIN_WIDTH:
        return "fp32", (f"auto: this CPU runs bf16 fast, but at width {hidden_size} (< {CPU_BF16_MIN_WIDTH}) fp32 "
                        "steps are faster")
    what = "this CPU has AVX512-BF16 or AMX" if device_type == "cpu" else f"this {device_type} device runs bf16"
    return "bf16", f"auto: {what}"


def resolve_precision(precision: str, device: torch.device, hidden_size: int | None = None) -> tuple[str, str]:
    """`choose_precision` for `device` on this machine (lmlab.hardware reads the CPU flags / asks CUDA)."""
    fast = precision == "auto" and device_runs_bf16_fast(device)
    return choose_precision(precision, device.type, fast, hidden_size)


def autocast_context(precision: str, device: torch.device):
    """The autocast of a precision name: none for fp32, bf16 or fp16 autocast otherwise (fp16 on GPUs only); `auto`
    is resolved first (by the hardware alone: resolve it with the model's width beforehand where that is known)."""
    precision = resolve_precision(precision, device)[0]
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 autocast needs a GPU; on a CPU use --precision bf16 (or fp32)")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@dataclass
class StepParts:
    """Everything a training step updates besides the model."""

    optimizers: list[torch.optim.Optimizer]
    schedulers: list
    scaler: torch.amp.GradScaler
    parameters: list[nn.Parameter]  # the trainable ones (clipped together)
    grad_clip: float | None
    precision: str


def step_parts(model: nn.Module, config, schedule, device: torch.device) -> StepParts:
    """The optimizers (`config.optimizer`), schedulers (`schedule`), loss scaler and clipping of a run's steps."""
    optimizers = build_optimizers(model, config.optimizer)
    return StepParts(optimizers=optimizers, schedulers=lr_schedulers(optimizers, schedule),
                     scaler=torch.amp.GradScaler(device.type, enabled=config.precision == "fp16"),
                     parameters=[p for p in model.parameters() if p.requires_grad], grad_clip=config.grad_clip,
                     precision=config.precision)


def train_step(model: nn.Module, micro_batches: Iterable[torch.Tensor], accumulation: int, parts: StepParts,
               env: dist_utils.Environment) -> tuple[float, float]:
    """One optimizer step over `accumulation` micro-batches (token ids, labels = inputs); returns (the loss averaged
    over micro-batches and processes, the gradient norm before clipping)."""
    step_loss = torch.zeros((), device=env.device)
    with autocast_context(parts.precision, env.device):  # one region per step, so each weight is cast once
        for m, batch in enumerate(micro_batches):
            with dist_utils.gradient_sync(model, m == accumulation - 1):
                loss = model(input_ids=batch, labels=batch, return_logits=False).loss / accumulation
            with autocast_disabled(env.device):  # nested: the region's cache of bf16 weights survives it
                parts.scaler.scale(loss).backward()
            step_loss += loss.detach()
    loss_value = float(dist_utils.mean_over_processes(step_loss, env))
    if not math.isfinite(loss_value):
        for optimizer in parts.optimizers:
            optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"the training loss became {loss_value}")
    for optimizer in parts.optimizers:
        parts.scaler.unscale_(optimizer)
    grad_norm = float(dist_utils.clip_gradients(parts.parameters, parts.grad_clip))
    for optimizer in parts.optimizers:
        parts.scaler.step(optimizer)
    parts.scaler.update()
    for optimizer in parts.optimizers:
        optimizer.zero_grad(set_to_none=True)
    for scheduler in parts.schedulers:
        scheduler.step()
    return loss_value, grad_norm


__all__ = ["CPU_BF16_MIN_WIDTH", "StepParts", "autocast_context", "choose_precision", "resolve_precision", "step_parts",
           "train_step"]
