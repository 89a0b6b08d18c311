"""Running a comparison's plan: every run trained by `lmlab.train.train`, in plan order, resumable.

A run that ended (finished, or stopped because its loss diverged — a result, not an error, and deterministic, so not
retried) gets RUN/compare_done.json. Running the plan again skips those, resumes a run that has a checkpoint (the
trainer's exact resume: same batches, same losses as without the interruption) and starts the others.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.compare.plan import Plan, PlannedRun, train_command
from lmlab.compare.summary import RunSummary, VariantSummary, summarize_run
from lmlab.data.tokenizers import atomic_write_text
from lmlab.run_layout import DONE_FILE
from lmlab.train import TrainingDiverged, train
from lmlab.train.checkpoint import latest_checkpoint


def run_status(run_dir: Path) -> str | None:
    """'finished' or 'diverged' for an ended run, else None."""
    path = Path(run_dir) / DONE_FILE
    return json.loads(path.read_text())["status"] if path.is_file() else None


def run_plan(plan: Plan, out: Path, extra: dict | None = None, device: str | None = None, log=print) -> None:
    """Train every run of `plan` that has not ended. `extra`: options of this invocation only (cache_dir,
    progress), which the trainer allows to differ on resume."""
    out = Path(out)
    for index, run in enumerate(plan.runs, 1):
        run_dir = out / run.run_dir
        where = f"[{index}/{len(plan.runs)}] {run.variant}, seed {run.seed}"
        status = run_status(run_dir)
        if status is not None:
            log(f"compare: {where}: {status} earlier, skipped")
            continue
        checkpoint = latest_checkpoint(run_dir)
        log(f"compare: {where}: " + (f"resuming from {checkpoint.name}" if checkpoint else "training") +
            f"\n  {' '.join(train_command(run, out, extra, device))}")
        _train_run(run, run_dir, checkpoint is not None, extra, device, log)


def _train_run(run: PlannedRun, run_dir: Path, resume: bool, extra: dict | None, device: str | None, log) -> None:
    try:
        train(run.config(extra), run_dir, resume=resume, device=device, log=log)
        result = {"status": "finished"}
    except TrainingDiverged as err:
        log(f"compare: {run.variant}, seed {run.seed} diverged: {err}")
        result = {"status": "diverged", "message": str(err)}
    atomic_write_text(run_dir / DONE_FILE, json.dumps(result))


def summaries(plan: Plan, out: Path) -> list[VariantSummary]:
    """Each variant's ended runs, read back from their metrics."""
    by_variant: dict[str, list[RunSummary]] = {v["name"]: [] for v in plan.request["variants"]}
    for run in plan.runs:
        status = run_status(Path(out) / run.run_dir)
        if status is not None:
            by_variant[run.variant].append(summarize_run(Path(out) / run.run_dir, run.variant, run.seed, status))
    return [VariantSummary(name, runs) for name, runs in by_variant.items()]
