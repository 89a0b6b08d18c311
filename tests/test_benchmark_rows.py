"""The benchmark summary rows on CPUs with and without fast bf16 (benchmarks/common.py, train_throughput.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
common = pytest.importorskip("common")
train_throughput = pytest.importorskip("train_throughput")


def measured(precisions):
    result = {"lmlab_tokens_per_s": 200.0, "reference_tokens_per_s": 100.0, "ratio": 2.0, "cpu_time_ratio": 1.9,
              "lmlab_mfu": 0.3, "reference_mfu": 0.15, "reference_gemm_share": 0.8, "lmlab_gemm_share": 0.9}
    per_model = {p: dict(result) for p in precisions}
    return {"shape": {"batch": 2, "seq_len": 256}, "results": {"ngen4-50m": per_model, "n4": per_model}}


@pytest.mark.parametrize("fast", [True, False])
def test_timed_precisions_follow_the_cpu(monkeypatch, fast):
    monkeypatch.setattr(common, "device_runs_bf16_fast", lambda device: fast)
    assert common.timed_precisions() == (("fp32", "bf16") if fast else ("fp32",))


def test_rows_without_bf16_say_why_and_are_not_met():
    rows = train_throughput.table_rows(measured(["fp32"]))
    bf16 = [r for r in rows if "bf16" in r["name"]]
    assert [r["name"] for r in bf16] == ["ngen4-50m vs HF GPT-NeoX, bf16 (B 2, T 256)",
                                         "N4 d512/L8 vs official N4, bf16 (B 2, T 256)",
                                         "ngen4-50m bf16 MFU (B 2, T 256)"]
    assert all(r["ratio"] is None and r["met"] is None and "AVX512-BF16" in r["note"] for r in bf16)
    fp32 = [r for r in rows if "fp32" in r["name"]]
    assert [(r["ratio"], r["met"]) for r in fp32] == [(2.0, True), (2.0, True)]


def test_rows_with_bf16_report_mfu_and_the_bf16_gain():
    rows = {r["name"]: r for r in train_throughput.table_rows(measured(["fp32", "bf16"]))}
    assert rows["ngen4-50m bf16 MFU (B 2, T 256)"]["ratio"] == 0.3
    assert rows["ngen4-50m bf16 vs fp32 step, lmlab (B 2, T 256; auto chooses bf16 here)"]["ratio"] == 1.0


def test_fp32_rows_give_the_equal_gemm_bound():
    fp32 = [r for r in train_throughput.table_rows(measured(["fp32"])) if "fp32" in r["name"]]
    assert all("GEMMs 80% of the reference's step, 90% of lmlab's: at equal GEMM speed the ratio is at most 1.25×"
               in r["note"] for r in fp32)


def test_gemm_share_tells_matmuls_from_elementwise_work():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    assert common.gemm_share(lambda: [a @ b for _ in range(4)]) > 0.9
    assert common.gemm_share(lambda: [torch.exp(a) + b for _ in range(4)]) == 0.0
    both = common.gemm_share(lambda: (a @ b, [torch.sin(a) for _ in range(20)]))
    assert 0.0 < both < 1.0
