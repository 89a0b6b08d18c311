"""`lmlab compare VARIANT... --budget tokens=N|flops=F|seconds=S --seeds K --out DIR`: train every variant with
every seed on the same data order and budget, then write a report (docs/compare.md)."""

from __future__ import annotations

import argparse
import shlex

from lmlab.commands.options import (
    add_batch_arguments,
    add_data_arguments,
    add_optimization_arguments,
    add_override_arguments,
    model_overrides,
)
from lmlab.commands.train import OPTIONS

# `lmlab train` options a comparison takes once for every run (the budget, seeds and cadence are its own)
SHARED_OPTIONS = tuple(name for name in OPTIONS if name not in (
    "steps", "tokens", "chinchilla", "seed", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
    "log_every", "sample_every", "sample_tokens", "sample_prompt", "progress", "tensorboard", "wandb", "cache_dir",
    "distributed"))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="train variants at equal compute and report which is better",
        description="Train each VARIANT (a preset plus overrides) with each seed on the same data, in the same order, "
                    "with the same budget, then write OUT/report.md, report.csv, runs.csv, val_loss.png, "
                    "loss_vs_time.png and commands.sh. Running the command again resumes it: finished runs are "
                    "skipped, an interrupted one continues from its checkpoint.",
        epilog="VARIANT: PRESET | PRESET:KEY=VALUE,KEY=VALUE@layers:SEL,... | NAME=PRESET[:...], e.g. "
               "'relu2=yatgpt-tiny:mlp=relu2'. Budget: tokens=2M (same tokens for all), flops=1e15 (tokens = F / "
               "(3 × forward FLOPs per token), so a cheaper model sees more), seconds=600 (each variant's step is "
               "timed here first; equal wall-clock on this machine and its current load).")
    parser.add_argument("variants", nargs="*", metavar="VARIANT", help="variants to train (see below)")
    parser.add_argument("--variants", dest="variant_files", action="append", default=[], metavar="FILE",
                        help="YAML/JSON file of named variants (docs/compare.md); repeatable")
    parser.add_argument("--budget", help="tokens=N | flops=F | seconds=S per run (suffixes k, M, G, T, P)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per variant: --seed, --seed + 1, ...")
    parser.add_argument("--out", required=True, help="the comparison's folder (runs and report)")
    add_data_arguments(parser)
    add_batch_arguments(parser)
    add_optimization_arguments(parser)
    loop = parser.add_argument_group("evaluation and checkpoints")
    loop.add_argument("--eval-every", type=int, help="validate every N steps (default: 10 points per run)")
    loop.add_argument("--eval-batches", type=int, help="validation micro-batches (default 20; 0: the whole split)")
    loop.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps, for resuming (default: 10 per "
                                                           "run; only the newest is kept)")
    loop.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                      help="plain log lines instead of progress bars")
    system = parser.add_argument_group("system")
    system.add_argument("--compile", action="store_true", default=None, help="torch.compile the models")
    system.add_argument("--grad-checkpointing", action="store_true", default=None,
                        help="recompute activations in backward")
    system.add_argument("--device", help="cpu | cuda | mps (default: cuda when available)")
    add_override_arguments(system, "every variant (before the variant's own)")
    parser.set_defaults(run=run)


def build_request(args: argparse.Namespace):
    """The comparison the arguments ask for, or None when they name no variant (resume the one in --out)."""
    from lmlab.compare import Budget, Request, load_variants_file, parse_variant
    from lmlab.compare.plan import DEFAULT_SEED
    from lmlab.compare.variants import check_variants

    variants = [parse_variant(text) for text in args.variants]
    variants += [variant for path in args.variant_files for variant in load_variants_file(path)]
    if not variants:
        return None
    check_variants(variants)
    if not args.budget:
        raise ValueError("give --budget tokens=N, flops=F or seconds=S")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    base = DEFAULT_SEED if args.seed is None else args.seed
    return Request(variants=variants, budget=Budget.parse(args.budget), seeds=[base + i for i in range(args.seeds)],
                   options={name: getattr(args, name) for name in SHARED_OPTIONS},
                   model_overrides=model_overrides(args), eval_every=args.eval_every,
                   eval_batches=args.eval_batches, checkpoint_every=args.checkpoint_every)


def run(args: argparse.Namespace) -> int:
    from lmlab.compare import compare

    extra = {"cache_dir": args.cache_dir, "progress": args.progress}
    compare(args.out, build_request(args), args.device, extra, shlex.join(args.command_line))
    return 0
