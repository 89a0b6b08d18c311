"""Variants: what `lmlab compare` trains side by side. A variant is a preset plus model overrides.

On the command line:

    PRESET                              ngen4-tiny
    PRESET:OVERRIDE,OVERRIDE,...        yatgpt-tiny:mlp=relu2,norm=dyt@layers:0-1
    NAME=PRESET[:OVERRIDES]             relu2=yatgpt-tiny:mlp=relu2

Overrides are `lmlab.overrides` strings (`KEY=VALUE[@layers:SEL]`). Commas split them, except inside brackets,
braces or quotes (`rope_scaling={"type":"linear","factor":2}`), and a piece without `=` continues the previous
override's layer list (`mlp=asgg@layers:0,2` is one override). A NAME is given when the text before the first `:`
holds a `=`. Without one the name is the text itself.

In a YAML/JSON file (`--variants FILE`), a mapping from names to either such a spec string or to
`{preset: P, set: OVERRIDES, train: {...}}`, where `set` is a list of override strings or a mapping
(lmlab.overrides.normalize_overrides) and `train` optionally changes this variant's optimization
(keys in VARIANT_TRAIN_KEYS: e.g. its own peak lr, as the yatgpt card's GELU baseline had); or a list of spec
strings.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmlab.errors import VariantError
from lmlab.overrides import OverrideError, normalize_overrides, read_yaml
from lmlab.presets import get_preset

# per-variant training options a variants file may set (everything else is shared by every variant)
VARIANT_TRAIN_KEYS = ("lr", "optimizer_name", "schedule_name", "warmup_steps", "grad_clip")
_OPENING, _CLOSING = "[{(", "]})"


@dataclass
class Variant:
    name: str
    preset: str
    overrides: list[str] = field(default_factory=list)
    train: dict = field(default_factory=dict)

    @property
    def spec(self) -> str:
        """The command-line form (without the name)."""
        return self.preset + (":" + ",".join(self.overrides) if self.overrides else "")

    @property
    def slug(self) -> str:
        """The name as a folder name (characters other than letters, digits and . _ + = - become _)."""
        return re.sub(r"[^A-Za-z0-9._+=-]", "_", self.name)

    def as_dict(self) -> dict:
        return asdict(self)


def split_overrides(text: str) -> list[str]:
    """'mlp=asgg,norm=dyt@layers:0,2' -> ['mlp=asgg', 'norm=dyt@layers:0,2'] (see the module doc)."""
    pieces, current, depth, quote = [], "", 0, None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in _OPENING:
            depth += 1
        elif char in _CLOSING:
            depth -= 1
        elif char == "," and depth == 0:
            pieces.append(current)
            current = ""
            continue
        current += char
    pieces.append(current)
    overrides: list[str] = []
    for piece in (p.strip() for p in pieces):
        if not piece:
            continue
        if "=" not in piece and overrides:
            overrides[-1] += "," + piece
        else:
            overrides.append(piece)
    return overrides


def parse_variant(text: str, name: str | None = None) -> Variant:
    """A variant from its command-line form (see the module doc)."""
    head, colon, rest = text.strip().partition(":")
    given, equals, preset = head.partition("=")
    if equals:
        if name is not None:
            raise VariantError(f"variant {name!r}: the spec {text!r} names the variant again ({given!r})")
        name = given.strip()
    else:
        preset = given
    preset = preset.strip()
    if not preset:
        raise VariantError(f"variant {text!r} names no preset; write PRESET[:KEY=VALUE,...] or "
                           "NAME=PRESET[:KEY=VALUE,...] (e.g. relu2=yatgpt-tiny:mlp=relu2)")
    get_preset(preset)  # an unknown preset fails here, naming the valid ones
    overrides = split_overrides(rest) if colon else []
    for override in overrides:
        if "=" not in override:
            raise VariantError(f"variant {text!r}: {override!r} is not KEY=VALUE")
    return Variant(name=name if name is not None else text.strip(), preset=preset, overrides=overrides)


def _variant_from_entry(name: str, entry) -> Variant:
    if isinstance(entry, str):
        return parse_variant(entry, name=name)
    if not isinstance(entry, dict) or "preset" not in entry:
        raise VariantError(f"variant {name!r}: expected a spec string or a mapping with 'preset' (and optional "
                           f"'set', 'train'), got {entry!r}")
    unknown = set(entry) - {"preset", "set", "train"}
    if unknown:
        raise VariantError(f"variant {name!r}: unknown keys {sorted(unknown)}; use preset, set, train")
    train = dict(entry.get("train") or {})
    not_allowed = set(train) - set(VARIANT_TRAIN_KEYS)
    if not_allowed:
        raise VariantError(f"variant {name!r}: train keys {sorted(not_allowed)} must be the same for every variant "
                           f"(give them on the command line); a variant may set only {list(VARIANT_TRAIN_KEYS)}")
    try:
        overrides = normalize_overrides(entry.get("set") or [])
    except OverrideError as err:
        raise VariantError(f"variant {name!r}: {err}") from None
    variant = parse_variant(str(entry["preset"]), name=name)
    variant.overrides += overrides
    variant.train = train
    return variant


def load_variants_file(path: str | Path) -> list[Variant]:
    """The variants in a YAML/JSON file (see the module doc)."""
    content = read_yaml(path)
    try:
        if isinstance(content, list):
            return [parse_variant(str(entry)) for entry in content]
        if isinstance(content, dict):
            return [_variant_from_entry(str(name), entry) for name, entry in content.items()]
    except VariantError as err:
        raise VariantError(f"{path}: {err}") from None
    raise VariantError(f"{path}: expected a mapping of variant names to specs, or a list of specs")


def check_variants(variants: list[Variant]) -> None:
    """At least one variant; names that are valid and distinct, also as folder names (`Variant.slug`)."""
    if not variants:
        raise VariantError("give at least one VARIANT (e.g. yatgpt-tiny yatgpt-tiny:mlp=relu2) or --variants FILE")
    for variant in variants:
        if not variant.name or "|" in variant.name or not variant.name.isprintable():
            raise VariantError(f"variant name {variant.name!r}: give a non-empty name without '|' (it heads a table "
                               "row)")
    seen: dict[str, str] = {}
    for variant in variants:
        if variant.slug in seen:
            raise VariantError(f"two variants are both called {variant.name!r} (or the same once made a folder "
                               f"name: {seen[variant.slug]!r}); name them: NAME=PRESET:OVERRIDES")
        seen[variant.slug] = variant.name
