"""The `lmlab` command line. Each verb lives in `lmlab.commands.<verb>` and adds its own subparser."""

from __future__ import annotations

import argparse
import importlib
import sys

from lmlab.hardware import keep_freed_memory, set_threads

VERBS = ("info", "convert", "train", "finetune", "generate", "eval", "compare", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlab", description="Build, train, evaluate and compare small LMs.")
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"lmlab.commands.{verb}").register(subparsers)
    for verb_parser in subparsers.choices.values():
        verb_parser.add_argument("--threads", type=int, metavar="N",
                                 help="torch CPU threads (default: the physical cores this process may use that "
                                      "other processes leave idle, by the load average; at least 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = ["lmlab", *(sys.argv[1:] if argv is None else argv)]  # as typed, for verbs that record it
    try:
        set_threads(args.threads)  # before any torch work
        keep_freed_memory()
        return args.run(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"lmlab {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
