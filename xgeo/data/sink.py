"""Shared writing machinery of the synthetic datasets: the sink that writes one dataset's files, and the helpers
every dataset's synthetic writer uses (grids, CRSs, dates, phenology, Sentinel-2 rendering).

A dataset module's ``write(sink, spec, cfg, rng)`` writes its files through a :class:`Sink`; ``xgeo.data.synth``
drives it (atomic folder, seeded stream, progress).
"""
from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine
from tqdm import tqdm

from ..sensors import get_sensor
from . import scene as sc


class Sink:
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


def utm(zone: int) -> CRS:
    return CRS.from_epsg(32600 + zone)  # WGS 84 / UTM zone N (northern hemisphere)


def draw_date(rng: np.random.Generator, start: str, end: str) -> dt.datetime:
    a, b = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    return a + dt.timedelta(seconds=int(rng.integers(0, int((b - a).total_seconds()))))


def month_greenness(month: int) -> float:
    """Phenology of a mid-latitude northern summer: 1 in July, 0 in January."""
    return float(0.5 + 0.5 * np.cos(2 * np.pi * (month - 7) / 12))


SEASON_GREENNESS = {"spring": 0.7, "summer": 1.0, "fall": 0.5, "winter": 0.15}


def season_greenness(season: str) -> float:
    return SEASON_GREENNESS[season.split("_")[-1]]


def patch_grid(n: int, size: int, stride: int) -> tuple[int, int, tuple[int, int]]:
    """Rows and columns of a near-square grid of ``n`` patches, and the scene shape it covers."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    return rows, cols, (size + (rows - 1) * stride, size + (cols - 1) * stride)


def bands_nm(sensor: str, bands=None) -> list[float]:
    s = get_sensor(sensor)
    return [s.band(b).wavelength_nm for b in (bands or s.band_names)]


def s2_l1c(scene: sc.Scene, rng: np.random.Generator, greenness: float, clouds: tuple | None = None) -> np.ndarray:
    """Sentinel-2 L1C (top of atmosphere) of all 13 bands, (13, H, W) uint16; optional cloud and shadow layers."""
    wl = bands_nm("s2")
    toa = sc.reflectance(scene, wl, greenness) + sc.path_reflectance(wl)[:, None, None].astype(np.float32)
    if clouds is not None:
        alpha, shade = clouds
        toa = toa * (1.0 - 0.6 * shade * (1.0 - alpha))[None]
        toa = (1.0 - alpha[None]) * toa + alpha[None] * sc.cloud_spectrum(wl)[:, None, None].astype(np.float32)
    return sc.to_s2(toa, rng)




# ------------------------------------------------------------------------- SEN12MS and SEN12MS-CR scenes
# IGBP and LCCS codes (MODIS MCD12Q1) of the latent classes, for SEN12MS's lc files (IGBP, LCCS-LC, LCCS-LU, LCCS-SH)
LC_CODES = np.array([
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


def sen12ms_scene(rng, rows, cols, shape, size, stride, greenness, *, cloudy=False, nan_edges=False):
    """Yield (p number, {s1, s2, lc, s2_cloudy}, transform) for the patches of one SEN12MS-style scene."""
    scene = sc.make_scene(rng, shape, 10.0, sc.random_cover(rng))
    lc_full = LC_CODES[sc.block_mode(scene.classes, 50, len(sc.CLASSES))]  # MODIS 500 m cells on the 10 m grid
    zone = int(rng.integers(10, 60))
    x0, y0 = float(rng.integers(2, 8)) * 1e5, float(rng.integers(5, 70)) * 1e5
    s1_full = sc.sar_backscatter(scene, rng, greenness=greenness)
    s2_full = s2_l1c(scene, rng, greenness)
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
            files["s2_cloudy"] = s2_l1c(patch, rng, max(0.0, greenness - 0.05), clouds=clouds)
        yield int(p_numbers[k]), files, from_origin(x0 + c * stride * 10.0, y0 - r * stride * 10.0, 10.0, 10.0), zone



# ------------------------------------------------------------------- aerial scene images (GeoPile, MillionAID)
# Scene recipes by a keyword of the class name (first match wins); otherwise a random cover
RECIPES = (
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


def recipe(rng: np.random.Generator, name: str) -> sc.Cover:
    for keys, fields in RECIPES:
        if any(k in name for k in keys):
            return sc.random_cover(rng, **fields)
    return sc.random_cover(rng)


def scene_image(rng: np.random.Generator, size: int, gsd: float, name: str) -> np.ndarray:
    """An aerial RGB image (3, size, size) uint8 of a scene drawn by the recipe of a class ``name``."""
    scene = sc.make_scene(rng, (size, size), gsd, recipe(rng, name))
    shadow = sc.cast_shadows(scene, azimuth_deg=float(rng.uniform(90, 270)), elevation_deg=float(rng.uniform(30, 70)))
    return sc.to_uint8(sc.reflectance(scene, bands_nm("rgb"), float(rng.uniform(0.4, 1.0)), shadow))
