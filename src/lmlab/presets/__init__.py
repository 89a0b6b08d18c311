"""Named presets: each is a config (an architecture at one size) plus the training recipe it was published with.

Published presets reproduce their model exactly (parameter counts are tested); `-tiny` presets keep the family's
components at a size that trains in seconds on a CPU. `lmlab info --list` shows them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.registry import UnknownNameError, unknown_name_message


@dataclass(frozen=True)
class Preset:
    """A named architecture configuration.

    config: keyword arguments of `LMLabConfig`.
    recipe: the training defaults that came with it, read by the trainer. Keys:
        tokenizer    tokenizer spec ("gpt2", "mistral-v1", "mistral-v3", "qwen", "bytes", "bpe:N", HF name or dir)
        seq_len      training sequence length
        batch_size   sequences per micro-batch;  grad_accum  micro-batches per optimizer step
        precision    "fp32" | "bf16" | "fp16" (autocast)
        optimizer    {"name": "adamw" | "ademamix" | "lion" | "muon", "lr", "betas", "eps", "weight_decay", ...}
        schedule     {"name": "cosine" | "linear" | "constant" | "wsd" | "warm_start_cosine", "warmup_steps",
                      "min_lr", ...}
        grad_clip    global gradient-norm clip, or None
        source       where the published values come from (card, code, or "inferred: ...")
    """

    name: str
    family: str
    description: str
    config: dict
    recipe: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is registered twice")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UnknownNameError(unknown_name_message("preset", name, list(PRESETS)))
    return PRESETS[name]


def list_presets() -> list[Preset]:
    return [PRESETS[name] for name in sorted(PRESETS)]


def preset_config(name: str, **overrides):
    """The `LMLabConfig` of preset `name`, with keyword overrides applied before validation."""
    from lmlab.config import LMLabConfig

    return LMLabConfig(**{**get_preset(name).config, "preset": name, **overrides})


from lmlab.presets import n4, neollm, ngen4  # noqa: E402,F401  (registers the presets)

__all__ = ["PRESETS", "Preset", "get_preset", "list_presets", "preset_config", "register_preset"]
