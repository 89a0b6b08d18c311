"""What a preset is, and the table of presets: `Preset`, `register_preset`, `get_preset`, `preset_config`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lmlab.registry import UnknownNameError, unknown_name_message


@dataclass(frozen=True)
class Preset:
    """A named architecture configuration.

    config: keyword arguments of `LMLabConfig`.
    recipe: the training defaults that came with it, read by `lmlab train` (every key optional; lmlab.train.config
    holds the defaults, command-line options override). Keys:
        tokenizer    tokenizer spec ("gpt2", "mistral-v1", "mistral-v3", "qwen", "bytes", "bpe:N", HF name or dir);
                     with this tokenizer the model keeps the preset's vocab_size, with any other the vocab_size
                     becomes the tokenizer's size rounded up to a multiple of 64
        seq_len      training sequence length
        batch_size   sequences per micro-batch;  grad_accum  micro-batches per optimizer step
        precision    "auto" | "fp32" | "bf16" | "fp16" (autocast; every recipe says "auto": bf16 where the hardware
                     runs it fast, fp32 elsewhere — the published bf16 recipes trained on GPUs)
        optimizer    {"name": "adamw" | "ademamix" | "lion" | "muon", "lr" (peak), "weight_decay",
                      "no_decay": "1d" (default: no decay on parameters with < 2 dims) | "none" | [name globs],
                      adamw: "betas" (2), "eps";  ademamix: "betas" (3), "alpha", "t_alpha", "t_beta3", "eps";
                      lion: "betas";  muon: "momentum", and "betas"/"eps" of the AdamW for the other parameters}
        schedule     {"name": "cosine" | "linear" | "constant" | "wsd" | "warm_start_cosine", "warmup_steps",
                      "min_lr" or "min_lr_ratio" (of the peak), "start_lr" (warm_start_cosine),
                      "decay_fraction" (wsd)} — formulas in lmlab.train.schedules
        grad_clip    global gradient-norm clip, or None
        chinchilla   default training length as a multiple of the Chinchilla budget (lmlab.train.budget: 20 tokens
                     per parameter; steps = tokens / (batch_size × grad_accum × seq_len)); --steps/--tokens win
        source       where the published values come from (card, code, or "inferred: ...")
    """

    name: str
    family: str
    description: str
    config: dict
    recipe: dict = field(default_factory=dict)


# The training recipe of the `*-tiny` variants (ours, not published): nanoGPT's CPU baby-GPT batch (12 × 64 tokens)
# with Muon at 8e-3 (AdamW for embeddings, head, norms and scalars), 100 warm-up steps and a cosine to 10% of the
# peak. Chosen on Tiny Shakespeare at nanoGPT's budget, where each tiny preset learns 0.13–0.33 nats/char better than
# with its earlier AdamW / AdEMAMix / Lion recipe (docs/recipes.md); a family file may change weight_decay.
# grad_clip stays the family's.
TINY_RECIPE = dict(seq_len=64, batch_size=12, grad_accum=1,
                   optimizer=dict(name="muon", lr=8e-3, weight_decay=0.1),
                   schedule=dict(name="cosine", warmup_steps=100, min_lr_ratio=0.1),
                   source="lmlab tiny variant: recipe chosen on tiny Shakespeare at nanoGPT's CPU budget "
                          "(docs/recipes.md)")

PRESETS: dict[str, Preset] = {}
# resolvers of parameterised families (e.g. "yatgpt-d{N}"): name -> Preset, or None for names they do not own
PRESET_FAMILIES: list[Callable[[str], Preset | None]] = []


def register_preset(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is registered twice")
    PRESETS[preset.name] = preset
    return preset


def register_preset_family(resolver: Callable[[str], Preset | None]) -> Callable[[str], Preset | None]:
    """Add a resolver that builds presets of a parameterised family on demand, so every size of it works by name
    while `list_presets()` shows only the sizes registered with `register_preset`."""
    PRESET_FAMILIES.append(resolver)
    return resolver


def get_preset(name: str) -> Preset:
    if name in PRESETS:
        return PRESETS[name]
    for resolve in PRESET_FAMILIES:
        preset = resolve(name)
        if preset is not None:
            return preset
    raise UnknownNameError(unknown_name_message("preset", name, list(PRESETS)))


def list_presets() -> list[Preset]:
    return [PRESETS[name] for name in sorted(PRESETS)]


def preset_config(name: str, **overrides):
    """The `LMLabConfig` of preset `name`, with keyword overrides applied before validation."""
    from lmlab.config import LMLabConfig

    return LMLabConfig(**{**get_preset(name).config, "preset": name, **overrides})



__all__ = ["PRESETS", "PRESET_FAMILIES", "Preset", "get_preset", "list_presets", "preset_config", "register_preset",
           "register_preset_family"]
