"""From a flat token stream to training batches: a deterministic validation split, packed windows, and a shuffled
sampler whose whole state is one counter (so a resumed run draws exactly the batches an uninterrupted one would).

Packing: the stream (documents joined by EOS) is cut into windows of `seq_len` tokens; consecutive windows share
one token (stride seq_len − 1), so every token but the first is a prediction target exactly once (the model shifts
labels itself). Attention runs across document boundaries inside a window, as in GPT-2 / nanoGPT pre-training.

Split: the last `val_fraction` of the stream (at least one window) is validation; the rest is training.
"""

from __future__ import annotations

import numpy as np
import torch

from lmlab.data.sources import DataError


def split_tokens(tokens: np.ndarray, seq_len: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) views of `tokens`: validation is the tail, at least one window long."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(tokens)
    n_val = max(seq_len, int(round(n * val_fraction)))
    if n - n_val < seq_len:
        raise DataError(f"the corpus has {n:,} tokens, too few for a training window and a validation window of "
                        f"{seq_len} tokens each; give more text or a shorter --seq-len")
    return tokens[: n - n_val], tokens[n - n_val:]


class PackedWindows:
    """Windows of `seq_len` tokens at stride seq_len − 1 over `tokens`."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {seq_len}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.stride = seq_len - 1
        self.count = (len(tokens) - 1) // self.stride
        if self.count < 1:
            raise DataError(f"{len(tokens):,} tokens make no window of {seq_len} tokens")

    def __len__(self) -> int:
        return self.count

    def window(self, index: int) -> np.ndarray:
        start = index * self.stride
        return self.tokens[start: start + self.seq_len]

    def stack(self, indices) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.window(int(i)) for i in indices]).astype(np.int64))


class ShuffledSampler:
    """An endless stream of window indices: epoch e is `randperm(len(windows))` seeded with (seed, e).

    The state is the number of windows drawn so far; `indices(start, count)` is a pure function of it."""

    def __init__(self, num_windows: int, seed: int):
        self.num_windows = num_windows
        self.seed = seed
        self._epoch = -1
        self._order: torch.Tensor | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.num_windows, generator=generator)
            self._epoch = epoch
        return self._order

    def indices(self, start: int, count: int) -> list[int]:
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, self.num_windows)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def epoch(self, position: int) -> float:
        return position / self.num_windows


__all__ = ["PackedWindows", "ShuffledSampler", "split_tokens"]
