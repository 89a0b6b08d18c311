"""Optimizers and their parameter groups.

    adamw      torch.optim.AdamW (decoupled decay p ← p − η(m̂/(√v̂ + ε) + λp), the optax/yatgpt convention too), fused
               where torch supports it (`adam_implementation`)
    ademamix   AdEMAMix (Pagliardini et al. 2024) with its α and β3 warm-up schedulers, below (NeoLLM)
    lion       lion-pytorch's Lion: p ← p(1 − ηλ); p ← p − η·sign(β1·m + (1 − β1)g); m ← β2·m + (1 − β2)g  (NYX)
    muon       lmlab.train.muon.Muon on the hidden weight matrices (Newton–Schulz orthogonalised momentum, learning
               rate matched to AdamW's update RMS; torch.optim.Muon's rule, fp32 on CPUs without fast bf16), AdamW
               (fused where supported) on embeddings, the head and every 1-D parameter

Weight decay applies per group. `no_decay` in the optimizer recipe picks the parameters without it: "1d" (default:
biases, norm gains, scalar gates — every parameter with fewer than 2 dimensions, the HF Trainer / nanoGPT rule),
"none" (decay everything: yatgpt's optax AdamW), or a list of glob patterns over parameter names.
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn
from torch.optim.optimizer import _default_to_fused_or_foreach

from lmlab.train.muon import Muon, closure_loss

OPTIMIZERS = ("adamw", "ademamix", "lion", "muon")


def ademamix_beta3(step: int, beta1: float, beta3: float, warmup: int | None) -> float:
    """β3(t) = min(exp(ln β1 · ln β3 / ((1 − s) ln β3 + s ln β1)), β3), s = t / T_β3: the half-life of the slow EMA
    grows linearly from β1's to β3's over T_β3 steps (constant β3 without a warmup)."""
    if not warmup:
        return beta3
    s = min(step / warmup, 1.0)
    log1, log3 = math.log(beta1), math.log(beta3)
    return min(math.exp(log1 * log3 / ((1.0 - s) * log3 + s * log1)), beta3)


def ademamix_alpha(step: int, alpha: float, warmup: int | None) -> float:
    """α(t) = α · min(t / T_α, 1) (constant α without a warmup)."""
    return alpha * min(step / warmup, 1.0) if warmup else alpha


def ademamix_update_(param, grad, m1, m2, nu, *, step: int, lr: float, beta1: float, beta2: float, beta3: float,
                     alpha: float, eps: float, weight_decay: float) -> None:
    """One AdEMAMix update of `param` and its state (m1, m2, ν), in place, with c1 = 1 − β1^t, c2 = 1 − β2^t:
    θ ← θ (1 − ηλ) − η (m1 + α c1 m2) / (c1 (√ν / √c2 + ε))  (the class docstring's update, rearranged into in-place
    operations: 10 passes over the parameter's size instead of 14, 2 temporaries of its size instead of 3)."""
    c1, c2 = 1 - beta1**step, 1 - beta2**step
    m1.lerp_(grad, 1 - beta1)
    m2.lerp_(grad, 1 - beta3)
    nu.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denominator = nu.sqrt().mul_(c1 / math.sqrt(c2)).add_(c1 * eps)
    param.mul_(1 - lr * weight_decay).addcdiv_(torch.add(m1, m2, alpha=alpha * c1), denominator, value=-lr)


class AdEMAMix(torch.optim.Optimizer):
    """AdEMAMix: Adam plus a slow gradient EMA mixed into the numerator.

        m1 ← β1 m1 + (1 − β1) g                 (bias-corrected by 1 − β1^t)
        m2 ← β3(t) m2 + (1 − β3(t)) g           (no bias correction)
        ν  ← β2 ν + (1 − β2) g²
        θ  ← θ − η · [ (m1 / (1 − β1^t) + α(t) m2) / (√ν / √(1 − β2^t) + ε) + λ θ ]

    t counts this parameter's steps from 1. α(t) and β3(t) are the warm-up schedulers above (T_α = t_alpha,
    T_β3 = t_beta3; None = no warm-up). With α = 0 this is AdamW exactly."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 alpha: float = 5.0, t_alpha: int | None = None, t_beta3: int | None = None, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or alpha < 0:
            raise ValueError(f"AdEMAMix needs lr, eps, weight_decay and alpha >= 0; got {lr}, {eps}, "
                             f"{weight_decay}, {alpha}")
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdEMAMix takes three betas in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_slow"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                settings = dict(step=t, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                beta3=ademamix_beta3(t, beta1, beta3, group["t_beta3"]),
                                alpha=ademamix_alpha(t, group["alpha"], group["t_alpha"]),
                                weight_decay=group["weight_decay"])
                ademamix_update_(p, p.grad, state["exp_avg"], state["exp_avg_slow"], state["exp_avg_sq"], **settings)
        return loss


def decays(name: str, parameter: torch.Tensor, no_decay) -> bool:
    """Whether weight decay applies to `parameter` under the recipe's `no_decay` rule."""
    if no_decay == "1d":
        return parameter.ndim >= 2
    if no_decay == "none":
        return True
    if isinstance(no_decay, (list, tuple)):
        return not any(fnmatch.fnmatchcase(name, pattern) for pattern in no_decay)
    raise ValueError(f"no_decay must be '1d', 'none' or a list of parameter-name patterns, got {no_decay!r}")


def parameter_groups(named_parameters, weight_decay: float, no_decay="1d") -> list[dict]:
    """Two groups: with weight decay and without (empty groups dropped)."""
    with_decay, without = [], []
    for name, p in named_parameters:
        if p.requires_grad:
            (with_decay if weight_decay and decays(name, p, no_decay) else without).append(p)
    groups = [{"params": with_decay, "weight_decay": weight_decay}, {"params": without, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def _table_parameters(model: nn.Module) -> set[int]:
    """Embedding tables and the output head: Muon leaves these to AdamW (they are lookups, not linear maps)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        tables.add(id(head.weight))
    return tables


def adam_implementation(params: list[torch.Tensor]) -> dict:
    """AdamW's implementation for these parameters: `fused` (one kernel per parameter, no temporaries: ~7× the
    per-parameter loop on a CPU) where torch has the fused kernel for every parameter's device and type, else
    `foreach` where torch has foreach kernels, else the per-parameter loop (torch's own test for each). All three
    follow the same update; torch's default on a CPU is the loop."""
    fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=True)
    return {"fused": True} if fused else {"foreach": foreach}


def build_optimizers(model: nn.Module, spec: dict) -> list[torch.optim.Optimizer]:
    """The optimizer(s) a recipe's `optimizer` dict names (one, or Muon plus AdamW for the rest)."""
    spec = dict(spec)
    name = spec.pop("name", "adamw")
    weight_decay = spec.pop("weight_decay", 0.0)
    no_decay = spec.pop("no_decay", "1d")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if name == "adamw":
        return [torch.optim.AdamW(parameter_groups(named, weight_decay, no_decay), **_known(spec, name, {
            "lr", "betas", "eps"}), **adam_implementation([p for _, p in named]))]
    if name == "ademamix":
        return [AdEMAMix(parameter_groups(named, weight_decay, no_decay), **_known(spec, name, {
            "lr", "betas", "alpha", "t_alpha", "t_beta3", "eps"}))]
    if name == "lion":
        from lion_pytorch import Lion

        return [Lion(parameter_groups(named, weight_decay, no_decay), **_known(spec, name, {"lr", "betas"}))]
    if name == "muon":
        tables = _table_parameters(model)
        matrices = [(n, p) for n, p in named if p.ndim == 2 and id(p) not in tables]
        rest = [(n, p) for n, p in named if not (p.ndim == 2 and id(p) not in tables)]
        options = _known(spec, name, {"lr", "momentum", "betas", "eps"})
        optimizers = []
        if matrices:
            optimizers.append(Muon(parameter_groups(matrices, weight_decay, "none"), lr=options["lr"],
                                   momentum=options.get("momentum", 0.95), adjust_lr_fn="match_rms_adamw"))
        if rest:  # LoRA adapters are all matrices: then Muon alone
            optimizers.append(torch.optim.AdamW(parameter_groups(rest, weight_decay, no_decay), lr=options["lr"],
                                                betas=options.get("betas", (0.9, 0.95)), eps=options.get("eps", 1e-8),
                                                **adam_implementation([p for _, p in rest])))
        return optimizers
    raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")


def _known(spec: dict, name: str, allowed: set[str]) -> dict:
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"optimizer {name!r} has unknown settings {sorted(unknown)}; it takes {sorted(allowed)} "
                         "plus weight_decay and no_decay")
    if "betas" in spec:
        spec = {**spec, "betas": tuple(spec["betas"])}
    return spec


__all__ = ["AdEMAMix", "OPTIMIZERS", "adam_implementation", "ademamix_alpha", "ademamix_beta3",
           "ademamix_update_", "build_optimizers", "decays", "parameter_groups"]
