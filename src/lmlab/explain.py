"""The forward a config assembles, as text (`lmlab info --explain`): what nanoGPT shows in one file, on one screen.

Every line comes from a registered component's own `describe(config, layer_idx)` (lmlab.registry), in the order the
model runs them: the embedding, the position encoding, the per-layer rules, the residual stream's extras, then each
layer's block wiring, norm, mixer and MLP, then the head and the loss. Layers whose lines agree are shown once,
under the list of their indices ("layers 0-2, 4-6, 8-10").
"""

from __future__ import annotations

import textwrap

from lmlab.layer_pattern import format_layers
from lmlab.registry import BLOCKS, MIXERS, MLPS, NORMS, PARTS, POSITIONS, Registry

WIDTH = 118  # wrap long descriptions to this many characters
LABEL = 16  # the width of the left column


def component_line(registry: Registry, name: str, config, layer_idx: int | None = None) -> str | None:
    """'name: description' of one component, or None when it describes nothing for this config."""
    describe = registry.entry(name).describe
    text = None if describe is None else describe(config, layer_idx)
    return None if text is None else f"{name}: {text}"


def layer_lines(config, layer_idx: int) -> tuple[tuple[str, str], ...]:
    """(label, line) for the block, norm, mixer and MLP of one layer."""
    spec = config.layer_spec(layer_idx)
    return (("block", component_line(BLOCKS, spec.block, config, layer_idx)),
            ("norm", component_line(NORMS, spec.norm, config, layer_idx)),
            ("mixer", component_line(MIXERS, spec.mixer, config, layer_idx)),
            ("mlp", component_line(MLPS, spec.mlp, config, layer_idx)))


def layer_groups(config) -> list[tuple[list[int], tuple[tuple[str, str], ...]]]:
    """Layers with identical lines grouped, in the order of each group's first layer."""
    groups: dict[tuple, list[int]] = {}
    for i in range(config.num_hidden_layers):
        groups.setdefault(layer_lines(config, i), []).append(i)
    return [(indices, lines) for lines, indices in groups.items()]


def _rows(label: str, text: str | None) -> list[str]:
    if text is None:
        return []
    return textwrap.wrap(text, WIDTH, initial_indent=f"{label:<{LABEL}}", subsequent_indent=" " * (LABEL + 2))


def explain(config) -> list[str]:
    """The lines of `lmlab info --explain` for `config` (module docstring)."""
    title = (f"{config.preset or 'model'}: {config.num_hidden_layers} layers, d {config.hidden_size}, vocabulary "
             f"{config.vocab_size}")
    lines = [title, ""]
    lines += _rows("embedding", PARTS.entry("embedding").describe(config, None))
    lines += _rows("position", component_line(POSITIONS, config.position, config))
    lines += _rows("layer rules", PARTS.entry("layer rules").describe(config, None))
    lines += _rows("residual", PARTS.entry("residual stream").describe(config, None))
    for indices, group in layer_groups(config):
        layers = format_layers(indices).replace(",", ", ")
        lines += ["", f"layer{'s' if len(indices) > 1 else ''} {layers}"]
        for label, text in group:
            lines += _rows(f"  {label}", text)
    lines.append("")
    lines += _rows("head", PARTS.entry("head").describe(config, None))
    lines += _rows("loss", PARTS.entry("loss").describe(config, None))
    return lines


__all__ = ["explain", "layer_groups"]
