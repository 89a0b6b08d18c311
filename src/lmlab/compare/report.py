"""The report folder of a comparison (written into the compare's OUT):

    report.md          the table (mean ± std over seeds), the plots, each run's numbers and the commands
    report.csv         one row per variant: facts and, per metric, <metric>_mean and <metric>_std
    runs.csv           one row per run (variant × seed)
    val_loss.png       validation loss against training tokens
    loss_vs_time.png   training loss (smoothed) and validation loss against training seconds
    commands.sh        the compare command and the `lmlab train` command of every run

Plots use matplotlib's Agg canvas directly (no display, no pyplot state).
"""

from __future__ import annotations

import csv
import math
import shlex
from pathlib import Path

from lmlab.compare.budget import TRAIN_FLOPS_PER_FORWARD
from lmlab.compare.plan import Plan, train_command
from lmlab.compare.summary import METRICS, SMOOTHING, VariantSummary

FILES = ("report.md", "report.csv", "runs.csv", "val_loss.png", "loss_vs_time.png", "commands.sh")
COLUMNS = {  # metric -> (markdown header, format)
    "loss_last": ("train loss, last step", "{:.4f}"),
    "loss_smooth": (f"train loss, EMA {SMOOTHING:g}", "{:.4f}"),
    "val_loss": ("val loss", "{:.4f}"),
    "val_bpb": ("val bits/byte", "{:.4f}"),
    "tokens_per_s": ("tokens/s", "{:,.0f}"),
    "wall_s": ("train time, s", "{:.1f}"),
}


def _cell(mean: float, std: float, fmt: str) -> str:
    if not math.isfinite(mean):
        return "—"
    return fmt.format(mean) + (f" ± {fmt.format(std)}" if math.isfinite(std) else "")


def _train_flops(facts: dict) -> float:
    return TRAIN_FLOPS_PER_FORWARD * facts["forward_flops_per_token"] * facts["tokens"]


def _variant_rows(plan: Plan, results: list[VariantSummary]) -> list[dict]:
    variants = {v["name"]: v for v in plan.request["variants"]}
    rows = []
    for result in results:
        variant, facts = variants[result.name], plan.facts[result.name]
        row = {"variant": result.name, "preset": variant["preset"], "overrides": " ".join(variant["overrides"]),
               "runs_finished": len(result.finished), "runs_diverged": len(result.diverged),
               "parameters": facts["total"], "non_embedding_parameters": facts["non_embedding"],
               "forward_flops_per_token": facts["forward_flops_per_token"], "train_flops": _train_flops(facts),
               "steps": facts["steps"], "tokens": facts["tokens"]}
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = result.stat(metric)
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["variant"])
        writer.writeheader()
        writer.writerows(rows)


