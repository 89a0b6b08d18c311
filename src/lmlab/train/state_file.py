"""A trainer state on disk without pickle: its tensors in NAME.safetensors, everything else in NAME.json.

The state is a tree of dicts, lists and tuples whose leaves are tensors or JSON values (None, bool, int, float, str)
— optimizer and scheduler state dicts, counters, RNG states (lmlab.train.checkpoint keeps those as tensors and
numbers). In the JSON a tensor is {"$tensor": KEY} (its name in the safetensors file), a tuple {"$tuple": [...]},
and a dict whose keys are not all strings (an optimizer's per-parameter state, keyed by index) {"$items": [[key,
value], ...]}. Reading builds back only these types from JSON and safetensors, so nothing in either file can run
code; anything else in them is refused as a corrupt file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmlab.errors import CorruptFileError
from lmlab.model_files import read_safetensors

FORMAT = "lmlab-trainer-state-1"
TENSOR, TUPLE, ITEMS = "$tensor", "$tuple", "$items"
PLAIN = (type(None), bool, int, float, str)


def state_files(folder: Path, stem: str) -> tuple[Path, Path]:
    """(JSON file, safetensors file) of the state `stem` in `folder`."""
    return Path(folder) / f"{stem}.json", Path(folder) / f"{stem}.safetensors"


def save_state(state: dict, folder: Path, stem: str) -> None:
    """Write `state` as `stem`.json + `stem`.safetensors in `folder`."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}

    def encode(value):
        if isinstance(value, torch.Tensor):
            key = str(len(tensors))
            tensors[key] = value.detach().cpu().contiguous()
            return {TENSOR: key}
        if isinstance(value, tuple):
            return {TUPLE: [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in value):
                return {k: encode(v) for k, v in value.items()}
            return {ITEMS: [[encode(k), encode(v)] for k, v in value.items()]}
        if isinstance(value, PLAIN):
            return value
        raise TypeError(f"a trainer state holds only tensors and plain values, not {type(value).__name__}")

    document = {"format": FORMAT, "state": encode(state)}
    json_file, tensor_file = state_files(folder, stem)
    save_file(tensors, str(tensor_file))
    json_file.write_text(json.dumps(document), encoding="utf-8")


def load_state(folder: Path, stem: str) -> dict:
    """The state `save_state` wrote (CorruptFileError naming the file when it is unreadable or malformed)."""
    json_file, tensor_file = state_files(folder, stem)
    try:
        document = json.loads(json_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{json_file} is not valid JSON ({err}): the file is truncated or corrupt") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CorruptFileError(f"{json_file} is not an lmlab trainer state (format {FORMAT!r})")
    tensors = read_safetensors(tensor_file)

    def decode(value):
        if isinstance(value, list):
            return [decode(v) for v in value]
        if isinstance(value, PLAIN):
            return value
        marked = [key for key in value if key.startswith("$")]
        if not marked:
            return {k: decode(v) for k, v in value.items()}
        if marked == [TENSOR] and len(value) == 1 and value[TENSOR] in tensors:
            return tensors[value[TENSOR]]
        if marked == [TUPLE] and len(value) == 1 and isinstance(value[TUPLE], list):
            return tuple(decode(v) for v in value[TUPLE])
        if marked == [ITEMS] and len(value) == 1 and isinstance(value[ITEMS], list):
            return {_key(decode(k)): decode(v) for k, v in value[ITEMS]}
        raise CorruptFileError(f"{json_file} holds {json.dumps(value)[:80]}, which is no part of a trainer state "
                               f"(or {tensor_file.name} lacks the tensor it names)")

    return decode(document["state"])


def _key(value):
    if isinstance(value, (list, dict, torch.Tensor)):
        raise CorruptFileError(f"a trainer state's dict key must be a plain value, got {type(value).__name__}")
    return value


__all__ = ["FORMAT", "load_state", "save_state", "state_files"]
