"""PyTorch Dataset over a Zarr store written by ``xgeo.data.convert`` (contract: docs/ARCHITECTURE.md, "Dataset").

``ds[i] -> {"<key>": float32 (C, H, W), "labels/<name>": tensor, "index": int}`` where ``index`` is the sample's
index in the store (``ds.sample_id(i)`` gives its id). Values follow the sensor's value convention (SAR: NaN ->
nan_value; clip to valid_range), then, when ``normalize``, ``(x - mean) / std`` per band with the store's
statistics; pixels the convention marks invalid (a sensor's nodata, e.g. DSM -9999) become the band mean (0 after
normalisation). Labels: ``multilabel`` as float32 (C,) (for BCE), per-pixel masks as int64 (H, W).

Validity (``valid=``): ``"valid/<key>"`` bool (H, W), True where the pixel holds data: computed from the stored raw
values (before the convention and normalisation), False where every band equals the modality's nodata value (the
sensor's, recorded by convert in ``<key>/data`` attrs ``nodata``; e.g. WorldView-3 DN 0 on SpaceNet 2's zero-filled
borders; or a value given per key, e.g. Sentinel-2 L1C's NODATA 0 in SEN12MS-CR) or any band is not finite. Every
band, not any: the nodata of these products is a zero-filled area, and one band at 0 can be a value (Sentinel-2 B10,
cirrus, over clear sky). The metrics use it to leave nodata pixels out (``xgeo.metrics.ImageMeter``).

Only plain metadata is read in ``__init__``; file handles open lazily in the process that reads (each DataLoader
worker opens its own), so the dataset works with any ``num_workers``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..sensors import SENSORS
from .stats import apply_value_convention
from .store import ChunkReader, open_store


class ZarrDataset(torch.utils.data.Dataset):
    """Samples of one store.

    path: the store; modalities: keys to return (default: all of the store's); split: "train" | "val" | "test" |
    None (all); indices: store indices to use (default: every sample of ``split``; each must lie in ``split``
    when both are given); labels: label names to return (e.g. ("multilabel",)); normalize: see the module doc;
    augment: callable applied to the finished sample dict; crop: callable applied first to the native tiles
    ``{key: ndarray (C, H, W)}`` (e.g. a RandomResizedCrop's window, the same for a co-located pair), so that the
    value convention and normalisation run on the crop only (resize it in ``augment``); raw: return the tiles in
    their native dtype, untouched (value convention, crop and normalisation then run on the training device:
    ``xgeo.data.device.crop_normalize``); valid: modality keys whose validity mask to return (see the module doc),
    a sequence (the store's recorded nodata) or a mapping key -> nodata value (None: the store's).
    """

    def __init__(self, path: str | os.PathLike, modalities: Sequence[str] | None = None, split: str | None = "train",
                 indices: Sequence[int] | None = None, labels: Sequence[str] = (), normalize: bool = True,
                 augment: Callable[[dict], dict] | None = None,
                 crop: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None, raw: bool = False,
                 valid: Sequence[str] | Mapping[str, float | None] = ()):
        self.path = Path(path)
        root = open_store(self.path)
        attrs = dict(root.attrs)
        available = attrs["modalities"]
        keys = list(available) if modalities is None else list(modalities)
        for k in keys:
            if k not in available:
                raise DataError(f"{self.path}: expected a modality among {list(available)}, found request {k!r}")
        label_names = sorted(root["labels"].array_keys()) if "labels" in root else []
        for name in labels:
            if name not in label_names:
                raise DataError(f"{self.path}: expected a label among {label_names}, found request {name!r}")
        self.keys, self.label_names = keys, list(labels)
        self.modalities = {k: {"sensor": available[k]["sensor"], "bands": list(available[k]["bands"])} for k in keys}
        self.split_names = list(attrs["split_names"])
        split_codes = root["split"][:]
        if split is not None and split not in self.split_names:
            raise DataError(f"{self.path}: expected a split among {self.split_names}, found {split!r}")
        in_split = (np.arange(len(split_codes)) if split is None
                    else np.flatnonzero(split_codes == self.split_names.index(split)))
        if indices is None:
            self.indices = in_split
        else:
            self.indices = np.asarray(indices, dtype=np.int64)
            outside = np.setdiff1d(self.indices, in_split)
            if outside.size:
                raise DataError(f"{self.path}: expected indices of split {split!r}, found {outside.size} outside it "
                                f"(e.g. {outside[:3].tolist()})")
        self.split = split
        self._ids = root["ids"]  # resolved to a numpy array on first use of sample_id
        self._mean, self._std, self._sensor = {}, {}, {}
        for k in keys:
            st = dict(root[f"{k}/data"].attrs).get("stats") or {}
            if not st.get("mean"):
                raise DataError(f"{self.path}/{k}/data: expected attrs.stats with mean and std, found none")
            mean = np.array([np.nan if v is None else v for v in st["mean"]], dtype=np.float64)
            std = np.array([np.nan if v is None else v for v in st["std"]], dtype=np.float64)
            # a band with no valid pixel or no variance is only centred
            self._mean[k] = np.nan_to_num(mean, nan=0.0).astype(np.float32)
            self._std[k] = np.where(np.isfinite(std) & (std > 0), std, 1.0).astype(np.float32)
            self._sensor[k] = SENSORS[available[k]["sensor"]]
        self.normalize, self.augment, self.crop, self.raw = normalize, augment, crop, raw
        wanted = dict(valid) if isinstance(valid, Mapping) else {k: None for k in valid}
        self.nodata: dict[str, float | None] = {}  # key -> the nodata value its validity mask uses
        for k, value in wanted.items():
            if k not in keys:
                raise DataError(f"{self.path}: expected a validity request among the modalities read {keys}, "
                                f"found {k!r}")
            self.nodata[k] = value if value is not None else dict(root[f"{k}/data"].attrs).get("nodata")
        self._readers: dict[str, ChunkReader] | None = None
        self._pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_readers"], state["_pid"], state["_ids"] = None, None, None
        return state

    def _open(self) -> dict[str, ChunkReader]:
        if self._readers is None or self._pid != os.getpid():
            names = [f"{k}/data" for k in self.keys] + [f"labels/{n}" for n in self.label_names]
            self._readers = {n: ChunkReader(self.path, n) for n in names}
            self._pid = os.getpid()
        return self._readers

    def __len__(self) -> int:
        return len(self.indices)

    def sample_id(self, i: int) -> str:
        if self._ids is None or not isinstance(self._ids, np.ndarray):
            self._ids = np.asarray(open_store(self.path)["ids"][:])
        return str(self._ids[self.indices[i]])

    def stats(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean (C,), std (C,)) float32 used to normalise modality ``key`` (std 1 where the store's is 0)."""
        return self._mean[key].copy(), self._std[key].copy()

    def denormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Invert the normalisation: x (..., C, H, W) -> x * std + mean, in the sensor's units."""
        mean = torch.as_tensor(self._mean[key], dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.as_tensor(self._std[key], dtype=x.dtype, device=x.device)[:, None, None]
        return x * std + mean

    def load(self, key: str, raw: np.ndarray) -> torch.Tensor:
        """Value convention (+ normalisation) of one native tile (C, H, W) -> float32 tensor (C, H, W)."""
        x, valid = apply_value_convention(raw, self._sensor[key])  # a fresh float32 array: edited in place
        mean = self._mean[key][:, None, None]
        if valid is not None:
            np.copyto(x, np.broadcast_to(mean, x.shape), where=~valid)
        if self.normalize:
            x -= mean
            x /= self._std[key][:, None, None]
        return torch.from_numpy(x)

    def __getitem__(self, i: int) -> dict:
        idx = int(self.indices[i])
        readers = self._open()
        out: dict = {}
        raw = {k: readers[f"{k}/data"][idx] for k in self.keys}
        if self.crop is not None:
            raw = self.crop(raw)
        for k in self.keys:
            out[k] = torch.from_numpy(raw[k].copy()) if self.raw else self.load(k, raw[k])
        for k, nodata in self.nodata.items():
            out[f"valid/{k}"] = torch.from_numpy(valid_pixels(raw[k], nodata))
        for name in self.label_names:
            y = readers[f"labels/{name}"][idx]
            out[f"labels/{name}"] = torch.from_numpy(y.astype(np.float32 if y.ndim == 1 else np.int64))
        out["index"] = idx
        if self.augment is not None:
            out = self.augment(out)
        return out


def valid_pixels(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """Stored tile (C, H, W) -> bool (H, W): False where every band equals ``nodata`` or any band is not finite."""
    bad = np.zeros(raw.shape[-2:], dtype=bool)
    if nodata is not None:
        bad |= (raw == nodata).all(axis=0)
    if np.issubdtype(raw.dtype, np.floating):
        bad |= ~np.isfinite(raw).all(axis=0)
    return ~bad
