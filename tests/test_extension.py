"""Resuming with a larger budget (lmlab.train.extension): where the rule says so, the extended run equals the run
trained on the larger budget from the start, bit for bit; otherwise the old schedule runs out and its final
learning rate holds, and the loss carries on from where it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lmlab.train.loop as loop
from lmlab.errors import ConfigError
from lmlab.train import config_from_recipe, train
from lmlab.train.metrics import read_metrics
from lmlab.train.schedules import Schedule

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}


class Stopped(Exception):
    """Raised right after a chosen checkpoint is written: the run ends there as if killed."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "away", "home", "."]
    path.write_text(" ".join(np.random.default_rng(0).choice(words, size=3000)))
    return path


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two runs compared bit for bit compute with the same threads
    yield
    torch.set_num_threads(threads)


def run(corpus, run_dir, schedule: dict, resume=False, stop_at=None, monkeypatch=None, **options):
    """Train (or resume) a tiny run; with `stop_at` it stops right after writing that step's checkpoint."""
    config = config_from_recipe("ngen4-tiny", {
        "data": [str(corpus)], "tokenizer": "bytes", "seq_len": 16, "batch_size": 2, "lr": 3e-3,
        "schedule": schedule, "checkpoint_every": 2, "eval_every": 0, "eval_batches": 1, "sample_tokens": 0,
        "progress": False, "tensorboard": False, "cache_dir": str(corpus.parent / "cache"), "model_overrides": SMALL,
        **options})
    if stop_at is None:
        return train(config, run_dir, resume=resume, log=lambda *_: None)
    real_save = loop.save_checkpoint

    def save_then_stop(run_dir, step, *args, **kwargs):
        real_save(run_dir, step, *args, **kwargs)
        if step == stop_at:
            raise Stopped

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
    with pytest.raises(Stopped):
        train(config, run_dir, resume=resume, log=lambda *_: None)
    monkeypatch.undo()


def trajectory(run_dir) -> dict[int, tuple[float, float]]:
    """step -> (loss, learning rate) from metrics.jsonl."""
    return {r["step"]: (r["loss"], r["lr"]) for r in read_metrics(run_dir) if "loss" in r}


def test_constant_schedule_extension_equals_the_longer_run(corpus, tmp_path):
    schedule = {"name": "constant", "warmup_steps": 2}
    run(corpus, tmp_path / "straight", schedule, steps=8)
    run(corpus, tmp_path / "extended", schedule, steps=5)  # finished at step 5
    run(corpus, tmp_path / "extended", schedule, resume=True, steps=8)
    assert trajectory(tmp_path / "extended") == trajectory(tmp_path / "straight")  # bitwise


def test_wsd_extension_before_the_decay_moves_the_decay_to_the_new_end(corpus, tmp_path, monkeypatch):
    schedule = {"name": "wsd", "warmup_steps": 1, "decay_fraction": 0.25, "min_lr": 3e-4}
    run(corpus, tmp_path / "straight", schedule, steps=12)
    run(corpus, tmp_path / "extended", schedule, steps=8, stop_at=4, monkeypatch=monkeypatch)  # decay was due at 6
    run(corpus, tmp_path / "extended", schedule, resume=True, steps=12)
    extended = trajectory(tmp_path / "extended")
    assert extended == trajectory(tmp_path / "straight")
    assert [extended[s][1] for s in (6, 9)] == [3e-3, 3e-3] and extended[12][1] < 3e-3  # decays over 10-12 only


def test_cosine_extension_holds_the_final_learning_rate_and_the_loss_carries_on(corpus, tmp_path, monkeypatch):
    schedule = {"name": "cosine", "warmup_steps": 2, "min_lr": 5e-4}
    run(corpus, tmp_path / "short", schedule, steps=6)
    before = trajectory(tmp_path / "short")
    run(corpus, tmp_path / "short", schedule, resume=True, steps=10, stop_at=8, monkeypatch=monkeypatch)
    run(corpus, tmp_path / "short", schedule, resume=True, steps=10)  # the schedule span carries over
    extended = trajectory(tmp_path / "short")
    assert sorted(extended) == list(range(1, 11))
    assert {s: extended[s] for s in before} == before  # the first six steps are the finished run's
    assert [extended[s][1] for s in range(7, 11)] == pytest.approx([5e-4] * 4, rel=1e-12)
    losses = [extended[s][0] for s in range(1, 11)]
    assert all(math.isfinite(x) for x in losses) and max(losses[6:]) < losses[0]
    assert abs(losses[6] - losses[5]) < 0.25 * losses[5]  # no jump where the extension starts

    run(corpus, tmp_path / "uninterrupted", schedule, steps=6)
    run(corpus, tmp_path / "uninterrupted", schedule, resume=True, steps=10)
    assert trajectory(tmp_path / "uninterrupted") == extended  # the kill at step 8 changed nothing


def test_extensions_that_cannot_train_are_refused_with_a_command_that_works(corpus, tmp_path):
    schedule = {"name": "linear", "warmup_steps": 1}  # decays to 0
    run(corpus, tmp_path / "run", schedule, steps=4)
    with pytest.raises(ConfigError, match=r"learning rate 0.*lmlab finetune --model \S+step-00000004 --data \S+ "
                                          r"--steps 4"):
        run(corpus, tmp_path / "run", schedule, resume=True, steps=8)
    with pytest.raises(ConfigError, match="ends before step-00000004"):
        run(corpus, tmp_path / "run", schedule, resume=True, steps=3)


def test_a_schedule_holds_its_final_value_after_its_end():
    cosine = Schedule("cosine", peak_lr=1.0, total_steps=10, warmup_steps=2, min_lr=0.1)
    assert [cosine(t) for t in (10, 11, 100)] == [0.1, 0.1, 0.1]
    warming = Schedule("linear", peak_lr=1.0, total_steps=4, warmup_steps=8)  # N4's warmup beyond the run
    assert warming(20) == warming(4) == 0.5
