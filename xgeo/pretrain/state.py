"""What a resumed run needs to repeat an uninterrupted one, in one file (``last.ckpt``): model, optimizer (and, with
experts sharded over ranks, every rank's expert moments), scheduler, sampler (epoch, position, seeds), every RNG of
every rank; and the check that a resume computes the same thing (``config_diff``)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..version import __version__ as XGEO_VERSION
from ..config import flatten
from ..errors import CheckpointError
from . import distributed as dist_utils

CKPT_NAME = "last.ckpt"
# keys that may change between a run and its resume (how long and how it runs, not what it computes)
RESUMABLE_KEYS = {"pretrain.steps", "pretrain.epochs", "pretrain.checkpoint_every", "pretrain.log_every",
                  "pretrain.num_workers", "pretrain.compile",
                  "pretrain.augment_on"}  # loader | device: the same batches up to float rounding
# sections of params that define what a run computes; a resume must match them
CONFIG_SECTIONS = ("seed", "model.", "pretrain.", "data.pretrain")
REQUIRED = ("model", "params", "step", "optimizer", "scheduler", "sampler", "rng")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_diff(saved: dict, current: dict) -> list[str]:
    """Dotted keys that define the computation and differ between a checkpoint's params and this run's."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys
            if any(k == s or (s.endswith(".") and k.startswith(s)) for s in CONFIG_SECTIONS)
            and k not in RESUMABLE_KEYS and a.get(k, "<absent>") != b.get(k, "<absent>")]


def check_resumable(path: Path, ckpt: dict, params: dict) -> None:
    """Refuse to resume a checkpoint written by another configuration, naming every differing key."""
    diff = config_diff(ckpt["params"], params)
    if diff:
        a, b = flatten(ckpt["params"]), flatten(params)
        details = "; ".join(f"{k}: checkpoint {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}" for k in diff)
        raise CheckpointError(f"{path}: written by another configuration ({details}); "
                              f"resume with the same params or start a new --out directory")


def load_checkpoint_file(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint to resume from (expected the last.ckpt a run writes); "
                              f"run without --resume to start")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable xgeo checkpoint ({type(exc).__name__}: {exc})") from None
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing} (expected a last.ckpt written by xgeo pretrain)")
    return ckpt


def _expert_indices(optimizer: torch.optim.Optimizer) -> list[int]:
    """Positions (the numbering of ``optimizer.state_dict()``) of the parameters that are this rank's own experts
    (the tutel backend's, marked ``skip_allreduce``): their optimizer state differs from rank to rank."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return [i for i, p in enumerate(params) if getattr(p, "skip_allreduce", False)]


def optimizer_state(optimizer: torch.optim.Optimizer, info) -> tuple[dict, list | None]:
    """(the optimizer's state dict, every rank's state of its own experts in rank order or None).

    Under the tutel backend on N > 1 processes each rank's expert moments are its own; rank 0's state dict alone
    would give every rank rank 0's on resume. Every rank must call it (a collective when experts are sharded)."""
    state = optimizer.state_dict()
    experts = _expert_indices(optimizer)
    if not experts or not info.enabled:
        return state, None
    import torch.distributed as dist

    cpu = lambda v: v.detach().cpu() if isinstance(v, torch.Tensor) else v  # noqa: E731
    mine = {i: {k: cpu(v) for k, v in state["state"][i].items()} for i in experts if i in state["state"]}
    ranks: list = [None] * info.world_size
    dist.all_gather_object(ranks, mine)
    return state, ranks


def load_optimizer_state(path: Path, optimizer: torch.optim.Optimizer, ckpt: dict, info) -> None:
    """Load ``ckpt``'s optimizer state, this rank's own experts' from ``optimizer_experts`` when it has them."""
    ranks = ckpt.get("optimizer_experts")
    if ranks is not None and len(ranks) != info.world_size:
        raise CheckpointError(f"{path}: expert optimizer states of {len(ranks)} process(es), resumed with "
                              f"{info.world_size}; resume with the same number of processes")
    optimizer.load_state_dict(ckpt["optimizer"])
    if ranks is None:
        return
    state = optimizer.state_dict()
    state["state"].update(ranks[info.rank])
    optimizer.load_state_dict(state)


def model_config(model: nn.Module, params: dict) -> Any:
    return getattr(model, "config", None) or params["model"]


def save(path: Path, model, objective, optimizer, scheduler, sampler, params, step, info) -> None:
    """Write ``path`` (rank 0) with every rank's RNG state; every rank waits for it."""
    from ..model.checkpoint import save_checkpoint

    # every rank: the tutel backend's state dict gathers each rank's experts (a collective)
    model_state = model.state_dict()
    optimizer_sd, optimizer_experts = optimizer_state(optimizer, info)  # every rank: each one's expert moments
    extra = {f"{name}.{k}": v for name, child in objective.named_children() if name != "model"
             for k, v in child.state_dict().items()}  # what an objective adds to the model (distillation projection)
    state = rng_state()
    if info.enabled:
        import torch.distributed as dist

        ranks: list = [None] * info.world_size
        dist.all_gather_object(ranks, state)
    else:
        ranks = [state]
    if info.is_main:
        ckpt = {
            "model": model_state,
            "model_config": model_config(model, params),
            "params": params,
            "step": step,
            "optimizer": optimizer_sd,
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": {"ranks": ranks},
            "xgeo_version": XGEO_VERSION,
        }
        if extra:
            ckpt["objective"] = extra
        if optimizer_experts is not None:
            ckpt["optimizer_experts"] = optimizer_experts
        save_checkpoint(path, ckpt)
    dist_utils.barrier(info)


def restore(path: Path, ckpt: dict, objective, optimizer, scheduler, sampler, info) -> int:
    """Load a checkpoint's training state into this run; returns the step to continue from."""
    if "objective" in ckpt:
        objective.load_state_dict({**objective.state_dict(), **ckpt["objective"]})
    load_optimizer_state(path, optimizer, ckpt, info)
    scheduler.load_state_dict(ckpt["scheduler"])
    sampler.load_state_dict(ckpt["sampler"])
    ranks = ckpt["rng"].get("ranks", [])
    if len(ranks) != info.world_size:
        raise CheckpointError(f"{path}: saved by {len(ranks)} process(es), resumed with "
                              f"{info.world_size}; resume with the same number of processes")
    set_rng_state(ranks[info.rank])
    return int(ckpt["step"])
