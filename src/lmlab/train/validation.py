"""Validation during training: loss (nats/token), perplexity and bits per byte on fixed validation windows.

Which windows: every one when the split holds at most VALIDATION_TOKENS tokens (tiny Shakespeare's 10% is ~110k),
else a fixed sample of that many tokens' windows drawn from all over the split (seeded with VALIDATION_SEED, not the
run's seed, so every run on the same data is scored on the same windows); `eval_batches = N` asks for N micro-batches
drawn the same way, 0 for the whole split. The count of scored target tokens is reported as `val_tokens`.
"""

from __future__ import annotations

import math

import torch

from lmlab.data import PackedWindows
from lmlab.train import distributed as dist_utils
from lmlab.train.step import autocast_context

VALIDATION_TOKENS = 2**20
VALIDATION_SEED = 0


def validation_windows(available: int, seq_len: int, eval_batches: int | None, batch_size: int) -> list[int]:
    """The indices (sorted) of the validation windows to score (see the module docstring)."""
    if eval_batches is None:
        count = max(1, VALIDATION_TOKENS // seq_len)
    else:
        count = eval_batches * batch_size if eval_batches > 0 else available
    if count >= available:
        return list(range(available))
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    return sorted(torch.randperm(available, generator=generator)[:count].tolist())


class Validator:
    """Fixed validation windows, shared between processes; their UTF-8 byte count is computed once.

    bits per byte = validation nats / (ln 2 · UTF-8 bytes of the text the targets encode)."""

    def __init__(self, windows: PackedWindows, tokenizer, config, env: dist_utils.Environment):
        self.indices = validation_windows(len(windows), config.seq_len, config.eval_batches, config.batch_size)
        self.mine = self.indices[env.rank::env.world_size]
        self.windows, self.config, self.env = windows, config, env
        self.bytes = sum(len(tokenizer.decode(windows.window(i)[1:].tolist(), skip_special_tokens=True)
                             .encode("utf-8")) for i in self.indices)

    @torch.no_grad()
    def __call__(self, model) -> dict:
        model.eval()
        nats = torch.zeros((), dtype=torch.float64, device=self.env.device)
        targets = 0
        size = self.config.batch_size
        for start in range(0, len(self.mine), size):
            batch = self.windows.stack(self.mine[start: start + size]).to(self.env.device)
            with autocast_context(self.config.precision, self.env.device):
                loss = model(input_ids=batch, labels=batch).loss
            nats += loss.double() * batch[:, 1:].numel()
            targets += batch[:, 1:].numel()
        model.train()
        total = dist_utils.sum_over_processes(torch.stack([nats, torch.tensor(float(targets), dtype=torch.float64,
                                                                              device=nats.device)]), self.env)
        loss = float(total[0] / total[1])
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)),
                "val_bpb": float(total[0]) / (math.log(2) * max(self.bytes, 1)), "val_tokens": int(total[1])}


__all__ = ["VALIDATION_SEED", "VALIDATION_TOKENS", "Validator", "validation_windows"]
