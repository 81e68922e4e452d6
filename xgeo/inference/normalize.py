"""Per-band normalisation statistics for inference, and where they come from.

The model was trained on ``(x - mean) / std`` per band after the sensor's value convention (``xgeo.data.stats``),
with the statistics of the Zarr store each tile came from. At inference the same statistics must be used:

- a finetuning run directory stores the statistics of its task's store per input (``model.pt``);
- a pretraining checkpoint does not; they are read from the stores its params name (``paths.zarr`` and the
  pretraining datasets) when those exist, pooled over every store modality of the sensor (count-weighted mean and
  variance, per band);
- or the user gives them: ``stats={"s2": (mean, std)}``, or a Zarr store / JSON file path
  (``{"s2": {"mean": [...], "std": [...]}}``); ``--stats PATH`` on the command line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import DataError
from ..sensors import get_sensor

Stats = dict[str, tuple[np.ndarray, np.ndarray]]  # sensor or input key -> (mean (C,), std (C,)) in band order


def _store_modalities(path: Path) -> list[tuple[str, str, list[str], dict]]:
    """(key, sensor, bands, stats) of each modality of a Zarr store."""
    from ..data.store import open_store

    root = open_store(path)
    out = []
    for key, m in dict(root.attrs.get("modalities") or {}).items():
        st = dict(root[f"{key}/data"].attrs).get("stats") or {}
        if st.get("mean") is not None and st.get("std") is not None:
            out.append((key, m["sensor"], list(m["bands"]), st))
    return out


def pool_stats(sources: Sequence[tuple[list[str], dict]], sensor: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per band of ``sensor``: count-weighted mean and pooled std over sources carrying that band; None if a band
    has no source."""
    names = get_sensor(sensor).band_names
    mean, std = np.zeros(len(names)), np.zeros(len(names))
    for i, band in enumerate(names):
        n = m = sq = 0.0
        for bands, st in sources:
            if band in bands:
                j = bands.index(band)
                count = float(np.asarray(st.get("count", [1.0] * len(bands)))[j]) if st.get("count") is not None else 1.0
                n += count
                m += count * float(st["mean"][j])
                sq += count * (float(st["std"][j]) ** 2 + float(st["mean"][j]) ** 2)
        if n == 0:
            return None
        mean[i] = m / n
        std[i] = np.sqrt(max(sq / n - mean[i] ** 2, 0.0))
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def stats_from_path(path: str | os.PathLike) -> Stats:
    """Per-sensor statistics of a Zarr store (pooled over its modalities of each sensor) or a JSON file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such statistics file or Zarr store")
    if path.is_dir():
        mods = _store_modalities(path)
        out = {}
        for sensor in dict.fromkeys(m[1] for m in mods):
            pooled = pool_stats([(b, st) for _, s, b, st in mods if s == sensor], sensor)
            if pooled is not None:
                out[sensor] = pooled
        return out
    try:
        obj = json.loads(path.read_text())
        return {s: (np.asarray(v["mean"], np.float32), np.asarray(v["std"], np.float32)) for s, v in obj.items()}
    except Exception as exc:
        raise DataError(f"{path}: expected JSON {{sensor: {{mean: [...], std: [...]}}}} ({exc})") from None


def pretraining_stats(params: Mapping | None, roots: Sequence[Path]) -> Stats:
    """Pooled statistics of the pretraining stores named by a checkpoint's params, found under ``roots``."""
    if not params:
        return {}
    datasets = list((params.get("data") or {}).get("pretrain") or [])
    for group in ((params.get("pretrain") or {}).get("groups") or {}).values():
        datasets += [d for d in group.get("datasets", []) if d not in datasets]
    zarr_dir = Path((params.get("paths") or {}).get("zarr", "data/zarr"))
    sources: dict[str, list] = {}
    for ds in datasets:
        for root in roots:
            path = zarr_dir / f"{ds}.zarr" if zarr_dir.is_absolute() else root / zarr_dir / f"{ds}.zarr"
            if path.is_dir():
                for _key, sensor, bands, st in _store_modalities(path):
                    sources.setdefault(sensor, []).append((bands, st))
                break
    out = {}
    for sensor, src in sources.items():
        pooled = pool_stats(src, sensor)
        if pooled is not None:
            out[sensor] = pooled
    return out


def check_stats(stats: tuple[np.ndarray, np.ndarray], n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    mean, std = (np.asarray(a, np.float32).reshape(-1) for a in stats)
    if mean.shape != (n,) or std.shape != (n,):
        raise DataError(f"normalisation statistics of {what}: expected {n} means and stds, found "
                        f"{mean.shape[0]} and {std.shape[0]}")
    return mean, np.where(std == 0, 1.0, std).astype(np.float32)


def normalize(x: np.ndarray, valid: np.ndarray | None, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(C, H, W) float32 after the value convention -> (x - mean) / std; invalid pixels take the mean (-> 0)."""
    x = np.array(x, dtype=np.float32, copy=True)
    m = mean[:, None, None]
    if valid is not None and not valid.all():
        np.copyto(x, np.broadcast_to(m, x.shape), where=~np.broadcast_to(valid, x.shape))
    x -= m
    x /= std[:, None, None]
    return x
