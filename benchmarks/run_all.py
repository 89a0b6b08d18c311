"""Every benchmark that reports against a target, in one process, and one summary table: ratio, target, met.

Each module in BENCHMARKS defines `rows(quick: bool) -> list[dict]` (rows made by `common.row`: name, ratio, target,
met, note). `--quick` runs each at its small size (a few minutes in all); without it, at the sizes the targets speak
of (much longer). `--only NAME` runs some of them. A benchmark that fails is a row saying so; the others still run.

    PYTHONPATH=src python benchmarks/run_all.py --quick [--only train_throughput] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback

from common import machine, machine_line, print_table, row

from lmlab.hardware import keep_freed_memory, set_threads

BENCHMARKS = ("train_throughput", "gdn_step", "train_loop", "generate")


def collect(names, quick: bool, log=print) -> list[dict]:
    """The rows of each benchmark module in `names`, in order, with how long each took."""
    rows = []
    for name in names:
        start = time.perf_counter()
        try:
            found = importlib.import_module(name).rows(quick)
        except Exception as err:  # one broken benchmark must not hide the others' rows
            traceback.print_exc()
            found = [row(f"{name}: failed", None, None, f"{type(err).__name__}: {err}")]
        log(f"{name}: {len(found)} rows in {time.perf_counter() - start:.0f} s")
        rows += [{**r, "benchmark": name} for r in found]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark at its small size")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--threads", type=int, help="torch threads (default: lmlab's, lmlab.hardware)")
    parser.add_argument("--json", help="also write the rows and the machine to this file")
    args = parser.parse_args()
    set_threads(args.threads)
    keep_freed_memory()
    info = machine()
    rows = collect(args.only or BENCHMARKS, args.quick, log=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"Machine: {machine_line(info)}\n")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": info, "quick": args.quick, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
