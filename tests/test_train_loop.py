"""The training loop end to end: convergence, exact resume after SIGKILL, refused mismatches, NaN stops,
distributed == accumulated, CLI errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, shared_data
from lmlab.cli import main
from lmlab.run_layout import resolve_model_dir
from lmlab.train import TrainingDiverged, config_from_recipe, train
from lmlab.train.metrics import read_metrics

NO_DROPOUT = {"embedding_dropout": 0.0, "attention_dropout": 0.0, "residual_dropout": 0.0}
SMALL = ["--set", "hidden_size=32", "--set", "intermediate_size=64", "--set", "num_attention_heads=2"]

# Runs lmlab's CLI; with LMLAB_TEST_KILL_AT=NAME it SIGKILLs itself while checkpoint NAME is being written (model,
# tokenizer and trainer state are on disk in the temporary folder, nothing is renamed yet).
RUNNER = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
if "WORLD_SIZE" in os.environ:  # one process group for every run below
    torch.distributed.init_process_group("gloo")
import lmlab.train.checkpoint as checkpoint
kill_at = os.environ.get("LMLAB_TEST_KILL_AT")
if kill_at:
    original = checkpoint._fsync_tree
    def fsync_then_die(folder):
        if folder.name.endswith(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        original(folder)
    checkpoint._fsync_tree = fsync_then_die
from lmlab.cli import main
sys.exit(max(main(args) for args in json.loads(sys.argv[1])))
"""


def run_cli(invocations, tmp_path, kill_at=None, launcher=()):
    """Run lmlab CLI invocations (lists of arguments) one after another in one fresh process (or torchrun)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1",
           "LMLAB_CACHE": str(tmp_path / "cache")}
    if kill_at:
        env["LMLAB_TEST_KILL_AT"] = kill_at
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    return subprocess.run([sys.executable, *launcher, str(script), json.dumps(invocations)], env=env,
                          capture_output=True, text=True, timeout=300)


def run_here(args, tmp_path):
    """The CLI in this process, single-threaded like the subprocesses (so floats match bit for bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "away", "quickly", "home", "."]
    path.write_text(" ".join(rng.choice(words, size=6000)))
    return path


