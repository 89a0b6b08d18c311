"""Run-time hardware decisions with fake capabilities: bf16 speed, `--precision auto`, the threads default, and
the trainer's loss-only forward against the plain one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_VOCAB, randomise_parameters, tiny_model
from lmlab import hardware
from lmlab.cli import build_parser, main
from lmlab.hardware import bf16_is_fast, busy_cores_elsewhere, cpu_times, default_threads, physical_cores, read_cpuinfo
from lmlab.train.config import TrainConfig
from lmlab.train.distributed import Environment
from lmlab.train.schedules import build_schedule
from lmlab.train.step import CPU_BF16_MIN_WIDTH, autocast_context, choose_precision, step_parts, train_step

CPUINFO = """processor\t: 0
model name\t: Some CPU
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu avx2 {extra}

processor\t: 1
model name\t: Some CPU
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu avx2 {extra}

processor\t: 2
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu avx2 {extra}
"""


@pytest.mark.parametrize("extra,fast", [("", False), ("avx512f", False), ("avx512f avx512_bf16", True),
                                        ("amx_tile amx_bf16", True)])
def test_bf16_is_fast_only_with_avx512_bf16_or_amx(extra, fast):
    cpu = read_cpuinfo(CPUINFO.format(extra=extra))
    assert cpu.model == "Some CPU"
    assert bf16_is_fast("cpu", cpu.flags) is fast
    assert bf16_is_fast("cuda", cuda_bf16=True) and not bf16_is_fast("cuda", cuda_bf16=False)
    assert not bf16_is_fast("mps", cpu.flags)


def test_auto_precision_follows_the_hardware():
    assert choose_precision("auto", "cpu", bf16_fast=True)[0] == "bf16"
    precision, why = choose_precision("auto", "cpu", bf16_fast=False)  # an AVX2-only CPU
    assert precision == "fp32" and "not faster" in why
    assert choose_precision("auto", "cuda", bf16_fast=True)[0] == "bf16"
    # on a CPU, narrow models stay fp32 (the casts outweigh the faster matmuls); on a GPU width does not matter
    assert choose_precision("auto", "cpu", bf16_fast=True, hidden_size=CPU_BF16_MIN_WIDTH)[0] == "bf16"
    precision, why = choose_precision("auto", "cpu", bf16_fast=True, hidden_size=64)
    assert precision == "fp32" and "width 64" in why
    assert choose_precision("auto", "cuda", bf16_fast=True, hidden_size=64)[0] == "bf16"
    assert choose_precision("fp32", "cpu", bf16_fast=True) == ("fp32", "asked for")
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("fp8", "cpu", bf16_fast=True)


def test_autocast_context_resolves_auto(monkeypatch):
    from lmlab.train import step

    for fast, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(step, "device_runs_bf16_fast", lambda device, fast=fast: fast)
        with autocast_context("auto", torch.device("cpu")):
            enabled = torch.is_autocast_enabled("cpu")
            dtype = torch.get_autocast_dtype("cpu") if enabled else None
        assert dtype == expected


def test_threads_default_counts_idle_physical_cores():
    cpu = read_cpuinfo(CPUINFO.format(extra=""))
    assert physical_cores({0, 1, 2}, cpu) == 2  # CPUs 0 and 1 are one core's hyper-threads
    assert physical_cores({0, 1}, cpu) == 1
    assert default_threads(cores=8, quota=None, busy=0.0) == 8
    assert default_threads(cores=8, quota=2.5, busy=0.0) == 2  # the cgroup quota caps it
    assert default_threads(cores=2, quota=None, busy=1.2) == 1  # another process keeps a core busy
    assert default_threads(cores=2, quota=None, busy=0.3) == 2  # a little background work does not
    assert default_threads(cores=2, quota=None, busy=7.0) == 1  # never below one
    assert default_threads(cores=8, quota=None, busy=0.0, processes=4) == 2  # torchrun's processes share them


def test_cpu_times_sum_the_allowed_cpus_busy_and_all_ticks():
    stat = ("cpu  300 0 30 900 10 0 0 0 0 0\n"
            "cpu0 100 0 10 300 5 0 0 0 0 0\n"
            "cpu1 200 0 20 600 5 1 2 3 0 0\n"
            "\n"
            "intr 12345 0 0\n")
    assert cpu_times(stat, {0}) == (110, 415)  # user + system; idle and iowait are not busy
    assert cpu_times(stat, {1}) == (226, 831)  # irq, softirq and steal are
    assert cpu_times(stat, {0, 1}) == (336, 1246)  # the all-CPU line is not counted twice
    assert cpu_times(stat, {7}) == (0, 0)


def test_threads_for_this_process_counts_a_launch_siblings_as_its_own(monkeypatch):
    monkeypatch.setattr(hardware, "physical_cores", lambda allowed, cpu: 8)
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: None)
    busy = {"now": 3.0}
    monkeypatch.setattr(hardware, "busy_cores_elsewhere", lambda cpus: busy["now"])
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert hardware.threads_for_this_process() == 5  # 3 cores busy with other work
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert hardware.threads_for_this_process() == 2  # the 3 busy cores are this launch's other processes
    busy["now"] = 5.0
    assert hardware.threads_for_this_process() == 1  # 2 more busy with other work: (8 − 2) // 4


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")
def test_busy_cores_elsewhere_sees_a_spinning_process():
    cpus = os.sched_getaffinity(0)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = busy_cores_elsewhere(cpus, seconds=0.3)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.3  # about one core, less what other work leaves it


def test_threads_option_on_every_verb_and_applied_first(monkeypatch):
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert all("--threads" in verb._option_string_actions for verb in verbs.values())
    threads = torch.get_num_threads()
    seen = []
    monkeypatch.setattr(hardware, "threads_for_this_process", lambda: 3)
    try:
        assert main(["info", "--threads", "2", "--preset", "ngen4-tiny"]) == 0
        seen.append(torch.get_num_threads())
        monkeypatch.delenv(hardware.THREADS_VARIABLE)
        assert main(["info", "--preset", "ngen4-tiny"]) == 0
        seen.append(torch.get_num_threads())
        assert main(["info", "--threads", "0", "--preset", "ngen4-tiny"]) == 2
    finally:
        torch.set_num_threads(threads)
    assert seen == [2, 3]


@pytest.mark.parametrize("preset", ["ngen4-tiny", "n4-tiny", "yatgpt-tiny"])
def test_loss_only_forward_equals_the_plain_loss(preset):
    """The trainer's `return_logits=False` (loss from the hidden states) against logits + cross-entropy: the same
    loss and gradients in fp32 (soft-capped yatgpt included)."""
    model = tiny_model(preset)
    randomise_parameters(model, seed=3)
    x = torch.randint(0, TINY_VOCAB, (2, 17), generator=torch.Generator().manual_seed(1))
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        out = model(input_ids=x, labels=x, return_logits=return_logits)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (fast, fast_grads) = results
    assert fast.logits is None and plain.logits is not None
    assert fast.loss.item() == pytest.approx(plain.loss.item(), abs=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_one_autocast_region_per_step_equals_autocast_per_micro_batch():
    """The trainer's step (one autocast region, weights cast once per step) against the plain loop (autocast per
    micro-batch forward) under bf16 with accumulation 3: the same loss and the same updated weights, bit for bit."""
    batches = [torch.randint(0, TINY_VOCAB, (2, 9), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    config = TrainConfig(preset="ngen4-tiny", precision="bf16", grad_clip=1.0, optimizer={"name": "adamw", "lr": 1e-2})
    schedule = build_schedule({"name": "constant"}, 1e-2, 10)
    models = [tiny_model("ngen4-tiny", seed=4).train() for _ in range(2)]
    parts = [step_parts(model, config, schedule, torch.device("cpu")) for model in models]
    loss, _ = train_step(models[0], batches, 3, parts[0], Environment())
    total = 0.0
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            micro = models[1](input_ids=batch, labels=batch, return_logits=False).loss / 3
        micro.backward()
        total += micro.item()
    torch.nn.utils.clip_grad_norm_(models[1].parameters(), 1.0)
    parts[1].optimizers[0].step()
    assert loss == pytest.approx(total, rel=1e-6)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
