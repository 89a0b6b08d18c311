"""Named registries: how a config string ("dyt", "asgg", "selective_copy") becomes a module.

Every swappable part of a model lives in one registry per slot. A component registers itself with a decorator
where it is defined, so adding a component never means editing the model. Unknown names fail with the list of
valid ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from lmlab.errors import UnknownNameError

T = TypeVar("T")


def unknown_name_message(kind: str, name: object, valid: list[str]) -> str:
    """An error text that names the bad value, the closest valid one, and every valid one."""
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(sorted(valid))}."


class Registry(Generic[T]):
    """A mapping name -> builder for one slot of the model (norm, mixer, mlp, position, block, init scheme)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check(self, name: str) -> None:
        if name not in self._entries:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names()))

    def __getitem__(self, name: str) -> T:
        self.check(name)
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


NORMS: Registry = Registry("norm")
MIXERS: Registry = Registry("mixer")
MLPS: Registry = Registry("mlp")
POSITIONS: Registry = Registry("position")
BLOCKS: Registry = Registry("block")
INIT_SCHEMES: Registry = Registry("init scheme")
