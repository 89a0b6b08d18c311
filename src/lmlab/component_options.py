"""Components refuse what they would ignore: config validation from the registries' declarations.

Components in use (`in_use`): each layer's block, mixer, MLP and norm (`config.layer_spec(i)`); the position
encoding; the init scheme; the model's parts (lmlab.registry.PARTS: embedding, layer rules, residual stream, head,
loss); the model-wide norm where the embedding norm or the final norm uses it; the `qk_norm` norm when set.

Rules (`problems`):
1. a layer-spec field other than its default (window, value_embed, fan, ...) must be honoured by one of that
   layer's components;
2. a config field other than its default (except the model's own, `LMLabConfig.model_fields`: sizes, slots, token
   ids) must be declared by a component in use; an option declared with `requires=R` acts only where R is set;
3. a component's own option (`config.component_options`) must be declared by some registered component, and
   follows rule 2;
4. each declared option's check runs on a value other than its default; each component's check runs where it is
   used.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import MISSING, fields

from lmlab.errors import ConfigError
from lmlab.layer_pattern import LayerSpec, format_layers
from lmlab.registry import (
    BLOCKS,
    INIT_SCHEMES,
    MIXERS,
    MLPS,
    NORMS,
    PARTS,
    POSITIONS,
    Entry,
    Option,
    Registry,
)

LAYER_SLOTS = (("block", BLOCKS), ("mixer", MIXERS), ("mlp", MLPS), ("norm", NORMS))
REGISTRIES = (BLOCKS, MIXERS, MLPS, NORMS, POSITIONS, INIT_SCHEMES, PARTS)
CAPABILITIES = ("rotation",)  # declared by mixers that rotate q and k with the position encoding's tables


class Used:
    """One component in use: where (layer index, or None for model-wide) and its registry entry."""

    def __init__(self, registry: Registry, name: str, layer_idx: int | None):
        self.registry, self.name, self.layer_idx = registry, name, layer_idx
        self.entry: Entry = registry.entry(name)

    def __str__(self) -> str:
        return f"{self.registry.kind} {self.name!r}"

    def listing(self) -> str:
        names = [o.name for o in self.entry.options]
        return f"{self} (options it honours: {', '.join(names) if names else 'none'})"


def in_use(config) -> list[Used]:
    """Every component the model built from `config` contains (see the module docstring)."""
    used = [Used(registry, getattr(config.layer_spec(i), slot), i)
            for i in range(config.num_hidden_layers) for slot, registry in LAYER_SLOTS]
    used += [Used(POSITIONS, config.position, None), Used(INIT_SCHEMES, config.init, None)]
    used += [Used(PARTS, name, None) for name in PARTS.names()]
    if config.final_norm or config.embedding_norm:
        used.append(Used(NORMS, config.norm, None))
    if config.qk_norm is not None and config.qk_norm in NORMS:
        used.append(Used(NORMS, config.qk_norm, None))
    return used


def declarations(name: str) -> list[tuple[Registry, str, Option]]:
    """Every registered component that declares option `name`."""
    return [(registry, entry_name, option) for registry in REGISTRIES for entry_name in registry.names()
            for option in registry.entry(entry_name).options if option.name == name]


def defaults(config_class) -> dict:
    """Field name -> default of a config (or layer-spec) dataclass, for fields that have one."""
    return {f.name: f.default for f in fields(config_class) if f.default is not MISSING}


LAYER_DEFAULTS = defaults(LayerSpec)


def own_option_names(config_class) -> set[str]:
    """Names of every registered component's own options (kept in `config.component_options`)."""
    taken = defaults(config_class) | LAYER_DEFAULTS
    return {o.name for registry in REGISTRIES for n in registry.names() for o in registry.entry(n).options
            if o.name not in taken and o.name not in CAPABILITIES}


def declared_default(name: str):
    """The default a component's own option is declared with."""
    declared = [option for _, _, option in declarations(name)]
    if not declared:
        raise ConfigError(f"no registered component declares the option {name!r}")
    return declared[0].default


def own_option(config, name: str):
    """The value of a component's own option: `config.component_options[name]`, else its declared default."""
    options = config.component_options or {}
    return options[name] if name in options else declared_default(name)


def option_value(config, name: str):
    """The model-wide value of a config field or own option."""
    return getattr(config, name) if name in defaults(type(config)) else own_option(config, name)


def is_set(config, name: str) -> bool:
    """Whether option `name` is on: truthy model-wide, or (a layer-spec field) on some layer."""
    if name in LAYER_DEFAULTS:
        return any(getattr(config.layer_spec(i), name) for i in range(config.num_hidden_layers))
    return bool(option_value(config, name))


def honouring(config, name: str, used: list[Used]) -> list[Used]:
    """The components in `used` that declare `name` and whose requirement for it is met."""
    return [u for u in used for option in u.entry.options
            if option.name == name and (option.requires is None or is_set(config, option.requires))]


