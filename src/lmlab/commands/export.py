"""`lmlab export MODEL OUT_DIR [--merge-lora [ADAPTERS]]`: write a plain, self-contained model directory."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lmlab.model import count_parameters
from lmlab.run_layout import resolve_model_dir
from lmlab.train.lora import has_adapters, load_base_weights, load_lora, merge_lora, resolve_adapter_dir

# what `save_pretrained` of Hugging Face tokenizers writes (plus any other tokenizer* file)
TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                   "chat_template.jinja")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write a plain model directory (optionally with LoRA adapters merged in)",
        description="Load MODEL (a model directory, or a training run's newest checkpoint), optionally fold LoRA "
                    "adapters into its weights, and save a plain model directory that "
                    "AutoModelForCausalLM.from_pretrained loads, with the tokenizer files copied along.")
    parser.add_argument("model", help="model directory or training run (a LoRA fine-tune's run: its base + adapters)")
    parser.add_argument("out_dir", help="output model directory")
    parser.add_argument("--merge-lora", metavar="ADAPTERS", nargs="?", const=True,
                        help="merge LoRA adapters into the weights: alone, those MODEL carries (a `lmlab finetune "
                             "--lora` run or checkpoint); with a value, those saved in ADAPTERS (a directory with "
                             "adapter_config.json + adapter_model.safetensors, or a LoRA fine-tune's run)")
    parser.set_defaults(run=run)


def tokenizer_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir()
                  if p.is_file() and (p.name.startswith("tokenizer") or p.name in TOKENIZER_FILES))


def run(args: argparse.Namespace) -> int:
    model_dir = resolve_model_dir(args.model)
    out_dir = Path(args.out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError(f"OUT_DIR {out_dir} is the base model directory; write the export somewhere else")
    carries = has_adapters(model_dir)
    adapters = model_dir if args.merge_lora is True else args.merge_lora
    if carries and adapters is None:
        raise ValueError(f"{model_dir} is a LoRA checkpoint (base weights + adapters); add --merge-lora to export "
                         "the model with its adapters merged in")
    if args.merge_lora is True and not carries:
        raise ValueError(f"{model_dir} carries no LoRA adapters; name the adapters to merge: --merge-lora ADAPTERS")
    if carries and resolve_adapter_dir(adapters).resolve() != model_dir.resolve():
        raise ValueError(f"{model_dir} carries LoRA adapters of its own; export it with --merge-lora alone, or pass "
                         "a plain base model as MODEL")
    model = load_base_weights(model_dir)
    if adapters is not None:
        model = merge_lora(load_lora(model, adapters))
    model.save_pretrained(out_dir)
    copied = tokenizer_files(model_dir)
    for path in copied:
        shutil.copy2(path, out_dir / path.name)
    merged = f" with the adapters of {adapters} merged in" if adapters is not None else ""
    print(f"exported {model_dir}{merged} to {out_dir} ({count_parameters(model):,} parameters, "
          f"{len(copied)} tokenizer files)")
    return 0
