"""Reading a store written by ``xgeo.data.convert``: open helpers, a fast per-sample chunk reader, ``info``.

:class:`ChunkReader` reads sample ``i`` of a ``(N, ...)`` array straight from its shard file: the shard index
(at the end of the shard) gives the chunk's byte range, which is read with one ``pread`` and zstd-decoded. This is
the Zarr v3 ``sharding_indexed`` format exactly as convert writes it (checked against ``zarr.json`` on open; any
other codec chain falls back to zarr's own reader), and skips zarr's per-call async machinery, which costs more
than the read itself for small tiles (see benchmarks/README.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import zarr

from ..errors import DataError

SMALL_ARRAY_BYTES = 16 * 2**20
MAX_OPEN_SHARDS = 64
_EMPTY = np.uint64(2**64 - 1)  # shard index entry of a chunk that was never written


def open_store(path: str | os.PathLike) -> zarr.Group:
    """Open an xgeo Zarr store read-only (DataError when missing or not an xgeo store)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise DataError(f"{path}: expected a Zarr v3 store written by 'xgeo data convert', found "
                        f"{'no such folder' if not path.exists() else 'no zarr.json'}")
    try:
        root = zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise DataError(f"{path}: expected a readable Zarr v3 group, found {exc!r}") from None
    if "dataset" not in root.attrs:
        raise DataError(f"{path}: expected the attrs of an xgeo store (dataset, modalities, ...), found "
                        f"{sorted(root.attrs)}")
    return root


class ChunkReader:
    """Per-sample reads of one array of a store: ``reader[i] -> ndarray (*array.shape[1:])``.

    Fast path for arrays with one chunk per sample inside shards (bytes little-endian [+ zstd]; index at the end with
    crc32c); zarr's reader otherwise. Picklable: file handles and caches are per process.
    """

    def __init__(self, store: str | os.PathLike, name: str):
        self.store, self.name = Path(store), name
        meta_path = self.store / name / "zarr.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{meta_path}: expected Zarr v3 array metadata, found {exc!r}") from None
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]) if isinstance(meta["data_type"], str) else None
        self.fill_value = meta.get("fill_value", 0)
        self.per_shard = self._fast_layout(meta)
        self._index: dict[int, np.ndarray] = {}
        self._fds: dict[int, int] = {}  # shard -> open file descriptor, in least-recently-used order
        self._pid = os.getpid()  # descriptors belong to the process that opened them
        self._array = None
        self._zstd = None

    def _fast_layout(self, meta: dict) -> int | None:
        """Samples per shard when the array has the layout convert writes, else None (use zarr)."""
        try:
            (codec,) = meta["codecs"]
            cfg = codec["configuration"]
            inner = [c["name"] for c in cfg["codecs"]]
            ok = (codec["name"] == "sharding_indexed" and cfg["index_location"] == "end"
                  and inner in (["bytes", "zstd"], ["bytes"]) and cfg["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
                  and [c["name"] for c in cfg["index_codecs"]] == ["bytes", "crc32c"]
                  and cfg["chunk_shape"] == [1, *self.shape[1:]]
                  and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
                  and self.dtype is not None and self.dtype.kind in "biuf")
            shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
            ok = ok and list(shard[1:]) == list(self.shape[1:])
            self._compressed = len(inner) == 2
            return int(shard[0]) if ok else None
        except (KeyError, TypeError, ValueError):
            return None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):
        return {**self.__dict__, "_index": {}, "_fds": {}, "_pid": None, "_array": None, "_zstd": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _fd(self, s: int) -> int:
        """An open descriptor of shard ``s``; at most MAX_OPEN_SHARDS stay open (oldest closed first)."""
        fd = self._fds.pop(s, None)
        if fd is None:
            path = self._shard_path(s)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise DataError(f"{path}: expected shard {s} of {self.store / self.name}, found {exc.strerror}") from None
            if len(self._fds) >= MAX_OPEN_SHARDS:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[s] = fd  # re-inserted: most recently used last
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            self.close()

    def _shard_path(self, s: int) -> Path:
        return self.store / self.name / "c" / str(s) / Path(*["0"] * (len(self.shape) - 1))

    def raw_chunk(self, i: int) -> bytes | None:
        """The stored (compressed) bytes of sample ``i``'s chunk, or None when it was never written (all fill value).
        Fast layout only (``per_shard`` not None)."""
        s, j = divmod(int(i), self.per_shard)
        fd = self._fd(s)
        index = self._shard_index(s, fd)
        offset, length = index[j]
        return None if offset == _EMPTY else os.pread(fd, int(length), int(offset))

    def _shard_index(self, s: int, fd: int) -> np.ndarray:
        index = self._index.get(s)
        if index is None:
            nbytes = 16 * self.per_shard + 4
            size = os.fstat(fd).st_size
            index = np.frombuffer(os.pread(fd, nbytes, size - nbytes)[:-4], dtype="<u8").reshape(-1, 2)
            self._index[s] = index
        return index

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"{self.store}/{self.name}: index {i} out of range (0..{self.shape[0] - 1})")
        if self.per_shard is None:
            if self._array is None:
                arr = zarr.open_array(str(self.store / self.name), mode="r")
                # small arrays (e.g. multi-label targets) are read once; large ones per sample through zarr
                self._array = arr[:] if arr.nbytes <= SMALL_ARRAY_BYTES else arr
            return np.asarray(self._array[i])
        s, j = divmod(i, self.per_shard)
        fd = self._fd(s)
        offset, length = self._shard_index(s, fd)[j]
        if offset == _EMPTY:
            return np.full(self.shape[1:], self.fill_value, dtype=self.dtype)
        raw = os.pread(fd, int(length), int(offset))
        if not self._compressed:
            return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape[1:])
        if self._zstd is None:
            from numcodecs import Zstd

            self._zstd = Zstd()
        return np.frombuffer(self._zstd.decode(raw), dtype=self.dtype).reshape(self.shape[1:])


