"""Synthetic copies of the eight datasets, written in each dataset's real on-disk layout.

``synthesize(dataset, directory, params, seed)`` draws latent scenes (``xgeo.data.scene``) and renders them into
the sensors of the dataset, then writes the files exactly where and how the real release has them (folder and file
names, GeoTIFF with CRS and transform, JPEG/PNG, BigEarthNet's labels_metadata.json, split lists), so that the
readers (``xgeo.data.readers``) cannot tell a synthetic copy from a real one. Sizes come from
``data.datasets.<id>.synth`` in params.yaml. Same seed, same bytes. The directory is written atomically: a
temporary directory beside it is renamed at the end.

``WRITERS[dataset_id](sink, spec, cfg, rng)`` writes one dataset through a :class:`_Sink`.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine
from tqdm import tqdm

from ..catalog import CATALOG, DatasetSpec
from ..errors import XGeoError
from ..io import atomic_path
from ..sensors import get_sensor
from . import scene as sc

Writer = Callable[["_Sink", DatasetSpec, dict, np.random.Generator], None]
WRITERS: dict[str, Writer] = {}


def writer(dataset_id: str):
    def register(fn: Writer) -> Writer:
        WRITERS[dataset_id] = fn
        return fn

    return register


def synthesize(dataset: str, directory: Path, params: dict, seed: int) -> None:
    """Write a synthetic ``dataset`` in its real on-disk layout into ``directory`` (replaced atomically)."""
    if dataset not in WRITERS:
        raise XGeoError(f"unknown dataset {dataset!r}: expected one of the catalog ids {sorted(CATALOG)} "
                        "(xgeo/catalog.py)")
    try:
        cfg = params["data"]["datasets"][dataset]["synth"]
    except (KeyError, TypeError):
        raise XGeoError(f"params: expected a mapping data.datasets.{dataset}.synth (the synthetic sizes), "
                        "found none; see params.yaml") from None
    # one stream per (seed, dataset): synthesising one dataset does not shift another's bytes
    rng = np.random.default_rng([int(seed), zlib.crc32(dataset.encode())])
    with atomic_path(Path(directory), directory=True) as tmp:
        sink = _Sink(tmp, dataset)
        try:
            WRITERS[dataset](sink, CATALOG[dataset], cfg, rng)
        except KeyError as exc:
            raise XGeoError(f"params data.datasets.{dataset}.synth: missing key {exc}; found {sorted(cfg)}") from None
        finally:
            sink.close()


class _Sink:
    """Writes the files of one dataset under ``root`` and advances one progress bar per file."""

    def __init__(self, root: Path, dataset: str) -> None:
        self.root = Path(root)
        self.bar = tqdm(total=0, desc=f"synth {dataset}", unit="file", disable=None, leave=False)

    def expect(self, n: int) -> None:
        self.bar.total = (self.bar.total or 0) + int(n)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def _path(self, rel: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def tif(self, rel: str, array: np.ndarray, crs: CRS, transform: Affine, nodata: float | None = None) -> None:
        """A GeoTIFF of (C, H, W) or (H, W) ``array`` in its own dtype."""
        data = array[None] if array.ndim == 2 else array
        profile = dict(driver="GTiff", count=data.shape[0], height=data.shape[1], width=data.shape[2],
                       dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata)
        with rasterio.open(self._path(rel), "w", **profile) as dst:
            dst.write(data)
        self.bar.update(1)

    def image(self, rel: str, rgb: np.ndarray) -> None:
        """A JPEG or PNG (by suffix) of a (3, H, W) uint8 image."""
        buf = io.BytesIO()
        fmt = "PNG" if rel.lower().endswith(".png") else "JPEG"
        options = {"quality": 90} if fmt == "JPEG" else {}
        Image.fromarray(np.ascontiguousarray(np.moveaxis(rgb, 0, -1))).save(buf, format=fmt, **options)
        self._path(rel).write_bytes(buf.getvalue())
        self.bar.update(1)

    def text(self, rel: str, text: str) -> None:
        self._path(rel).write_text(text)
        self.bar.update(1)

    def json(self, rel: str, obj) -> None:
        self.text(rel, json.dumps(obj))


# ------------------------------------------------------------------------------------------------------ helpers
def from_origin(west: float, north: float, xres: float, yres: float) -> Affine:
    """North-up affine of a grid whose upper-left corner is (west, north)."""
    return Affine.translation(west, north) @ Affine.scale(xres, -yres)


def _utm(zone: int) -> CRS:
    return CRS.from_epsg(32600 + zone)  # WGS 84 / UTM zone N (northern hemisphere)


def _date(rng: np.random.Generator, start: str, end: str) -> dt.datetime:
    a, b = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    return a + dt.timedelta(seconds=int(rng.integers(0, int((b - a).total_seconds()))))


def _greenness(month: int) -> float:
    """Phenology of a mid-latitude northern summer: 1 in July, 0 in January."""
    return float(0.5 + 0.5 * np.cos(2 * np.pi * (month - 7) / 12))


_SEASON_GREENNESS = {"spring": 0.7, "summer": 1.0, "fall": 0.5, "winter": 0.15}


def _season_greenness(season: str) -> float:
    return _SEASON_GREENNESS[season.split("_")[-1]]


def _patch_grid(n: int, size: int, stride: int) -> tuple[int, int, tuple[int, int]]:
    """Rows and columns of a near-square grid of ``n`` patches, and the scene shape it covers."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    return rows, cols, (size + (rows - 1) * stride, size + (cols - 1) * stride)


