"""`lmlab compare VARIANT... --budget tokens=N|flops=F|seconds=S --seeds K --out DIR`: train every variant with
every seed on the same data order and budget, then write a report (docs/compare.md)."""

from __future__ import annotations

import argparse
import shlex

from lmlab.commands.options import add_device_argument, add_override_arguments, add_train_options, model_overrides
from lmlab.compare.plan import CHECKPOINTS_PER_RUN, EVALS_PER_RUN
from lmlab.train.options import OPTIONS_BY_NAME, SYSTEM, TRAIN_OPTIONS

# `lmlab train` options a comparison takes once for every run (its budget, seeds and cadence are set per run)
SHARED_OPTIONS = tuple(option for option in TRAIN_OPTIONS if not option.per_run)
INVOCATION_OPTIONS = ("cache_dir",)  # this invocation's only: they may differ when the comparison is resumed


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
    parser.add_argument("--budget", metavar="KIND=AMOUNT",
                        help="tokens=N | flops=F | seconds=S per run (suffixes k, M, G, T, P)")
    parser.add_argument("--seeds", type=int, default=1, metavar="K",
                        help="seeds per variant: --seed, --seed + 1, ... (default: 1)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the comparison's folder (runs and report)")
    system = add_train_options(parser, SHARED_OPTIONS)[SYSTEM]
    add_device_argument(system)
    add_override_arguments(system, "every variant (before the variant's own)")
    loop = parser.add_argument_group("evaluation and checkpoints of every run")
    loop.add_argument("--eval-every", type=int, metavar="N",
                      help=f"validate every N steps (default: {EVALS_PER_RUN} points per run)")
    loop.add_argument("--eval-batches", type=int, metavar="N", help=OPTIONS_BY_NAME["eval_batches"].help +
                      f" (default: {OPTIONS_BY_NAME['eval_batches'].shown_default})")
    loop.add_argument("--checkpoint-every", type=int, metavar="N",
                      help=f"checkpoint every N steps, for resuming (default: {CHECKPOINTS_PER_RUN} per run; only the "
                           "newest is kept)")
    loop.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                      help="plain log lines instead of progress bars")
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
                   options={option.name: getattr(args, option.name) for option in SHARED_OPTIONS
                            if option.name not in INVOCATION_OPTIONS},
                   model_overrides=model_overrides(args), eval_every=args.eval_every,
                   eval_batches=args.eval_batches, checkpoint_every=args.checkpoint_every)


def run(args: argparse.Namespace) -> int:
    from lmlab.compare import compare

    extra = {"cache_dir": args.cache_dir, "progress": args.progress}
    compare(args.out, build_request(args), args.device, extra, shlex.join(args.command_line))
    return 0
