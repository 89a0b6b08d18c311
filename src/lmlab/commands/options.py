"""Command-line options shared by several verbs: model overrides (`--set`, `--set-file`) and the training options
that `lmlab train` and `lmlab compare` both take (data, batch and precision, optimization)."""

from __future__ import annotations

import argparse

from lmlab.data.tokenizers import BUILTIN_TOKENIZERS
from lmlab.overrides import load_overrides_file


def add_override_arguments(parser: argparse.ArgumentParser, what: str = "the model") -> None:
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


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", action="append", help="stdlib | FILE | GLOB | *.jsonl | *.parquet | hf:NAME[:CONFIG] "
                                                      "(repeatable; default: stdlib)")
    data.add_argument("--text-field", help="jsonl/parquet/HF field holding the text (default text)")
    data.add_argument("--hf-split", help="split of an hf: dataset (default train)")
    data.add_argument("--max-documents", type=int, help="read at most this many documents of an hf: dataset")
    data.add_argument("--tokenizer", help=f"{' | '.join(BUILTIN_TOKENIZERS)} | HF name or folder "
                                          "(default: the preset's)")
    data.add_argument("--val-fraction", type=float, help="tail of the token stream held out (default 0.05)")
    data.add_argument("--cache-dir", help="token cache (default $LMLAB_CACHE or ~/.cache/lmlab)")


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    batch = parser.add_argument_group("batch and precision")
    batch.add_argument("--seq-len", type=int)
    batch.add_argument("--batch-size", type=int, help="sequences per micro-batch per process")
    batch.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    batch.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="autocast precision")


def add_optimization_arguments(parser: argparse.ArgumentParser) -> None:
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--optimizer", dest="optimizer_name", choices=("adamw", "ademamix", "lion", "muon"))
    optim.add_argument("--lr", type=float, help="peak learning rate")
    optim.add_argument("--schedule", dest="schedule_name",
                       choices=("cosine", "linear", "constant", "wsd", "warm_start_cosine"))
    optim.add_argument("--warmup-steps", type=int)
    optim.add_argument("--grad-clip", type=float, help="global gradient-norm clip (0: off)")
    optim.add_argument("--seed", type=int)
