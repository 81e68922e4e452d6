"""Conversion of a dataset's real layout to one Zarr v3 store (layout: docs/ARCHITECTURE.md, "Zarr store").

One streaming pass: the dataset's reader yields tiles; tiles are buffered one shard at a time (``samples_per_shard``)
and appended as a whole shard, so every shard file is written once; per-band statistics accumulate on the way.
The store is built in a temporary folder beside ``out`` and renamed over it only when complete
(``xgeo.io.atomic_path``): a failed conversion leaves the earlier good store, or nothing.

Statistics are those of the train split (normalisation must not see val/test); a store without a train split
uses all its samples. ``<key>/data`` attrs record which (``stats_split``).

Partitioned conversion (``--part K/N``, for a cluster: one job a part): the reader's list of units (files, patches)
is cut into N contiguous ranges; part K converts its range into its own part store ``OUT.parts/K-of-N.zarr``
(atomic, like a store) with its statistics as mergeable moments and histograms (``stats.npz``). ``merge(OUT)``
checks that every part is there and was written with the same settings, concatenates the parts in order by copying
their compressed chunks into new shard files without decoding them (the shard files are byte for byte those of a
single pass; merging costs file I/O only) and merges the statistics (count, mean, std from the parts' moments; min, max exact;
percentiles from the merged histograms: exact for sensors with fixed bins, within one bin for adaptive ones); only
then is OUT renamed into place. A killed part leaves no part store and is rerun alone.

Decoding (JPEG/PNG/TIFF reading, resampling, tiling) runs in ``workers`` processes when ``workers > 1``; the
writer, its compression and the statistics stay in the main process; the order of samples is unchanged.
"""
from __future__ import annotations

import copy
import hashlib
import json
import multiprocessing
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm
from zarr.codecs import ZstdCodec

from ..version import __version__
from ..errors import DataError
from ..io import atomic_path
from ..sensors import SENSORS
from .datasets import get_dataset, label_attrs, plan
from .spec import DatasetSpec, Layout

from .stats import StreamingStats, apply_value_convention

SPLIT_NAMES = ("train", "val", "test")


def _compressors(level: int):
    """zstd at ``level``; level 0: none (tiles stored as raw bytes: no decoding cost in the loader, more disk)."""
    return ZstdCodec(level=level) if level > 0 else None


