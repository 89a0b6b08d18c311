"""The files of a model directory, and the check that runs before anything loads one.

A model directory (lmlab.run_layout) needs config.json and its weights: model.safetensors, or a shard index
(model.safetensors.index.json) and every shard it names; beside adapter_config.json (an adapter checkpoint) also
adapter_model.safetensors. `check_model_dir` refuses, naming the file and the fix:

- a missing file (a half-copied or half-deleted folder, a broken link to a fine-tune's base);
- a config.json that is not JSON, or a weights file whose header cannot be read or whose tensors run past the end
  of the file (truncated, corrupt);
- weights that do not fit config.json: a tensor the model lacks, one it needs that is absent (the tied output head
  may be), or one of another shape (e.g. the config.json of another preset over these weights).

So a model loads exactly or not at all: transformers would initialise absent tensors at random with a warning.
Only headers are read (the weights stay on disk); the model is built on the meta device to list its tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmlab.errors import CheckpointMismatchError, CorruptFileError
from lmlab.run_layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODEL_CONFIG, MODEL_WEIGHTS, MODEL_WEIGHTS_INDEX

TIED_HEAD = "lm_head.weight"  # absent from the weights of a model that ties it to the embedding


def weight_files(model_dir: Path) -> list[Path]:
    """The model weights of a model directory: model*.safetensors files and their shard index (not the adapters,
    nor a checkpoint's trainer state)."""
    return sorted(p for p in Path(model_dir).iterdir()
                  if p.name.startswith("model") and p.name.endswith((".safetensors", ".safetensors.index.json")))


def missing_files(model_dir: Path) -> list[str]:
    """The files `model_dir` needs but lacks (a link whose target is gone counts as missing)."""
    model_dir = Path(model_dir)
    missing = [] if (model_dir / MODEL_CONFIG).is_file() else [MODEL_CONFIG]
    index = model_dir / MODEL_WEIGHTS_INDEX
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        missing += [name for name in shards if not (model_dir / name).is_file()]
    elif not (model_dir / MODEL_WEIGHTS).is_file():
        missing.append(MODEL_WEIGHTS)
    if (model_dir / ADAPTER_CONFIG).is_file() and not (model_dir / ADAPTER_WEIGHTS).is_file():
        missing.append(ADAPTER_WEIGHTS)
    return missing


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}); the file is truncated or corrupt: copy it "
                               "again") from None


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header (the data is not read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except SafetensorError as err:
        raise CorruptFileError(f"{path} cannot be read ({err}): the file is truncated or corrupt. Copy it again, or "
                               "use another checkpoint") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (CorruptFileError naming the file when it cannot be read)."""
    from safetensors.torch import load_file

    tensor_shapes(path)
    return load_file(str(path))


def _listing(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:8])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")


def weight_problems(expected: dict[str, tuple], found: dict[str, tuple], optional=frozenset()) -> list[str]:
    """Why tensors `found` (name -> shape) cannot load exactly into a model whose tensors are `expected`: missing
    (unless `optional`), unexpected and mis-shaped ones; empty when they fit."""
    missing = set(expected) - set(found) - set(optional)
    unexpected = set(found) - set(expected)
    shapes = sorted(f"{k}: checkpoint {tuple(found[k])} vs model {tuple(expected[k])}"
                    for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    problems = [f"missing keys: {_listing(missing)}"] if missing else []
    problems += [f"unexpected keys: {_listing(unexpected)}"] if unexpected else []
    return problems + (["shape mismatches: " + "; ".join(shapes[:8])] if shapes else [])


def check_model_dir(model_dir: Path) -> None:
    """Refuse `model_dir` unless every file it needs is there, readable, and its weights fit its config.json
    exactly (see the module docstring). Directories of models other than lmlab's are checked for files only."""
    from lmlab.config import LMLabConfig
    from lmlab.model import LMLabForCausalLM

    model_dir = Path(model_dir)
    missing = missing_files(model_dir)
    if missing:
        raise CorruptFileError(f"{model_dir} is incomplete: it has no {', '.join(missing)} (an interrupted copy or "
                               "deletion, or a checkpoint copied without its run); copy the model directory again, "
                               "or use another checkpoint")
    found: dict[str, tuple] = {}
    for path in weight_files(model_dir):
        if path.suffix == ".safetensors":
            found.update(tensor_shapes(path))
    if (model_dir / ADAPTER_CONFIG).is_file():
        tensor_shapes(model_dir / ADAPTER_WEIGHTS)
    if _read_json(model_dir / MODEL_CONFIG).get("model_type") != LMLabConfig.model_type:
        return
    config = LMLabConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in LMLabForCausalLM(config).state_dict().items()}
    optional = {TIED_HEAD} if config.tie_word_embeddings else set()
    problems = weight_problems(expected, found, optional)
    if problems:
        raise CheckpointMismatchError(
            f"the weights in {model_dir} do not fit its {MODEL_CONFIG} (preset {config.preset!r}): "
            f"{' | '.join(problems)}. The {MODEL_CONFIG} belongs to another model: put back the one saved with "
            "these weights")


__all__ = ["check_model_dir", "missing_files", "read_safetensors", "tensor_shapes", "weight_files",
           "weight_problems"]
