"""Loading published checkpoints: official key names and layouts -> lmlab's.

Every converter reads a state_dict, maps it to lmlab names, and loads it strictly: any missing, unexpected or
mis-shaped tensor is an error that names it (never a silent partial load).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmlab.errors import CheckpointMismatchError
from lmlab.model_files import TIED_HEAD, read_safetensors, weight_problems
from lmlab.registry import Registry
from lmlab.weights_only import load_weights_only

CONVERTERS: Registry = Registry("converter")

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
UNSAFE_CHECKPOINT_FIX = ("If you trust where it came from, re-save its tensors as .safetensors in a separate step "
                         "(safetensors.torch.save_file) and convert that file")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors, or from .bin / .pt / .pth with PyTorch's weights-only unpickler
    (lmlab.weights_only: a file holding anything but tensors and plain values is refused, never unpickled).

    A training checkpoint `{"model_state_dict": ..., "optimizer_state_dict": ..., ...}` gives its model state.
    DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes are stripped explicitly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        state = load_weights_only(path, fix=UNSAFE_CHECKPOINT_FIX)
        if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
            state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path} does not hold a flat state_dict of tensors")
    return {_strip_wrappers(key): value for key, value in state.items()}


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def load_exactly(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load `state` into `model`, refusing missing, unexpected or mis-shaped tensors (naming them).

    With tied embeddings the output head may be absent from `state` (it is the embedding); when present it must
    equal the embedding.
    """
    tied = getattr(model.config, "tie_word_embeddings", False)
    problems = weight_problems({k: v.shape for k, v in model.state_dict().items()},
                               {k: v.shape for k, v in state.items()}, {TIED_HEAD} if tied else set())
    if tied and TIED_HEAD in state and not problems and not torch.equal(
            state[TIED_HEAD], state.get("model.embed_tokens.weight", state[TIED_HEAD])):
        problems.append("lm_head.weight differs from the embedding but the model ties them")
    if problems:
        raise CheckpointMismatchError(f"{source} does not match the model — " + " | ".join(problems))
    model.load_state_dict(state, strict=not tied)


__all__ = ["CONVERTERS", "CheckpointMismatchError", "load_exactly", "read_state_dict"]
