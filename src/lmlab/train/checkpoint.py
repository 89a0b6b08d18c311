"""Checkpoints of a training run, written so that no crash can leave the run without a loadable one.

    RUN/checkpoints/step-00000100/    model (config.json + model.safetensors), tokenizer files, train_config.json,
                                      trainer_state.json + trainer_state.safetensors (optimizers, schedulers, step,
                                      data position, RNG states; lmlab.train.state_file: no pickle)
    RUN/checkpoints/LATEST            the name of the newest complete checkpoint

Writing: everything goes into `.tmp-step-…`, every file is fsynced, the folder is renamed to `step-…`, then
LATEST is replaced the same way (temporary file, fsync, rename, fsync of the folder). A process killed at any
point (SIGKILL included) leaves LATEST naming the previous complete checkpoint. A write that fails (a full disk)
removes its temporary folder and raises CheckpointWriteError; the earlier checkpoints stay as they were.

Deleting (all but the newest `keep` after LATEST moves, or an older checkpoint of the same step): the folder is
renamed to `.tmp-…` first, then removed, so a kill in the middle never leaves a `step-…` folder with files missing.
Leftovers of an interrupted write or deletion (`.tmp-*`) are removed when the next run starts. Reading: a
checkpoint must hold every file it needs (`missing_checkpoint_files`), else it is refused by name.

Trainer states of older lmlab versions (a pickled trainer_state.pt) are read with PyTorch's weights-only unpickler
allowing numpy's uint32 arrays (the numpy RNG state) and nothing else, so no code in the file can run, and the next
checkpoint is written in the new format; a trainer_state.pt holding anything more is refused.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from lmlab.errors import CheckpointMismatch, CheckpointWriteError, CorruptFileError
from lmlab.model_files import missing_files
from lmlab.run_layout import (
    CHECKPOINTS,
    LATEST,
    LEGACY_TRAINER_STATE,
    TEMPORARY_PREFIX,
    TRAIN_CONFIG,
    TRAINER_STATE,
    checkpoint_name,
)
from lmlab.train.state_file import load_state, save_state, state_files
from lmlab.weights_only import NUMPY_UINT32_ARRAYS, load_weights_only

CHECKPOINT_PATTERN = "step-*"


def rng_state() -> dict:
    """Every random generator's state as tensors and plain values: torch's (and CUDA's) byte tensors, numpy's
    MT19937 key (624 uint32 words, held in an int64 tensor: torch.distributed's object gather cannot carry uint32
    tensors) with its position and Gaussian cache, Python's as its version, 625 words and Gaussian cache."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": _key_tensor(keys), "position": int(position), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached_gaussian)},
             "python": {"version": version, "words": list(words), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _key_tensor(keys: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))


def restore_rng_state(state: dict) -> None:
    numpy, python = state["numpy"], state["python"]
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    random.setstate((python["version"], tuple(python["words"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _legacy_rng(state: dict) -> dict:
    """An RNG state as older lmlab versions pickled it (numpy's and Python's as their `get_state()` tuples)."""
    _, keys, position, has_gauss, cached_gaussian = state["numpy"]
    version, words, gauss_next = state["python"]
    return {**state, "numpy": {"keys": _key_tensor(keys),
                               "position": position, "has_gauss": has_gauss, "cached_gaussian": cached_gaussian},
            "python": {"version": version, "words": list(words), "gauss_next": gauss_next}}


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


def _discard(path: Path) -> None:
    """Delete a checkpoint folder: renamed to `.tmp-…` first, so an interrupted deletion leaves only a leftover."""
    doomed = path.with_name(f"{TEMPORARY_PREFIX}deleting-{path.name}")
    path.rename(doomed)
    _fsync_dir(path.parent)
    shutil.rmtree(doomed)


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def missing_checkpoint_files(checkpoint: Path) -> list[str]:
    """The files a training checkpoint needs but lacks: its model's (lmlab.model_files), its train_config.json
    and its trainer state (or an older version's trainer_state.pt)."""
    missing = missing_files(checkpoint)
    if not (checkpoint / TRAIN_CONFIG).is_file():
        missing.append(TRAIN_CONFIG)
    if not (checkpoint / LEGACY_TRAINER_STATE).is_file():
        missing += [path.name for path in state_files(checkpoint, TRAINER_STATE) if not path.is_file()]
    return missing


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints that hold every file they need, oldest first."""
    return sorted(path for path in checkpoints_dir(run_dir).glob(CHECKPOINT_PATTERN)
                  if path.is_dir() and not missing_checkpoint_files(path))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint LATEST names, or None when the run has none; an incomplete one is refused by name."""
    latest = checkpoints_dir(run_dir) / LATEST
    if not latest.is_file():
        return None
    path = checkpoints_dir(run_dir) / latest.read_text().strip()
    missing = missing_checkpoint_files(path) if path.is_dir() else ["the folder itself"]
    if missing:
        older = [p.name for p in complete_checkpoints(run_dir) if p.name < path.name]
        fix = (f"to resume from the newest complete one, write its name ({older[-1]}) into {latest}" if older
               else "no older complete checkpoint is left; start a new run")
        raise CorruptFileError(f"{latest} names {path.name}, which is incomplete (missing {', '.join(missing)}); it "
                               f"was damaged after it was written (a partial copy?). Copy the run again, or {fix}")
    return path


def checkpoint_config(checkpoint: Path) -> dict:
    """The TrainConfig values the checkpoint was written with (its train_config.json)."""
    return json.loads((checkpoint / TRAIN_CONFIG).read_text())


def remove_leftovers(run_dir: Path) -> None:
    """Delete temporary folders and files of a checkpoint write or deletion that was interrupted."""
    folder = checkpoints_dir(run_dir)
    if folder.is_dir():
        for path in folder.glob(f"{TEMPORARY_PREFIX}*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def save_checkpoint(run_dir: Path, step: int, write_model, train_config: dict, trainer_state: dict,
                    keep: int) -> Path:
    """Write checkpoint `step` atomically. `write_model(folder)` saves the model and tokenizer into `folder`."""
    from safetensors import SafetensorError

    folder = checkpoints_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    temporary = folder / f"{TEMPORARY_PREFIX}{name}"
    try:
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
        write_model(temporary)
        (temporary / TRAIN_CONFIG).write_text(json.dumps(train_config, indent=1))
        save_state(trainer_state, temporary, TRAINER_STATE)
        _fsync_tree(temporary)
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as its own error
        shutil.rmtree(temporary, ignore_errors=True)
        latest = (folder / LATEST).read_text().strip() if (folder / LATEST).is_file() else None
        raise CheckpointWriteError(
            f"could not write checkpoint {name} in {folder} ({err}); the earlier checkpoints are intact (LATEST "
            f"names {latest or 'none yet'}). Free space on that disk (or give the run another --out), then continue "
            "with --resume") from None
    final = folder / name
    if final.exists():  # a rerun of the same step after an interruption
        _discard(final)
    temporary.rename(final)
    _fsync_dir(folder)
    _atomic_text(folder / LATEST, name + "\n")
    prune(run_dir, keep)
    return final


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (never the one LATEST names)."""
    latest = latest_checkpoint(run_dir)
    steps = sorted(p for p in checkpoints_dir(run_dir).glob(CHECKPOINT_PATTERN) if p.is_dir())
    for path in steps[:-keep] if keep > 0 else []:
        if latest is None or path.name != latest.name:
            _discard(path)


def load_trainer_state(checkpoint: Path) -> dict:
    """A checkpoint's trainer state (lmlab.train.state_file), or an older version's trainer_state.pt (module
    docstring)."""
    legacy = checkpoint / LEGACY_TRAINER_STATE
    if state_files(checkpoint, TRAINER_STATE)[0].is_file() or not legacy.is_file():
        return load_state(checkpoint, TRAINER_STATE)
    fix = (f"A trainer state written by lmlab holds nothing else, so {legacy.name} was replaced after it was "
           f"written; do not resume this run. Its weights alone are safe to reuse: lmlab finetune --model "
           f"{checkpoint} --steps N starts a new run from them")
    state = load_weights_only(legacy, fix=fix, allowed=NUMPY_UINT32_ARRAYS)
    return {**state, "rng": [_legacy_rng(rng) for rng in state["rng"]]}


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
        listed = "; ".join(f"{key}: checkpoint {old.get(key)!r}, this run {new.get(key)!r}" for key in different)
        raise CheckpointMismatch(f"{checkpoint} was written by a run with a different configuration ({listed}); "
                                 "resume with the checkpoint's settings, or start a new run in another --out")


__all__ = ["CheckpointMismatch", "TRAIN_CONFIG", "TRAINER_STATE", "check_compatible", "checkpoint_config",
           "complete_checkpoints",
           "latest_checkpoint", "load_trainer_state", "missing_checkpoint_files", "prune", "remove_leftovers",
           "restore_rng_state", "rng_state", "save_checkpoint"]
