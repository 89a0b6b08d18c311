"""The base class of every lmlab building block."""

from __future__ import annotations

from torch import nn


class Component(nn.Module):
    """A building block whose `reset_parameters()` initialises the parameters and buffers it owns directly.

    Its Linear / Embedding children are created with `lmlab.nn.init.linear` / `embedding` and initialised by the
    config's init scheme. The model's `_init_weights` calls both, so a fresh model and a model re-initialised by
    Hugging Face (`from_pretrained` with missing keys, `init_weights()`) get the same init.
    """

    def reset_parameters(self) -> None:
        """Components without parameters of their own have nothing to initialise."""
