"""Conversion of a dataset's real layout to one Zarr v3 store (layout: docs/ARCHITECTURE.md, "Zarr store").

One streaming pass: the dataset's reader yields tiles; tiles are buffered one shard at a time (``samples_per_shard``)
and appended as a whole shard, so every shard file is written once; per-band statistics accumulate on the way.
The store is built in a temporary folder beside ``out`` and renamed over it only when complete
(``xgeo.io.atomic_path``): a failed conversion leaves the earlier good store, or nothing.

Statistics are those of the train split (normalisation must not see val/test); a store without a train split
uses all its samples. ``<key>/data`` attrs record which (``stats_split``).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm
from zarr.codecs import ZstdCodec

from .. import __version__
from .datasets import get_dataset, label_attrs, plan
from .spec import DatasetSpec
from ..errors import DataError
from ..io import atomic_path
from ..sensors import SENSORS

from .stats import StreamingStats, apply_value_convention

SPLIT_NAMES = ("train", "val", "test")


class _Appender:
    """An (N, *shape) array grown a shard at a time: one chunk per sample, ``per_shard`` samples per shard."""

    def __init__(self, group: zarr.Group, name: str, shape: tuple, dtype, per_shard: int, level: int,
                 attrs: dict | None = None, shard: bool = True):
        self.shape, self.dtype, self.per_shard = tuple(shape), np.dtype(dtype), per_shard
        self.array = group.create_array(
            name, shape=(0, *shape), dtype=self.dtype, chunks=(1, *shape) if shard else (per_shard, *shape),
            shards=(per_shard, *shape) if shard else None, compressors=ZstdCodec(level=level),
            attributes=attrs or {}, fill_value=0)
        self.buffer: list[np.ndarray] = []
        self.n = 0

    def append(self, x: np.ndarray) -> None:
        self.buffer.append(x)
        if len(self.buffer) == self.per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        block = np.stack(self.buffer)
        self.array.resize((self.n + len(block), *self.shape))
        self.array[self.n:self.n + len(block)] = block
        self.n += len(block)
        self.buffer = []


class StoreWriter:
    """Writes samples of one dataset (as yielded by ``xgeo.data.readers``) into a new Zarr group at ``path``."""

    def __init__(self, path: Path, spec: DatasetSpec, params: dict):
        self.path, self.spec, self.params = Path(path), spec, params
        conv = params["data"]["convert"]
        self.per_shard = int(conv["samples_per_shard"])
        self.level = int(conv["compression_level"])
        self.percentiles = tuple(conv["percentiles"])
        self.root = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        self.data: dict[str, _Appender] = {}
        self.labels: dict[str, _Appender] = {}
        self.stats: dict[str, dict[str, StreamingStats]] = {}
        self.ids: list[str] = []
        self.seen: set[str] = set()
        self.split: list[int] = []
        self.crs: dict[str, list[str]] = {k: [] for k in spec.modalities}
        self.transform: dict[str, list] = {k: [] for k in spec.modalities}
        self.label_info = label_attrs(spec)

    def _start(self, sample: dict) -> None:
        for key, mod in self.spec.modalities.items():
            sensor = SENSORS[mod.sensor]
            data = sample["modalities"][key].data
            if data.dtype != np.dtype(sensor.dtype):
                raise DataError(f"sample {sample['id']} ({key}): expected dtype {sensor.dtype} of sensor {sensor.name}, "
                                f"found {data.dtype}")
            attrs = {"sensor": sensor.name, "bands": list(mod.bands), "dtype": sensor.dtype, "nodata": sensor.nodata}
            self.root.create_group(key)
            self.data[key] = _Appender(self.root, f"{key}/data", data.shape, data.dtype, self.per_shard, self.level, attrs)
            self.stats[key] = {s: StreamingStats(sensor, data.shape[0], self.percentiles) for s in ("train", "other")}
        if sample["labels"]:
            self.root.create_group("labels")
        for name, value in sample["labels"].items():
            info = self.label_info.get(name, {"class_names": [], "ignore_index": None})
            per_pixel = value.ndim >= 2
            self.labels[name] = _Appender(self.root, f"labels/{name}", value.shape, value.dtype, self.per_shard,
                                          self.level, dict(info), shard=per_pixel)

    def add(self, sample: dict) -> None:
        sid = sample["id"]
        if set(sample["modalities"]) != set(self.spec.modalities):
            raise DataError(f"sample {sid}: expected modalities {sorted(self.spec.modalities)}, "
                            f"found {sorted(sample['modalities'])}")
        if sid in self.seen:
            raise DataError(f"sample {sid}: expected unique sample ids, found a duplicate")
        if not self.ids:
            self._start(sample)
        if set(sample["labels"]) != set(self.labels):
            raise DataError(f"sample {sid}: expected labels {sorted(self.labels)}, found {sorted(sample['labels'])}")
        for key, tile in sample["modalities"].items():
            app = self.data[key]
            if tile.data.shape != app.shape or tile.data.dtype != app.dtype:
                raise DataError(f"sample {sid} ({key}): expected {app.dtype} {app.shape} like the first sample, "
                                f"found {tile.data.dtype} {tile.data.shape}")
            app.append(tile.data)
            sensor = SENSORS[self.spec.modalities[key].sensor]
            x, valid = apply_value_convention(tile.data, sensor)
            # without any train tile the "other" statistics are those of all tiles (see the module docstring)
            self.stats[key]["train" if sample["split"] == "train" else "other"].update(x, valid)
            self.crs[key].append(tile.crs)
            self.transform[key].append(tile.transform)
        for name, value in sample["labels"].items():
            app = self.labels[name]
            if value.shape != app.shape:
                raise DataError(f"sample {sid} (labels/{name}): expected shape {app.shape}, found {value.shape}")
            app.append(np.asarray(value, dtype=app.dtype))
        self.ids.append(sid)
        self.seen.add(sid)
        self.split.append(SPLIT_NAMES.index(sample["split"]))

    def _strings(self, name: str, values: list[str]) -> None:
        # variable-length UTF-8 (zarr's "string" dtype); fixed-width numpy unicode has no Zarr v3 spec
        arr = self.root.create_array(name, shape=(len(values),), dtype=str, compressors=ZstdCodec(level=self.level))
        arr[:] = np.array(values, dtype=object)

    def close(self, tile_size: int, extra_attrs: dict) -> None:
        if not self.ids:
            raise DataError(f"{self.spec.id}: expected at least one tile from the raw data, found none")
        n = len(self.ids)
        self._strings("ids", self.ids)
        self.root.create_array("split", data=np.array(self.split, dtype=np.uint8))
        for key, app in self.data.items():
            app.flush()
            self._strings(f"{key}/crs", self.crs[key])
            self.root.create_array(f"{key}/transform", data=np.array(self.transform[key], dtype=np.float64).reshape(n, 6))
            has_train = self.stats[key]["train"].count.sum() > 0
            attrs = dict(app.array.attrs)
            attrs["stats"] = self.stats[key]["train" if has_train else "other"].result()
            attrs["stats_split"] = "train" if has_train else "all"
            app.array.attrs.update(_json_safe(attrs))
        for app in self.labels.values():
            app.flush()
        counts = np.bincount(np.array(self.split), minlength=len(SPLIT_NAMES))
        self.root.attrs.update(_json_safe({
            "dataset": self.spec.id, "title": self.spec.title, "source": self.params["data"]["source"],
            "task": self.spec.task, "tile_size": tile_size,
            "modalities": {k: {"sensor": m.sensor, "bands": list(m.bands)} for k, m in self.spec.modalities.items()},
            "pairs": [list(p) for p in self.spec.pairs], "split_names": list(SPLIT_NAMES),
            "splits": {s: int(c) for s, c in zip(SPLIT_NAMES, counts)}, "xgeo_version": __version__, **extra_attrs,
        }))


def _json_safe(obj):
    """NaN/inf are not JSON: store them as None."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def convert(dataset: str, raw_dir: Path, out: Path, params: dict, tile_size: int | None = None) -> None:
    """Read ``dataset`` from its real layout in ``raw_dir`` and write one Zarr v3 store at ``out`` atomically.

    tile_size overrides ``data.datasets.<dataset>.tile_size``. Raises DataError on bad input (no store is left
    half-written; an earlier store at ``out`` survives).
    """
    spec = get_dataset(dataset)
    raw_dir, out = Path(raw_dir), Path(out)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: expected the raw {dataset} folder in its real layout, found no such folder")
    params = copy.deepcopy(params)
    dp = params["data"]["datasets"].setdefault(dataset, {})
    if tile_size is not None:
        dp["tile_size"] = int(tile_size)
    stored = int(dp.get("resize_to") or dp["tile_size"])
    extra = {"source_tile_size": int(dp["tile_size"])} if stored != int(dp["tile_size"]) else {}
    layout, units = plan(dataset, raw_dir, params)
    extra["layout"] = layout.name
    with atomic_path(out, directory=True) as tmp:
        writer = StoreWriter(tmp, spec, params)
        for unit in tqdm(units, desc=f"convert {dataset} ({layout.name})", unit="file", mininterval=1.0):
            for sample in layout.read(raw_dir, unit, spec, params):
                writer.add(sample)
        writer.close(stored, extra)
