"""The `lmlab` command line. Each verb lives in `lmlab.commands.<verb>` and adds its own subparser."""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS = ("info", "convert", "train", "finetune", "export", "compare", "generate", "eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlab", description="Build, train, evaluate and compare small LMs.")
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"lmlab.commands.{verb}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = ["lmlab", *(sys.argv[1:] if argv is None else argv)]  # as typed, for verbs that record it
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"lmlab {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
