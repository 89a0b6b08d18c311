"""Per-layer choices written as one rule for the whole stack (nanochat's conventions).

Sliding windows from a pattern string: each character is one layer's window, the pattern is tiled over the layers
and the last layer is always long:

    "SSSL" over 12 layers -> S S S L S S S L S S S L
    L = window_long, S = window_short or, when unset, ⌈⌈L/4⌉/128⌉·128  (L = 1024 -> 256)

A window w means a query at t sees the keys s with 0 ≤ t − s ≤ w (w + 1 keys including itself).

Value-embedding layers: "alternate" puts them on every other layer ending with the last one
(layer i has one iff i % 2 == (n − 1) % 2), "all" on every layer.
"""

from __future__ import annotations

WINDOW_CHARACTERS = "SL"
VALUE_EMBED_RULES = ("alternate", "all")


def nanochat_short_window(long_window: int) -> int:
    """⌈⌈long/4⌉/128⌉·128: a quarter of the long window rounded up to a multiple of 128."""
    quarter = -(-long_window // 4)
    return -(-quarter // 128) * 128


def pattern_window(pattern: str, layer_idx: int, num_layers: int, long_window: int,
                   short_window: int | None = None) -> int:
    """The window of layer `layer_idx` under `pattern` (see the module docstring)."""
    if layer_idx == num_layers - 1:
        return long_window
    if pattern[layer_idx % len(pattern)] == "L":
        return long_window
    return short_window if short_window is not None else nanochat_short_window(long_window)


def has_value_embed(rule: str, layer_idx: int, num_layers: int) -> bool:
    """Whether layer `layer_idx` gets a value embedding under `rule` ("alternate" or "all")."""
    if rule == "all":
        return True
    return layer_idx % 2 == (num_layers - 1) % 2


__all__ = ["VALUE_EMBED_RULES", "WINDOW_CHARACTERS", "has_value_embed", "nanochat_short_window", "pattern_window"]
