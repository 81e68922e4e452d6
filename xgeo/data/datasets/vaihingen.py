"""ISPRS 2D semantic labelling, Vaihingen: a 9 cm true orthophoto (near-infrared, red, green) and a matching DSM of
the town of Vaihingen an der Enz, with six-class land-cover ground truth (colour-coded), 33 areas.

Bands: IRRG (uint8, 3 bands); DSM (float32, metres). Labels: ``mask`` (H, W) of six classes, and ``mask_eroded``
(boundary pixels ignored, 255) when the eroded ground truth is there.

Layout ``original`` (the ISPRS archives): ``top/top_mosaic_09cm_area{N}.tif``, ``dsm/dsm_09cm_matching_area{N}.tif``,
``gts_for_participants/top_mosaic_09cm_area{N}.tif``, optional
``gts_eroded_for_participants/top_mosaic_09cm_area{N}_noBoundary.tif``; the split is by area (``extra``).

Citation: Rottensteiner et al., The ISPRS benchmark on urban object classification and 3D building reconstruction,
ISPRS Annals I-3, 2012.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import DataError
from ...sensors import get_sensor
from .. import scene as sc
from ..raster import IGNORE_INDEX, check_pair, cut_tiles, dataset_params, need_dir, nbands, read_raster
from ..sink import Sink, bands_nm, from_origin, utm
from ..spec import DatasetSpec, Layout, Source, modality

SPEC = DatasetSpec(
    id="vaihingen", title="ISPRS 2D semantic labelling, Vaihingen (IRRG true orthophoto + DSM)",
    citation="Rottensteiner et al., The ISPRS benchmark on urban object classification and 3D building reconstruction, 2012",
    role="downstream", task="segmentation",
    modalities={"irrg": modality("irrg"), "dsm": modality("dsm")}, pairs=(("irrg", "dsm"),),
    sources=(
        Source(None, "ISPRS_semantic_labeling_Vaihingen.zip", "462b8dca7b6fa9eaf729840f0cdfc7f3", manual=True, instructions=(
            "Request the Vaihingen data through the ISPRS data request form (www.isprs.org, 2D semantic labelling "
            "benchmark) and place the archives in DIR.")),
        Source(None, "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip", "4802dd6326e2727a352fb735be450277", manual=True,
               instructions="from the same ISPRS request"),
        Source(None, "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip", None, manual=True,
               instructions="eroded ground truth (boundary pixels ignored in scoring), from the same ISPRS request; optional"),
    ),
    layout="top/top_mosaic_09cm_area{N}.tif (IRRG uint8), dsm/dsm_09cm_matching_area{N}.tif (float32), "
           "gts_for_participants/top_mosaic_09cm_area{N}.tif (colour-coded labels), "
           "gts_eroded_for_participants/top_mosaic_09cm_area{N}_noBoundary.tif (eroded labels, optional)",
    splits="train areas 1,3,5,7,11,13,15,17,21,23,26,28,30,32,34,37; test areas 2,4,6,8,10,12,14,16,20,22,24,27,29,31,33,35,38",
    extra={
        "classes": ("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"),
        "colours": ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)),
        "train_areas": (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37),
        "test_areas": (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38),
    },
)


# ----------------------------------------------------------------------------------------------------- readers
def label_attrs(spec: DatasetSpec) -> dict[str, dict]:
    names = list(spec.extra["classes"])
    return {"mask": {"class_names": names, "ignore_index": IGNORE_INDEX},
            "mask_eroded": {"class_names": names, "ignore_index": IGNORE_INDEX}}


def _decode_colours(path: Path, rgb: np.ndarray, colours, allow_black: bool) -> np.ndarray:
    """(3, H, W) uint8 colour-coded labels -> (H, W) uint8 class indices (black -> IGNORE_INDEX when allowed)."""
    code = (rgb[0].astype(np.int64) << 16) | (rgb[1].astype(np.int64) << 8) | rgb[2].astype(np.int64)
    lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colours)}
    if allow_black:
        lut[0] = IGNORE_INDEX
    keys = np.array(sorted(lut), dtype=np.int64)
    vals = np.array([lut[k] for k in keys], dtype=np.uint8)
    pos = np.clip(np.searchsorted(keys, code), 0, len(keys) - 1)
    bad = keys[pos] != code
    if bad.any():
        unknown = sorted({int(c) for c in np.unique(code[bad])})[:5]
        as_rgb = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unknown]
        raise DataError(f"{path}: expected label colours {list(map(tuple, colours))}"
                        f"{' or black (ignored)' if allow_black else ''}, found {int(bad.sum())} pixels of "
                        f"unknown colour(s) {as_rgb}")
    return vals[pos]



def _area(p: Path) -> int:
    return int(re.findall(r"\d+$", p.stem)[0])


def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    """(area, split) of every top/top_mosaic_09cm_area<N>.tif, by area number."""
    top = need_dir(raw / "top", "the IRRG orthophoto folder top/ (missing modality)")
    need_dir(raw / "dsm", "the DSM folder dsm/ (missing modality)")
    need_dir(raw / "gts_for_participants", "the ground-truth folder gts_for_participants/")
    train, test = set(spec.extra["train_areas"]), set(spec.extra["test_areas"])
    files = sorted(top.glob("top_mosaic_09cm_area*.tif"), key=_area)
    if not files:
        raise DataError(f"{top}: expected top_mosaic_09cm_area<N>.tif files, found none")
    units = []
    for p in files:
        area = _area(p)
        split = "train" if area in train else "test" if area in test else None
        if split is None:
            raise DataError(f"{p}: expected an area of the catalog's train or test lists, found area {area}")
        units.append((area, split))
    return units


def read_area(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    """IRRG + DSM + colour-coded ground truth (decoded to class indices) of one area, cut into tiles."""
    area, split = unit
    tile = int(dataset_params(params, spec.id)["tile_size"])
    colours = spec.extra["colours"]
    eroded_dir = raw / "gts_eroded_for_participants"
    p = raw / "top" / f"top_mosaic_09cm_area{area}.tif"
    irrg = read_raster(p, nbands(spec, "irrg"), "IRRG")
    pd = raw / "dsm" / f"dsm_09cm_matching_area{area}.tif"
    dsm = read_raster(pd, nbands(spec, "dsm"), "DSM")
    check_pair(p, irrg, pd, dsm)
    pg = raw / "gts_for_participants" / p.name
    gt = read_raster(pg, 3, "colour-coded labels")
    check_pair(p, irrg, pg, gt)
    labels = {"mask": _decode_colours(pg, gt[0], colours, allow_black=False)}
    pe = eroded_dir / f"{p.stem}_noBoundary.tif"
    if eroded_dir.is_dir():
        ge = read_raster(pe, 3, "eroded colour-coded labels")
        check_pair(p, irrg, pe, ge)
        labels["mask_eroded"] = _decode_colours(pe, ge[0], colours, allow_black=True)
    for suffix, tiles in cut_tiles({"irrg": p, "dsm": pd}, {"irrg": irrg, "dsm": dsm}, tile):
        r, c = (int(v) for v in re.findall(r"\d+", suffix))
        yield {"id": f"area{area}_{suffix}", "split": split, "modalities": tiles,
               "labels": {k: np.ascontiguousarray(v[r:r + tile, c:c + tile]) for k, v in labels.items()}}


LAYOUTS = {"original": Layout("original", "top/, dsm/ and gts_for_participants/ of the ISPRS archives",
                              expects=("top/top_mosaic_09cm_area*.tif",), plan=plan, read=read_area)}


# ------------------------------------------------------------------------------------------------- synthetic copy
# Vaihingen's six classes of each latent class: impervious 0, building 1, low vegetation 2, tree 3, car 4, clutter 5
_VAIHINGEN_OF = np.array([5, 3, 3, 2, 2, 5, 0, 1, 4], dtype=np.uint8)
_VAIHINGEN_COVER = sc.Cover(water=0.0, forest=0.0, low_vegetation=0.15, cropland=0.0, bare_soil=0.03, urban=0.82,
                            block_m=45.0, road_m=6.0, building_m=(8.0, 20.0), height_m=(5.0, 14.0), built=0.45,
                            urban_green=0.45, relief_m=3.0, elevation_m=265.0)


def eroded(labels: np.ndarray, radius: int = 3, ignore: int = 255) -> np.ndarray:
    """``labels`` (H, W) with every pixel within ``radius`` of a class boundary set to ``ignore``."""
    h, w = labels.shape
    out = labels.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx > radius * radius or (dy == 0 and dx == 0):
                continue
            a = labels[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
            b = labels[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
            out[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)][a != b] = ignore
    return out


def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """top/, dsm/, gts_for_participants/ and gts_eroded_for_participants/ for the first train and test areas."""
    lo, hi = (int(v) for v in cfg["size"])
    areas = list(spec.extra["train_areas"][: int(cfg["areas"]["train"])])
    areas += list(spec.extra["test_areas"][: int(cfg["areas"]["test"])])
    colours = np.array(spec.extra["colours"] + ((0, 0, 0),), dtype=np.uint8)  # black: eroded boundary
    wl = bands_nm("irrg")
    gsd = get_sensor("irrg").gsd_m
    sink.expect(4 * len(areas))
    for area in sorted(areas):
        shape = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
        scene = sc.make_scene(rng, shape, gsd, _VAIHINGEN_COVER)
        shadow = sc.cast_shadows(scene, azimuth_deg=150.0, elevation_deg=50.0)
        irrg = sc.to_uint8(sc.reflectance(scene, wl, 1.0, shadow), white=0.5)
        crs = utm(32)
        transform = from_origin(496000.0 + 300.0 * area, 5420000.0 - 200.0 * (area % 5), gsd, gsd)
        labels = _VAIHINGEN_OF[scene.classes]
        sink.tif(f"top/top_mosaic_09cm_area{area}.tif", irrg, crs, transform)
        sink.tif(f"dsm/dsm_09cm_matching_area{area}.tif", sc.dsm(scene, rng), crs, transform)
        sink.tif(f"gts_for_participants/top_mosaic_09cm_area{area}.tif", np.moveaxis(colours[labels], -1, 0),
                 crs, transform)
        ero = eroded(labels, ignore=len(colours) - 1)
        sink.tif(f"gts_eroded_for_participants/top_mosaic_09cm_area{area}_noBoundary.tif",
                 np.moveaxis(colours[ero], -1, 0), crs, transform)
