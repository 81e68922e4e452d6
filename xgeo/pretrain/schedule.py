"""The pretraining schedule: epochs -> steps, and the learning rate at each step (Table 11).

``resolve_schedule(params, steps_per_epoch)`` is the one place a run's length is decided:

- ``pretrain.epochs`` set (paper: 800, 10 warm-up epochs, x ``gamma`` at epoch 700): total, warm-up and milestones
  in steps = epochs x ``steps_per_epoch`` (of the sampler, ``steps_per_epoch(...)`` below);
- ``pretrain.epochs: null`` (the demo): ``pretrain.steps``, ``warmup_steps`` and ``milestones`` as given, counted in
  heterogeneous steps: a homogeneous run (Table 6) takes G x as many (G groups) so it sees as many samples;
- an experiment other than ``tables.base_experiment`` takes ``pretrain.ablation`` (its non-null keys) over these,
  the paper's 100-epoch pretraining of the ablation tables (5, 6, 7, 10, 13, 14); Table 3's is the full one.
"""
from __future__ import annotations

from typing import Mapping

from ..errors import XGeoError
from .sampler import Group, PretrainSampler

SCHEDULE_KEYS = ("epochs", "warmup_epochs", "milestone_epochs", "steps", "warmup_steps", "milestones")


def steps_per_epoch(groups: Mapping[str, Mapping], sizes: Mapping[str, int], mode: str = "heterogeneous",
                    world_size: int = 1) -> int:
    """Steps of one epoch of the sampler.

    groups: ``pretrain.groups`` as a run reads them ({name: {"datasets": [...], "batch_size": B}});
    sizes: samples per dataset (the stores' lengths); mode: ``pretrain.batching``; world_size: processes.
    """
    missing = [d for c in groups.values() for d in c["datasets"] if d not in sizes]
    if missing:
        raise XGeoError(f"steps_per_epoch: no sample count for datasets {missing}")
    return PretrainSampler([Group(g, tuple(c["datasets"]), tuple(int(sizes[d]) for d in c["datasets"]),
                                  int(c["batch_size"])) for g, c in groups.items()],
                           seed=0, mode=mode, world_size=world_size).steps_per_epoch


def schedule_settings(params: Mapping) -> tuple[dict, bool]:
    """The schedule keys of ``pretrain`` with ``pretrain.ablation`` applied where it applies; (settings, ablation?)."""
    cfg = params["pretrain"]
    settings = {k: cfg.get(k) for k in SCHEDULE_KEYS}
    ablation = cfg.get("ablation")
    experiment = params.get("experiment")
    base = (params.get("tables") or {}).get("base_experiment")
    if ablation and experiment is not None and experiment != base:
        unknown = sorted(set(ablation) - set(SCHEDULE_KEYS))
        if unknown:
            raise XGeoError(f"params pretrain.ablation: unknown keys {unknown}; expected some of {list(SCHEDULE_KEYS)}")
        settings.update({k: v for k, v in ablation.items() if v is not None})
        return settings, True
    return settings, False


def resolve_schedule(params: Mapping, steps_per_epoch: int) -> dict:
    """{"total_steps", "warmup_steps", "milestones", "steps_per_epoch", "source": "epochs" | "steps", "ablation"}."""
    s, ablation = schedule_settings(params)
    if steps_per_epoch < 1:
        raise XGeoError(f"steps_per_epoch is {steps_per_epoch}; expected >= 1")
    if s.get("epochs") is not None:
        epochs = int(s["epochs"])
        warm = int(s.get("warmup_epochs") or 0)
        miles = [int(m) for m in (s.get("milestone_epochs") or [])]
        bad = [m for m in miles if not 0 < m < epochs]
        if epochs < 1 or not 0 <= warm < epochs or bad:
            raise XGeoError(f"params pretrain: epochs {epochs}, warmup_epochs {warm}, milestone_epochs {miles}; "
                            f"expected epochs >= 1, 0 <= warmup_epochs < epochs, milestones inside (0, epochs)")
        return {"total_steps": epochs * steps_per_epoch, "warmup_steps": warm * steps_per_epoch,
                "milestones": [m * steps_per_epoch for m in miles], "steps_per_epoch": steps_per_epoch,
                "source": "epochs", "ablation": ablation}
    if s.get("steps") is None:
        raise XGeoError("params pretrain: set pretrain.epochs (paper) or pretrain.steps (demo); both are null")
    scale = 1
    if params["pretrain"].get("batching", "heterogeneous") == "homogeneous":
        from .groups import effective_groups

        scale = len(effective_groups(params))  # one group per homogeneous step: G steps hold a heterogeneous one
    return {"total_steps": int(s["steps"]) * scale, "warmup_steps": int(s.get("warmup_steps") or 0) * scale,
            "milestones": [int(m) * scale for m in (s.get("milestones") or [])], "steps_per_epoch": steps_per_epoch,
            "source": "steps", "ablation": ablation}


class WarmupMultiStep:
    """lr factor at a step: linear warm-up from warmup_lr to base_lr, then x gamma at each milestone (Table 11)."""

    def __init__(self, base_lr: float, warmup_lr: float, warmup_steps: int, milestones: list[int], gamma: float):
        self.base_lr, self.warmup_lr, self.warmup_steps = base_lr, warmup_lr, warmup_steps
        self.milestones, self.gamma = sorted(milestones), gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            lr = self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        else:
            lr = self.base_lr * self.gamma ** sum(step >= m for m in self.milestones)
        return lr / self.base_lr
