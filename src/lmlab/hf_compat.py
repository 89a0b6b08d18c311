"""The parts of the Hugging Face API that differ between the transformers releases lmlab supports (pyproject.toml).

- The decoding cache: transformers 5.24 renamed the `past_key_values` keyword and output field to `cache` (the old
  name is deprecated, to be removed in 5.40). lmlab's forwards take either name and return the cache under the
  field the installed release's output classes declare (`CACHE_FIELD`).
- Activation checkpointing: 5.23 renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable` (the
  old name warns).
"""

from __future__ import annotations

import dataclasses

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def one_cache(cache, past_key_values):
    """The cache a forward was given under either name (None when neither); both at once is an error."""
    if cache is not None and past_key_values is not None:
        raise ValueError("the decoding cache was given twice, as cache= and as past_key_values= (its name before "
                         "transformers 5.24); pass it once")
    return cache if cache is not None else past_key_values


def enable_activation_checkpointing(model) -> None:
    """Recompute every decoder block in backward (the name the installed transformers prefers)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


__all__ = ["CACHE_FIELD", "enable_activation_checkpointing", "one_cache"]
