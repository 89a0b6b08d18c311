"""What a checkpoint is on disk: the trainer state without pickle (and older pickled states read without running
code), crash-safe pruning, and checks that refuse an incomplete or mismatched model directory by name."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_model_dir
from lmlab.errors import CheckpointMismatchError, CorruptFileError, UnsafeFileError
from lmlab.model_files import check_model_dir
from lmlab.train import checkpoint
from lmlab.train.state_file import load_state, save_state


def test_state_files_keep_tensors_tuples_and_integer_keys(tmp_path):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-3, betas=(0.8, 0.9))
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    optimizer.step()
    state = {"step": 7, "optimizers": [optimizer.state_dict()], "nested": {"t": (1, 2.5, None, "x"), "b": True},
             "flag": {"$tensor": "looks like a marker"}}
    save_state(state, tmp_path, "trainer_state")
    loaded = load_state(tmp_path, "trainer_state")
    saved_state, loaded_state = state["optimizers"][0], loaded["optimizers"][0]
    assert loaded["nested"] == {"t": (1, 2.5, None, "x"), "b": True} and loaded["flag"] == state["flag"]
    assert list(loaded_state["state"]) == [0] and loaded_state["param_groups"][0]["betas"] == (0.8, 0.9)
    for key, value in saved_state["state"][0].items():
        assert torch.equal(loaded_state["state"][0][key], value)
    restored = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-3)
    restored.load_state_dict(loaded_state)  # integer keys survive: the moments are found again
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], saved_state["state"][0]["exp_avg"])


def test_state_files_refuse_what_is_no_part_of_a_state(tmp_path):
    save_state({"a": torch.zeros(2)}, tmp_path, "s")
    (tmp_path / "s.json").write_text('{"format": "lmlab-trainer-state-1", "state": {"a": {"$call": "os.system"}}}')
    with pytest.raises(CorruptFileError, match="no part of a trainer state"):
        load_state(tmp_path, "s")
    (tmp_path / "s.json").write_text('{"format": "lmlab-trainer-state-1", "st')
    with pytest.raises(CorruptFileError, match=r"s\.json is not valid JSON"):
        load_state(tmp_path, "s")
    with pytest.raises(TypeError, match="not object"):
        save_state({"a": object()}, tmp_path, "t")


def test_rng_states_round_trip_through_the_state_files(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    save_state({"rng": checkpoint.rng_state()}, tmp_path, "s")
    expected = torch.rand(3), np.random.standard_normal(3), random.random()
    checkpoint.restore_rng_state(load_state(tmp_path, "s")["rng"])
    got = torch.rand(3), np.random.standard_normal(3), random.random()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def legacy_state(folder: Path) -> dict:
    """The trainer state as lmlab wrote it before the state files: numpy's and Python's RNG state as tuples."""
    np.random.seed(5)
    return {"step": 3, "samples_seen": 6, "optimizers": [], "schedulers": [], "scaler": {}, "data_key": "k",
            "rng": [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}]}


def test_an_older_pickled_trainer_state_is_read_without_running_code(tmp_path):
    torch.save(legacy_state(tmp_path), tmp_path / "trainer_state.pt")
    state = checkpoint.load_trainer_state(tmp_path)
    assert state["step"] == 3
    checkpoint.restore_rng_state(state["rng"][0])
    np.random.seed(5)
    expected = np.random.standard_normal(2)
    checkpoint.restore_rng_state(state["rng"][0])
    assert np.array_equal(np.random.standard_normal(2), expected)


class Payload:
    """Unpickling this runs `touch PATH`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_planted_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({**legacy_state(tmp_path), "x": Payload(marker)}, tmp_path / "trainer_state.pt")
    with pytest.raises(UnsafeFileError, match=r"trainer_state\.pt holds \S*system.*could run code.*replaced after it "
                                              r"was written.*lmlab finetune --model"):
        checkpoint.load_trainer_state(tmp_path)
    assert not marker.exists()


def write_checkpoint(run_dir: Path, step: int, keep: int = 2) -> Path:
    return checkpoint.save_checkpoint(run_dir, step, lambda folder: save_model_dir(folder, "ngen4-tiny"),
                                      {"steps": 9}, {"step": step}, keep)


def test_pruning_killed_midway_leaves_no_incomplete_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    for step in (1, 2):
        write_checkpoint(run, step)

    def killed_midway(path, *args, **kwargs):  # the first file goes, then the process dies
        next(p for p in sorted(Path(path).iterdir()) if p.is_file()).unlink()
        raise SystemExit(137)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    with pytest.raises(SystemExit):
        write_checkpoint(run, 3)
    monkeypatch.undo()
    folders = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert folders == [".tmp-deleting-step-00000001", "step-00000002", "step-00000003"]
    assert checkpoint.complete_checkpoints(run) == [run / "checkpoints" / n for n in folders[1:]]
    checkpoint.remove_leftovers(run)  # what the next run does first
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step-00000002", "step-00000003"]


def test_an_incomplete_latest_checkpoint_is_named_with_the_way_out(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2):
        write_checkpoint(run, step)
    (run / "checkpoints" / "step-00000002" / "trainer_state.safetensors").unlink()
    with pytest.raises(CorruptFileError, match=r"names step-00000002, which is incomplete \(missing "
                                               r"trainer_state\.safetensors\).*write its name \(step-00000001\)"):
        checkpoint.latest_checkpoint(run)


def test_a_full_disk_while_checkpointing_keeps_the_earlier_ones(tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_checkpoint(run, 1)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device", str(run / "checkpoints" / ".tmp-step-00000002"))

    monkeypatch.setattr(checkpoint, "save_state", no_space)
    with pytest.raises(OSError, match=r"could not write checkpoint step-00000002.*No space left.*LATEST names "
                                      r"step-00000001.*--resume"):
        write_checkpoint(run, 2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step-00000001"]


def test_model_directories_are_checked_before_loading(tmp_path):
    model = save_model_dir(tmp_path / "model", "ngen4-tiny")
    check_model_dir(model)
    other = save_model_dir(tmp_path / "other", "nyx-tiny")
    shutil.copy(other / "config.json", model / "config.json")
    with pytest.raises(CheckpointMismatchError, match=r"do not fit its config\.json \(preset 'nyx-tiny'\).*put back"):
        check_model_dir(model)
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CorruptFileError, match=r"model\.safetensors cannot be read.*truncated"):
        check_model_dir(other)
    weights.unlink()
    with pytest.raises(CorruptFileError, match=r"is incomplete: it has no model\.safetensors"):
        check_model_dir(other)