def _bands_nm(sensor: str, bands=None) -> list[float]:
    s = get_sensor(sensor)
    return [s.band(b).wavelength_nm for b in (bands or s.band_names)]


def _s2_l1c(scene: sc.Scene, rng: np.random.Generator, greenness: float, clouds: tuple | None = None) -> np.ndarray:
    """Sentinel-2 L1C (top of atmosphere) of all 13 bands, (13, H, W) uint16; optional cloud and shadow layers."""
    wl = _bands_nm("s2")
    toa = sc.reflectance(scene, wl, greenness) + sc.path_reflectance(wl)[:, None, None].astype(np.float32)
    if clouds is not None:
        alpha, shade = clouds
        toa = toa * (1.0 - 0.6 * shade * (1.0 - alpha))[None]
        toa = (1.0 - alpha[None]) * toa + alpha[None] * sc.cloud_spectrum(wl)[:, None, None].astype(np.float32)
    return sc.to_s2(toa, rng)


# ----------------------------------------------------------------------------------------------------- SEN12MS
# IGBP and LCCS codes (MODIS MCD12Q1) of the latent classes, for SEN12MS's lc files (IGBP, LCCS-LC, LCCS-LU, LCCS-SH)
_LC_CODES = np.array([
    [17, 3, 3, 3],  # water: water bodies
    [4, 14, 10, 10],  # broad-leaved forest: deciduous broadleaf forests / dense forests
    [1, 11, 10, 10],  # coniferous forest: evergreen needleleaf forests / dense forests
    [10, 31, 30, 30],  # low vegetation: grasslands / dense herbaceous / natural herbaceous
    [12, 31, 36, 30],  # cropland: croplands / dense herbaceous / herbaceous croplands
    [16, 1, 1, 1],  # bare soil: barren
    [13, 255, 9, 255],  # impervious: urban and built-up lands (no LCCS land-cover class: unclassified)
    [13, 255, 9, 255],  # building
    [13, 255, 9, 255],  # car
], dtype=np.uint16)


def _sen12ms_scene(rng, rows, cols, shape, size, stride, greenness, *, cloudy=False, nan_edges=False):
    """Yield (p number, {s1, s2, lc, s2_cloudy}, transform) for the patches of one SEN12MS-style scene."""
    scene = sc.make_scene(rng, shape, 10.0, sc.random_cover(rng))
    lc_full = _LC_CODES[sc.block_mode(scene.classes, 50, len(sc.CLASSES))]  # MODIS 500 m cells on the 10 m grid
    zone = int(rng.integers(10, 60))
    x0, y0 = float(rng.integers(2, 8)) * 1e5, float(rng.integers(5, 70)) * 1e5
    s1_full = sc.sar_backscatter(scene, rng, greenness=greenness)
    s2_full = _s2_l1c(scene, rng, greenness)
    p_numbers = np.sort(rng.choice(np.arange(1, 4 * rows * cols + 1), size=rows * cols, replace=False))
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        win = (slice(r * stride, r * stride + size), slice(c * stride, c * stride + size))
        files = {"s1": s1_full[(slice(None),) + win].copy(), "s2": s2_full[(slice(None),) + win],
                 "lc": np.moveaxis(lc_full[win], -1, 0)}
        if nan_edges and rng.random() < 0.3:
            # swath-border NaNs, as in a part of SEN12MS's s1 patches (the loader's convention replaces them)
            files["s1"][:, :, : int(rng.integers(1, 4))] = np.nan
        if cloudy:
            clouds = sc.cloud_layer(rng, (size, size), 10.0, coverage=float(rng.uniform(0.15, 0.7)))
            patch = sc.crop(scene, *win)
            files["s2_cloudy"] = _s2_l1c(patch, rng, max(0.0, greenness - 0.05), clouds=clouds)
        yield int(p_numbers[k]), files, from_origin(x0 + c * stride * 10.0, y0 - r * stride * 10.0, 10.0, 10.0), zone