def _markdown(plan: Plan, rows: list[dict], results: list[VariantSummary], out: Path, extra: dict | None,
              device: str | None) -> str:
    request = plan.request
    first = plan.runs[0].config(extra)
    seeds = request["seeds"]
    lines = [f"# Comparison: {', '.join(r['variant'] for r in rows)}", "",
             f"Budget **{request['budget']}** per run; seeds {', '.join(map(str, seeds))}; data "
             f"{', '.join(first.data)}; tokenizer {first.tokenizer}; {first.batch_size} × {first.grad_accum} × "
             f"{first.seq_len} tokens per step; precision {first.precision}.", ""]
    if plan.command:
        lines += ["Command:", "", "```bash", plan.command, "```", ""]
    header = ["variant", "parameters", "non-embedding", "fwd MFLOP/token", "steps", "tokens", "train FLOPs",
              *(COLUMNS[m][0] for m in METRICS)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["variant"], f"{row['parameters']:,}", f"{row['non_embedding_parameters']:,}",
                 f"{row['forward_flops_per_token'] / 1e6:,.2f}", f"{row['steps']:,}", f"{row['tokens']:,}",
                 f"{row['train_flops']:.3g}",
                 *(_cell(row[f"{m}_mean"], row[f"{m}_std"], COLUMNS[m][1]) for m in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Mean ± sample standard deviation (n − 1) over the seeds that finished ({len(seeds)} per variant"
              "; no ± with one seed). *train loss, last step*: the last optimizer step's batch loss; *train loss, "
              f"EMA {SMOOTHING:g}*: its exponential moving average (weight {SMOOTHING:g} on the newest step, started "
              "at the first step's loss, as the yatgpt cards' \"smooth loss\"); *val loss* in nats per token on the "
              "same held-out windows for every run, *val bits/byte* per UTF-8 byte of that text; *train FLOPs* = 3 × "
              "forward FLOPs per token × tokens; *tokens/s* and *train time* count training steps only (validation "
              "and checkpoints excluded) and depend on the machine and its load at the time.", ""]
    notes = _notes(plan, results)
    if notes:
        lines += ["Notes:", "", *(f"- {note}" for note in notes), ""]
    lines += ["![validation loss](val_loss.png)", "", "![loss against time](loss_vs_time.png)", "", "## Runs", "",
              "| variant | seed | status | " + " | ".join(COLUMNS[m][0] for m in METRICS) + " |",
              "|" + "---|" * (3 + len(METRICS))]
    for result in results:
        for run in result.runs:
            values = [_cell(run.values.get(m, math.nan), math.nan, COLUMNS[m][1]) for m in METRICS]
            lines.append(f"| {run.variant} | {run.seed} | {run.status} | " + " | ".join(values) + " |")
    lines += ["", "## Reproduce", "", "Each run alone (from the directory the comparison ran in):", "", "```bash",
              *(shlex.join(train_command(run, out, extra, device)) for run in plan.runs), "```", ""]
    return "\n".join(lines)


def _notes(plan: Plan, results: list[VariantSummary]) -> list[str]:
    notes = []
    if plan.request["budget"].startswith("seconds="):
        times = ", ".join(f"{name} {facts['step_seconds']:.3g} s" for name, facts in plan.facts.items())
        notes.append(f"Equal wall-clock: each variant's step was timed on this machine before its runs ({times} per "
                     "step) and the seconds turned into that many steps; the time each run really took is in the "
                     "table. Another process on the machine changes both, so read the ranking as valid for this "
                     "machine and its load, not as a property of the architectures.")
    repeated = [f"{name} ({facts['epochs']:.2f} epochs)" for name, facts in plan.facts.items() if facts["epochs"] > 1]
    if repeated:
        notes.append(f"The budget is more than one pass over the training split for {', '.join(repeated)}: later "
                     "batches repeat data already seen, and the validation loss may reflect memorisation.")
    for result in results:
        if result.diverged:
            notes.append(f"{result.name}: {len(result.diverged)} run(s) diverged (seeds "
                         f"{', '.join(str(r.seed) for r in result.diverged)}) and are left out of the mean.")
    return notes


def _axes(title: str, xlabel: str, ylabel: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def _focus(axes, finals: list[float], values: list[float]) -> None:
    """Y range that shows where the curves end: early, much higher losses run off the top."""
    finite = [v for v in values if math.isfinite(v)]
    finals = [v for v in finals if math.isfinite(v)]
    if not finite or not finals:
        return
    low, high = min(finite), max(finals)
    span = max(high - low, 1e-3)
    axes.set_ylim(low - 0.1 * span, min(max(finite), high + 3 * span) + 0.1 * span)


def _plots(out: Path, plan: Plan, results: list[VariantSummary]) -> None:
    colors = [f"C{i % 10}" for i in range(len(results))]
    figure, axes = _axes(f"Validation loss ({plan.request['budget']} per run)", "training tokens",
                         "validation loss (nats/token)")
    values, finals = [], []
    for color, result in zip(colors, results, strict=True):
        for i, run in enumerate(result.finished):
            tokens = dict(zip(run.curves["step"], run.curves["tokens"], strict=True))
            x = [tokens[s] for s in run.curves["val_step"]]
            axes.plot(x, run.curves["val_loss"], color=color, marker="o", markersize=3, alpha=0.8,
                      label=result.name if i == 0 else None)
            values += run.curves["val_loss"]
            finals.append(run.values["val_loss"])
    _focus(axes, finals, values)
    axes.legend()
    figure.savefig(out / "val_loss.png")

    figure, axes = _axes("Loss against training time", "training seconds (validation and checkpoints excluded)",
                         "loss (nats/token)")
    values, finals = [], []
    for color, result in zip(colors, results, strict=True):
        for i, run in enumerate(result.finished):
            axes.plot(run.curves["elapsed_s"], run.curves["loss_smooth"], color=color, alpha=0.8, linewidth=1.2,
                      label=f"{result.name}: train (EMA {SMOOTHING:g})" if i == 0 else None)
            axes.plot(run.curves["val_elapsed_s"], run.curves["val_loss"], color=color, linestyle="none",
                      marker="o", markersize=3, label=f"{result.name}: validation" if i == 0 else None)
            values += run.curves["loss_smooth"] + run.curves["val_loss"]
            finals += [run.values["loss_smooth"], run.values["val_loss"]]
    _focus(axes, finals, values)
    axes.legend(fontsize="small")
    figure.savefig(out / "loss_vs_time.png")


def write_report(out: Path, plan: Plan, results: list[VariantSummary], extra: dict | None = None,
                 device: str | None = None) -> Path:
    """Write the report files (FILES) into `out`; returns the markdown's path."""
    out = Path(out)
    rows = _variant_rows(plan, results)
    _write_csv(out / "report.csv", rows)
    _write_csv(out / "runs.csv", [{"variant": r.variant, "seed": r.seed, "status": r.status, "steps": r.steps,
                                   "tokens": r.tokens, **{m: r.values.get(m, math.nan) for m in METRICS}}
                                  for result in results for r in result.runs])
    _plots(out, plan, results)
    commands = [plan.command] if plan.command else []
    commands += [shlex.join(train_command(run, out, extra, device)) for run in plan.runs]
    (out / "commands.sh").write_text("#!/bin/sh\n# the comparison, then each of its runs alone\n"
                                     + "\n".join(commands) + "\n")
    path = out / "report.md"
    path.write_text(_markdown(plan, rows, results, out, extra, device))
    return path


__all__ = ["FILES", "write_report"]
