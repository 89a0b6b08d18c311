"""`lmlab compare`: train variants (a preset plus overrides) × seeds on the same data order and the same budget,
then write a report (table, CSV, plots, commands). Modules: variants (the syntax), budget (tokens / FLOPs / seconds),
plan (the runs, saved for resuming), runner (training them), summary (the numbers), report (the files)."""

from __future__ import annotations

from pathlib import Path

from lmlab.compare.budget import Budget
from lmlab.compare.plan import Plan, Request, load_or_make_plan
from lmlab.compare.report import write_report
from lmlab.compare.runner import run_plan, summaries
from lmlab.compare.variants import Variant, VariantError, load_variants_file, parse_variant


def compare(out: str | Path, request: Request | None = None, device: str | None = None, extra: dict | None = None,
            command: str | None = None, log=print) -> Path:
    """Run (or resume) the comparison in `out` and write its report; returns the report's markdown path. Without
    a request, the comparison saved in `out` is resumed."""
    out = Path(out)
    plan = load_or_make_plan(out, request, log, device, command, extra)
    run_plan(plan, out, extra, device, log)
    report = write_report(out, plan, summaries(plan, out), extra, device)
    log(f"compare: report in {report}")
    return report


__all__ = ["Budget", "Plan", "Request", "Variant", "VariantError", "compare", "load_variants_file",
           "parse_variant"]