@writer("sen12ms")
def write_sen12ms(sink: _Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """ROIs{season}/{s1,s2,lc}_<scene>/ROIs{season}_{s1,s2,lc}_<scene>_p<n>.tif + splits/{train,test}_list.txt."""
    size, n_patches, n_scenes = int(cfg["size"]), int(cfg["patches_per_scene"]), int(cfg["scenes_per_season"])
    stride = size // 2  # SEN12MS patches overlap by half
    rows, cols, shape = _patch_grid(n_patches, size, stride)
    seasons = spec.extra["seasons"]
    sink.expect(len(seasons) * n_scenes * rows * cols * 3 + 2)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    k_scene = 0
    for season in seasons:
        for scene_id in np.sort(rng.choice(np.arange(1, 150), size=n_scenes, replace=False)):
            split = "test" if k_scene % 4 == 3 else "train"  # whole scenes go to one split
            k_scene += 1
            for p, files, transform, zone in _sen12ms_scene(rng, rows, cols, shape, size, stride,
                                                            _season_greenness(season), nan_edges=True):
                for kind in ("s1", "s2", "lc"):
                    name = f"ROIs{season}_{kind}_{scene_id}_p{p}.tif"
                    sink.tif(f"ROIs{season}/{kind}_{scene_id}/{name}", files[kind], _utm(zone), transform)
                lists[split].append(f"ROIs{season}_s2_{scene_id}_p{p}.tif")
    for split, names in lists.items():
        sink.text(f"splits/{split}_list.txt", "".join(n + "\n" for n in names))


@writer("sen12ms-cr")
def write_sen12ms_cr(sink: _Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """ROIs{season}_{s1,s2,s2_cloudy}/{s1,s2,s2_cloudy}_<roi>/ROIs{season}_{kind}_<roi>_p<n>.tif.

    Per season: ``rois.val`` and ``rois.test`` ROIs from the catalog's split lists, ``rois.train`` others.
    """
    size, n_patches = int(cfg["size"]), int(cfg["patches_per_roi"])
    per_split = cfg["rois"]
    stride = size // 2
    rows, cols, shape = _patch_grid(n_patches, size, stride)
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
        for p, files, transform, zone in _sen12ms_scene(rng, rows, cols, shape, size, stride,
                                                        _season_greenness(season), cloudy=True):
            for kind in ("s1", "s2", "s2_cloudy"):
                sink.tif(f"ROIs{season}_{kind}/{kind}_{roi}/ROIs{season}_{kind}_{roi}_p{p}.tif", files[kind],
                         _utm(zone), transform)


# ------------------------------------------------------------------------------------------------- BigEarthNet
_BEN_ZONES = (29, 32, 33, 34, 35)  # Portugal/Ireland, Switzerland/Luxembourg, Austria, Serbia/Kosovo, Lithuania/Finland
_LABEL_MIN = 0.1  # a class names a patch when it covers this share of it (CLC's 25 ha unit is 17 % of a patch)


def ben_labels(fractions: np.ndarray, names43: tuple[str, ...]) -> list[str]:
    """CORINE level-3 names (BigEarthNet's 43-class nomenclature, index order) of a patch's class fractions."""
    f = fractions
    urban = f[sc.IMPERVIOUS] + f[sc.BUILDING] + f[sc.CAR]
    forest = f[sc.BROADLEAF] + f[sc.CONIFEROUS]
    names = set()
    if urban >= _LABEL_MIN:
        names.add("Continuous urban fabric" if urban >= 0.8 else "Discontinuous urban fabric")
    if forest >= _LABEL_MIN:
        share = f[sc.CONIFEROUS] / forest
        names.add("Mixed forest" if 0.25 <= share <= 0.75 else
                  "Coniferous forest" if share > 0.75 else "Broad-leaved forest")
    for k, name in ((sc.WATER, "Water bodies"), (sc.LOW_VEG, "Pastures"), (sc.CROPLAND, "Non-irrigated arable land"),
                    (sc.BARE, "Sparsely vegetated areas")):
        if f[k] >= _LABEL_MIN:
            names.add(name)
    if f[sc.CROPLAND] >= _LABEL_MIN and f[sc.LOW_VEG] >= _LABEL_MIN and forest >= _LABEL_MIN:
        names.add("Land principally occupied by agriculture, with significant areas of natural vegetation")
    if not names:  # the dominant class
        k = int(np.argmax(f))
        names.add(ben_labels(np.eye(len(f))[k], names43)[0])
    return sorted(names, key=names43.index)


@writer("bigearthnet")
def write_bigearthnet(sink: _Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """BigEarthNet-v1.0/<S2>/<S2>_<band>.tif + json, BigEarthNet-S1-v1.0/<S1>/<S1>_{VV,VH}.tif + json, splits/*.csv.

    Patches are cut from tiles (one S2 acquisition and one S1 acquisition each); every band at its native
    resolution (10 / 20 / 60 m: sizes in the ratio 6 : 3 : 1, 120 / 60 / 20 px at full size).
    """
    counts = {s: int(cfg["patches"][s]) for s in ("train", "val", "test")}
    size = int(cfg.get("size_10m", 120))
    if size % 6:
        raise XGeoError(f"params data.datasets.bigearthnet.synth.size_10m: expected a multiple of 6 "
                        f"(10 m : 20 m : 60 m bands = 6 : 3 : 1), found {size}")
    per_tile = int(cfg.get("patches_per_tile", 36))
    n = sum(counts.values())
    s2_bands = spec.modalities["s2"].bands
    s2 = get_sensor("s2")
    factors = [int(round(s2.band(b).gsd_m / 10.0)) for b in s2_bands]
    wl = _bands_nm("s2", s2_bands)
    names43 = spec.extra["labels43"]
    sink.expect(n * (len(s2_bands) + 1 + 2 + 1) + 3)

    split_of = np.repeat(["train", "val", "test"], [counts["train"], counts["val"], counts["test"]])[rng.permutation(n)]
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    done = 0
    while done < n:
        k = min(per_tile, n - done)
        rows, cols, shape = _patch_grid(k, size, size)
        scene = sc.make_scene(rng, shape, 10.0, sc.random_cover(rng))
        zone = int(rng.choice(_BEN_ZONES))
        mgrs = f"{zone}{'TU'[int(rng.integers(0, 2))]}{''.join(rng.choice(list('ABCDEFGHJKLMNPQRSTUVWXYZ'), 2))}"
        # Sentinel-2 passes over Europe at about 10:30 local solar time; Sentinel-1 at about 05:30 or 17:30 UTC
        day = _date(rng, "2017-06-01", "2018-05-31").replace(hour=10, minute=0, second=0)
        when = day + dt.timedelta(seconds=int(rng.integers(0, 3600)))
        s1_when = (day + dt.timedelta(days=int(rng.integers(-3, 4)))).replace(hour=int(rng.choice([5, 17])))
        s1_when += dt.timedelta(seconds=int(rng.integers(0, 3600)))
        sat, s1_sat = f"S2{'AB'[int(rng.integers(0, 2))]}", f"S1{'AB'[int(rng.integers(0, 2))]}"
        green = _greenness(when.month)
        refl = sc.reflectance(scene, wl, green)  # L2A: bottom of atmosphere
        # each band on its native grid: the 10 m rendering area-averaged by 2 (20 m) or 6 (60 m)
        native = [sc.to_s2(sc.block_mean(refl[b], f)[None], rng)[0] for b, f in enumerate(factors)]
        sar = sc.sar_backscatter(scene, rng, greenness=green)
        crs = _utm(zone)
        x0, y0 = float(rng.integers(3, 7)) * 1e5, float(rng.integers(40, 75)) * 1e5
        r_base, c_base = (int(v) for v in rng.integers(0, 60, size=2))
        product = (f"{sat}_MSIL1C_{when:%Y%m%dT%H%M%S}_N0205_R{int(rng.integers(1, 143)):03d}_T{mgrs}_"
                   f"{when + dt.timedelta(minutes=5):%Y%m%dT%H%M%S}")
        for j in range(k):
            r, c = divmod(j, cols)
            rs, cs = slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size)
            ulx, uly = x0 + c * size * 10.0, y0 - r * size * 10.0
            s2_name = f"{sat}_MSIL2A_{when:%Y%m%dT%H%M%S}_{r_base + r}_{c_base + c}"
            s1_name = f"{s1_sat}_IW_GRDH_1SDV_{s1_when:%Y%m%dT%H%M%S}_{mgrs}_{r_base + r}_{c_base + c}"
            for band, f, dn in zip(s2_bands, factors, native):
                m = size // f
                window = dn[None, r * m:(r + 1) * m, c * m:(c + 1) * m]
                sink.tif(f"BigEarthNet-v1.0/{s2_name}/{s2_name}_{band}.tif", window, crs,
                         from_origin(ulx, uly, 10.0 * f, 10.0 * f))
            for b, pol in enumerate(spec.modalities["s1"].bands):
                sink.tif(f"BigEarthNet-S1-v1.0/{s1_name}/{s1_name}_{pol}.tif", sar[b, rs, cs][None], crs,
                         from_origin(ulx, uly, 10.0, 10.0))
            labels = ben_labels(sc.crop(scene, rs, cs).fractions(), names43)
            coords = {"ulx": int(ulx), "uly": int(uly), "lrx": int(ulx + size * 10), "lry": int(uly - size * 10)}
            sink.json(f"BigEarthNet-v1.0/{s2_name}/{s2_name}_labels_metadata.json", {
                "labels": labels, "coordinates": coords, "projection": crs.to_wkt(),
                "tile_source": product, "acquisition_date": f"{when:%Y-%m-%d %H:%M:%S}"})
            sink.json(f"BigEarthNet-S1-v1.0/{s1_name}/{s1_name}_labels_metadata.json", {
                "labels": labels, "coordinates": coords, "projection": crs.to_wkt(),
                "corresponding_s2_patch": s2_name,
                "scene_source": f"{s1_sat}_IW_GRDH_1SDV_{s1_when:%Y%m%dT%H%M%S}",
                "acquisition_time": f"{s1_when:%Y-%m-%dT%H:%M:%S}"})
            lines[split_of[done + j]].append(f"{s2_name},{s1_name}\n")
        done += k
    for split, rows_ in lines.items():
        sink.text(f"splits/{split}.csv", "".join(rows_))


# --------------------------------------------------------------------------------------------------- Vaihingen
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


@writer("vaihingen")
def write_vaihingen(sink: _Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """top/, dsm/, gts_for_participants/ and gts_eroded_for_participants/ for the first train and test areas."""
    lo, hi = (int(v) for v in cfg["size"])
    areas = list(spec.extra["train_areas"][: int(cfg["areas"]["train"])])
    areas += list(spec.extra["test_areas"][: int(cfg["areas"]["test"])])
    colours = np.array(spec.extra["colours"] + ((0, 0, 0),), dtype=np.uint8)  # black: eroded boundary
    wl = _bands_nm("irrg")
    gsd = get_sensor("irrg").gsd_m
    sink.expect(4 * len(areas))
    for area in sorted(areas):
        shape = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
        scene = sc.make_scene(rng, shape, gsd, _VAIHINGEN_COVER)
        shadow = sc.cast_shadows(scene, azimuth_deg=150.0, elevation_deg=50.0)
        irrg = sc.to_uint8(sc.reflectance(scene, wl, 1.0, shadow), white=0.5)
        crs = _utm(32)
        transform = from_origin(496000.0 + 300.0 * area, 5420000.0 - 200.0 * (area % 5), gsd, gsd)
        labels = _VAIHINGEN_OF[scene.classes]
        sink.tif(f"top/top_mosaic_09cm_area{area}.tif", irrg, crs, transform)
        sink.tif(f"dsm/dsm_09cm_matching_area{area}.tif", sc.dsm(scene, rng), crs, transform)
        sink.tif(f"gts_for_participants/top_mosaic_09cm_area{area}.tif", np.moveaxis(colours[labels], -1, 0),
                 crs, transform)
        ero = eroded(labels, ignore=len(colours) - 1)
        sink.tif(f"gts_eroded_for_participants/top_mosaic_09cm_area{area}_noBoundary.tif",
                 np.moveaxis(colours[ero], -1, 0), crs, transform)


# -------------------------------------------------------------------------------------------------------- MDAS
_MDAS_COVER = sc.Cover(water=0.05, forest=0.1, low_vegetation=0.2, cropland=0.05, bare_soil=0.02, urban=0.58,
                       block_m=70.0, road_m=8.0, building_m=(10.0, 30.0), height_m=(6.0, 22.0), built=0.4,
                       relief_m=3.0, elevation_m=490.0)


@writer("mdas")
def write_mdas(sink: _Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """Augsburg_data_4_publication/sub_area_N/{3K_RGB.tif, 3K_DSM.tif}: one ground extent, two pixel sizes.

    The scene is drawn at 0.1 m and area-averaged by 2 into the RGB grid (0.2 m) and by 3 into the DSM grid
    (0.3 m), the 3 : 2 pixel ratio of the real 3K products (18000 x 15000 and 12000 x 10000 px).
    """
    rows, cols = (int(v) for v in cfg["rgb_size"])
    if rows % 3 or cols % 3:
        raise XGeoError(f"params data.datasets.mdas.synth.rgb_size: expected multiples of 3 (the DSM grid is 2/3 of "
                        f"the RGB grid), found {[rows, cols]}")
    fine = 0.1
    sink.expect(2 * int(cfg["sub_areas"]))
    for area in range(1, int(cfg["sub_areas"]) + 1):
        scene = sc.make_scene(rng, (rows * 2, cols * 2), fine, _MDAS_COVER)
        shadow = sc.cast_shadows(scene, azimuth_deg=160.0, elevation_deg=55.0)  # 7 May, late morning
        refl = sc.block_mean(sc.reflectance(scene, _bands_nm("rgb"), 0.9, shadow), 2)
        rgb = sc.to_uint8(refl)
        alpha = np.full((1, rows, cols), 255, np.uint8)  # the fourth band of the 3K RGB product
        height = sc.block_mean(sc.dsm(scene, rng, noise_m=0.1)[0], 3).astype(np.float32)
        x0, y0 = 638000.0 + 500.0 * area, 5358000.0 - 400.0 * area
        crs = _utm(32)
        sink.tif(f"Augsburg_data_4_publication/sub_area_{area}/3K_RGB.tif", np.concatenate([rgb, alpha]), crs,
                 from_origin(x0, y0, 2 * fine, 2 * fine))
        sink.tif(f"Augsburg_data_4_publication/sub_area_{area}/3K_DSM.tif", height[None], crs,
                 from_origin(x0, y0, 3 * fine, 3 * fine), nodata=get_sensor("dsm").nodata)


# --------------------------------------------------------------------------------------------------- SpaceNet 2
_AOI_ORIGIN = {"AOI_2_Vegas": (-115.32, 36.22), "AOI_3_Paris": (2.22, 48.87), "AOI_4_Shanghai": (121.40, 31.25),
               "AOI_5_Khartoum": (32.50, 15.62)}
_SN2_COVER = sc.Cover(water=0.01, forest=0.03, low_vegetation=0.12, cropland=0.0, bare_soil=0.14, urban=0.7,
                      block_m=60.0, road_m=9.0, building_m=(10.0, 18.0), height_m=(3.5, 8.0), built=0.4,
                      urban_green=0.2, relief_m=2.0, elevation_m=650.0)
# PAN response (450-800 nm) as weights of the eight MUL bands (coastal ... NIR2)
_PAN_WEIGHTS = np.array([0.0, 0.15, 0.2, 0.2, 0.2, 0.15, 0.1, 0.0], dtype=np.float32)


def _wkt(points) -> str:
    return "POLYGON ((" + ",".join(f"{x} {y} 0" for x, y in points) + "))"


@writer("spacenet2")
def write_spacenet2(sink: _Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """<AOI>_Train/{PAN,MUL,MUL-PanSharpen,RGB-PanSharpen}/<PRODUCT>_<AOI>_img<N>.tif, geojson/buildings, summaryData.

    One 0.3 m scene per image: MUL-PanSharpen is its 8-band rendering at PAN resolution, MUL the same area-averaged
    by the PAN/MUL ratio, PAN a weighted sum of the bands at full resolution, RGB-PanSharpen bands 5, 3, 2.
    Geographic coordinates (EPSG:4326) as in the SpaceNet release; building footprints in GeoJSON and WKT.
    """
    size, ratio = int(cfg["pan_size"]), int(spec.extra["ratio"])
    if size % ratio:
        raise XGeoError(f"params data.datasets.spacenet2.synth.pan_size: expected a multiple of {ratio}, found {size}")
    mul = get_sensor("wv3_mul")
    gsd = get_sensor("wv3_pan").gsd_m
    wl = _bands_nm("wv3_mul")
    rgb_idx = mul.band_indices(["red", "green", "blue"])
    n_img = int(cfg["images_per_aoi"])
    sink.expect(len(cfg["aois"]) * (n_img * 5 + 1))
    for aoi in cfg["aois"]:
        lon0, lat0 = _AOI_ORIGIN[aoi]
        dlat = gsd / 110574.0
        dlon = gsd / (111320.0 * np.cos(np.radians(lat0)))
        ids = np.sort(rng.choice(np.arange(1, 40 * n_img + 1), size=n_img, replace=False))
        cells = rng.choice(np.arange(400), size=n_img, replace=False)
        summary = io.StringIO()
        table = csv.writer(summary, lineterminator="\n")
        table.writerow(["ImageId", "BuildingId", "PolygonWKT_Pix", "PolygonWKT_Geo"])
        base = f"{aoi}_Train"
        for img, cell in zip(ids, cells):
            scene = sc.make_scene(rng, (size, size), gsd, _SN2_COVER)
            shadow = sc.cast_shadows(scene, azimuth_deg=140.0, elevation_deg=60.0)
            refl = sc.reflectance(scene, wl, 0.6, shadow)
            pan = np.tensordot(_PAN_WEIGHTS / _PAN_WEIGHTS.sum(), refl, axes=1)[None]
            west, north = lon0 + (cell % 20) * size * dlon, lat0 - (cell // 20) * size * dlat
            crs = CRS.from_epsg(4326)
            pansharp = sc.to_wv3(refl, rng)
            name = f"{aoi}_img{img}"
            sink.tif(f"{base}/PAN/PAN_{name}.tif", sc.to_wv3(pan, rng), crs, from_origin(west, north, dlon, dlat))
            sink.tif(f"{base}/MUL/MUL_{name}.tif", sc.to_wv3(sc.block_mean(refl, ratio).astype(np.float32), rng), crs,
                     from_origin(west, north, dlon * ratio, dlat * ratio))
            sink.tif(f"{base}/MUL-PanSharpen/MUL-PanSharpen_{name}.tif", pansharp, crs,
                     from_origin(west, north, dlon, dlat))
            sink.tif(f"{base}/RGB-PanSharpen/RGB-PanSharpen_{name}.tif", pansharp[rgb_idx], crs,
                     from_origin(west, north, dlon, dlat))
            features = []
            for r0, r1, c0, c1, _h in scene.buildings:
                r0, r1, c0, c1 = int(r0), int(r1), int(c0), int(c1)
                if (scene.classes[r0:r1, c0:c1] == sc.BUILDING).mean() < 0.5:
                    continue  # mostly cut away by a street
                pix = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
                geo = [(round(west + x * dlon, 9), round(north - y * dlat, 9)) for x, y in pix]
                features.append({"type": "Feature", "properties": {"OBJECTID": len(features) + 1},
                                 "geometry": {"type": "Polygon", "coordinates": [[[x, y, 0.0] for x, y in geo]]}})
                table.writerow([name, len(features), _wkt(pix), _wkt(geo)])
            if not features:
                table.writerow([name, -1, "POLYGON EMPTY", "POLYGON EMPTY"])
            sink.json(f"{base}/geojson/buildings/buildings_{name}.geojson",
                      {"type": "FeatureCollection", "crs": {"type": "name", "properties": {
                          "name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}, "features": features})
        sink.text(f"{base}/summaryData/{base}_Building_Solutions.csv", summary.getvalue())


# ------------------------------------------------------------------------------------------ GeoPile, MillionAID
# Per GeoPile source: some of its real class folders, the file type, the GSD range (m) and the file-name pattern.
_GEOPILE_SOURCES = {
    "NAIP": (("naip",), "png", (1.0, 1.0), "naip_{i:06d}"),
    "RSD46-WHU": (("dense_tall_building", "natural_dense_forest_land", "regular_farmland", "water", "overpass",
                   "low_scattered_building", "grassland"), "jpg", (0.5, 2.0), "{i:05d}"),
    "MLRSNet": (("dense_residential_area", "forest", "lake", "farmland", "freeway", "sparse_residential_area",
                 "meadow", "river"), "jpg", (0.1, 2.0), "{cls}_{i:05d}"),
    "RESISC45": (("dense_residential", "forest", "lake", "rectangular_farmland", "freeway", "sparse_residential",
                  "meadow", "river", "beach", "industrial_area"), "jpg", (0.3, 2.0), "{cls}_{i:03d}"),
    "PatternNet": (("dense_residential", "forest", "river", "freeway", "sparse_residential", "parking_lot", "beach",
                    "golf_course"), "jpg", (0.1, 0.8), "{cls}{i:03d}"),
}
# Scene recipes by a keyword of the class name (first match wins); otherwise a random cover
_RECIPES = (
    (("sparse", "scattered", "low_"), dict(urban=0.5, built=0.2, urban_green=0.6, low_vegetation=0.3, forest=0.1,
                                          water=0.0, cropland=0.05, bare_soil=0.05, block_m=80.0)),
    (("dense", "residential", "building", "industrial", "commercial"),
     dict(urban=0.9, built=0.5, urban_green=0.1, water=0.0, forest=0.03, low_vegetation=0.05, cropland=0.0,
          bare_soil=0.02, block_m=60.0)),
    (("forest", "tree"), dict(forest=0.9, water=0.02, urban=0.0, low_vegetation=0.05, cropland=0.0, bare_soil=0.03)),
    (("beach",), dict(water=0.45, bare_soil=0.45, urban=0.0, forest=0.02, low_vegetation=0.08, cropland=0.0)),
    (("lake", "river", "water", "sea", "pond", "harbor"),
     dict(water=0.45, forest=0.2, low_vegetation=0.2, urban=0.05, cropland=0.05, bare_soil=0.05)),
    (("farm", "agricultur", "arable", "field", "crop"),
     dict(cropland=0.75, low_vegetation=0.15, forest=0.05, water=0.0, urban=0.0, bare_soil=0.05)),
    (("meadow", "grass", "golf", "park"),
     dict(low_vegetation=0.8, forest=0.1, water=0.05, urban=0.0, cropland=0.0, bare_soil=0.05)),
    (("freeway", "highway", "road", "overpass", "parking", "intersection", "transportation"),
     dict(urban=0.7, built=0.05, road_m=20.0, block_m=50.0, low_vegetation=0.2, forest=0.05, water=0.0,
          cropland=0.0, bare_soil=0.05)),
)


def _recipe(rng: np.random.Generator, name: str) -> sc.Cover:
    for keys, fields in _RECIPES:
        if any(k in name for k in keys):
            return sc.random_cover(rng, **fields)
    return sc.random_cover(rng)


def _scene_image(rng: np.random.Generator, size: int, gsd: float, name: str) -> np.ndarray:
    """An aerial RGB image (3, size, size) uint8 of a scene drawn by the recipe of a class ``name``."""
    scene = sc.make_scene(rng, (size, size), gsd, _recipe(rng, name))
    shadow = sc.cast_shadows(scene, azimuth_deg=float(rng.uniform(90, 270)), elevation_deg=float(rng.uniform(30, 70)))
    return sc.to_uint8(sc.reflectance(scene, _bands_nm("rgb"), float(rng.uniform(0.4, 1.0)), shadow))


@writer("geopile")
def write_geopile(sink: _Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """GeoPileV0/<source>/<class>/<image>: each source's own class folders, file type and file names."""
    sources, size = list(cfg["sources"]), int(cfg["size"])
    unknown = [s for s in sources if s not in _GEOPILE_SOURCES]
    if unknown:
        raise XGeoError(f"params data.datasets.geopile.synth.sources: unknown {unknown}; "
                        f"expected some of {sorted(_GEOPILE_SOURCES)}")
    k, n = int(cfg["classes_per_source"]), int(cfg["images_per_class"])
    plan = []
    for source in sources:
        classes, ext, (g0, g1), pattern = _GEOPILE_SOURCES[source]
        chosen = rng.choice(len(classes), size=min(k, len(classes)), replace=False)
        plan += [(source, classes[c], ext, (g0, g1), pattern) for c in sorted(chosen)]
    sink.expect(len(plan) * n)
    for source, cls, ext, (g0, g1), pattern in plan:
        for i in range(1, n + 1):
            rgb = _scene_image(rng, size, float(rng.uniform(g0, g1)), cls)
            sink.image(f"GeoPileV0/{source}/{cls}/{pattern.format(cls=cls, i=i)}.{ext}", rgb)


@writer("millionaid")
def write_millionaid(sink: _Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """train/<L1>/<L2>/<L3>/P<id>.jpg (or train/<L1>/<L3>/ for two-level classes), JPEG, GSD 0.5-10 m."""
    classes = [list(c) for c in cfg["classes"]]
    bad = [c for c in classes if len(c) not in (2, 3)]
    if bad:
        raise XGeoError(f"params data.datasets.millionaid.synth.classes: expected [L1, L2, L3] or [L1, L3] lists, "
                        f"found {bad}")
    n, size = int(cfg["images_per_class"]), int(cfg["size"])
    sink.expect(len(classes) * n)
    ids = rng.choice(np.arange(1, 10**7), size=len(classes) * n, replace=False)
    for c, levels in enumerate(classes):
        for i in range(n):
            gsd = float(np.exp(rng.uniform(np.log(0.5), np.log(10.0))))
            rgb = _scene_image(rng, size, gsd, levels[-1])
            sink.image(f"train/{'/'.join(levels)}/P{ids[c * n + i]:07d}.jpg", rgb)
