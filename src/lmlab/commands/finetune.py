"""`lmlab finetune --base MODEL_OR_RUN [--lora ...] --data ... --steps N`: continue training a trained model on new
data, every weight (default) or only LoRA adapters on its frozen weights, with the trainer of `lmlab train`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.commands import train as train_command
from lmlab.train.config import RECIPE_KEYS, TrainConfig, apply_options

# the base preset's recipe keys a fine-tune inherits: not its tokenizer (the base's own is used) nor its budget
INHERITED_RECIPE_KEYS = tuple(key for key in RECIPE_KEYS if key not in ("tokenizer", "chinchilla"))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a trained model (all weights, or LoRA adapters), or resume a fine-tune",
        description="Start from a trained model (a model directory, a training run's newest checkpoint, or a LoRA "
                    "checkpoint, merged) and train it on --data with the trainer of `lmlab train`: every weight, "
                    "or with --lora only low-rank adapters on its token mixers' projections (the base frozen). "
                    "Batch, precision, optimizer and schedule default to the base preset's recipe; the tokenizer "
                    "is the base's own. The base is copied to RUN/base; LoRA checkpoints hold only the adapters "
                    "and load as base + adapters; `lmlab export RUN OUT --merge-lora` writes the merged model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--base", metavar="MODEL_OR_RUN", help="the model to start from (optional with --resume)")
    parser.add_argument("--out", help="run directory (default runs/BASE_NAME-lora or runs/BASE_NAME-finetune)")
    parser.add_argument("--resume", action="store_true", help="continue the fine-tune in --out from its latest "
                                                              "checkpoint")
    lora = parser.add_argument_group("LoRA (PEFT)")
    lora.add_argument("--lora", action="store_true", help="train LoRA adapters only (default: every weight)")
    lora.add_argument("--rank", type=int, help="adapter rank r (default 8)")
    lora.add_argument("--alpha", type=float, help="scale numerator α; the update is (α/r)·B·A (default α = r)")
    lora.add_argument("--targets", help="comma-separated projection names, e.g. q_proj,v_proj (default: every "
                                        "projection of every token mixer)")
    lora.add_argument("--lora-dropout", type=float, help="dropout on the adapter input (default 0)")
    train_command.add_training_options(parser)
    parser.set_defaults(run=run)


def lora_options(args: argparse.Namespace) -> dict | None:
    """TrainConfig.lora from the LoRA options (validated), or None without --lora."""
    given = {"rank": args.rank, "alpha": args.alpha, "targets": args.targets, "dropout": args.lora_dropout}
    if not args.lora:
        named = [f"--{name.replace('dropout', 'lora-dropout')}" for name, value in given.items() if value is not None]
        if named:
            raise ValueError(f"{', '.join(named)} configure LoRA adapters; add --lora (without it every weight trains)")
        return None
    from lmlab.finetune import lora_settings

    targets = None
    if args.targets is not None:
        targets = [name.strip() for name in args.targets.split(",") if name.strip()]
        if not targets:
            raise ValueError("--targets is empty; name projections such as q_proj,v_proj, or leave it out")
    values = {"rank": 8 if args.rank is None else args.rank, "alpha": args.alpha, "targets": targets,
              "dropout": 0.0 if args.lora_dropout is None else args.lora_dropout}
    lora_settings(values)  # a clear error for rank <= 0, alpha <= 0, dropout outside [0, 1)
    return values


def base_values(base: str, lora: dict | None, tokenizer: str | None) -> dict:
    """The starting config of a fine-tune of `base`: its preset's recipe (when the preset is known), the base
    model directory, the LoRA settings, and the tokenizer (the base's own, else `tokenizer`, else the recipe's)."""
    from lmlab.config import LMLabConfig
    from lmlab.finetune import has_tokenizer
    from lmlab.presets import get_preset
    from lmlab.registry import UnknownNameError
    from lmlab.run_layout import resolve_model_dir

    model_dir = resolve_model_dir(base).resolve()
    preset = LMLabConfig.from_pretrained(model_dir).preset
    try:
        recipe = get_preset(preset).recipe if preset else {}
    except UnknownNameError:
        recipe = {}
    values = {"preset": preset or "custom", **{k: recipe[k] for k in INHERITED_RECIPE_KEYS if k in recipe},
              "base": str(model_dir), "lora": lora}
    if has_tokenizer(model_dir):
        if tokenizer is not None:
            raise ValueError(f"the base {model_dir} has its own tokenizer, which a fine-tune must keep (its ids are "
                             "the embedding rows); drop --tokenizer")
        values["tokenizer"] = str(model_dir)
    elif tokenizer or recipe.get("tokenizer"):
        values["tokenizer"] = tokenizer or recipe["tokenizer"]
    else:
        raise ValueError(f"the base {model_dir} holds no tokenizer files; pass --tokenizer (the one the base was "
                         "trained with, e.g. bytes)")
    return values


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """The fine-tune's config and directory. With --resume and no --base the checkpoint's saved config is used, with
    any options given applied to it (a changed trajectory key, LoRA settings included, is then refused by name)."""
    lora = lora_options(args)
    if args.resume and args.base is None:
        config, out = train_command.build_config(argparse.Namespace(**vars(args), preset=None))
        if args.lora:
            config.lora = lora
        return config, out
    if args.base is None:
        raise ValueError("give --base MODEL_OR_RUN (a model directory or a training run), or --resume --out RUN")
    options = train_command.training_options(args)
    if not (options["steps"] or options["tokens"] or options["chinchilla"]):
        raise ValueError("a fine-tune needs a budget: --steps N or --tokens N (or --chinchilla X)")
    config = apply_options(base_values(args.base, lora, options.pop("tokenizer")), options)
    return config, args.out or f"runs/{Path(args.base).resolve().name}-{'lora' if lora else 'finetune'}"


def run(args: argparse.Namespace) -> int:
    from lmlab.train import train

    config, out = build_config(args)
    train(config, out, resume=args.resume, device=args.device)
    return 0
