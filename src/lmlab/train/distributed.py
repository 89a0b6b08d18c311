"""Running on one process or many (`torchrun`): process-group setup, model wrapping (DDP or FSDP2), gradient-sync
control during accumulation, and full (unsharded) state dicts for checkpoints.

Under torchrun (WORLD_SIZE > 1) the backend is NCCL on GPUs and gloo on CPUs. DDP replicates the model and
averages gradients; FSDP2 (`torch.distributed.fsdp.fully_shard`) shards each decoder block and then the root
(embeddings, head, final norm). Either way the optimizer sees the gradient of the mean loss over the global batch,
so N processes with accumulation A follow the trajectory of 1 process with accumulation N·A.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Environment:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this run created the process group (and so destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Environment:
    """Join the torchrun process group when there is one; pick the device (`device` overrides: cpu, cuda, mps)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device(device)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return Environment(rank, local_rank, world_size, target, owns_group)


def teardown(env: Environment) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: Environment) -> None:
    if env.distributed:
        dist.barrier()


def wrap(model: nn.Module, env: Environment, strategy: str) -> nn.Module:
    """DDP or FSDP2 around `model` when running distributed; the model itself otherwise."""
    if not env.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying model (DDP and torch.compile wrap it; FSDP2 shards it in place)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def gradient_sync(model: nn.Module, sync: bool):
    """Context for one micro-batch's backward: gradients are reduced across processes only when `sync` is True
    (the last micro-batch of an accumulation), saving the communication of the others."""
    inner = getattr(model, "_orig_mod", model)
    if hasattr(inner, "no_sync"):  # DDP
        return contextlib.nullcontext() if sync else inner.no_sync()
    if hasattr(inner, "set_requires_gradient_sync"):  # FSDP2
        inner.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def mean_over_processes(value: torch.Tensor, env: Environment) -> torch.Tensor:
    if env.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG if env.device.type == "cuda" else dist.ReduceOp.SUM)
        if env.device.type != "cuda":  # gloo has no AVG
            value /= env.world_size
    return value


def sum_over_processes(value: torch.Tensor, env: Environment) -> torch.Tensor:
    if env.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def gather_objects(obj, env: Environment) -> list:
    """Every process's `obj`, in rank order (on every process)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model weights on CPU (on every rank for DDP / one process; on rank 0 for FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return unwrap(model).state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not is_sharded(model):
        return optimizer.state_dict()
    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def clip_gradients(parameters, max_norm: float | None) -> torch.Tensor:
    """Clip the global gradient norm to `max_norm` (None: only measure it); returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


__all__ = ["Environment", "barrier", "clip_gradients", "full_model_state", "full_optimizer_state",
           "gather_objects", "gradient_sync", "load_optimizer_state", "mean_over_processes", "setup",
           "sum_over_processes", "teardown", "unwrap", "wrap"]
