"""Which benchmark tasks exist and where their data comes from.

lmlab's tasks are lm-eval YAML files in `lmlab/eval/tasks/` (ARC-Easy, ARC-Challenge, HellaSwag, MMLU and its 57
subjects, PIQA, Winogrande, LAMBADA), written to give exactly the prompts of lm-eval's own tasks of the same names
but read from local files (`dataset_path: json` or `csv`, `dataset_kwargs.data_files`). A relative data file is
found in the eval data directory: `--data-dir`, else $LMLAB_EVAL_DATA, else `../shared/data/eval` beside the
repository. lm-eval reads data files as given, so each YAML is wrapped, at run time, by a two-key YAML that
includes it and sets its data files to absolute paths; lm-eval then indexes the wrappers.

Sources:
- `local` (default): lmlab's YAMLs and local data; datasets and the hub are put offline.
- `hub`: lm-eval's built-in tasks of the same names, downloading the full public splits from the Hugging Face hub
  (e.g. MMLU's test split, all of HellaSwag's validation split).

Your own task: a YAML file of the same shape (see README: "Evaluation"), passed with `--include FILE_OR_DIR` (or
its path directly as a task name); relative data files in it are found in the data directory too. Its keys are
checked against lm-eval's task (or group) config before anything runs: a misspelt key is named, with the key it
was probably meant to be.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path

import yaml

from lmlab.errors import TaskError

TASKS_DIR = Path(__file__).parent / "tasks"
DATA_ENV = "LMLAB_EVAL_DATA"
SOURCES = ("local", "hub")
BENCHMARKS = ("arc_easy", "arc_challenge", "hellaswag", "mmlu", "piqa", "winogrande", "lambada_openai")
OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def default_data_dir() -> Path:
    """$LMLAB_EVAL_DATA, else ../shared/data/eval beside the repository this package runs from."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "eval"


def go_offline() -> None:
    """Local evaluation never touches the network (also read by `datasets` when it is imported later)."""
    for name in OFFLINE_ENV:
        os.environ.setdefault(name, "1")
    import datasets
    import huggingface_hub

    datasets.config.HF_HUB_OFFLINE = True  # the modules read the variables once, when imported
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def task_yaml_files(paths) -> list[Path]:
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(path.rglob("*.yaml")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such task file or directory: {path}")
    return files


def _resolve_data_files(data_files, data_dir: Path):
    """The same structure (str, list or split -> str/list) with relative paths made absolute under data_dir."""
    if isinstance(data_files, dict):
        return {split: _resolve_data_files(files, data_dir) for split, files in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        return [_resolve_data_files(f, data_dir) for f in data_files]
    path = Path(data_files).expanduser()
    return str(path if path.is_absolute() else (data_dir / path).resolve())


def yaml_task_name(path: str | Path) -> str:
    """The task or group a YAML file defines."""
    config = _raw_config(Path(path))
    name = config.get("group") or config.get("task")
    if not isinstance(name, str):
        raise ValueError(f"{path} defines no task (a `task: NAME` or `group: NAME` key)")
    return name


def check_task_keys(path: Path) -> None:
    """Refuse a task YAML with a key lm-eval's TaskConfig (GroupConfig for a group of tasks) does not take."""
    import dataclasses

    from lm_eval.api.group import GroupConfig
    from lm_eval.api.task import TaskConfig

    config = _raw_config(path)
    group = isinstance(config.get("task"), list)
    known = {field.name for field in dataclasses.fields(GroupConfig if group else TaskConfig)}
    for key in sorted(set(config) - known):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"lm-eval's keys are {', '.join(sorted(known))}"
        raise TaskError(f"{path}: unknown key {key!r} in a {'group' if group else 'task'} YAML; {hint}")


def _raw_config(path: Path) -> dict:
    """A task YAML with its includes merged and `!function` tags left unresolved (lm-eval's loader)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=False, recursive=True)


class TaskCatalog:
    """lm-eval's TaskManager over lmlab's tasks (local or hub) plus the user's YAMLs, with data paths resolved."""

    def __init__(self, source: str = "local", data_dir: str | Path | None = None, include=()):
        from lm_eval.tasks import TaskManager

        if source not in SOURCES:
            raise ValueError(f"unknown task source {source!r}; choose one of {SOURCES}")
        self.source = source
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        if source == "local":
            go_offline()
        self._folder = tempfile.TemporaryDirectory(prefix="lmlab-tasks-")
        own = task_yaml_files([TASKS_DIR]) if source == "local" else []
        user = task_yaml_files(include)
        for path in user:
            check_task_keys(path)
        for number, path in enumerate(own + user):
            self._wrap(path, Path(self._folder.name) / f"{number:04d}_{path.name}")
        self.manager = TaskManager(include_path=self._folder.name, include_defaults=source == "hub")

    def _wrap(self, path: Path, wrapper: Path) -> None:
        lines = {"include": str(path.resolve())}
        kwargs = _raw_config(path).get("dataset_kwargs") or {}
        if "data_files" in kwargs:
            lines["dataset_kwargs"] = {**kwargs, "data_files": _resolve_data_files(kwargs["data_files"],
                                                                                  self.data_dir)}
        wrapper.write_text(yaml.safe_dump(lines, sort_keys=False))

    def check(self, names: list[str]) -> None:
        """Every requested name must be a known task, group or tag."""
        for name in names:
            if name not in self.manager.task_index:
                close = difflib.get_close_matches(name, self.manager.all_tasks, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                extra = " lm-eval's own tasks are available with --source hub." if self.source == "local" else ""
                raise ValueError(f"unknown task {name!r}.{hint} lmlab's tasks: {', '.join(BENCHMARKS)} (and "
                                 f"mmlu_<subject>), or your own task YAML (a path, or --include).{extra}")

    def missing_data_message(self, err: Exception) -> str:
        return (f"a task's data file is missing ({err}). Local task data is read from {self.data_dir}: set "
                f"--data-dir or ${DATA_ENV} to the folder holding the eval files (arc_easy.jsonl, mmlu/dev/...), "
                "or use --source hub when online")

    def close(self) -> None:
        self._folder.cleanup()


__all__ = ["BENCHMARKS", "DATA_ENV", "SOURCES", "TASKS_DIR", "TaskCatalog", "check_task_keys", "default_data_dir",
           "go_offline", "yaml_task_name"]
