"""MDAS: the Augsburg multimodal benchmark (7 May 2018); xgeo uses its 3K aerial RGB orthophoto and 3K DSM, the same
ground at two pixel sizes, as a co-located pretraining pair.

Bands: RGB (uint8; the product's fourth band is dropped); DSM (float32, metres, nodata -9999). Both are resampled
(bilinear) onto the finer grid over their common footprint, cut into ``tile_size`` tiles and resized to
``resize_to``.

Layouts (detected; ``--layout`` when ambiguous):

* ``original``: ``Augsburg_data_4_publication/sub_area_<n>/{3K_RGB.tif, 3K_DSM.tif}``;
* ``torchgeo``: TorchGeo's mirror (huggingface.co/datasets/torchgeo/mdas, what ``xgeo data download`` fetches):
  ``Augsburg_data_4_publication/sub_area_<n>/{3K_RGB_sub_area<n>.tif, 3K_DSM_sub_area<n>.tif}``.

Citation: Hu et al., MDAS: a new multimodal benchmark dataset for remote sensing, Earth Syst. Sci. Data 15, 113, 2023.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
from rasterio.enums import Resampling
from rasterio.transform import Affine

from ...errors import DataError, XGeoError
from ...sensors import SENSORS, get_sensor
from .. import scene as sc
from ..raster import Tile, affine_tuple, cut_tiles, dataset_params, nbands, read_raster, resize
from ..sink import Sink, bands_nm, from_origin, utm
from ..spec import DatasetSpec, Layout, Source, modality

_ROOT = "Augsburg_data_4_publication"
_NAMES = {"original": ("3K_RGB.tif", "3K_DSM.tif"),
          "torchgeo": ("3K_RGB_sub_area{n}.tif", "3K_DSM_sub_area{n}.tif")}

SPEC = DatasetSpec(
    id="mdas", title="MDAS (Augsburg multimodal benchmark: 3K DSM and RGB used here)",
    citation="Hu et al., MDAS: a new multimodal benchmark dataset for remote sensing, ESSD 15:113, 2023",
    role="pretrain", task=None,
    modalities={"rgb": modality("rgb"), "dsm": modality("dsm")}, pairs=(("rgb", "dsm"),),
    sources=(
        Source("https://huggingface.co/datasets/torchgeo/mdas/resolve/860226b74269f1cf1bed8ea3c03f571ae701144c/Augsburg_data_4_publication.zip",
               "Augsburg_data_4_publication.zip", "7b63c26e3717cb52c6ba47d215f18d5b"),
    ),
    layout="Augsburg_data_4_publication/{sub_area_1,sub_area_2,sub_area_3,...}/{3K_RGB.tif,3K_DSM.tif,...}; "
           "3K_RGB 4 x uint8 (R,G,B + a fourth band, dropped), 3K_DSM 1 x float32, same area at different pixel sizes",
    splits="all sub areas are pretraining data; RGB and DSM are resampled to one grid, tiled and resized",
    license="CC-BY-SA-4.0",
)


# ----------------------------------------------------------------------------------------------------- readers
def _common_grid(p_a: Path, a: tuple, p_b: Path, b: tuple) -> tuple[Affine, tuple[int, int]]:
    """The finer of the two pixel sizes over the intersection of the two footprints (north-up grids)."""
    (da, ca, ta), (db, cb, tb) = a, b
    if ca != cb:
        raise DataError(f"{p_b}: expected the CRS of its pair {p_a.name} ({ca or 'none'}), found {cb or 'none'}")
    if ta.b != 0 or ta.d != 0 or tb.b != 0 or tb.d != 0:
        raise DataError(f"{p_b}: expected north-up grids for {p_a.name} and {p_b.name}, found rotated transforms")

    def bounds(d, t):
        h, w = d.shape[-2:]
        x0, y0 = t.c, t.f
        x1, y1 = t.c + t.a * w, t.f + t.e * h
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    la, ba_, ra, ta_ = bounds(da, ta)
    lb, bb, rb, tb_ = bounds(db, tb)
    left, bottom, right, top = max(la, lb), max(ba_, bb), min(ra, rb), min(ta_, tb_)
    if right <= left or top <= bottom:
        raise DataError(f"{p_b}: expected a footprint overlapping its pair {p_a.name}, found none")
    res = min(abs(ta.a), abs(ta.e), abs(tb.a), abs(tb.e))
    shape = (int(round((top - bottom) / res)), int(round((right - left) / res)))
    return Affine(res, 0.0, left, 0.0, -res, top), shape


def _warp(data: np.ndarray, crs: str, src_t: Affine, dst_t: Affine, shape: tuple[int, int], nodata) -> np.ndarray:
    from rasterio.warp import reproject

    if src_t == dst_t and data.shape[-2:] == shape:
        return data
    out = np.zeros((data.shape[0], *shape), dtype=data.dtype)
    if nodata is not None:
        out[:] = nodata
    reproject(data, out, src_transform=src_t, src_crs=crs or None, dst_transform=dst_t, dst_crs=crs or None,
              src_nodata=nodata, dst_nodata=nodata, resampling=Resampling.bilinear)
    return out



def _number(p: Path) -> int:
    found = re.findall(r"\d+$", p.name)
    return int(found[0]) if found else 0


def _planner(layout: str):
    def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
        """(RGB path, DSM path, sub-area name) of every sub_area_<n> folder, by n."""
        root = raw / _ROOT
        if not root.is_dir():
            raise DataError(f"{root}: expected the MDAS folder {_ROOT}, found no such folder")
        areas = sorted(root.glob("sub_area_*"), key=_number)
        if not areas:
            raise DataError(f"{root}: expected sub_area_<n> folders, found none")
        units = []
        for area in areas:
            rgb, dsm = (area / name.format(n=_number(area)) for name in _NAMES[layout])
            for p in (rgb, dsm):
                if not p.is_file():
                    raise DataError(f"{p}: expected a {p.stem.split('_sub')[0]} raster of layout {layout}, found no such file")
            units.append((rgb.relative_to(raw).as_posix(), dsm.relative_to(raw).as_posix(), area.name))
        return units

    return plan


def read_area(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    """3K RGB + 3K DSM of one sub area on one grid, tiles of tile_size resized to resize_to."""
    rel_rgb, rel_dsm, name = unit
    dp = dataset_params(params, spec.id)
    tile, size = int(dp["tile_size"]), int(dp.get("resize_to") or dp["tile_size"])
    dsm_nodata = SENSORS["dsm"].nodata
    p_rgb, p_dsm = raw / rel_rgb, raw / rel_dsm
    rgb = read_raster(p_rgb, (3, 4), "3K RGB")
    dsm = read_raster(p_dsm, nbands(spec, "dsm"), "3K DSM")
    grid, shape = _common_grid(p_rgb, rgb, p_dsm, dsm)
    rasters = {"rgb": (_warp(rgb[0][:3], rgb[1], rgb[2], grid, shape, None), rgb[1], grid),
               "dsm": (_warp(dsm[0], dsm[1], dsm[2], grid, shape, dsm_nodata), dsm[1], grid)}
    for suffix, tiles in cut_tiles({"rgb": p_rgb, "dsm": p_dsm}, rasters, tile):
        resized = {k: Tile(resize(t.data, size), t.crs, affine_tuple(Affine(*t.transform) @ Affine.scale(tile / size)))
                   for k, t in tiles.items()}
        yield {"id": f"{name}_{suffix}", "split": "train", "modalities": resized, "labels": {}}


LAYOUTS = {name: Layout(name, f"{_ROOT}/sub_area_<n>/{{{rgb}, {dsm}}}".replace("{n}", "<n>"),
                        expects=(f"{_ROOT}/sub_area_*/{rgb.replace('{n}', '*')}",), plan=_planner(name), read=read_area)
           for name, (rgb, dsm) in _NAMES.items()}


# ------------------------------------------------------------------------------------------------- synthetic copy
_MDAS_COVER = sc.Cover(water=0.05, forest=0.1, low_vegetation=0.2, cropland=0.05, bare_soil=0.02, urban=0.58,
                       block_m=70.0, road_m=8.0, building_m=(10.0, 30.0), height_m=(6.0, 22.0), built=0.4,
                       relief_m=3.0, elevation_m=490.0)


def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
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
        refl = sc.block_mean(sc.reflectance(scene, bands_nm("rgb"), 0.9, shadow), 2)
        rgb = sc.to_uint8(refl)
        alpha = np.full((1, rows, cols), 255, np.uint8)  # the fourth band of the 3K RGB product
        height = sc.block_mean(sc.dsm(scene, rng, noise_m=0.1)[0], 3).astype(np.float32)
        x0, y0 = 638000.0 + 500.0 * area, 5358000.0 - 400.0 * area
        crs = utm(32)
        sink.tif(f"Augsburg_data_4_publication/sub_area_{area}/3K_RGB.tif", np.concatenate([rgb, alpha]), crs,
                 from_origin(x0, y0, 2 * fine, 2 * fine))
        sink.tif(f"Augsburg_data_4_publication/sub_area_{area}/3K_DSM.tif", height[None], crs,
                 from_origin(x0, y0, 3 * fine, 3 * fine), nodata=get_sensor("dsm").nodata)


def to_torchgeo(root: Path) -> None:
    """Re-arrange the original layout (in place) into TorchGeo's mirror: 3K_{RGB,DSM}_sub_area<n>.tif."""
    for area in sorted((root / _ROOT).glob("sub_area_*")):
        for old, new in zip(_NAMES["original"], _NAMES["torchgeo"]):
            (area / old).rename(area / new.format(n=_number(area)))


ARRANGE = {"torchgeo": to_torchgeo}