class _Appender:
    """An (N, *shape) array grown a shard at a time: one chunk per sample, ``per_shard`` samples per shard."""

    def __init__(self, group: zarr.Group, name: str, shape: tuple, dtype, per_shard: int, level: int,
                 attrs: dict | None = None, shard: bool = True):
        self.shape, self.dtype, self.per_shard = tuple(shape), np.dtype(dtype), per_shard
        self.array = group.create_array(
            name, shape=(0, *shape), dtype=self.dtype, chunks=(1, *shape) if shard else (per_shard, *shape),
            shards=(per_shard, *shape) if shard else None, compressors=_compressors(level),
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

    def add(self, sample: dict, stats: bool = True) -> None:
        """Append one sample; ``stats=False`` when its statistics are already counted (merging parts)."""
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
            if stats:
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

    def stats_state(self) -> dict[str, np.ndarray]:
        """The statistics of every modality, mergeable with another part's (``<key>/<train|other>/<field>``)."""
        return {f"{key}/{s}/{name}": arr for key, by in self.stats.items() for s, st in by.items()
                for name, arr in st.state().items()}

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




PARTS_SUFFIX = ".parts"
_STATS_FILE = "stats.npz"


def parts_dir(out: Path) -> Path:
    """Where the part stores of ``out`` lie: ``OUT.parts/``."""
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


def part_path(out: Path, k: int, n: int) -> Path:
    return parts_dir(out) / f"{k}-of-{n}.zarr"


def parse_part(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N), 1 <= K <= N."""
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise DataError(f"--part: expected K/N with integers 1 <= K <= N, found {text!r}") from None
    if not 1 <= k <= n:
        raise DataError(f"--part: expected K/N with 1 <= K <= N, found {text!r}")
    return k, n


def _read_unit(reader, raw: Path, spec: DatasetSpec, params: dict, unit: tuple) -> list[dict]:
    import torch

    torch.set_num_threads(1)  # one decoding process, one thread
    with _gdal_env():
        return list(reader(raw, unit, spec, params))


def _gdal_env():
    """One GDAL environment around many reads: without it every rasterio.open sets one up and tears it down."""
    import rasterio

    return rasterio.Env()


def _samples(layout: Layout, raw: Path, units: list, spec: DatasetSpec, params: dict, workers: int, desc: str):
    """The samples of ``units`` in order; decoded in ``workers`` processes when > 1 (bounded look-ahead)."""
    bar = tqdm(total=len(units), desc=desc, unit="file", mininterval=1.0)
    if workers <= 1 or len(units) < 2:
        with _gdal_env():
            for unit in units:
                yield from layout.read(raw, unit, spec, params)
                bar.update(1)
        bar.close()
        return
    import functools

    fn = functools.partial(_read_unit, layout.read, raw, spec, params)
    window = 8 * workers
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for i in range(0, len(units), window):
            for samples in pool.imap(fn, units[i:i + window], chunksize=2):
                yield from samples
                bar.update(1)
    bar.close()


def _settings(spec: DatasetSpec, params: dict, layout: Layout, units: list, stored: int) -> dict:
    """What two parts of one store must share: dataset, layout, units, tiling and store settings."""
    conv, dp = params["data"]["convert"], params["data"]["datasets"][spec.id]
    return {"dataset": spec.id, "layout": layout.name, "units": len(units),
            "units_sha1": hashlib.sha1(json.dumps(units, default=str).encode()).hexdigest(),
            "tile_size": int(dp["tile_size"]), "stored_tile_size": stored,
            "dataset_params": {k: v for k, v in dp.items() if k not in ("synth", "layout", "split_files")},
            "samples_per_shard": int(conv["samples_per_shard"]), "compression_level": int(conv["compression_level"]),
            "percentiles": list(conv["percentiles"]), "source": params["data"]["source"],
            "seed": int(params.get("seed", 0)), "xgeo_version": __version__}


def convert(dataset: str, raw_dir: Path, out: Path, params: dict, tile_size: int | None = None,
            part: tuple[int, int] | None = None, workers: int | None = None) -> Path:
    """Read ``dataset`` from its layout in ``raw_dir`` and write one Zarr v3 store at ``out`` atomically.

    tile_size overrides ``data.datasets.<dataset>.tile_size``; part=(K, N) writes part K of N to
    ``OUT.parts/K-of-N.zarr`` instead (then :func:`merge`); workers: decoding processes (default
    ``data.convert.workers``, 1 = in this process). Returns the path written. Raises DataError on bad input (no
    store is left half-written; an earlier store at ``out`` survives).
    """
    spec = get_dataset(dataset)
    raw_dir, out = Path(raw_dir), Path(out)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: expected the raw {dataset} folder in its real layout, found no such folder")
    params = copy.deepcopy(params)
    dp = params["data"]["datasets"].setdefault(dataset, {})
    if tile_size is not None:
        dp["tile_size"] = int(tile_size)
    workers = int(params["data"]["convert"].get("workers", 1) if workers is None else workers)
    stored = int(dp.get("resize_to") or dp["tile_size"])
    extra = {"source_tile_size": int(dp["tile_size"])} if stored != int(dp["tile_size"]) else {}
    layout, units = plan(dataset, raw_dir, params)
    extra["layout"] = layout.name
    target, desc = out, f"convert {dataset} ({layout.name})"
    if part is not None:
        k, n = part
        settings = _settings(spec, params, layout, units, stored)
        if len(units) < n:
            raise DataError(f"{raw_dir}: expected at least {n} files to split into {n} parts, found "
                            f"{settings['units']}; choose fewer parts (data.convert.parts.{dataset})")
        units = units[(k - 1) * len(units) // n: k * len(units) // n]
        target, desc = part_path(out, k, n), f"{desc} part {k}/{n}"
        target.parent.mkdir(parents=True, exist_ok=True)
        extra["part"] = {"k": k, "n": n, "settings": settings}
    with atomic_path(target, directory=True) as tmp:
        writer = StoreWriter(tmp, spec, params)
        for sample in _samples(layout, raw_dir, units, spec, params, workers, desc):
            writer.add(sample)
        writer.close(stored, extra)
        if part is not None:
            np.savez(Path(tmp) / _STATS_FILE, **writer.stats_state())
    return target


def _part_stores(out: Path) -> list[tuple[Path, dict]]:
    """(path, attrs) of the parts of ``out``, checked: all N present, one set of settings."""
    folder = parts_dir(out)
    found = sorted(folder.glob("*-of-*.zarr")) if folder.is_dir() else []
    if not found:
        raise DataError(f"{folder}: expected the part stores K-of-N.zarr of 'xgeo data convert --part K/N', "
                        f"found {'no such folder' if not folder.is_dir() else 'none'}")
    parts = {}
    for p in found:
        attrs = dict(zarr.open_group(str(p), mode="r", zarr_format=3).attrs)
        info = attrs.get("part") or {}
        if "k" not in info or not (p / _STATS_FILE).is_file():
            raise DataError(f"{p}: expected a part store written by 'xgeo data convert --part', found another store")
        parts[(int(info["k"]), int(info["n"]))] = (p, attrs)
    ns = sorted({n for _, n in parts})
    if len(ns) != 1:
        raise DataError(f"{folder}: expected the parts of one partition, found parts of {ns} parts "
                        f"({sorted(p.name for p, _ in parts.values())}); remove the stale ones")
    n = ns[0]
    missing = [k for k in range(1, n + 1) if (k, n) not in parts]
    if missing:
        raise DataError(f"{folder}: expected all {n} parts, found part(s) {missing} missing "
                        f"(expected {', '.join(part_path(out, k, n).name for k in missing)}); run "
                        f"'xgeo data convert ... --part K/{n}' for each")
    ordered = [parts[(k, n)] for k in range(1, n + 1)]
    ref = ordered[0][1]["part"]["settings"]
    for p, attrs in ordered[1:]:
        s = attrs["part"]["settings"]
        diff = sorted(key for key in set(ref) | set(s) if ref.get(key) != s.get(key))
        if diff:
            raise DataError(f"{p}: expected the settings of {ordered[0][0].name}, found different "
                            + ", ".join(f"{key} ({ref.get(key)!r} vs {s.get(key)!r})" for key in diff)
                            + "; convert every part with the same params")
    return ordered


class _Filled:
    """An array of the merged store already holding its data (StoreWriter.close only sets its attributes)."""

    def __init__(self, array):
        self.array = array

    def flush(self) -> None:
        pass


def _write_shards(parts: list[Path], name: str, dst: zarr.Array, path: Path, per_shard: int) -> None:
    """Concatenate the parts' compressed chunks of ``name`` into the shard files of ``dst`` (Zarr v3
    sharding_indexed, index at the end + crc32c), without decoding them; the chunks are those a single pass writes."""
    from numcodecs import CRC32C

    from .store import ChunkReader

    readers = [ChunkReader(p, name) for p in parts]
    blobs = (r.raw_chunk(i) for r in readers for i in range(len(r)))
    n = dst.shape[0]
    crc = CRC32C()
    for s in range((n + per_shard - 1) // per_shard):
        index = np.full((per_shard, 2), np.iinfo(np.uint64).max, dtype="<u8")
        body, offset = [], 0
        for j in range(min(per_shard, n - s * per_shard)):
            blob = next(blobs)
            if blob is not None:
                index[j] = (offset, len(blob))
                body.append(blob)
                offset += len(blob)
        if not body:
            continue  # an all-fill shard is not stored
        shard = path / name / "c" / str(s) / Path(*["0"] * (len(dst.shape) - 1))
        shard.parent.mkdir(parents=True, exist_ok=True)
        shard.write_bytes(b"".join(body) + bytes(crc.encode(index.tobytes())))
    for r in readers:
        r.close()


def _concat_array(parts: list[Path], name: str, root: zarr.Group, path: Path, level: int) -> zarr.Array:
    """The arrays ``name`` of the parts, one after the other, in a new array of the merged store with the same
    chunks and shards; sharded arrays are copied chunk by chunk without decoding (:func:`_write_shards`)."""
    from .store import ChunkReader

    src = [zarr.open_array(str(p / name), mode="r") for p in parts]
    first = src[0]
    n = sum(a.shape[0] for a in src)
    dst = root.create_array(name, shape=(n, *first.shape[1:]), dtype=first.dtype, chunks=first.chunks,
                            shards=first.shards, compressors=_compressors(level),
                            attributes=dict(first.attrs), fill_value=0)
    per_shard = ChunkReader(parts[0], name).per_shard
    if first.shards is not None and per_shard is not None and per_shard == first.shards[0]:
        _write_shards(parts, name, dst, path, per_shard)
    else:
        at = 0
        for a in src:
            dst[at:at + a.shape[0]] = a[:]
            at += a.shape[0]
    return dst


def merge(out: Path, params: dict) -> Path:
    """Assemble the parts ``OUT.parts/K-of-N.zarr`` into the store ``out`` (atomically; see the module docstring)."""
    out = Path(out)
    parts = _part_stores(out)
    paths = [p for p, _ in parts]
    first = parts[0][1]
    spec = get_dataset(first["dataset"])
    settings = first["part"]["settings"]
    params = copy.deepcopy(params)
    params["data"]["convert"].update(samples_per_shard=settings["samples_per_shard"],
                                     compression_level=settings["compression_level"],
                                     percentiles=settings["percentiles"])
    params["data"]["source"] = settings["source"]
    level = int(settings["compression_level"])
    with atomic_path(out, directory=True) as tmp:
        writer = StoreWriter(tmp, spec, params)
        roots = [zarr.open_group(str(p), mode="r", zarr_format=3) for p in paths]
        merged: dict[str, dict[str, StreamingStats]] = {}
        for key, mod in tqdm(spec.modalities.items(), desc=f"merge {spec.id}", unit="modality"):
            writer.root.create_group(key)
            arr = _concat_array(paths, f"{key}/data", writer.root, Path(tmp), level)
            arr.attrs.update({k: v for k, v in dict(arr.attrs).items() if k not in ("stats", "stats_split")})
            writer.data[key] = _Filled(arr)
            for r in roots:
                writer.crs[key] += [str(v) for v in r[f"{key}/crs"][:]]
                writer.transform[key] += r[f"{key}/transform"][:].tolist()
            sensor = SENSORS[mod.sensor]
            merged[key] = {}
            for p in paths:
                state = np.load(p / _STATS_FILE)
                for s in ("train", "other"):
                    prefix = f"{key}/{s}/"
                    st = StreamingStats.from_state(sensor, settings["percentiles"],
                                                   {f[len(prefix):]: state[f] for f in state.files if f.startswith(prefix)})
                    if s in merged[key]:
                        merged[key][s].merge(st)
                    else:
                        merged[key][s] = st
        labels = sorted(roots[0]["labels"].array_keys()) if "labels" in roots[0] else []
        if labels:
            writer.root.create_group("labels")
        for name in labels:
            writer.labels[name] = _Filled(_concat_array(paths, f"labels/{name}", writer.root, Path(tmp), level))
        for r in roots:
            writer.ids += [str(v) for v in r["ids"][:]]
            writer.split += r["split"][:].tolist()
        writer.stats = merged
        extra = {k: v for k, v in first.items() if k in ("source_tile_size", "layout")}
        extra["parts"] = len(parts)
        writer.close(int(first["tile_size"]), extra)
    return out
