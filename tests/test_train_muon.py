"""lmlab's Muon against torch.optim.Muon (the reference rule) and the Newton–Schulz iteration's own property."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from lmlab.train import muon as muon_module
from lmlab.train.muon import Muon, orthogonalize
from lmlab.train.optim import build_optimizers

SHAPES = [(48, 96), (96, 48), (32, 32), (32, 32), (16, 40)]  # wide, tall, two of one shape (one batch), odd


def run_both(ns_dtype, steps=3, **settings):
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(shape) * 0.02) for shape in SHAPES]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon(ours, ns_dtype=ns_dtype, **settings)
    b = torch.optim.Muon(reference, **settings)
    for _ in range(steps):
        for p, q in zip(ours, reference, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    return ours, reference


@pytest.mark.parametrize("settings", [dict(lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"),
                                      dict(lr=0.02, weight_decay=0.0, nesterov=False, adjust_lr_fn="original"),
                                      dict(lr=0.02, momentum=0.9)])
def test_bf16_iteration_equals_torch_muon(settings):
    """In bf16 (what torch.optim.Muon always uses) the update equals torch's, although same-shape matrices are
    orthogonalised as one batch."""
    ours, reference = run_both(torch.bfloat16, **settings)
    for p, q in zip(ours, reference, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_fp32_iteration_matches_torch_muon_to_bf16_precision():
    ours, reference = run_both(torch.float32, lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for p, q in zip(ours, reference, strict=True):
        step = 3 * 0.01 * 0.2 * max(p.shape) ** 0.5  # three updates of RMS ~0.2·η·√max(A, B)·(…)
        assert (p - q).abs().max() < 0.02 * step


@pytest.mark.parametrize("shape", [(3, 64, 160), (2, 160, 64)])
def test_orthogonalize_pushes_singular_values_towards_one(shape):
    """Keller Jordan's quintic maps every singular value of the normalised input into roughly [0.7, 1.2]; the
    singular vectors are U's (X ≈ U·Σ⁰·Vᵀ)."""
    torch.manual_seed(0)
    u = torch.randn(shape) @ torch.diag(torch.logspace(-1, 1, shape[-1]))
    x = orthogonalize(u, torch.float32)
    singular = torch.linalg.svdvals(x)
    assert singular.min() > 0.6 and singular.max() < 1.25
    left, _, right = torch.linalg.svd(u.double(), full_matrices=False)
    polar = (left @ right).float()
    cosine = (x * polar).flatten(1).sum(1) / (x.flatten(1).norm(dim=1) * polar.flatten(1).norm(dim=1))
    assert (cosine > 0.9).all()


def test_iteration_dtype_follows_the_device(monkeypatch):
    """bf16 only where bf16 matmuls are fast; fp32 elsewhere (on an AVX2 CPU bf16 is ~10× slower)."""
    p = torch.nn.Parameter(torch.randn(8, 8))
    for fast, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(muon_module, "device_runs_bf16_fast", lambda device, fast=fast: fast)
        assert Muon([p])._dtype(p.device) == dtype
    assert Muon([p], ns_dtype=torch.float16)._dtype(p.device) == torch.float16


def test_muon_refuses_vectors_and_builds_for_the_recipe():
    with pytest.raises(ValueError, match="2-D parameters only"):
        Muon([torch.nn.Parameter(torch.zeros(4))])
    muon, adamw = build_optimizers(tiny_model("ngen4-tiny"), {"name": "muon", "lr": 8e-3, "weight_decay": 0.1})
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    assert all(p.ndim == 2 for group in muon.param_groups for p in group["params"])
