"""Component overrides: `--set KEY=VALUE` on any preset, checked before anything is built.

Two forms:
- model-wide: `mlp=yatnmn_softplus`, `norm=dyt`, `hidden_size=256`, `rope_scaling={"type":"linear","factor":2}`
  (any LMLabConfig field, or an option a registered component declares for itself, which goes into
  `component_options`; the value is read as JSON where it parses — numbers, true/false/null, lists, dicts — and
  as a plain string otherwise);
- per layer: `mixer=gated_deltanet@layers:0-2` sets a `LayerSpec` field (mixer, mlp, norm, block, window,
  value_embed, fan) on the listed layers only: 0-based indices and inclusive ranges, comma-separated
  (`@layers:0,2,4-6`), negative indices counting from the end (`@layers:-1`).

`apply_overrides` returns a new, validated config: an unknown field, a malformed value or an impossible
combination (the model cannot be built) is an `OverrideError` that names the override.

Config files (`--set-file FILE`, YAML or JSON) hold the same overrides, either as a list of `KEY=VALUE[@layers:SEL]`
strings or as a mapping whose keys carry the layer selection (`mlp: asgg`, `mixer@layers:0-2: gated_deltanet`);
a mapping becomes the same strings (`normalize_overrides`), so there is one parser for every source.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import fields
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError

from lmlab.component_options import own_option_names
from lmlab.config import LAYER_FIELDS, LMLabConfig
from lmlab.errors import OverrideError

LAYER_SUFFIX = "@layers:"


_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "dict": dict, "list": list,
          "None": type(None)}


def config_field_names() -> list[str]:
    return sorted(f.name for f in fields(LMLabConfig) if not f.name.startswith("_"))


def _accepted_types(annotation: str) -> tuple[type, ...]:
    kinds: list[type] = []
    for name in annotation.split("|"):
        kind = _TYPES.get(name.strip().split("[")[0])
        if kind is None:  # an annotation this check does not know: leave it to the config's own validation
            return (object,)
        kinds.extend(kind if isinstance(kind, tuple) else (kind,))
    return tuple(kinds)


def _check_type(key: str, value) -> None:
    """Refuse a value of the wrong kind for a config field, naming what the field takes."""
    annotation = str({f.name: f.type for f in fields(LMLabConfig)}[key])
    wrong_bool = isinstance(value, bool) and "bool" not in annotation
    if wrong_bool or not isinstance(value, _accepted_types(annotation)):
        raise OverrideError(f"{key} takes {annotation}, got {value!r}")


def _derived_sizes(values: dict, key: str) -> None:
    """Changing the width or the head count re-derives head_dim (and MHA's KV head count) when they were derived."""
    if key not in ("hidden_size", "num_attention_heads"):
        return
    if values.get("head_dim") == values["hidden_size"] // values["num_attention_heads"]:
        values["head_dim"] = None
    if values.get("num_key_value_heads") == values["num_attention_heads"]:
        values["num_key_value_heads"] = None


def parse_value(text: str):
    """JSON where it parses (1, 0.5, true, null, [1, 2], {"a": 1}); the raw string otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_layers(text: str, num_layers: int) -> list[int]:
    """'0-2,5,-1' -> [0, 1, 2, 5, num_layers − 1], each checked against the layer count."""
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                split = part.index("-", 1)
                start, stop = int(part[:split]), int(part[split + 1:])
                chosen = list(range(start, stop + 1))
                if not chosen:
                    raise ValueError
            else:
                chosen = [int(part)]
        except ValueError:
            raise OverrideError(f"bad layer selection {part!r} in {text!r}; use indices and ranges like "
                                "'0-2,5,-1'") from None
        for index in chosen:
            resolved = index + num_layers if index < 0 else index
            if not 0 <= resolved < num_layers:
                raise OverrideError(f"layer {index} does not exist: the model has {num_layers} layers (0.."
                                    f"{num_layers - 1})")
            layers.append(resolved)
    return sorted(set(layers))


def parse_override(text: str) -> tuple[str, object, str | None]:
    """'key=value[@layers:SEL]' -> (key, value, layer selection or None)."""
    if "=" not in text:
        raise OverrideError(f"override {text!r} is not KEY=VALUE (e.g. mlp=yatnmn_softplus or "
                            "mixer=gated_deltanet@layers:0-2)")
    key, value = text.split("=", 1)
    key, selection = key.strip(), None
    if LAYER_SUFFIX in value:
        value, selection = value.split(LAYER_SUFFIX, 1)
    return key, parse_value(value.strip()), selection


def format_override(key: str, value) -> str:
    """The override string for (key, value); `key` may carry a layer selection (`mixer@layers:0-2`). A string is
    written as is when it reads back as itself, else as JSON (so `"1"` stays a string), so parsing gives `value`."""
    key, _, selection = key.partition(LAYER_SUFFIX)
    text = value if isinstance(value, str) and parse_value(value) == value else json.dumps(value)
    return f"{key.strip()}={text}{LAYER_SUFFIX + selection if selection else ''}"


def normalize_overrides(overrides) -> list[str]:
    """A list of override strings from a list of strings or a {KEY[@layers:SEL]: value} mapping."""
    if isinstance(overrides, dict):
        return [format_override(str(key), value) for key, value in overrides.items()]
    if isinstance(overrides, (list, tuple)) and all(isinstance(item, str) for item in overrides):
        return list(overrides)
    raise OverrideError(f"model overrides must be a list of 'KEY=VALUE[@layers:SEL]' strings or a mapping "
                        f"{{KEY: VALUE}}, got {overrides!r}")


def read_yaml(path: str | Path):
    """A YAML or JSON file's content. Numbers follow YAML 1.2 / JSON (`1e-5` is a float; PyYAML's YAML 1.1 reads it
    as a string). A missing or malformed file is an OverrideError naming it."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"), list("-+0123456789."))
    path = Path(path)
    if not path.is_file():
        raise OverrideError(f"no such file: {path}")
    try:
        return yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise OverrideError(f"{path} is not valid YAML/JSON: {err}") from None


