"""Hugging Face model folders (what `PreTrainedModel.save_pretrained` writes: config.json, the weights as
model.safetensors or shards named by model.safetensors.index.json, tokenizer files) -> lmlab model directories.

A folder converter (registered in `FOLDER_CONVERTERS` under the family name `lmlab convert` takes) reads the folder's
config with transformers' own config class, which also reads the older layouts (e.g. `rope_scaling` + `rope_theta`
before transformers 5), maps it to an lmlab config, refusing by name what lmlab cannot reproduce, and loads the
weights strictly (`load_exactly`). `convert_model_folder` saves the result and copies the tokenizer files along.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.convert.base import CheckpointMismatchError, read_state_dict
from lmlab.model import count_parameters
from lmlab.registry import Registry
from lmlab.run_layout import copy_tokenizer_files

FOLDER_CONVERTERS: Registry = Registry("model-folder converter")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_folder_config(folder: str | Path, config_class):
    """The folder's config.json as `config_class` (a transformers config class), refusing another model type."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: give a Hugging Face model folder (what "
                                "save_pretrained writes)")
    model_type = json.loads(path.read_text()).get("model_type")
    if model_type != config_class.model_type:
        raise CheckpointMismatchError(f"{folder} holds a {model_type!r} model, not a {config_class.model_type!r} "
                                      "one; choose the converter of its family")
    return config_class.from_pretrained(folder)


def read_folder_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder: one weights file, or the shards its index names."""
    folder = Path(folder)
    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(read_state_dict(folder / shard))
            return state
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    raise FileNotFoundError(f"{folder} holds no weights: expected one of {WEIGHT_FILES + WEIGHT_INDEXES}")


def refuse_unsupported(problems: list[str], family: str) -> None:
    """Raise naming every config option of the folder that lmlab's model would not reproduce."""
    if problems:
        raise CheckpointMismatchError(f"this {family} model uses what lmlab does not support: " + "; ".join(problems))


@dataclass
class ConvertedFolder:
    parameters: int
    tokenizer_files: int


def convert_model_folder(family: str, folder: str | Path, out_dir: str | Path) -> ConvertedFolder:
    """Convert a Hugging Face model folder of `family` into the lmlab model directory `out_dir` (tokenizer files
    copied when the folder has them)."""
    folder, out_dir = Path(folder), Path(out_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{family} converts a Hugging Face model folder; {folder} is not a folder")
    model = FOLDER_CONVERTERS[family](folder)
    model.save_pretrained(out_dir)
    return ConvertedFolder(count_parameters(model), copy_tokenizer_files(folder, out_dir))


__all__ = ["FOLDER_CONVERTERS", "ConvertedFolder", "convert_model_folder", "read_folder_config",
           "read_folder_weights", "refuse_unsupported"]
