"""What the change-detection datasets (OSCD, DSIFN) share: the latent change between two dates and the checks of a
date pair. Not a dataset (it lives beside the shared machinery, outside the registry of datasets).

:func:`change_scenes` draws one latent scene for the first date and derives the second from it by the changes such
benchmarks label: new buildings on open ground, cleared vegetation (forest and orchards turned to bare soil) and a
water level that rose or fell over low ground. The change mask is every pixel whose latent class differs between the
two dates; what else differs between the renderings (season, illumination, sensor noise) is not change, as in the
real labels.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import scene as sc
from .raster import read_picture, read_raster

CHANGE_CLASSES = ("no_change", "change")


def change_scenes(rng: np.random.Generator, shape: tuple[int, int], gsd: float, cover: sc.Cover,
                  amount: float = 1.0) -> tuple[sc.Scene, sc.Scene, np.ndarray]:
    """(scene at date 1, scene at date 2, change mask (H, W) uint8 0/1).

    ``amount`` scales how much changes (about 3-8 % of the pixels at 1). Each of the three kinds happens with its own
    probability, and at least one always does.
    """
    s1 = sc.make_scene(rng, shape, gsd, cover)
    classes, height = s1.classes.copy(), s1.height.copy()
    albedo, terrain = s1.albedo.copy(), s1.terrain
    h, w = shape
    px = 1.0 / gsd
    kinds = rng.random(3) < 0.7
    if not kinds.any():
        kinds[int(rng.integers(0, 3))] = True
    # new buildings: rectangles on open ground (low vegetation, cropland, bare soil)
    if kinds[0]:
        open_ground = np.isin(classes, (sc.LOW_VEG, sc.CROPLAND, sc.BARE))
        if open_ground.any():
            lo, hi = cover.building_m
            side = max((lo + hi) / 2 * px, 2.0)
            n = max(1, int(amount * 0.03 * h * w / side**2))
            for cy, cx in zip(*np.unravel_index(rng.choice(np.flatnonzero(open_ground), size=n), shape)):
                sy, sx = rng.uniform(max(lo * px, 2.0), max(hi * px, 3.0), size=2)
                ys = slice(max(0, int(cy - sy / 2)), min(h, int(cy + sy / 2) + 1))
                xs = slice(max(0, int(cx - sx / 2)), min(w, int(cx + sx / 2) + 1))
                site = open_ground[ys, xs]
                classes[ys, xs][site] = sc.BUILDING
                height[ys, xs][site] = float(rng.uniform(*cover.height_m))
                albedo[ys, xs][site] = float(rng.uniform(0.7, 1.3))
    # cleared vegetation: a smooth blob of forest (or, without forest, of low vegetation) becomes bare soil
    if kinds[1]:
        veg = np.isin(classes, sc.FOREST)
        if veg.sum() < 0.02 * h * w:
            veg = veg | (classes == sc.LOW_VEG)
        if veg.any():
            field = sc.smooth_noise(rng, shape, max(40 * px, 2.0))
            cleared = veg & (field >= np.quantile(field[veg], 1.0 - min(0.5, amount * 0.25)))
            classes[cleared] = sc.BARE
            height[cleared] = 0.0
            albedo[cleared] = 1.0
    # water level: the lowest land floods (or the shore falls dry when the water was high)
    if kinds[2]:
        water = classes == sc.WATER
        land = ~water & (classes != sc.BUILDING)
        if water.any() and rng.random() < 0.5:
            dry = water & (terrain >= np.quantile(terrain[water], 1.0 - min(0.6, 0.3 * amount)))
            classes[dry] = sc.BARE
        elif land.any():
            flood = land & (terrain <= np.quantile(terrain[land], min(0.5, 0.04 * amount + (water.mean()))))
            classes[flood] = sc.WATER
            height[flood] = 0.0
    s2 = replace(s1, classes=classes, height=height, albedo=albedo)
    mask = (classes != s1.classes).astype(np.uint8)
    return s1, s2, mask


# ------------------------------------------------------------------------------------------------- pair checks
def check_dates(path1: Path, a: tuple, path2: Path, b: tuple) -> None:
    """a, b: (data, crs, transform) of the two dates. One error naming the second file when they disagree."""
    (da, ca, _), (db, cb, _) = a, b
    if da.shape[-2:] != db.shape[-2:]:
        raise DataError(f"{path2}: expected the size of the first date {path1} ({da.shape[-2]} x {da.shape[-1]} "
                        f"px), found {db.shape[-2]} x {db.shape[-1]}")
    if ca != cb:
        raise DataError(f"{path2}: expected the CRS of the first date {path1} ({ca or 'none'}), found {cb or 'none'}")


def read_change_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A change mask (PNG, JPEG or GeoTIFF; 0 = no change, anything else = change) -> (H, W) uint8 0/1, checked
    against the image size ``shape``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: expected a change mask, found no such file")
    if path.suffix.lower() in (".tif", ".tiff"):
        data = read_raster(path, (1, 3, 4), "change mask")[0][0]
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                data = np.asarray(im.convert("L"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: expected a PNG/JPEG change mask, found an unreadable file ({exc})") from None
    if data.shape != tuple(shape):
        raise DataError(f"{path}: expected a change mask of the image size ({shape[0]} x {shape[1]} px), found "
                        f"{data.shape[0]} x {data.shape[1]}")
    # JPEG-compressed masks carry ringing around 0 and 255: threshold at the middle
    return (data > 127).astype(np.uint8)


def read_rgb(path: Path) -> tuple:
    """An RGB image of one date, (3, H, W) uint8, CRS, transform; a missing file is named."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: expected an RGB image of this date, found no such file")
    return read_picture(path)
