"""What one decoder layer is made of (`LayerSpec`), and per-layer choices written as one rule for the whole stack
(nanochat's conventions).

Sliding windows from a pattern string: each character is one layer's window, the pattern is tiled over the layers
and the last layer is always long:

    "SSSL" over 12 layers -> S S S L S S S L S S S L
    L = window_long, S = window_short or, when unset, ⌈⌈L/4⌉/128⌉·128  (L = 1024 -> 256)

A window w means a query at t sees the keys s with 0 ≤ t − s ≤ w (w + 1 keys including itself).

Value-embedding layers: "alternate" puts them on every other layer ending with the last one
(layer i has one iff i % 2 == (n − 1) % 2), "all" on every layer.

The rules register as a model part (lmlab.registry.PARTS) that declares their options; the layer-spec values they
produce must then be honoured by each layer's components like any other per-layer choice.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from lmlab.registry import PARTS, Option, at_least_one, one_of

WINDOW_CHARACTERS = "SL"
VALUE_EMBED_RULES = ("alternate", "all")


@dataclass(frozen=True)
class LayerSpec:
    """What one decoder layer is made of. Every field can be overridden per layer through `config.layers`; a field
    with a default is an option the layer's components must honour when it is set (lmlab.component_options)."""

    mixer: str
    mlp: str
    norm: str
    block: str
    window: int | None = None  # sliding attention window (keys visible to the left, excluding the query)
    value_embed: bool = False  # yatgpt value embeddings added to this layer's values
    fan: bool = False  # NeoLLM FAN layer in front of this layer's mixer projections


LAYER_FIELDS = tuple(f.name for f in fields(LayerSpec))


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


def format_layers(indices: list[int]) -> str:
    """Sorted layer indices as runs, '0-2,4-6,9' (the `@layers:` syntax of lmlab.overrides)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def _check_pattern(pattern, config) -> str | None:
    if not isinstance(pattern, str) or not pattern or set(pattern) - set(WINDOW_CHARACTERS):
        return f"must be a non-empty string of {' and '.join(WINDOW_CHARACTERS)} (S = short window, L = long window)"
    if config.window_long is None:
        return "needs window_long (the L window in keys, usually the training sequence length)"
    return None


def describe_rules(config, layer_idx) -> str | None:
    rules = []
    if config.window_pattern is not None:
        short = config.window_short or nanochat_short_window(config.window_long)
        rules.append(f"windows by the pattern {config.window_pattern!r} (S = {short}, L = {config.window_long} keys; "
                     "the last layer L)")
    if config.value_embed_layers is not None:
        rules.append(f"value embeddings on {config.value_embed_layers!r} layers")
    return "; ".join(rules) or None


PARTS.register("layer rules", describe=describe_rules, options=(
    Option("window_pattern", check=_check_pattern, doc="per-layer windows from a tiled pattern of S and L"),
    Option("window_long", check=at_least_one, requires="window_pattern", doc="the L window"),
    Option("window_short", check=at_least_one, requires="window_pattern", doc="the S window"),
    Option("value_embed_layers", check=one_of(*VALUE_EMBED_RULES), doc="which layers get value embeddings"),
))(pattern_window)

__all__ = ["LAYER_FIELDS", "LayerSpec", "VALUE_EMBED_RULES", "WINDOW_CHARACTERS", "format_layers", "has_value_embed",
           "nanochat_short_window", "pattern_window"]
