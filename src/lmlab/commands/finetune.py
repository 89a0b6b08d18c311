"""`lmlab finetune --model MODEL_OR_RUN [--lora ...] --data ... --steps N`: continue training a trained model on new
data, every weight (default) or only LoRA adapters on its frozen weights, with the trainer of `lmlab train`."""

from __future__ import annotations

import argparse

from lmlab.commands.options import MODEL_HELP, add_model_argument, given_options
from lmlab.commands.train import add_training_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a trained model (all weights, or LoRA adapters), or resume a fine-tune",
        description="Start from a trained model (a model directory, a training run's newest checkpoint, or a LoRA "
                    "checkpoint, merged) and train it on --data with the trainer of `lmlab train`: every weight, "
                    "or with --lora only low-rank adapters on its token mixers' projections (the base frozen). "
                    "Batch, precision, optimizer and schedule default to the base preset's recipe; the tokenizer "
                    "is the base's own. The base is copied to RUN/base; LoRA checkpoints hold only the adapters "
                    "and load as base + adapters; `lmlab export --model RUN OUT --merge-lora` writes the merged model.")
    add_model_argument(parser, "--base", help=f"the model to start from: {MODEL_HELP} (optional with --resume)",
                       required=False)
    parser.add_argument("--out", metavar="RUN",
                        help="run directory (default: runs/MODEL_NAME-lora or runs/MODEL_NAME-finetune)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the fine-tune in --out from its latest checkpoint; with a larger budget, extend "
                             "it")
    lora = parser.add_argument_group("LoRA (PEFT)")
    lora.add_argument("--lora", action="store_true", help="train LoRA adapters only (default: every weight)")
    lora.add_argument("--rank", type=int, metavar="R", help="adapter rank r (default: 8)")
    lora.add_argument("--alpha", type=float, metavar="A",
                      help="scale numerator α; the update is (α/r)·B·A (default: α = r)")
    lora.add_argument("--targets", metavar="NAMES", help="comma-separated projection names, e.g. q_proj,v_proj "
                                                         "(default: every projection of every token mixer)")
    lora.add_argument("--lora-dropout", type=float, metavar="P", help="dropout on the adapter input (default: 0)")
    add_training_arguments(parser)
    parser.set_defaults(run=run)


def lora_options(args: argparse.Namespace) -> dict | None:
    """TrainConfig.lora from the LoRA options (validated), or None without --lora."""
    from lmlab.train.finetune import lora_values

    given = {"--rank": args.rank, "--alpha": args.alpha, "--targets": args.targets, "--lora-dropout": args.lora_dropout}
    if not args.lora:
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            raise ValueError(f"{', '.join(named)} configure LoRA adapters; add --lora (without it every weight trains)")
        return None
    targets = None if args.targets is None else [name.strip() for name in args.targets.split(",") if name.strip()]
    return lora_values(args.rank, args.alpha, targets, args.lora_dropout)


def run(args: argparse.Namespace) -> int:
    from lmlab.train import train
    from lmlab.train.config import run_config
    from lmlab.train.finetune import default_run_dir, finetune_config

    lora = lora_options(args)
    if args.resume and args.model is None:
        config, out = run_config(None, args.out, True, given_options(args))
        if args.lora:
            config.lora = lora
    elif args.model is None:
        raise ValueError("give --model MODEL_OR_RUN (a model directory or a training run), or --resume --out RUN")
    else:
        config, out = finetune_config(args.model, lora, given_options(args)), args.out or default_run_dir(args.model,
                                                                                                          lora)
    train(config, out, resume=args.resume, device=args.device)
    return 0
