"""`lmlab export --model MODEL OUT_DIR [--merge-lora [ADAPTERS]]`: write a plain, self-contained model directory
(`lmlab export MODEL OUT_DIR`, the older form, works too)."""

from __future__ import annotations

import argparse

from lmlab.commands.options import MODEL_HELP, add_model_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write a plain model directory (optionally with LoRA adapters merged in)",
        description="Load MODEL (a model directory, or a training run's newest checkpoint), optionally fold LoRA "
                    "adapters into its weights, and save a plain model directory that "
                    "AutoModelForCausalLM.from_pretrained loads, with the tokenizer files copied along.")
    add_model_argument(parser, None, help=f"{MODEL_HELP}; a LoRA fine-tune's run: its base + adapters", required=False)
    parser.add_argument("positional_model", nargs="?", metavar="MODEL", help="the same as --model (its old form)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output model directory")
    parser.add_argument("--merge-lora", metavar="ADAPTERS", nargs="?", const=True,
                        help="merge LoRA adapters into the weights: alone, those MODEL carries (a `lmlab finetune "
                             "--lora` run or checkpoint); with a value, those saved in ADAPTERS (a directory with "
                             "adapter_config.json + adapter_model.safetensors, or a LoRA fine-tune's run)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lmlab.export import export

    if (args.model is None) == (args.positional_model is None):
        raise ValueError("name the model to export once: lmlab export --model MODEL_OR_RUN OUT_DIR")
    done = export(args.model or args.positional_model, args.out_dir, args.merge_lora)
    merged = f" with the adapters of {done.adapters} merged in" if done.adapters is not None else ""
    print(f"exported {done.source}{merged} to {args.out_dir} ({done.parameters:,} parameters, "
          f"{done.tokenizer_files} tokenizer files)")
    return 0
