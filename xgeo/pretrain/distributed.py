"""Process group set-up for ``torchrun`` (or a single process), DDP wrapping, and the tutel expert rule.

``torchrun --nproc_per_node N --no-python xgeo pretrain ...`` sets RANK, WORLD_SIZE and LOCAL_RANK (and the
rendezvous address); without them the run is a single process and nothing here touches torch.distributed.
The backend is gloo on the CPU and nccl on CUDA.

Expert parameters of tutel's MoE are sharded (each rank owns its experts), so they are kept out of DDP's
all-reduce, as Swin-MoE does, and their gradients are scaled by 1 / world_size to match the averaging DDP applies
to every other parameter. The native MoE keeps every expert on every rank, so its experts go through DDP.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import XGeoError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise XGeoError(f"environment variable {name}: expected an integer, found {value!r}") from None


def init_distributed() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK; initialise the process group once when WORLD_SIZE > 1."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, local_rank=local, world_size=world, device=device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_flag(info: DistInfo, flag: bool) -> bool:
    """True when ``flag`` is true on any rank (so every rank stops together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def expert_parameter_names(model: torch.nn.Module, backend: str) -> list[str]:
    """Names (relative to ``model``) of the parameters DDP must not all-reduce: tutel's sharded experts only."""
    if backend != "tutel" or not hasattr(model, "expert_parameter_names"):
        return []
    return list(model.expert_parameter_names())


def wrap_ddp(module: torch.nn.Module, info: DistInfo, ignore: list[str]) -> torch.nn.Module:
    """DDP around ``module`` (a no-op for a single process).

    ``find_unused_parameters``: a step does not use every parameter (an expert that got no token, the
    decoder of a sensor that no sample reconstructed, a whole group in homogeneous batching).
    ``ignore`` holds parameter names relative to ``module`` that stay out of the all-reduce.
    """
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(module, ignore)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=True)


def scale_ignored_grads(module: torch.nn.Module, ignore: list[str], info: DistInfo) -> None:
    """Divide the gradients of parameters kept out of DDP by the world size (they were not averaged)."""
    if not info.enabled or not ignore:
        return
    names = set(ignore)
    for name, p in module.named_parameters():
        if name in names and p.grad is not None:
            p.grad.div_(info.world_size)
