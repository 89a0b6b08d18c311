"""What every layer of one forward pass may need besides its input."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.nn.position import Rotation


@dataclass
class ForwardContext:
    """Shared per-forward state, built once by the model and passed to every layer.

    position_ids: (B, T) absolute positions of the current tokens (0-based; left padding shifts them).
    rotation: the position encoding's tables for these positions, or None (NoPE).
    key_padding_mask: (B, past + T) bool, True where a token is real; None when nothing is padded.
    cache: the decoding cache, or None when no state is kept.
    past_length: tokens already in the cache before this forward.
    input_ids: (B, T) the current token ids, or None when the model was called with embeddings.
    """

    position_ids: torch.Tensor
    rotation: Rotation | None
    key_padding_mask: torch.Tensor | None
    cache: object | None
    past_length: int
    input_ids: torch.Tensor | None = None

    @property
    def token_mask(self) -> torch.Tensor | None:
        """(B, T) bool, True for the current tokens that are real (not padding)."""
        if self.key_padding_mask is None:
            return None
        return self.key_padding_mask[:, self.key_padding_mask.shape[1] - self.position_ids.shape[1]:]

    def layer_state(self, layer_idx: int):
        """This layer's decoding state (None before the first forward with a cache)."""
        return None if self.cache is None else self.cache.layers[layer_idx]

    def set_layer_state(self, layer_idx: int, state) -> None:
        if self.cache is not None:
            self.cache.layers[layer_idx] = state
