"""`lmlab train --preset NAME [--data ...] [--tokenizer ...]`: train a preset (or resume a run), on one CPU or
under `torchrun` on many processes."""

from __future__ import annotations

import argparse

from lmlab.commands.options import add_device_argument, add_override_arguments, add_train_options, given_options
from lmlab.presets import PRESETS
from lmlab.train.options import SYSTEM


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a preset on a corpus, or resume a run",
        description="Train a preset with its published recipe (optimizer, schedule, batch, tokenizer), overriding "
                    "any of it from the command line. Without --data it trains on the built-in corpus (the Python "
                    "standard library's sources). Run under torchrun for DDP/FSDP2 on many processes.")
    parser.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                        help="preset to train (`lmlab info --list`); optional with --resume")
    parser.add_argument("--out", metavar="RUN", help="run directory (default: runs/PRESET)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint; with a larger budget (--steps, "
                             "--tokens, --chinchilla) extend it (README: Extending a run)")
    add_training_arguments(parser)
    parser.set_defaults(run=run)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Every training option, the device and the model overrides (shared by `train` and `finetune`)."""
    system = add_train_options(parser)[SYSTEM]
    add_device_argument(system)
    add_override_arguments(system, "the model")


def build_config(args: argparse.Namespace):
    """(TrainConfig, run directory) of the parsed arguments (lmlab.train.config.run_config holds the rules)."""
    from lmlab.train.config import run_config

    return run_config(args.preset, args.out, args.resume, given_options(args))


def run(args: argparse.Namespace) -> int:
    from lmlab.train import train

    config, out = build_config(args)
    train(config, out, resume=args.resume, device=args.device)
    return 0
