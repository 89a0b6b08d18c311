"""What the benchmarks share: the machine they ran on, the matmul peak, interleaved best-of-rounds timing, and the
rows `benchmarks/run_all.py` collects.

A benchmark that run_all.py lists defines `rows(quick: bool) -> list[dict]`, each row made by `row()`:
{"name", "ratio", "target", "met", "note"}: met is ratio ≥ target (target None: reported only). `quick` is a size that
runs in a minute or two; the full sizes are the ones the targets speak of.

The machines are shared and noisy: variants run interleaved, once per round, and each keeps its best round; compare
the ratios of one run, never absolute numbers across runs.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from lmlab.hardware import REPORTED_FLAGS, device_runs_bf16_fast, read_cpuinfo

NO_FAST_BF16 = ("skipped: this CPU has neither AVX512-BF16 nor AMX, so bf16 matmuls run far slower than fp32 (0.6 vs "
                "30 GFLOP/s on an AVX2 EPYC); --precision auto trains in fp32 here")


def machine() -> dict:
    """The CPU, the flags that decide fp32 vs bf16 speed, torch's view of it, threads and the load now."""
    cpu = read_cpuinfo()
    return {"cpu": cpu.model, "flags": {flag: flag in cpu.flags for flag in REPORTED_FLAGS},
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()[0]}


def machine_line(info: dict) -> str:
    flags = ", ".join(flag for flag, present in info["flags"].items() if present) or "none of " + \
        ", ".join(info["flags"])
    return (f"{info['cpu']} (flags: {flags}; torch {info['torch']}, {info['torch_cpu_capability']}, "
            f"{info['torch_threads']} thread(s), load {info['load_average']:.1f})")


def timed_precisions() -> tuple[str, ...]:
    """The precisions worth timing here: fp32, and bf16 where this CPU multiplies bf16 fast (lmlab.hardware)."""
    return ("fp32", "bf16") if device_runs_bf16_fast("cpu") else ("fp32",)


def matmul_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 10) -> float:
    """FLOP/s of the best of `repeats` square matmuls of `size` in `dtype`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best = min(_seconds(lambda: a @ b) for _ in range(repeats + 3))
    return 2 * size**3 / best


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(rounds: int, variants: dict) -> dict:
    """Run every variant (a callable) once per round, interleaved; each one's best wall and CPU seconds."""
    best = {name: {"wall_s": float("inf"), "cpu_s": float("inf")} for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = {"wall_s": min(best[name]["wall_s"], wall), "cpu_s": min(best[name]["cpu_s"], cpu)}
    return best


GEMM_OPS = frozenset({"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"})


def gemm_share(step) -> float:
    """The fraction of one call of `step` (already warmed up) that torch's profiler finds in matrix multiplications
    (self CPU time of mm/addmm/bmm/baddbmm over all self CPU time).

    With the reference's share s, code that computes the same products no faster than the reference can be at most
    1 / s times as fast as it. On a CPU whose matmuls are slow against its memory (fp32 on AVX2, say) both steps are
    mostly GEMMs; a target above that bound needs faster or fewer matmuls, not leaner code around them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / total


def gemm_note(reference_share: float, lmlab_share: float, reference: str) -> str:
    """A row's note on where the time goes: each side's GEMM share, and the ratio's bound at equal GEMM speed."""
    return (f"GEMMs {reference_share:.0%} of the {reference}'s step, {lmlab_share:.0%} of lmlab's: at equal GEMM "
            f"speed the ratio is at most {1 / reference_share:.2f}×")


def row(name: str, ratio: float | None, target: float | None, note: str = "") -> dict:
    met = None if ratio is None or target is None else ratio >= target
    return {"name": name, "ratio": None if ratio is None else round(ratio, 3), "target": target, "met": met,
            "note": note}


def skipped_bf16(name: str, target: float | None) -> dict:
    """The row of a bf16 measurement this CPU cannot run at a useful speed."""
    return row(name, None, target, NO_FAST_BF16)


def print_table(rows: list[dict], file=sys.stdout) -> None:
    """The rows as a Markdown table: name, ratio, target, met."""
    print("| benchmark | ratio | target | met | note |", file=file)
    print("|---|---|---|---|---|", file=file)
    for r in rows:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        target = "—" if r["target"] is None else f"≥ {r['target']:g}"
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        print(f"| {r['name']} | {ratio} | {target} | {met} | {r['note']} |", file=file)