def loop_args(corpus, out, *extra):
    return ["train", "--preset", "ngen4-tiny", "--data", str(corpus), "--tokenizer", "bytes", "--out", str(out),
            "--seq-len", "32", "--batch-size", "4", "--steps", "12", "--lr", "3e-3", "--warmup-steps", "2",
            "--eval-every", "4", "--eval-batches", "2", "--sample-every", "4", "--sample-tokens", "8",
            "--checkpoint-every", "4", "--keep", "2", "--no-progress", "--no-tensorboard", *SMALL,
            "--set", "residual_dropout=0.1", *extra]  # dropout on: resuming must restore the RNG state too


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_sigkill_while_checkpointing_then_resume_equals_uninterrupted_run(corpus, tmp_path):
    run_here(loop_args(corpus, tmp_path / "straight"), tmp_path)
    killed = run_cli([loop_args(corpus, tmp_path / "killed")], tmp_path, kill_at="step-00000008")
    assert killed.returncode == -9, killed.stderr

    # the previous checkpoint is intact and loadable by the standard tools
    run = tmp_path / "killed"
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step-00000004"
    model_dir = resolve_model_dir(run)
    AutoModelForCausalLM.from_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).encode("hi") == [104, 105]

    run_here(["train", "--resume", "--out", str(run), "--no-progress"], tmp_path)
    expected, got = losses(tmp_path / "straight"), losses(run)
    assert sorted(got) == list(range(1, 13))
    assert got == expected  # bitwise: same floats, step for step (dropout on, so RNG state is restored too)
    straight_val = [r for r in read_metrics(tmp_path / "straight") if "val_loss" in r]
    assert [r for r in read_metrics(run) if "val_loss" in r] == straight_val
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000008", "step-00000012"]
    assert not list((run / "checkpoints").glob(".tmp-*"))

    # a different configuration is refused, naming the keys
    code = main(loop_args(corpus, run, "--resume", "--lr", "1e-2", "--seq-len", "16"))
    assert code == 2
    with pytest.raises(ValueError, match=r"(?s)config\.optimizer\.lr: checkpoint 0\.003, this run 0\.01.*seq_len"):
        train(config_from_recipe("ngen4-tiny", {"data": [str(corpus)], "tokenizer": "bytes", "lr": 1e-2,
                                                "seq_len": 16, "steps": 12, "cache_dir": str(tmp_path / "cache")}),
              run, resume=True)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(corpus, tmp_path, monkeypatch):
    import lmlab.model

    calls = {"n": 0}
    real = lmlab.model.shifted_linear_cross_entropy  # the trainer's loss (from the hidden states)

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(lmlab.model, "shifted_linear_cross_entropy", poisoned)
    config = config_from_recipe("ngen4-tiny", {
        "data": [str(corpus)], "tokenizer": "bytes", "seq_len": 32, "batch_size": 4, "steps": 6,
        "checkpoint_every": 2, "eval_every": 0, "eval_batches": 1, "sample_tokens": 0, "progress": False,
        "tensorboard": False, "cache_dir": str(tmp_path / "cache"),
        "model_overrides": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}})
    # one loss call per step (one micro-batch, no validation before the end): the third call is step 3
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3.*last good checkpoint is .*step-00000002"):
        train(config, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text().strip() == "step-00000002"
    AutoModelForCausalLM.from_pretrained(resolve_model_dir(tmp_path / "run"))


def test_tiny_preset_learns_tinyshakespeare_well_below_unigram_entropy(tmp_path):
    text = shared_data("corpora", "tinyshakespeare.txt")
    counts = np.bincount(np.frombuffer(text.read_bytes(), dtype=np.uint8), minlength=256)
    probabilities = counts[counts > 0] / counts.sum()
    unigram_nats = float(-(probabilities * np.log(probabilities)).sum())
    assert unigram_nats == pytest.approx(3.31, abs=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = config_from_recipe("ngen4-tiny", {
            "data": [str(text)], "tokenizer": "bytes", "seq_len": 64, "batch_size": 16, "steps": 150, "lr": 3e-3,
            "warmup_steps": 10, "eval_batches": 8, "val_fraction": 0.1, "sample_tokens": 0, "progress": False,
            "tensorboard": False, "cache_dir": str(tmp_path / "cache"), "model_overrides": NO_DROPOUT})
        result = train(config, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    # bytes tokenizer: one token is one byte, so nats/token = nats/byte = bits/byte · ln 2
    assert result.val["val_bpb"] * math.log(2) == pytest.approx(result.val["val_loss"], rel=0.01)
    assert result.val["val_loss"] < 0.8 * unigram_nats, result.val
    assert result.val["val_tokens"] == 8 * 16 * 63  # eval_batches × batch_size windows, 63 targets each
    logged = [r for r in read_metrics(tmp_path / "run") if "val_loss" in r][-1]
    assert logged["val_tokens"] == result.val["val_tokens"]


def test_two_gloo_processes_follow_one_process_with_twice_the_accumulation(corpus, tmp_path):
    common = ["--steps", "4", "--eval-every", "2", "--sample-tokens", "0", "--keep", "1",
              *(f"--set={k}={v}" for k, v in NO_DROPOUT.items())]
    run_here(loop_args(corpus, tmp_path / "one", "--grad-accum", "2", *common), tmp_path)
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    strategies = ("ddp", "fsdp")
    double = run_cli([loop_args(corpus, tmp_path / s, "--distributed", s, *common) for s in strategies], tmp_path,
                     launcher=launcher)
    assert double.returncode == 0, double.stderr[-3000:]
    one = losses(tmp_path / "one")
    one_val = [r["val_loss"] for r in read_metrics(tmp_path / "one") if "val_loss" in r]
    assert sorted(one) == [1, 2, 3, 4]
    for strategy in strategies:
        two = losses(tmp_path / strategy)
        assert sorted(two) == [1, 2, 3, 4], strategy
        np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], rtol=1e-5)
        two_val = [r["val_loss"] for r in read_metrics(tmp_path / strategy) if "val_loss" in r]
        np.testing.assert_allclose(two_val, one_val, rtol=1e-5)
        saved = json.loads((resolve_model_dir(tmp_path / strategy) / "train_config.json").read_text())
        assert saved["world_size"] == 2 and saved["distributed"] == strategy
        AutoModelForCausalLM.from_pretrained(resolve_model_dir(tmp_path / strategy))


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["train", "--preset", "ngen4-tiny", "--data", str(tmp_path / "missing.txt"), "--out",
                 str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "no such data file" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