def honoured(config, name: str) -> bool:
    """Whether some component in use honours option (or capability) `name`."""
    return bool(honouring(config, name, in_use(config)))


def _declared_by(name: str) -> str:
    found = declarations(name)
    if not found:
        return f"no registered component honours {name}"
    owners = ", ".join(f"{registry.kind} {entry!r}" + (f" (with {o.requires} set)" if o.requires else "")
                       for registry, entry, o in found)
    return f"{name} is honoured by {owners}"


def _why_unhonoured(name: str, candidates: list[Used]) -> str:
    """Why no component in `candidates` honours option `name`: those that would ignore it, and those that honour
    it."""
    unmet = [(u, o) for u in candidates for o in u.entry.options if o.name == name]
    if unmet:
        u, option = unmet[0]
        return f"{u} honours it only with {option.requires} set"
    kinds = {registry.kind for registry, _, _ in declarations(name)}
    ignoring = list(dict.fromkeys(u.listing() for u in candidates if u.registry.kind in kinds))
    found = f"ignored by {', '.join(ignoring)}" if ignoring else "no component in use honours it"
    return f"{found}. {_declared_by(name)}"


def _on_layers(indices: list[int]) -> str:
    return f" on layer{'s' if len(indices) > 1 else ''} {format_layers(indices).replace(',', ', ')}"


def _layer_problems(config, used: list[Used]) -> list[str]:
    """Rule 1, one message per option, value and ignoring components, listing the layers it covers."""
    grouped: dict[tuple, list[int]] = {}
    for name, default in LAYER_DEFAULTS.items():
        for i in range(config.num_hidden_layers):
            value = getattr(config.layer_spec(i), name)
            layer = [u for u in used if u.layer_idx == i]
            if value != default and not honouring(config, name, layer):
                grouped.setdefault((name, value, default, _why_unhonoured(name, layer)), []).append(i)
    return [f"{name}={value!r}{_on_layers(layers)}: {why}; set {name}={json.dumps(default)}@layers:"
            f"{format_layers(layers)} or choose a component that honours it"
            for (name, value, default, why), layers in grouped.items()]


def component_fields(config_class) -> dict:
    """Field -> default of the config's fields that belong to components: its own fields (not the base class's)
    except those the model itself reads (`model_fields`)."""
    return {name: default for name, default in defaults(config_class).items()
            if name in vars(config_class).get("__annotations__", {}) and name not in config_class.model_fields}


def _model_wide_problems(config, used: list[Used]) -> list[str]:
    problems = []
    fields_default = component_fields(type(config))
    values = {name: getattr(config, name) for name in fields_default}
    values.update(config.component_options or {})
    own = own_option_names(type(config))
    for name, value in values.items():
        if name not in fields_default and name not in own:
            close = difflib.get_close_matches(name, sorted(own), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"component option {name!r} is not declared by any registered component.{hint}")
            continue
        default = fields_default[name] if name in fields_default else declared_default(name)
        if value == default:
            continue
        if not honouring(config, name, used):
            problems.append(f"{name}={value!r}: {_why_unhonoured(name, used)}; leave {name} at its default "
                            f"({default!r}) or use a component that honours it")
    return problems


def _check_problems(config, used: list[Used]) -> list[str]:
    """Rule 4: each declared check once per option and once per component and layer; a component's check failing
    on several layers is one message."""
    problems, checked, failing = [], set(), {}
    for u in used:
        for option in u.entry.options:
            if option.check is None or id(option) in checked or option.name in LAYER_DEFAULTS:
                continue
            checked.add(id(option))
            value = option_value(config, option.name)
            default = defaults(type(config)).get(option.name, option.default)
            problem = None if value == default else option.check(value, config)
            if problem:
                problems.append(f"{option.name} {problem}, got {value!r} ({u})")
        problem = None if u.entry.check is None else u.entry.check(config, u.layer_idx)
        if problem:
            failing.setdefault((str(u), problem), []).append(u.layer_idx)
    return problems + [f"{component}{'' if layers == [None] else _on_layers(sorted(set(layers)))}: {problem}"
                       for (component, problem), layers in failing.items()]


def problems(config) -> list[str]:
    """Every rule the config breaks (module docstring), as messages naming the option and the component(s)."""
    used = in_use(config)
    return _layer_problems(config, used) + _model_wide_problems(config, used) + _check_problems(config, used)


def check_options(config) -> None:
    """Raise ConfigError listing every problem of `config` (see `problems`)."""
    found = list(dict.fromkeys(problems(config)))
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"{len(found)} problems: " + " | ".join(found))


__all__ = ["CAPABILITIES", "Used", "check_options", "declarations", "honoured", "in_use", "option_value",
           "own_option", "own_option_names", "problems"]