def load_overrides_file(path: str | Path) -> list[str]:
    """The overrides in a YAML (.yaml/.yml) or JSON file: a list of strings or a mapping (see the module doc)."""
    content = read_yaml(path)
    try:
        return normalize_overrides(content if content is not None else [])
    except OverrideError as err:
        raise OverrideError(f"{path}: {err}") from None


def model_wide_value(overrides: list[str], key: str):
    """The value the last model-wide override of `key` sets, or None."""
    value = None
    for text in overrides:
        name, parsed, selection = parse_override(text)
        if name == key and selection is None:
            value = parsed
    return value


def _unknown_key(key: str, valid: list[str], what: str) -> OverrideError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return OverrideError(f"unknown {what} {key!r}.{hint} Valid: {', '.join(valid)}")


def apply_overrides(config: LMLabConfig, overrides: list[str]) -> LMLabConfig:
    """A new config with `overrides` applied in order, validated by building the model on the meta device."""
    values = config.to_dict()
    for text in overrides:
        key, value, selection = parse_override(text)
        if selection is None and key in own_option_names(LMLabConfig):
            values["component_options"] = {**(values.get("component_options") or {}), key: value}
            continue
        if selection is None:
            if key not in config_field_names():
                raise _unknown_key(key, config_field_names() + sorted(own_option_names(LMLabConfig)),
                                   "config field or component option")
            _check_type(key, value)
            _derived_sizes(values, key)
            values[key] = value
            continue
        if key not in LAYER_FIELDS:
            raise _unknown_key(key, list(LAYER_FIELDS), "per-layer field")
        num_layers = values["num_hidden_layers"]
        layers = [dict(entry or {}) for entry in (values.get("layers") or [{}] * num_layers)]
        if len(layers) != num_layers:
            raise OverrideError(f"{text!r}: the config lists {len(layers)} layers but num_hidden_layers is "
                                f"{num_layers}; change num_hidden_layers before per-layer overrides")
        for index in parse_layers(selection, num_layers):
            layers[index][key] = value
        values["layers"] = layers
    values.pop("transformers_version", None)
    try:
        new = LMLabConfig.from_dict(values)
        from lmlab.model import LMLabForCausalLM

        with torch.device("meta"):
            LMLabForCausalLM(new)
    except (ValueError, TypeError, StrictDataclassError) as err:
        raise OverrideError(f"overrides {overrides} give a model that cannot be built: {err}") from err
    return new
