"""Named registries: how a config string ("dyt", "asgg", "selective_copy") becomes a module.

Every swappable part of a model lives in one registry per slot. A component registers itself where it is defined,
so adding a component never means editing the model, and declares there what it honours:

    MIXERS.register("attention", options=("window", "value_embed", "rotation", ...), describe=...)(SoftmaxAttention)

- `options`: the config options the component reads. A name is an `LMLabConfig` field (`qk_norm`), a `LayerSpec`
  field (`window`), a capability another component looks for (`rotation`: the mixer rotates q and k with the
  position encoding), or an `Option` with a `default`: the component's own option, kept in
  `config.component_options` (no config field needed). Config validation (lmlab.component_options) refuses an
  option set where no component in use honours it, and runs each declared `check`.
- `check(config, layer_idx)`: a problem with the combination (text), or None; layer_idx is None for model-wide parts.
- `describe(config, layer_idx)`: one line of what the component computes there (None: nothing in this config), for
  `lmlab info --explain`.

Unknown names fail with the list of valid ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lmlab.errors import UnknownNameError

T = TypeVar("T")


def unknown_name_message(kind: str, name: object, valid: list[str]) -> str:
    """An error text that names the bad value, the closest valid one, and every valid one."""
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(sorted(valid))}."


@dataclass(frozen=True)
class Option:
    """A config option a component honours.

    name: a config field, a layer-spec field, a capability, or the component's own option (see the module doc).
    default: the value of the component's own option when the config does not set it.
    check: (value, config) -> a problem (text) or None; runs on a value other than the default whenever a component
        in use declares the option.
    requires: the option only acts where this other option is set (truthy model-wide, or on some layer), e.g.
        `qk_norm_scale` requires `qk_norm`.
    doc: what the option does, in a few words.
    """

    name: str
    default: Any = None
    check: Callable[[Any, Any], str | None] | None = None
    requires: str | None = None
    doc: str = ""


@dataclass(frozen=True)
class Entry:
    """One registered component: its builder and its declarations."""

    build: Any
    options: tuple[Option, ...]
    check: Callable[[Any, int | None], str | None] | None
    describe: Callable[[Any, int | None], str | None] | None

    def honours(self, name: str) -> bool:
        return any(option.name == name for option in self.options)


def one_of(*values) -> Callable[[Any, Any], str | None]:
    """A check accepting only `values`."""
    return lambda value, config: None if value in values else f"must be one of {', '.join(map(repr, values))}"


def positive(value, config) -> str | None:
    """A check accepting numbers > 0."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return None if ok else "must be a positive number"


def at_least_one(value, config) -> str | None:
    """A check accepting integers >= 1."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else "must be an integer of at least 1"


def channel_count(value, config) -> str | None:
    """A check accepting a number of input channels: 1 .. hidden_size."""
    ok = isinstance(value, int) and 1 <= value <= config.hidden_size
    return None if ok else f"must be between 1 and hidden_size ({config.hidden_size})"


class Registry(Generic[T]):
    """A mapping name -> builder for one slot of the model (norm, mixer, mlp, position, block, init scheme)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, options: Iterable[str | Option] = (),
                 check: Callable[[Any, int | None], str | None] | None = None,
                 describe: Callable[[Any, int | None], str | None] | None = None) -> Callable[[T], T]:
        declared = tuple(o if isinstance(o, Option) else Option(o) for o in options)

        def add(build: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(build, declared, check, describe)
            return build

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check(self, name: str) -> None:
        if name not in self._entries:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names()))

    def entry(self, name: str) -> Entry:
        self.check(name)
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self.entry(name).build

    def __contains__(self, name: str) -> bool:
        return name in self._entries


NORMS: Registry = Registry("norm")
MIXERS: Registry = Registry("mixer")
MLPS: Registry = Registry("mlp")
POSITIONS: Registry = Registry("position")
BLOCKS: Registry = Registry("block")
INIT_SCHEMES: Registry = Registry("init scheme")
# the model's fixed parts (embedding, residual stream, head, loss): always in use, built by the model itself,
# registered for their declarations and descriptions
PARTS: Registry = Registry("model part")
