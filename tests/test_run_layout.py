"""Model and run directories resolve to the model they hold."""

import pytest

from lmlab.run_layout import resolve_model_dir


def test_model_dir_and_run_dir(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert resolve_model_dir(model_dir) == model_dir
    run = tmp_path / "run"
    for step in ("step-00000010", "step-00000020"):
        (run / "checkpoints" / step).mkdir(parents=True)
        (run / "checkpoints" / step / "config.json").write_text("{}")
    (run / "checkpoints" / "LATEST").write_text("step-00000010\n")
    assert resolve_model_dir(run) == run / "checkpoints" / "step-00000010"


def test_missing_and_wrong_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model or run directory"):
        resolve_model_dir(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="neither a model directory"):
        resolve_model_dir(tmp_path)
