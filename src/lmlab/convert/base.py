"""Loading published checkpoints: official key names and layouts -> lmlab's.

Every converter reads a state_dict, maps it to lmlab names, and loads it strictly: any missing, unexpected or
mis-shaped tensor is an error that names it (never a silent partial load).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmlab.errors import CheckpointMismatchError
from lmlab.registry import Registry

CONVERTERS: Registry = Registry("converter")

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors, or from .bin / .pt / .pth via torch.load(weights_only=True).

    A training checkpoint `{"model_state_dict": ..., "optimizer_state_dict": ..., ...}` gives its model state.
    DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes are stripped explicitly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
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


def _listing(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:8])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")


def load_exactly(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load `state` into `model`, refusing missing, unexpected or mis-shaped tensors (naming them).

    With tied embeddings the output head may be absent from `state` (it is the embedding); when present it must
    equal the embedding.
    """
    expected = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    optional = {"lm_head.weight"} if tied else set()
    missing = set(expected) - set(state) - optional
    unexpected = set(state) - set(expected)
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(sorted(shapes)[:8]))
    if tied and "lm_head.weight" in state and not shapes and not torch.equal(
            state["lm_head.weight"], state.get("model.embed_tokens.weight", state["lm_head.weight"])):
        problems.append("lm_head.weight differs from the embedding but the model ties them")
    if problems:
        raise CheckpointMismatchError(f"{source} does not match the model — " + " | ".join(problems))
    model.load_state_dict(state, strict=not tied)


__all__ = ["CONVERTERS", "CheckpointMismatchError", "load_exactly", "read_state_dict"]
