"""Command-line options shared by several verbs, built from the library's tables: model overrides (`--set`,
`--set-file`) and the training options of `lmlab train`, `finetune` and `compare` (lmlab.train.options)."""

from __future__ import annotations

import argparse

from lmlab.overrides import load_overrides_file
from lmlab.train.options import TRAIN_OPTIONS, TrainOption


def add_override_arguments(parser, what: str = "the model") -> None:
    parser.add_argument("--set", dest="model_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config field of {what} (mlp=asgg, hidden_size=128) or a per-layer choice "
                             "(norm=dyt@layers:0-2); the value is read as JSON where it parses; repeatable")
    parser.add_argument("--set-file", dest="override_files", action="append", default=[], metavar="FILE",
                        help="YAML/JSON file of overrides: a list of KEY=VALUE strings or a mapping "
                             "{KEY[@layers:SEL]: VALUE}; applied before --set; repeatable")


def model_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides of `--set-file` files (in order), then of `--set`."""
    files = [text for path in args.override_files for text in load_overrides_file(path)]
    return [*files, *args.model_overrides]


def add_train_options(parser: argparse.ArgumentParser, options: tuple[TrainOption, ...] = TRAIN_OPTIONS) -> dict:
    """Add `options` to `parser` in their help groups; returns the groups by name (verbs may add to them)."""
    groups: dict = {}
    for option in options:
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        group = groups[option.group]
        text = option.help + (f" (default: {option.shown_default})" if option.shown_default else "")
        if option.type is None:
            group.add_argument(option.option, dest=option.name, action="store_true" if option.switch else "store_false",
                               default=None, help=text)
        else:
            metavar = option.metavar or {int: "N", float: "X"}.get(option.type)
            group.add_argument(option.option, dest=option.name, type=option.type, choices=option.choices,
                               action="append" if option.repeat else "store", metavar=metavar, help=text)
    return groups


def given_options(args: argparse.Namespace, options: tuple[TrainOption, ...] = TRAIN_OPTIONS) -> dict:
    """The training options as given on the command line (None where not given) plus the model overrides."""
    given = {option.name: getattr(args, option.name) for option in options}
    overrides = model_overrides(args)
    if overrides:
        given["model_overrides"] = overrides
    return given


MODEL_HELP = "a model directory, or a training run (its newest checkpoint)"


def add_model_argument(parser, old_name: str | None, help: str = MODEL_HELP, required: bool = True) -> None:
    """`--model MODEL_OR_RUN`, the model a verb reads (every verb names it so); `old_name` (the verb's earlier name
    for it, e.g. --checkpoint) still works."""
    names = ["--model"] + ([old_name] if old_name else [])
    alias = f"; {old_name} is its old name" if old_name else ""
    parser.add_argument(*names, dest="model", metavar="MODEL_OR_RUN", required=required, help=help + alias)


def add_device_argument(parser) -> None:
    parser.add_argument("--device", help="cpu | cuda | cuda:N | mps (default: cuda when available, else cpu)")
