"""SEN12MS-CR: co-located Sentinel-1, cloudy Sentinel-2 and cloud-free Sentinel-2 patches (256 x 256 px, 10 m),
for cloud removal (SAR + cloudy optical -> cloud-free optical).

Bands: Sentinel-1 VV, VH (dB, float32); Sentinel-2 L1C, 13 bands (uint16), cloudy and cloud-free.

Layout ``original`` (the mediaTUM archives, one folder per season and kind):
``ROIs{season}_{s1,s2,s2_cloudy}/{kind}_<roi>/ROIs{season}_{kind}_<roi>_p<n>.tif``; the split is by ROI (``extra``).

Citation: Ebel et al., Multisensor Data Fusion for Cloud Removal in Global and All-Season Sentinel-2 Imagery,
IEEE TGRS 59(7), 2021.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import DataError
from ..raster import check_pair, cut_tiles, dataset_params, need_dir, nbands, read_raster
from ..sink import Sink, patch_grid, season_greenness, sen12ms_scene, utm
from ..spec import DatasetSpec, Layout, Source, modality
from .sen12ms import SEASONS

SPEC = DatasetSpec(
    id="sen12ms-cr", title="SEN12MS-CR (Sentinel-1 + cloudy Sentinel-2 -> cloud-free Sentinel-2)",
    citation="Ebel et al., Multisensor Data Fusion for Cloud Removal in Global and All-Season Sentinel-2 Imagery, IEEE TGRS 2020",
    role="downstream", task="cloud_removal",
    modalities={"s1": modality("s1"), "s2_cloudy": modality("s2"), "s2": modality("s2")}, pairs=(("s1", "s2"),),
    sources=tuple(
        Source(f"https://dataserv.ub.tum.de/s/m1554803/download?path=/&files=ROIs{season}_{kind}.tar.gz",
               f"ROIs{season}_{kind}.tar.gz", None)
        for season in SEASONS for kind in ("s1", "s2", "s2_cloudy")
    ),
    layout="ROIs{season}_{s1,s2,s2_cloudy}/{s1,s2,s2_cloudy}_<roi>/ROIs{season}_{s1,s2,s2_cloudy}_<roi>_p<n>.tif",
    splits="by ROI: test = spring 106,123,140,31,44; summer 119,73; fall 139; winter 108,63. "
           "val = winter 22,107,130,84; summer 19,80,127,17; fall 65; spring 17. train = the rest",
    license="CC-BY-4.0",
    extra={
        "test": {"1158_spring": (106, 123, 140, 31, 44), "1868_summer": (119, 73), "1970_fall": (139,), "2017_winter": (108, 63)},
        "val": {"2017_winter": (22, 107, 130, 84), "1868_summer": (19, 80, 127, 17), "1970_fall": (65,), "1158_spring": (17,)},
        "seasons": SEASONS,
    },
)


# ----------------------------------------------------------------------------------------------------- readers
def _roi_split(spec: DatasetSpec, season: str, roi: int) -> str:
    for split in ("test", "val"):
        if roi in spec.extra[split].get(season, ()):
            return split
    return "train"


_NAME = re.compile(r"_s2_(\d+)_p(\d+)\.tif$")


def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    """(season, s2 path) of every cloud-free s2 patch, season by season."""
    seasons = [s for s in spec.extra["seasons"] if (raw / f"ROIs{s}_s2").is_dir()]
    if not seasons:
        raise DataError(f"{raw}: expected SEN12MS-CR folders ROIs<season>_s2 (seasons {list(spec.extra['seasons'])}), "
                        f"found none")
    units = []
    for season in seasons:
        for kind in ("s1", "s2_cloudy"):
            need_dir(raw / f"ROIs{season}_{kind}", f"the {kind} folder of season {season} (missing modality)")
        for p2 in sorted((raw / f"ROIs{season}_s2").glob("s2_*/*.tif")):
            if _NAME.search(p2.name) is None:
                raise DataError(f"{p2}: expected a name like ROIs{season}_s2_<roi>_p<n>.tif, found {p2.name!r}")
            units.append((season, p2.relative_to(raw).as_posix()))
    return units


def read_patch(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    season, rel2 = unit
    tile = int(dataset_params(params, spec.id)["tile_size"])
    p2 = raw / rel2
    roi = int(_NAME.search(p2.name).group(1))
    paths = {"s1": raw / f"ROIs{season}_s1" / f"s1_{roi}" / p2.name.replace("_s2_", "_s1_"),
             "s2_cloudy": raw / f"ROIs{season}_s2_cloudy" / f"s2_cloudy_{roi}" / p2.name.replace("_s2_", "_s2_cloudy_"),
             "s2": p2}
    sensors = {"s1": "Sentinel-1", "s2_cloudy": "cloudy Sentinel-2", "s2": "Sentinel-2"}
    rasters = {k: read_raster(p, nbands(spec, k), sensors[k]) for k, p in paths.items()}
    for k in ("s1", "s2_cloudy"):
        check_pair(p2, rasters["s2"], paths[k], rasters[k])
    for suffix, tiles in cut_tiles(paths, rasters, tile):
        yield {"id": f"{p2.stem}_{suffix}", "split": _roi_split(spec, season, roi), "modalities": tiles,
               "labels": {}}


LAYOUTS = {"original": Layout("original", "ROIs<season>_{s1,s2,s2_cloudy}/<kind>_<roi>/*.tif",
                              expects=("ROIs*_s2/s2_*",), plan=plan, read=read_patch)}


# ------------------------------------------------------------------------------------------------- synthetic copy
def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """ROIs{season}_{s1,s2,s2_cloudy}/{s1,s2,s2_cloudy}_<roi>/ROIs{season}_{kind}_<roi>_p<n>.tif.

    Per season: ``rois.val`` and ``rois.test`` ROIs from the catalog's split lists, ``rois.train`` others.
    """
    size, n_patches = int(cfg["size"]), int(cfg["patches_per_roi"])
    per_split = cfg["rois"]
    stride = size // 2
    rows, cols, shape = patch_grid(n_patches, size, stride)
    seasons = spec.extra["seasons"]
    plan = []
    for season in seasons:
        val, test = spec.extra["val"].get(season, ()), spec.extra["test"].get(season, ())
        free = np.setdiff1d(np.arange(1, 150), np.array(val + test, dtype=np.int64))
        rois = list(rng.choice(free, size=int(per_split["train"]), replace=False))
        rois += list(val[: int(per_split["val"])]) + list(test[: int(per_split["test"])])
        plan += [(season, int(r)) for r in sorted(rois)]
    sink.expect(len(plan) * rows * cols * 3)
    for season, roi in plan:
        for p, files, transform, zone in sen12ms_scene(rng, rows, cols, shape, size, stride,
                                                        season_greenness(season), cloudy=True):
            for kind in ("s1", "s2", "s2_cloudy"):
                sink.tif(f"ROIs{season}_{kind}/{kind}_{roi}/ROIs{season}_{kind}_{roi}_p{p}.tif", files[kind],
                         utm(zone), transform)
