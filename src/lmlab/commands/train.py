"""`lmlab train --preset NAME [--data ...] [--tokenizer ...]`: train a preset (or resume a run), on one CPU or
under `torchrun` on many processes."""

from __future__ import annotations

import argparse
import json

from lmlab.commands.options import (
    add_batch_arguments,
    add_data_arguments,
    add_optimization_arguments,
    add_override_arguments,
    model_overrides,
)
from lmlab.overrides import apply_overrides
from lmlab.presets import PRESETS, preset_config
from lmlab.train.checkpoint import TRAIN_CONFIG, latest_checkpoint
from lmlab.train.config import TrainConfig, apply_options, config_from_recipe

# option dest -> TrainConfig field (or a key config_from_recipe understands)
OPTIONS = ("data", "text_field", "hf_split", "max_documents", "tokenizer", "seq_len", "batch_size", "grad_accum",
           "precision", "lr", "optimizer_name", "schedule_name", "warmup_steps", "grad_clip", "steps", "tokens",
           "chinchilla", "seed", "val_fraction", "distributed", "grad_checkpointing", "eval_every", "eval_batches",
           "sample_every", "sample_tokens", "sample_prompt", "checkpoint_every", "keep_checkpoints", "log_every",
           "compile", "progress", "tensorboard", "wandb", "cache_dir")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a preset on a corpus, or resume a run",
        description="Train a preset with its published recipe (optimizer, schedule, batch, tokenizer), overriding "
                    "any of it from the command line. Without --data it trains on the built-in corpus (the Python "
                    "standard library's sources). Run under torchrun for DDP/FSDP2 on many processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                        help="preset to train (`lmlab info --list`); optional with --resume")
    parser.add_argument("--out", help="run directory (default runs/PRESET)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    add_training_options(parser)
    parser.set_defaults(run=run)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Data, batch, optimization, budget, loop and system options (shared by `train` and `finetune`)."""
    add_data_arguments(parser)
    add_batch_arguments(parser)
    add_optimization_arguments(parser)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="optimizer steps")
    budget.add_argument("--tokens", type=int, help="training tokens")
    budget.add_argument("--chinchilla", type=float, help="multiple of 20 tokens per parameter (default 1)")
    loop = parser.add_argument_group("evaluation, samples, checkpoints, logging")
    loop.add_argument("--eval-every", type=int, help="validate every N steps (and at the end)")
    loop.add_argument("--eval-batches", type=int, help="validation micro-batches (0: the whole split)")
    loop.add_argument("--sample-every", type=int, help="print a text sample every N steps")
    loop.add_argument("--sample-tokens", type=int, help="tokens per sample; 0: no samples (default 64)")
    loop.add_argument("--sample", dest="sample_prompt", help="sample prompt (default: the start of the validation "
                                                              "text); a sample is also printed at the end")
    loop.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (and at the end)")
    loop.add_argument("--keep", dest="keep_checkpoints", type=int, help="checkpoints kept (default 3)")
    loop.add_argument("--log-every", type=int, help="metrics every N steps")
    loop.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                      help="plain log lines instead of a progress bar")
    loop.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None)
    loop.add_argument("--wandb", action="store_true", default=None, help="also log to Weights & Biases")
    system = parser.add_argument_group("system")
    system.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    system.add_argument("--grad-checkpointing", action="store_true", default=None,
                        help="recompute activations in backward")
    system.add_argument("--distributed", choices=("ddp", "fsdp"), help="strategy under torchrun (default ddp)")
    system.add_argument("--device", help="cpu | cuda | mps (default: cuda when available)")
    add_override_arguments(system, "the model")


def training_options(args: argparse.Namespace) -> dict:
    """The options given on the command line (None where not given), as overrides of a recipe or saved config."""
    options = {name: getattr(args, name) for name in OPTIONS}
    overrides = model_overrides(args)
    if overrides:
        options["model_overrides"] = overrides
    return options


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """The run's config and directory. With --resume and no --preset the checkpoint's saved config is the base;
    options given anyway are applied to it (a changed trajectory key is then refused by name)."""
    options = training_options(args)
    if args.resume and args.preset is None:
        if not args.out:
            raise ValueError("--resume needs --out RUN (the run directory to continue)")
        checkpoint = latest_checkpoint(args.out)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume: {args.out} holds no checkpoint")
        return apply_options(json.loads((checkpoint / TRAIN_CONFIG).read_text()), options), args.out
    if args.preset is None:
        raise ValueError("give --preset NAME (see `lmlab info --list`), or --resume --out RUN")
    config = config_from_recipe(args.preset, options)
    apply_overrides(preset_config(config.preset), config.model_overrides)  # a bad --set fails now, before the data
    return config, args.out or f"runs/{args.preset}"


def run(args: argparse.Namespace) -> int:
    from lmlab.train import train

    config, out = build_config(args)
    train(config, out, resume=args.resume, device=args.device)
    return 0