def _shape_str(shape) -> str:
    return " x ".join(str(s) for s in shape)


def store_info(path: str | os.PathLike) -> dict:
    """Samples per split; per modality sensor, shape, dtype, chunks, shards, bands and per-band stats; labels."""
    root = open_store(path)
    attrs = dict(root.attrs)
    info = {"path": str(path), "dataset": attrs["dataset"], "title": attrs.get("title"), "source": attrs.get("source"),
            "task": attrs.get("task"), "tile_size": attrs.get("tile_size"), "samples": int(root["ids"].shape[0]),
            "layout": attrs.get("layout"), "parts": attrs.get("parts"),
            "splits": attrs.get("splits", {}), "pairs": attrs.get("pairs", []), "modalities": {}, "labels": {}}
    for key in attrs["modalities"]:
        arr = root[f"{key}/data"]
        a = dict(arr.attrs)
        info["modalities"][key] = {
            "sensor": a.get("sensor"), "bands": a.get("bands"), "shape": list(arr.shape), "dtype": str(arr.dtype),
            "chunks": list(arr.chunks), "shards": list(arr.shards) if arr.shards else None,
            "nodata": a.get("nodata"), "stats_split": a.get("stats_split"), "stats": a.get("stats", {}),
        }
    if "labels" in root:
        for name, arr in root["labels"].arrays():
            a = dict(arr.attrs)
            info["labels"][name] = {"shape": list(arr.shape), "dtype": str(arr.dtype),
                                    "class_names": a.get("class_names", []), "ignore_index": a.get("ignore_index")}
    return info


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def format_info(info: dict) -> str:
    """A readable summary of :func:`store_info`: header, splits, then one table of band statistics per modality."""
    lines = [f"{info['path']}: {info['dataset']} ({info['title']})",
             f"source {info['source']} ({info.get('layout') or '-'} layout"
             + (f", merged from {info['parts']} parts" if info.get("parts") else "") + "), "
             f"task {info['task'] or '-'}, tile {info['tile_size']} px, "
             f"{info['samples']} samples: " + ", ".join(f"{s} {n}" for s, n in info["splits"].items())]
    if info["pairs"]:
        lines.append("pairs: " + ", ".join(" + ".join(p) for p in info["pairs"]))
    cols = ("band", "count", "mean", "std", "min", "max", "p1", "p99")
    for key, m in info["modalities"].items():
        lines.append("")
        lines.append(f"[{key}] sensor {m['sensor']}, {m['dtype']} {_shape_str(m['shape'])}, chunk "
                     f"{_shape_str(m['chunks'])}, shard {_shape_str(m['shards']) if m['shards'] else '-'}, "
                     f"stats of {m['stats_split']}")
        st = m["stats"]
        rows = [cols] + [tuple([b] + [_num(st.get(c, [None] * len(m["bands"]))[i]) for c in cols[1:]])
                         for i, b in enumerate(m["bands"])]
        widths = [max(len(r[j]) for r in rows) for j in range(len(cols))]
        for r in rows:
            lines.append("  " + "  ".join(v.rjust(w) for v, w in zip(r, widths)))
    for name, lab in info["labels"].items():
        lines.append("")
        lines.append(f"[labels/{name}] {lab['dtype']} {_shape_str(lab['shape'])}, {len(lab['class_names'])} classes"
                     + (f", ignore {lab['ignore_index']}" if lab["ignore_index"] is not None else ""))
        if lab["class_names"]:
            lines.append("  " + ", ".join(lab["class_names"]))
    return "\n".join(lines)
