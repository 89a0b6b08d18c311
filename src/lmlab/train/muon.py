"""Muon (Jordan et al. 2024): momentum whose update of each weight matrix is orthogonalised by a Newton–Schulz
iteration, with torch.optim.Muon's update rule and state, and two changes for CPUs and small models.

Per matrix W (A × B) with gradient G, momentum μ, learning rate η, weight decay λ:
    M ← μ·M + (1 − μ)·G;   U = (1 − μ)·G + μ·M (Nesterov) or U = M
    X ← U / max(‖U‖_F, ε), transposed so that it is wide;   5 times: S = X·Xᵀ, X ← a·X + (b·S + c·S²)·X
    W ← W·(1 − ηλ) − η'·X,   η' = 0.2·√max(A, B)·η ("match_rms_adamw": AdamW's update RMS) or √max(1, A/B)·η
    ("original", also None)
    (a, b, c) = (3.4445, −4.7750, 2.0315), Keller Jordan's quintic coefficients.

- The iteration runs in bf16 only where the device multiplies bf16 fast (a CUDA GPU; a CPU with AVX512-BF16 or AMX,
  lmlab.hardware), in fp32 elsewhere: torch.optim.Muon always uses bf16, which on an AVX2-only CPU made Muon take ~90%
  of a tiny model's training step (~10× the whole step in fp32).
- Matrices of one shape are orthogonalised together, as one batch of matmuls (a tiny model's dozens of small
  matrices cost one Python loop per shape, not per matrix).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from lmlab.hardware import device_runs_bf16_fast

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5
LR_ADJUSTMENTS = (None, "original", "match_rms_adamw")


def orthogonalize(updates: torch.Tensor, dtype: torch.dtype, steps: int = NEWTON_SCHULZ_STEPS,
                  coefficients: tuple[float, float, float] = NEWTON_SCHULZ, eps: float = 1e-7) -> torch.Tensor:
    """The Newton–Schulz approximation of U·(UᵀU)^(−1/2) (U's singular values pushed to about 1) for a batch of
    matrices (n, A, B), computed in `dtype`."""
    a, b, c = coefficients
    x = updates.to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-2, -1)
    x = x / x.flatten(1).norm(dim=1).clamp(min=eps)[:, None, None]
    for _ in range(steps):
        gram = torch.bmm(x, x.transpose(-2, -1))
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, polynomial, x, beta=a)
    return x.transpose(-2, -1) if tall else x


def closure_loss(closure) -> torch.Tensor | None:
    """An optimizer step's `closure()` (the loss, computed with gradients on), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def adjusted_lr(lr: float, adjustment: str | None, shape: torch.Size) -> float:
    """η' for an A × B matrix (see the module docstring)."""
    rows, columns = shape[:2]
    if adjustment == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, columns))
    return lr * math.sqrt(max(1.0, rows / columns))


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters; `ns_dtype` None picks bf16 or fp32 per device (module docstring)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NEWTON_SCHULZ,
                 eps: float = 1e-7, ns_steps: int = NEWTON_SCHULZ_STEPS, adjust_lr_fn: str | None = None,
                 ns_dtype: torch.dtype | None = None):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"Muon needs lr, momentum and weight_decay ≥ 0 (got {lr}, {momentum}, {weight_decay})")
        if adjust_lr_fn not in LR_ADJUSTMENTS:
            raise ValueError(f"unknown adjust_lr_fn {adjust_lr_fn!r}; choose one of {list(LR_ADJUSTMENTS)}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D parameters only; got one of shape {tuple(p.shape)}: give "
                                     "vectors, scalars and embedding tables to AdamW")

    def _dtype(self, device: torch.device) -> torch.dtype:
        if self.ns_dtype is not None:
            return self.ns_dtype
        return torch.bfloat16 if device_runs_bf16_fast(device) else torch.float32

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            by_shape = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Muon does not take sparse gradients")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                by_shape[(p.shape, p.device, p.dtype)].append(p)
            for (shape, device, _), params in by_shape.items():
                self._update(group, params, shape, device)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor], shape: torch.Size, device: torch.device) -> None:
        momentum = group["momentum"]
        grads = [p.grad for p in params]
        buffers = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_lerp_(buffers, grads, 1 - momentum)
        stacked_grads, stacked_buffers = torch.stack(grads), torch.stack(buffers)
        updates = stacked_grads.lerp_(stacked_buffers, momentum) if group["nesterov"] else stacked_buffers
        ortho = orthogonalize(updates, self._dtype(device), group["ns_steps"], group["ns_coefficients"],
                              group["eps"]).to(params[0].dtype)
        lr = group["lr"]
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_add_(params, list(ortho.unbind(0)), alpha=-adjusted_lr(lr, group["adjust_lr_fn"], shape))


__all__ = ["Muon", "adjusted_lr", "closure_loss", "orthogonalize"]
