"""One evaluation run: perplexity files and lm-eval tasks for one model, a printed table and a JSON report.

Task specs (`--tasks`, comma-separated):
- a task, group or tag name (`arc_easy`, `mmlu`, `mmlu_anatomy`, `ai2_arc`, ...; see lmlab.eval.tasks);
- a path to a task YAML file (your own task);
- `perplexity:PATH` for perplexity and bits per byte of any text file (lmlab.eval.perplexity).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.errors import MissingDependencyError, TaskError

PERPLEXITY_PREFIX = "perplexity:"
SOURCES = ("local", "hub")
DEFAULT_BATCH_SIZE = 16  # sequences per forward pass
DEFAULT_BOOTSTRAP_ITERS = 1000  # resamples for the standard errors of non-mean metrics


@dataclass
class TaskSpecs:
    harness: list[str] = field(default_factory=list)  # lm-eval names
    include: list[Path] = field(default_factory=list)  # the user's YAML files among the specs
    texts: list[Path] = field(default_factory=list)  # perplexity files


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError("benchmark tasks run through lm-evaluation-harness, which is not installed: "
                                     "pip install 'lmlab[eval]' (perplexity:PATH works without it)") from err


def parse_task_specs(specs: list[str]) -> TaskSpecs:
    from lmlab.eval.tasks import yaml_task_name

    parsed = TaskSpecs()
    for spec in (s.strip() for s in specs):
        if not spec:
            continue
        if spec.startswith(PERPLEXITY_PREFIX):
            path = Path(spec[len(PERPLEXITY_PREFIX):]).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"no such text file for perplexity: {path}")
            parsed.texts.append(path)
        elif spec.endswith((".yaml", ".yml")):
            path = Path(spec).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"no such task file: {path}")
            require_lm_eval()
            parsed.include.append(path)
            parsed.harness.append(yaml_task_name(path))
        else:
            parsed.harness.append(spec)
    if not parsed.harness and not parsed.texts:
        raise ValueError("no tasks given: name lm-eval tasks (arc_easy, mmlu, ...), task YAML files, or "
                         "perplexity:PATH")
    return parsed


def lmlab_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmlab")
    except PackageNotFoundError:  # run from a source tree that was never installed
        import lmlab

        return lmlab.__version__


@contextlib.contextmanager
def no_git_probe():
    """lm-eval records `git describe` of the working directory and lets git print "fatal: not a git repository"
    outside one; lmlab's report records lmlab's version instead, so the probe is skipped."""
    import lm_eval.evaluator

    probe = getattr(lm_eval.evaluator, "get_git_commit_hash", None)
    if probe is None:
        yield
        return
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = probe


def run_harness(lm, catalog, names: list[str], num_fewshot: int | None, limit: float | None,
                bootstrap_iters: int, log_samples: bool = False) -> dict:
    import lm_eval
    from jinja2.exceptions import UndefinedError

    catalog.check(names)
    try:
        with no_git_probe():
            results = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                              task_manager=catalog.manager, bootstrap_iters=bootstrap_iters,
                                              log_samples=log_samples)
    except FileNotFoundError as err:
        raise FileNotFoundError(catalog.missing_data_message(err)) from err
    except UndefinedError as err:  # a task's Jinja template names a field the rows do not have
        raise TaskError(f"a template of task {', '.join(names)} names a field its data rows do not have ({err}); "
                        "check doc_to_text, doc_to_target and doc_to_choice in the task YAML against the fields of "
                        "its data file") from None
    except AssertionError as err:  # lm-eval asserts that a few-shot pool is large enough
        if "fewshot" not in str(err):
            raise
        raise ValueError(f"--num-fewshot {num_fewshot} is more than a task can give: {err} (local MMLU has only "
                         "the 5 dev rows per subject, so each row gets at most 4 exemplars, the other rows; 3 in "
                         "college_physics, whose dev split holds one row twice)") from err
    keep = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
            "samples")
    return {key: results[key] for key in keep if key in results}


def check_run_options(num_fewshot: int | None, limit: float | None) -> float | int | None:
    """Refuse impossible options before anything loads; returns `limit` as lm-eval takes it (a row count when ≥ 1,
    a fraction of the rows below 1)."""
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be > 0, got {limit}")
    return int(limit) if limit is not None and limit >= 1 else limit


def evaluate(model, tokenizer, tasks: list[str], *, num_fewshot: int | None = None, limit: float | None = None,
             source: str = "local", data_dir: str | Path | None = None, include=(),
             batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None, stride: int | None = None,
             bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS, log_samples: bool = False) -> dict:
    """Run every task spec on a loaded model; returns the report (see `format_report`). `log_samples` keeps every
    request and response (lm-eval's per-row "samples")."""
    from lmlab.eval.perplexity import file_perplexity
    from lmlab.eval.scoring import context_length

    limit = check_run_options(num_fewshot, limit)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
    specs = parse_task_specs(tasks)
    report: dict = {"tasks": tasks, "num_fewshot": num_fewshot, "limit": limit, "source": source,
                    "context_length": context_length(model.config, max_length), "date": time.strftime("%F %T"),
                    "lmlab_version": lmlab_version()}
    if specs.harness:
        require_lm_eval()
        from lmlab.eval.harness import LMLabLM
        from lmlab.eval.tasks import TaskCatalog

        catalog = TaskCatalog(source, data_dir, [*include, *specs.include])
        report["data_dir"] = str(catalog.data_dir) if source == "local" else None
        try:
            lm = LMLabLM(model=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
            report["harness"] = run_harness(lm, catalog, specs.harness, num_fewshot, limit, bootstrap_iters,
                                            log_samples)
        finally:
            catalog.close()
    if specs.texts:
        report["perplexity"] = {
            str(path): file_perplexity(model, tokenizer, path, report["context_length"], stride).metrics()
            for path in specs.texts}
    return report


def format_report(report: dict) -> str:
    """Markdown tables: lm-eval's task (and group) table, then one row per perplexity file."""
    parts = []
    if "harness" in report:
        from lm_eval.utils import make_table

        parts.append(make_table(report["harness"]))
        if report["harness"].get("groups"):
            parts.append(make_table(report["harness"], "groups"))
    if "perplexity" in report:
        lines = ["|File|Tokens|Context|Stride|Token ppl|Word ppl|Bits/byte|", "|---|--:|--:|--:|--:|--:|--:|"]
        for name, m in report["perplexity"].items():
            lines.append(f"|{name}|{m['tokens']}|{m['context']}|{m['stride']}|{m['token_perplexity']:.4f}|"
                         f"{m['word_perplexity']:.4f}|{m['bits_per_byte']:.4f}|")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def report_path(model_dir: Path, output: str | Path | None) -> Path:
    """Where the JSON goes (`output`, else model_dir/eval/results-<time>.json); checked writable before the run
    (a probe file in the nearest existing folder on the way, removed at once: nothing is left behind)."""
    path = Path(output) if output else model_dir / "eval" / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    existing = next(folder for folder in (path.parent, *path.parent.parents) if folder.exists())
    try:
        probe = existing / f".{path.name}.probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write results to {path.parent} ({err}); pass --output PATH") from err
    return path


def _jsonable(value):
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)  # e.g. the functions in lm-eval's task configs


def save_report(report: dict, path: Path) -> None:
    def finite(value):  # JSON has no NaN: lm-eval reports "N/A" stderr as NaN in places
        return None if isinstance(value, float) and not math.isfinite(value) else value

    def clean(obj):
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return finite(obj)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(report), indent=2, default=_jsonable))


__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_BOOTSTRAP_ITERS", "SOURCES", "check_run_options", "evaluate",
           "format_report", "parse_task_specs", "report_path", "save_report"]
