"""The registry of downstream tasks: each task's class lives in a module of its own and imports its base from
:mod:`xgeo.finetune.base`; this module imports the members and nothing imports it back from them."""
from __future__ import annotations

from typing import Mapping

from ..errors import XGeoError
from . import bigearthnet, change, sen12ms_cr, spacenet2, vaihingen, whu
from .base import FinetuneNet, InputSpec, Task, task_settings

__all__ = ["TASKS", "FinetuneNet", "InputSpec", "Task", "get_task", "task_settings"]

CLASSES: dict[str, type[Task]] = {
    "bigearthnet": bigearthnet.BigEarthNet, "vaihingen": vaihingen.Vaihingen, "sen12ms-cr": sen12ms_cr.Sen12msCR,
    "spacenet2": spacenet2.SpaceNet2,
    "oscd": change.OSCD, "dsifn": change.DSIFN, "whu": whu.WHU,  # the appendix suite (Tables 8 and 9)
}
TASKS = tuple(CLASSES)


def get_task(name: str, params: Mapping) -> Task:
    """The task object of ``name`` (one of :data:`TASKS`)."""
    if name not in CLASSES:
        raise XGeoError(f"unknown finetuning task {name!r}; expected one of {list(CLASSES)}")
    return CLASSES[name](params, task_settings(params, name))
