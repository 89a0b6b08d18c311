"""What this machine runs fast, read at run time: the CPU's instruction-set flags, whether bf16 matmuls pay, and how
many cores a process may use.

bf16 pays on CPUs with AVX512_BF16 or AMX (measured on a 2-core Xeon with AMX: bf16 matmuls ~15× fp32; AMD Zen 4 with
AVX512_BF16: 2.2–2.9×) and on CUDA GPUs that support it; on an AVX2-only CPU a bf16 matmul runs far slower than fp32
(up to ~150× for reductions over a large vocabulary), so there fp32 is the choice.

Threads: the default is the physical cores this process may run on (CPU affinity, capped by a cgroup CPU quota),
less the cores other processes keep busy now (their share of /proc/stat's CPU time over a fifth of a second; the
1-minute load average where /proc/stat cannot be read), shared among the processes of one torchrun launch, and at
least 1. On a shared 2-core machine running other jobs, two torch threads made a small model's training step 1.2–3×
slower than one (benchmarks/train_throughput.py --threads-check). The load average alone misjudges an idle machine
for a minute after any work (a `pip install` just before `lmlab train` left it at 0.75, so the README's first run
took 1 thread: 68 ms per step against 40 ms with 2, on a 2-core AMD EPYC).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # either makes bf16 matmuls faster than fp32 on a CPU
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and instruction-set flags (as /proc/cpuinfo names them) and its logical CPUs, each as
    (package, core) so that hyper-threads of one core count once."""

    model: str
    flags: frozenset[str]
    cores: dict[int, tuple[str, str]]


def read_cpuinfo(text: str | None = None) -> CpuInfo:
    """Parse /proc/cpuinfo (or `text` in its format); empty where the file does not exist (not Linux)."""
    if text is None:
        text = ""
        with contextlib.suppress(OSError):
            text = Path("/proc/cpuinfo").read_text()
    model, flags, cores = "", frozenset(), {}
    for block in text.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        model = model or fields.get("model name", "")
        flags = flags or frozenset(fields.get("flags", "").split())
        if "processor" in fields:
            cpu = int(fields["processor"])
            cores[cpu] = (fields.get("physical id", "0"), fields.get("core id", str(cpu)))
    return CpuInfo(model, flags, cores)


def bf16_is_fast(device_type: str, cpu_flags: frozenset[str] = frozenset(), cuda_bf16: bool = False) -> bool:
    """Whether bf16 matmuls beat fp32 on this device: a CPU with AVX512_BF16 or AMX, a CUDA GPU supporting bf16."""
    if device_type == "cpu":
        return any(flag in cpu_flags for flag in BF16_CPU_FLAGS)
    if device_type == "cuda":
        return cuda_bf16
    return False


def device_runs_bf16_fast(device) -> bool:
    """`bf16_is_fast` for a torch device of this machine (flags read from /proc/cpuinfo, CUDA asked)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bf16_is_fast("cuda", cuda_bf16=torch.cuda.is_bf16_supported())
    return bf16_is_fast(device.type, cpu_flags_now())


@functools.cache
def cpu_flags_now() -> frozenset[str]:
    """This machine's CPU flags (read once per process)."""
    return read_cpuinfo().flags


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """The cgroup v2 CPU quota in cores ('max' or no file: None)."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path(path).read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    return None


def physical_cores(allowed: set[int], cpu: CpuInfo) -> int:
    """Distinct physical cores among the logical CPUs `allowed` (a CPU missing from cpuinfo counts as its own)."""
    return len({cpu.cores.get(i, ("?", str(i))) for i in allowed}) or 1


def default_threads(cores: int, quota: float | None, busy: float, processes: int = 1) -> int:
    """Threads per process: the cores (capped by the quota) that other processes leave idle (busy: the cores they
    keep busy), shared among `processes`, at least 1."""
    usable = cores if quota is None else min(cores, max(1, math.floor(quota)))
    idle = usable - round(busy)
    return max(1, min(usable, idle) // max(1, processes))


def cpu_times(stat_text: str, cpus: set[int]) -> tuple[int, int]:
    """(busy, all) clock ticks of the logical CPUs `cpus`, summed from /proc/stat's per-CPU lines ("cpuN user nice
    system idle iowait irq softirq steal ..."): busy is all less idle and iowait."""
    busy = total = 0
    for line in stat_text.splitlines():
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields[:8]]
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def busy_cores_elsewhere(cpus: set[int], seconds: float = 0.2) -> float | None:
    """The cores of `cpus` that other processes keep busy now: /proc/stat's busy ticks over `seconds`, less this
    process's own CPU time, in cores; None where /proc/stat cannot be read."""
    try:
        before, own_before = cpu_times(Path("/proc/stat").read_text(), cpus), time.process_time()
        time.sleep(seconds)
        after, own_after = cpu_times(Path("/proc/stat").read_text(), cpus), time.process_time()
    except OSError:
        return None
    elapsed_ticks = after[1] - before[1]
    if elapsed_ticks <= 0:
        return None
    busy_share = (after[0] - before[0]) / elapsed_ticks  # of all the CPUs' time in the interval
    own_cores = (own_after - own_before) / seconds
    return max(0.0, busy_share * len(cpus) - own_cores)


def threads_for_this_process() -> int:
    """`default_threads` for this process: its CPU affinity, the cgroup quota, the cores other processes keep busy
    now (`busy_cores_elsewhere`, else the 1-minute load average), and LOCAL_WORLD_SIZE processes (set by torchrun).
    The other processes of one torchrun launch, starting at the same moment, are counted as this launch's own work,
    not as other load (the division among `processes` already leaves them their share)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    busy = busy_cores_elsewhere(allowed)
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    busy = max(0.0, busy - (processes - 1))
    return default_threads(physical_cores(allowed, read_cpuinfo()), cgroup_cpu_limit(), busy, processes)


THREADS_VARIABLE = "LMLAB_THREADS"  # the default of --threads when set (tests pin it to 1)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: $LMLAB_THREADS, else `threads_for_this_process()`); returns the number
    set."""
    import torch

    if threads is None and os.environ.get(THREADS_VARIABLE):
        threads = int(os.environ[THREADS_VARIABLE])
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    threads = threads or threads_for_this_process()
    torch.set_num_threads(threads)
    return threads


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Have glibc's malloc serve every allocation from the heap and keep what is freed (no mmap for large blocks, no
    trimming). A training step frees and re-allocates the same large tensors every step; as fresh mmap'd memory each
    costs a page fault per 4 KiB on first touch (measured: a bf16 ngen4-50m step spent 27% more CPU time and took
    3.5× the page faults without this). Memory freed during a run stays with the process. Returns whether it was
    applied (glibc only; a no-op elsewhere)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


__all__ = ["BF16_CPU_FLAGS", "REPORTED_FLAGS", "THREADS_VARIABLE", "CpuInfo", "bf16_is_fast", "busy_cores_elsewhere",
           "cgroup_cpu_limit", "cpu_flags_now", "cpu_times", "default_threads", "device_runs_bf16_fast",
           "keep_freed_memory", "physical_cores", "read_cpuinfo", "set_threads", "threads_for_this_process"]
