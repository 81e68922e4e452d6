"""SEN12MS: 180,662 co-located Sentinel-1 / Sentinel-2 / MODIS land-cover patch triplets (256 x 256 px at 10 m),
spread over the land masses of the Earth and the four meteorological seasons.

Bands: Sentinel-1 VV, VH (sigma nought, dB, float32); Sentinel-2 L1C, all 13 bands (uint16). Used for pretraining
(the s1-s2 pair is a cross-sensor pair); the land-cover (lc) files are not read.

Layouts (detected; ``--layout`` when ambiguous; split lists may also be given by path, ``--split-file train=PATH``):

* ``original``: ``ROIs{season}/{s1,s2,lc}_<scene>/ROIs{season}_{kind}_<scene>_p<n>.tif`` with the split lists of the
  authors' repository in ``splits/{train,test}_list.txt`` (what ``xgeo data download`` writes);
* ``torchgeo``: the same image folders with ``train_list.txt`` and ``test_list.txt`` at the root (TorchGeo's
  ``SEN12MS`` root).

Citation: Schmitt et al., SEN12MS - a curated dataset of georeferenced multi-spectral Sentinel-1/2 imagery for deep
learning and data fusion, ISPRS Annals IV-2/W7, 2019.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import DataError
from ..raster import check_pair, cut_tiles, dataset_params, nbands, read_raster
from ..sink import Sink, patch_grid, season_greenness, sen12ms_scene, utm
from ..spec import DatasetSpec, Layout, Source, modality, split_file

SEASONS = ("1158_spring", "1868_summer", "1970_fall", "2017_winter")
_MD5 = {
    "lc": ("6e2e8fa8b8cba77ddab49fd20ff5c37b", "2c5bd80244440b6f9d54957c6b1f23d4", "9b126a68b0e3af260071b3139cb57cee", "0fa0420ef7bcfe4387c7e6fe226dc728"),
    "s1": ("fba019bb27a08c1db96b31f718c34d79", "01044b7f58d33570c6b57fec28a3d449", "19132e0aab9d4d6862fd42e8e6760847", "bb8cbfc16b95a4f054a3d5380e0130ed"),
    "s2": ("d58af2c15a16f376eb3308dc9b685af2", "4dbaf72ecb704a4794036fe691427ff3", "b8f117818878da86b5f5e06400eb1866", "3807545661288dcca312c9c538537b63"),
}
_SPLITS_URL = "https://raw.githubusercontent.com/schmitt-muc/SEN12MS/3a41236a28d08d253ebe2fa1a081e5e32aa7eab4/splits/"

SPEC = DatasetSpec(
    id="sen12ms", title="SEN12MS (180,662 co-located Sentinel-1 / Sentinel-2 / land-cover triplets)",
    citation="Schmitt et al., SEN12MS, ISPRS Annals IV-2/W7, 2019",
    role="pretrain", task=None,
    modalities={"s1": modality("s1"), "s2": modality("s2")}, pairs=(("s1", "s2"),),
    sources=tuple(
        Source(f"https://dataserv.ub.tum.de/s/m1474000/download?path=/&files=ROIs{season}_{kind}.tar.gz",
               f"ROIs{season}_{kind}.tar.gz", _MD5[kind][i])
        for kind in ("s1", "s2") for i, season in enumerate(SEASONS)
    ) + (
        Source(_SPLITS_URL + "train_list.txt", "splits/train_list.txt", "0a68d4e1eb24f128fccdb930000b2546", extract=False),
        Source(_SPLITS_URL + "test_list.txt", "splits/test_list.txt", "c7faad064001e646445c4c634169484d", extract=False),
    ),
    layout="ROIs{season}/{s1,s2}_<scene>/ROIs{season}_{s1,s2}_<scene>_p<n>.tif; the s1 pair of an s2 file swaps _s2_ for _s1_",
    splits="splits/train_list.txt and splits/test_list.txt list s2 file names (pretraining uses both)",
    license="CC-BY-4.0",
    extra={"seasons": SEASONS, "lc_md5": _MD5["lc"]},
)

_NAME = re.compile(r"^(ROIs\d+_[a-z]+)_s2_(\w+?)_p(\d+)\.tif$")
_LISTS = {"original": "splits/{split}_list.txt", "torchgeo": "{split}_list.txt"}


# ----------------------------------------------------------------------------------------------------- readers
def _split_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: expected a split list (one s2 file name per line), found no such file")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _planner(layout: str):
    def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
        """(split, s2 path, s1 path) of every s2 file the split lists name, each checked to exist."""
        units = []
        for split in ("train", "test"):
            lst = split_file(raw, params, spec.id, split, _LISTS[layout].format(split=split))
            for name in _split_list(lst):
                m = _NAME.match(name)
                if m is None:
                    raise DataError(f"{lst}: expected s2 file names like ROIs1158_spring_s2_1_p30.tif, found {name!r}")
                season, scene = m.group(1), m.group(2)
                p2 = f"{season}/s2_{scene}/{name}"
                if not (raw / p2).is_file():
                    raise DataError(f"{lst}: names {name!r}, expected at {raw / p2} (layout {layout}), "
                                    f"found no such file")
                units.append((split, p2, f"{season}/s1_{scene}/{name.replace('_s2_', '_s1_')}"))
        return units

    return plan


def read_patch(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    """One s2 patch and its s1 pair, cut into tiles of tile_size."""
    split, rel2, rel1 = unit
    tile = int(dataset_params(params, spec.id)["tile_size"])
    p2, p1 = raw / rel2, raw / rel1
    s2 = read_raster(p2, nbands(spec, "s2"), "Sentinel-2")
    s1 = read_raster(p1, nbands(spec, "s1"), "Sentinel-1")
    check_pair(p2, s2, p1, s1)
    for suffix, tiles in cut_tiles({"s1": p1, "s2": p2}, {"s1": s1, "s2": s2}, tile):
        yield {"id": f"{p2.stem}_{suffix}", "split": split, "modalities": tiles, "labels": {}}


LAYOUTS = {
    name: Layout(name, f"ROIs<season>/s2_<scene>/*.tif with {pattern.format(split='{train,test}')}",
                 expects=("ROIs*/s2_*",), split_lists=tuple(pattern.format(split=s) for s in ("train", "test")),
                 plan=_planner(name), read=read_patch)
    for name, pattern in _LISTS.items()
}


# ------------------------------------------------------------------------------------------------- synthetic copy
def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """ROIs{season}/{s1,s2,lc}_<scene>/ROIs{season}_{s1,s2,lc}_<scene>_p<n>.tif + splits/{train,test}_list.txt."""
    size, n_patches, n_scenes = int(cfg["size"]), int(cfg["patches_per_scene"]), int(cfg["scenes_per_season"])
    stride = size // 2  # SEN12MS patches overlap by half
    rows, cols, shape = patch_grid(n_patches, size, stride)
    seasons = spec.extra["seasons"]
    sink.expect(len(seasons) * n_scenes * rows * cols * 3 + 2)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    k_scene = 0
    for season in seasons:
        for scene_id in np.sort(rng.choice(np.arange(1, 150), size=n_scenes, replace=False)):
            split = "test" if k_scene % 4 == 3 else "train"  # whole scenes go to one split
            k_scene += 1
            for p, files, transform, zone in sen12ms_scene(rng, rows, cols, shape, size, stride,
                                                           season_greenness(season), nan_edges=True):
                for kind in ("s1", "s2", "lc"):
                    name = f"ROIs{season}_{kind}_{scene_id}_p{p}.tif"
                    sink.tif(f"ROIs{season}/{kind}_{scene_id}/{name}", files[kind], utm(zone), transform)
                lists[split].append(f"ROIs{season}_s2_{scene_id}_p{p}.tif")
    for split, names in lists.items():
        sink.text(f"splits/{split}_list.txt", "".join(n + "\n" for n in names))


def to_torchgeo(root: Path) -> None:
    """Re-arrange a folder of the original layout (in place) into TorchGeo's: split lists at the root."""
    for split in ("train", "test"):
        shutil.move(root / "splits" / f"{split}_list.txt", root / f"{split}_list.txt")
    (root / "splits").rmdir()


ARRANGE = {"torchgeo": to_torchgeo}
