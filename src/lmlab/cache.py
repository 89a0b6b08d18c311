"""Decoding state.

`LMLabCache` holds one state object per layer, owned and interpreted by that layer's mixer (a KV cache for softmax
attention; K' rows plus a running key sum for N4; a convolution window plus a recurrent matrix for Gated DeltaNet),
plus model-level state (e.g. the last pre-smear embedding). It subclasses transformers' `Cache` so that
`model.generate()` can carry it between steps, reorder it for beam search and read its length.

Every state keeps the batch on dim 0 of each tensor it holds, so batch operations (beam reordering, repeating
rows for several samples per prompt) are one generic map over its tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from transformers import Cache

BatchFn = Callable[[torch.Tensor], torch.Tensor]


def map_batch(state, fn: BatchFn):
    """Apply `fn` to every batch-major tensor inside `state` (tensor, dataclass, dict, list/tuple, or None)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **{f.name: map_batch(getattr(state, f.name), fn)
                                             for f in dataclasses.fields(state)})
    if isinstance(state, dict):
        return {key: map_batch(value, fn) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_batch(value, fn) for value in state)
    return state  # plain numbers (lengths, counters) are shared by all rows


@dataclasses.dataclass
class KVCache:
    """Keys and values (B, H, n, d) of one attention layer, in buffers that grow by doubling.

    `append` writes the new rows in place and returns views of everything cached so far, so a decoding step copies
    only the new token instead of the whole history.
    """

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    length: int = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = k.shape[2]
        if self.keys is None or self.length + new > self.keys.shape[2]:
            capacity = max(2 * (self.length + new), 16)
            self.keys = _grow(self.keys, self.length, k, capacity)
            self.values = _grow(self.values, self.length, v, capacity)
        self.keys[:, :, self.length:self.length + new] = k
        self.values[:, :, self.length:self.length + new] = v
        self.length += new
        return self.keys[:, :, :self.length], self.values[:, :, :self.length]

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` rows now, so that appends up to then never reallocate."""
        if self.keys is not None and capacity > self.keys.shape[2]:
            self.keys = _grow(self.keys, self.length, self.keys, capacity)
            self.values = _grow(self.values, self.length, self.values, capacity)


@dataclasses.dataclass
class SlidingKVCache(KVCache):
    """A KVCache for a layer whose queries see only the `window` keys to their left (and themselves).

    `append` returns the last window + new rows — every key the new queries can see — so attention never scans
    older keys. Rows no future query can see are dropped (the last `window` rows move to the front) whenever the
    buffer is full, instead of growing it: memory stays at most about 2·(window + chunk) rows however long the
    sequence.
    """

    window: int = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = k.shape[2]
        if self.keys is not None and self.length + new > self.keys.shape[2] and self.length > self.window:
            self._drop_invisible_rows()
        keys, values = super().append(k, v)
        visible = min(self.length, self.window + new)
        return keys[:, :, -visible:], values[:, :, -visible:]

    def _drop_invisible_rows(self) -> None:
        start = self.length - self.window
        self.keys[:, :, :self.window] = self.keys[:, :, start:self.length].clone()
        self.values[:, :, :self.window] = self.values[:, :, start:self.length].clone()
        self.length = self.window


def _grow(buffer: torch.Tensor | None, used: int, like: torch.Tensor, capacity: int) -> torch.Tensor:
    shape = list(like.shape)
    shape[2] = capacity
    grown = like.new_empty(shape)
    if buffer is not None and used:
        grown[:, :, :used] = buffer[:, :, :used]
    return grown


def _kv_caches(state):
    """The KVCaches in a layer's state (the state itself, or fields of a state dataclass)."""
    if isinstance(state, KVCache):
        yield state
    elif dataclasses.is_dataclass(state):
        for field in dataclasses.fields(state):
            yield from _kv_caches(getattr(state, field.name))


class LMLabCache(Cache):
    """Per-layer decoding state for any lmlab model (see the module docstring)."""

    def __init__(self, num_layers: int):
        # the base class is not initialised: its layer objects assume K/V tensors, ours are per-mixer states
        self.layers: list = [None] * num_layers
        self.model_state: dict = {}
        self.seen_tokens = 0
        self.layer_class_to_replicate = None
        self.offloading = False

    def __repr__(self) -> str:
        return f"LMLabCache(layers={len(self.layers)}, seen_tokens={self.seen_tokens})"

    # ---- what transformers' generate() reads
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return self.seen_tokens > 0

    @property
    def is_croppable(self) -> bool:
        return False

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("lmlab caches hold recurrent state and cannot be cropped; re-run the prefix")

    def reset(self) -> None:
        self.layers = [None] * len(self.layers)
        self.model_state = {}
        self.seen_tokens = 0

    def reserve(self, tokens: int) -> None:
        """Give every KV buffer room for `tokens` tokens in all, so that decoding up to then never reallocates one
        (a compiled decoding step then always sees buffers of the same size). Other states have a fixed size."""
        for state in self.layers:
            for kv in _kv_caches(state):
                kv.reserve(tokens)

    # ---- batch operations (beam search, several samples per prompt)
    def _map(self, fn: BatchFn) -> None:
        self.layers = [map_batch(state, fn) for state in self.layers]
        self.model_state = map_batch(self.model_state, fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))


__all__ = ["KVCache", "LMLabCache", "SlidingKVCache", "map_batch"]
