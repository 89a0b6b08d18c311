"""The compute budget every variant of a comparison gets: `tokens=N`, `flops=F` or `seconds=S`.

- tokens=N: every variant trains ⌊N / tokens per step⌋ optimizer steps (the same count for all).
- flops=F: training FLOPs per token are taken as 3 × forward FLOPs per token (backward ≈ 2 × forward: Kaplan et
  al. 2020, the usual "6N" rule with attention included), the forward count being `lmlab.info`'s (FlopCounterMode
  on the meta device at the training sequence length: matmul-class ops, attention over the full T×T scores). A
  variant trains on ⌊F / (3 · forward FLOPs per token)⌋ tokens, so a cheaper model sees more data.
- seconds=S: equal wall-clock on *this* machine. Each variant's optimizer step is timed first (a few steps on random
  tokens after warm-up, the median), S is turned into a step count, and every seed of the variant trains exactly
  that many steps (so its learning-rate schedule ends where it should, and a rerun is reproducible in steps). The
  time actually spent is reported beside. On a shared or loaded machine the timing carries that load, so step
  counts (and the ranking) can change from one invocation to the next; prefer tokens or flops for claims about
  architectures, and read seconds as "which is best here, in this much time".

Amounts accept a suffix: k, M, G, T, P (powers of 1000), e.g. tokens=2M, flops=1.5e15, seconds=600.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace

import torch

from lmlab.config import LMLabConfig
from lmlab.model import LMLabForCausalLM
from lmlab.train import distributed as dist_utils
from lmlab.train.config import TrainConfig
from lmlab.train.schedules import build_schedule
from lmlab.train.step import resolve_precision, step_parts, train_step

KINDS = ("tokens", "flops", "seconds")
SUFFIXES = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12, "P": 1e15}
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (≈ 2 × forward)


@dataclass(frozen=True)
class Budget:
    kind: str
    amount: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        kind, equals, amount = text.partition("=")
        kind = kind.strip()
        if not equals or kind not in KINDS:
            raise ValueError(f"--budget {text!r}: write tokens=N, flops=F or seconds=S (e.g. tokens=2M)")
        amount = amount.strip()
        scale = SUFFIXES.get(amount[-1:], 1.0)
        try:
            value = float(amount[:-1] if amount[-1:] in SUFFIXES else amount) * scale
        except ValueError:
            raise ValueError(f"--budget {text!r}: {amount!r} is not a number (e.g. 2e6, 2M, 1.5e15)") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"--budget {text!r}: the amount must be a positive number")
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}={self.amount:g}"


def tokens_for_flops(flops: float, forward_flops_per_token: float) -> int:
    """Training tokens that cost `flops` at TRAIN_FLOPS_PER_FORWARD × forward FLOPs per token."""
    return int(flops // (TRAIN_FLOPS_PER_FORWARD * forward_flops_per_token))


def steps_in(budget: Budget, tokens_per_step: int, forward_flops_per_token: float,
             step_seconds: float | None = None) -> int:
    """Optimizer steps that fit in `budget` (at least one step is required)."""
    if budget.kind == "tokens":
        tokens = budget.amount
    elif budget.kind == "flops":
        tokens = tokens_for_flops(budget.amount, forward_flops_per_token)
    else:
        if step_seconds is None:
            raise ValueError("a seconds budget needs the measured step time")
        tokens = int(budget.amount / step_seconds) * tokens_per_step
    steps = int(tokens // tokens_per_step)
    if steps < 1:
        raise ValueError(f"the budget {budget} is less than one optimizer step ({tokens_per_step:,} tokens"
                         + (f", {step_seconds:.3g} s" if step_seconds else "") + "); raise it or shrink the batch")
    return steps


def train_budget(budget: Budget, forward_flops_per_token: float, steps: int) -> dict:
    """The `lmlab train` budget option of one run: tokens for a tokens or flops budget, steps for seconds."""
    if budget.kind == "tokens":
        return {"tokens": int(budget.amount)}
    if budget.kind == "flops":
        return {"tokens": tokens_for_flops(budget.amount, forward_flops_per_token)}
    return {"steps": steps}


def measure_step_seconds(config: TrainConfig, model_config: LMLabConfig, env: dist_utils.Environment,
                         warmup: int = 2, timed: int = 5) -> float:
    """Median seconds of one optimizer step (the trainer's own `train_step`: grad_accum micro-batches of random
    tokens, forward, backward, clipping, optimizer and schedule step) of `model_config` trained as `config` says,
    after `warmup` untimed steps."""
    device = env.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = LMLabForCausalLM(model_config).to(device).train()
        config = replace(config, precision=resolve_precision(config.precision, device, model_config.hidden_size)[0])
        parts = step_parts(model, config, build_schedule(config.schedule, config.peak_lr, warmup + timed), device)
        batch = torch.randint(0, model_config.vocab_size, (config.batch_size, config.seq_len), device=device)
        times = []
        for step in range(warmup + timed):
            start = time.perf_counter()
            train_step(model, [batch] * config.grad_accum, config.grad_accum, parts, env)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)
