"""The pretraining groups a run actually reads: ``pretrain.groups`` restricted to the sensors of ``model.sensors``.

A modality-subset pretraining (Table 10, Figure 3: S1 only, S2 only, no RGB) is then one override,
``model.sensors: [s1]``: every group keeps the modalities whose sensor the model has, a group left with none is
dropped, and a co-located pair with one side dropped no longer counts as a pair. A group that names its
``modalities`` explicitly keeps exactly those. Light on imports: the Snakefile calls it to list a run's stores.
"""
from __future__ import annotations

import copy
from typing import Mapping

from ..catalog import get_dataset
from ..errors import XGeoError


def effective_groups(params: Mapping) -> dict[str, dict]:
    """``pretrain.groups`` with each group's ``modalities`` set to what the model's sensors can read."""
    sensors = set(params["model"]["sensors"])
    groups = params["pretrain"]["groups"]
    out: dict[str, dict] = {}
    for name, conf in groups.items():
        conf = copy.deepcopy(dict(conf))
        if conf.get("modalities"):
            out[name] = conf
            continue
        keys = None
        for ds in conf["datasets"]:
            mods = get_dataset(ds).modalities
            kept = [k for k, m in mods.items() if m.sensor in sensors]
            keys = kept if keys is None else [k for k in keys if k in kept]
            if len(kept) < len(mods):
                conf["modalities"] = keys
        if keys:
            if "modalities" in conf:
                conf["modalities"] = keys
            out[name] = conf
    if not out:
        listed = ", ".join(f"{g}: {c['datasets']}" for g, c in groups.items())
        raise XGeoError(f"params: no pretraining group reads any of model.sensors {sorted(sensors)} (groups: {listed})")
    return out
