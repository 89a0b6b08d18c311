"""`lmlab export MODEL OUT_DIR [--merge-lora ADAPTER_DIR]`: write a plain, self-contained model directory."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lmlab.lora import load_lora, merge_lora
from lmlab.model import LMLabForCausalLM, count_parameters
from lmlab.run_layout import resolve_model_dir

# what `save_pretrained` of Hugging Face tokenizers writes (plus any other tokenizer* file)
TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                   "chat_template.jinja")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write a plain model directory (optionally with LoRA adapters merged in)",
        description="Load MODEL (a model directory, or a training run's newest checkpoint), optionally fold LoRA "
                    "adapters into its weights, and save a plain model directory that "
                    "AutoModelForCausalLM.from_pretrained loads, with the tokenizer files copied along.")
    parser.add_argument("model", help="base model directory or training run")
    parser.add_argument("out_dir", help="output model directory")
    parser.add_argument("--merge-lora", metavar="ADAPTER_DIR",
                        help="merge the LoRA adapters saved in ADAPTER_DIR (adapter_config.json + "
                             "adapter_model.safetensors) into the base weights")
    parser.set_defaults(run=run)


def tokenizer_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir()
                  if p.is_file() and (p.name.startswith("tokenizer") or p.name in TOKENIZER_FILES))


def run(args: argparse.Namespace) -> int:
    model_dir = resolve_model_dir(args.model)
    out_dir = Path(args.out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError(f"OUT_DIR {out_dir} is the base model directory; write the export somewhere else")
    model = LMLabForCausalLM.from_pretrained(model_dir)
    if args.merge_lora:
        model = merge_lora(load_lora(model, args.merge_lora))
    model.save_pretrained(out_dir)
    copied = tokenizer_files(model_dir)
    for path in copied:
        shutil.copy2(path, out_dir / path.name)
    merged = f" with the adapters of {args.merge_lora} merged in" if args.merge_lora else ""
    print(f"exported {model_dir}{merged} to {out_dir} ({count_parameters(model):,} parameters, "
          f"{len(copied)} tokenizer files)")
    return 0
