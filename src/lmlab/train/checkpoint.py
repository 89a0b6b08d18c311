"""Checkpoints of a training run, written so that no crash can leave the run without a loadable one.

    RUN/checkpoints/step-00000100/    model (config.json + model.safetensors), tokenizer files, train_config.json,
                                      trainer_state.pt (optimizers, schedulers, step, data position, RNG states)
    RUN/checkpoints/LATEST            the name of the newest complete checkpoint

Writing: everything goes into `.tmp-step-…`, every file is fsynced, the folder is renamed to `step-…`, then
LATEST is replaced the same way (temporary file, fsync, rename, fsync of the folder). A process killed at any
point (SIGKILL included) leaves LATEST naming the previous complete checkpoint; leftovers of an interrupted write
are removed by the next run. After LATEST moves, all but the newest `keep` checkpoints are deleted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from lmlab.errors import CheckpointMismatch
from lmlab.run_layout import CHECKPOINTS, LATEST, TEMPORARY_PREFIX, TRAIN_CONFIG, TRAINER_STATE, checkpoint_name


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _atomic_text(path: Path, text: str) -> None:
    temporary = path.with_name(f"{TEMPORARY_PREFIX}{path.name}")
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    _fsync_dir(path.parent)


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint LATEST names, or None when the run has none."""
    latest = checkpoints_dir(run_dir) / LATEST
    if not latest.is_file():
        return None
    path = checkpoints_dir(run_dir) / latest.read_text().strip()
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{latest} names {path.name}, which is incomplete (no {TRAINER_STATE})")
    return path


def remove_leftovers(run_dir: Path) -> None:
    """Delete temporary folders and files of a checkpoint write that was interrupted."""
    folder = checkpoints_dir(run_dir)
    if folder.is_dir():
        for path in folder.glob(f"{TEMPORARY_PREFIX}*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def save_checkpoint(run_dir: Path, step: int, write_model, train_config: dict, trainer_state: dict,
                    keep: int) -> Path:
    """Write checkpoint `step` atomically. `write_model(folder)` saves the model and tokenizer into `folder`."""
    folder = checkpoints_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    temporary = folder / f"{TEMPORARY_PREFIX}{name}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    write_model(temporary)
    (temporary / TRAIN_CONFIG).write_text(json.dumps(train_config, indent=1))
    torch.save(trainer_state, temporary / TRAINER_STATE)
    _fsync_tree(temporary)
    final = folder / name
    if final.exists():  # a rerun of the same step after an interruption
        shutil.rmtree(final)
    temporary.rename(final)
    _fsync_dir(folder)
    _atomic_text(folder / LATEST, name + "\n")
    prune(run_dir, keep)
    return final


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (never the one LATEST names)."""
    latest = latest_checkpoint(run_dir)
    steps = sorted(p for p in checkpoints_dir(run_dir).glob("step-*") if p.is_dir())
    for path in steps[:-keep] if keep > 0 else []:
        if latest is None or path.name != latest.name:
            shutil.rmtree(path)


def load_trainer_state(checkpoint: Path) -> dict:
    # our own file; it holds numpy RNG state and python tuples, so the weights-only unpickler cannot read it
    return torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False)


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_compatible(saved: dict, current: dict, checkpoint: Path) -> None:
    """Refuse to resume when trajectory keys differ; the error lists each key with both values."""
    old, new = _flatten(saved), _flatten(current)
    different = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    if different:
        lines = "\n".join(f"  {key}: checkpoint {old.get(key)!r}, this run {new.get(key)!r}" for key in different)
        raise CheckpointMismatch(f"{checkpoint} was written by a run with a different configuration:\n{lines}\n"
                                 "resume with the checkpoint's settings, or start a new run in another --out")


__all__ = ["CheckpointMismatch", "TRAIN_CONFIG", "TRAINER_STATE", "check_compatible", "latest_checkpoint",
           "load_trainer_state", "prune", "remove_leftovers", "restore_rng_state", "rng_state", "save_checkpoint"]
