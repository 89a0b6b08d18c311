"""The `lmlab` command line. Each verb lives in `lmlab.commands.<verb>` and adds its own subparser.

How a verb ends: 0 when it succeeds; 2 with one line `lmlab VERB: error: …` (the file, the problem, the fix) for
bad input — lmlab's own errors (lmlab.errors), bad values and file-system problems; 1 with one line saying it is a
bug for any other exception, whose traceback `--debug` (or LMLAB_DEBUG=1) shows; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lmlab.errors import LMLabError
from lmlab.hardware import keep_freed_memory, set_threads

VERBS = ("info", "convert", "train", "finetune", "generate", "eval", "compare", "export")
USER_ERRORS = (LMLabError, ValueError, OSError)  # bad input or environment: the message says what to change
DEBUG_ENV = "LMLAB_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlab", description="Build, train, evaluate and compare small LMs.")
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"lmlab.commands.{verb}").register(subparsers)
    for verb_parser in subparsers.choices.values():
        verb_parser.add_argument("--threads", type=int, metavar="N",
                                 help="torch CPU threads (default: the physical cores this process may use that "
                                      "other processes leave idle now; at least 1)")
        verb_parser.add_argument("--debug", action="store_true",
                                 help=f"show the traceback of an unexpected error (also {DEBUG_ENV}=1)")
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = ["lmlab", *(sys.argv[1:] if argv is None else argv)]  # as typed, for verbs that record it
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        set_threads(args.threads)  # before any torch work
        keep_freed_memory()
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"lmlab {args.verb}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"lmlab {args.verb}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        if debug:
            raise
        print(f"lmlab {args.verb}: internal error, a bug in lmlab ({type(err).__name__}: {_one_line(err)[:300]}); "
              f"run it again with --debug (or {DEBUG_ENV}=1) for the traceback, and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
