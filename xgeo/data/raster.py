"""Shared reading machinery of the dataset modules: raster and picture reading, resizing, tiling, pair checks.

Every tile keeps its own CRS and transform (a resized tile's transform is scaled accordingly). Bad input raises one
:class:`~xgeo.errors.DataError` naming the file, what was expected and what was found.

Tiling: tiles of ``tile_size`` on a grid that covers the whole image; the last row and column of tiles are aligned
with the image edge (they overlap their neighbour) so that no pixel is dropped.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine

from ..errors import DataError
from .spec import DatasetSpec

IGNORE_INDEX = 255  # label value of pixels not scored (Vaihingen eroded boundaries)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


class Tile(NamedTuple):
    data: np.ndarray  # (C, H, W) in the sensor's native dtype
    crs: str  # 'EPSG:n', WKT, or '' when the source has none
    transform: tuple[float, float, float, float, float, float]  # affine (a, b, c, d, e, f), rasterio order




# ------------------------------------------------------------------------------------------------------- helpers
def dataset_params(params: dict, dataset_id: str) -> dict:
    try:
        return params["data"]["datasets"][dataset_id]
    except KeyError:
        raise DataError(f"params: expected a section data.datasets.{dataset_id} (tile_size, ...), found none") from None


def _crs_str(crs) -> str:
    if crs is None:
        return ""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


def affine_tuple(t: Affine) -> tuple[float, ...]:
    return tuple(float(v) for v in tuple(t)[:6])


def read_raster(path: Path, bands: int | tuple[int, ...] | None = None, what: str = "",
                out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, str, Affine]:
    """Read a whole raster: (C, H, W) native dtype, CRS string, Affine.

    bands: the band count expected (an int or a tuple of accepted counts); out_shape: resample (bilinear) on read.
    Missing, truncated or corrupt files and a wrong band count raise DataError.
    """
    path = Path(path)
    expect = f"a {what} raster" if what else "a raster"
    if not path.is_file():
        raise DataError(f"{path}: expected {expect}, found no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                accepted = (bands,) if isinstance(bands, int) else bands
                if accepted is not None and src.count not in accepted:
                    raise DataError(f"{path}: expected {' or '.join(map(str, accepted))} band(s) ({what}), "
                                    f"found {src.count}")
                if out_shape is None:
                    data = src.read()
                    transform = src.transform
                else:
                    data = src.read(out_shape=(src.count, *out_shape), resampling=Resampling.bilinear)
                    transform = src.transform @ Affine.scale(src.width / out_shape[1], src.height / out_shape[0])
                return data, _crs_str(src.crs), transform
    except RasterioError as exc:
        raise DataError(f"{path}: expected {expect} readable by GDAL, found a truncated or corrupt file ({exc})") from None


def read_picture(path: Path) -> tuple[np.ndarray, str, Affine]:
    """An RGB picture (JPEG/PNG via Pillow, TIFF via rasterio) -> (3, H, W) uint8; a fourth (alpha) band is dropped."""
    if path.suffix.lower() in (".tif", ".tiff"):
        data, crs, transform = read_raster(path, bands=(3, 4), what="RGB")
        if data.dtype != np.uint8:
            raise DataError(f"{path}: expected an 8-bit RGB image, found dtype {data.dtype}")
        return data[:3], crs, transform
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            data = np.asarray(im).transpose(2, 0, 1).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: expected a JPEG/PNG RGB image, found an unreadable file ({exc})") from None
    return data, "", Affine.identity()


def resize(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased) resize of (C, H, W) or (H, W) to ``size``, keeping the dtype.

    Integers are rounded and clipped to their dtype; NaNs stay NaN only where every contributing pixel is NaN
    (a NaN-weighted average), so a few NaNs in SAR do not spread.
    """
    import torch
    import torch.nn.functional as F

    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    if x.shape[-2:] == out_hw:
        return x
    squeeze = x.ndim == 2
    arr = x[None] if squeeze else x
    t = torch.from_numpy(arr.astype(np.float64))[None]

    def interp(v):
        return F.interpolate(v, size=out_hw, mode="bilinear", align_corners=False, antialias=True)

    nan = torch.isnan(t)
    if bool(nan.any()):
        w = interp((~nan).double())
        y = interp(torch.where(nan, 0.0, t)) / w.clamp_min(1e-12)
        y = torch.where(w > 1e-6, y, torch.nan)
    else:
        y = interp(t)
    y = y[0].numpy()
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        y = np.clip(np.rint(y), info.min, info.max)
    y = y.astype(x.dtype)
    return y[0] if squeeze else y


def resize_nearest(x: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map (H, W) to (size, size): class indices stay class indices."""
    h, w = x.shape[-2:]
    rows = np.minimum((np.arange(size) + 0.5) * h / size, h - 1).astype(np.int64)
    cols = np.minimum((np.arange(size) + 0.5) * w / size, w - 1).astype(np.int64)
    return x[..., rows[:, None], cols[None, :]]


def tile_offsets(length: int, tile: int, multiple: int = 1) -> list[int]:
    """Offsets of tiles covering [0, length): a regular grid whose last tile is aligned with the edge
    (rounded down to ``multiple``, for grids that must map onto a coarser one). Every offset is a multiple of
    ``multiple``: a tile that is not steps by its size rounded down to it (neighbours overlap by the remainder)."""
    if length < tile:
        return []
    last = (length - tile) // multiple * multiple
    offs = list(range(0, last + 1, max(multiple, tile // multiple * multiple)))
    if offs[-1] != last:
        offs.append(last)
    return offs


def window_transform(t: Affine, row: int, col: int, scale: float = 1.0) -> Affine:
    return t @ Affine.translation(col, row) @ Affine.scale(scale)


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: expected {what}, found no such folder")
    return path


def need_tiles(path: Path, shape: tuple[int, int], tile: int) -> None:
    if min(shape) < tile:
        raise DataError(f"{path}: expected images of at least {tile} x {tile} px (tile_size), found "
                        f"{shape[0]} x {shape[1]}; choose a smaller --tile-size")


def check_pair(path_a: Path, a: tuple, path_b: Path, b: tuple, scale: int = 1) -> None:
    """a, b: (data, crs, transform). Raise when the pair's CRS or grid shapes disagree (b is ``scale`` x coarser)."""
    (da, ca, _), (db, cb, _) = a, b
    if ca != cb:
        raise DataError(f"{path_b}: expected the CRS of its pair {path_a.name} ({ca or 'none'}), found {cb or 'none'}")
    ha, wa = da.shape[-2:]
    hb, wb = db.shape[-2:]
    if scale == 1 and (ha, wa) != (hb, wb):
        raise DataError(f"{path_b}: expected the shape of its pair {path_a.name} ({ha} x {wa} px), found {hb} x {wb}")
    if scale != 1 and (abs(ha - hb * scale) >= scale or abs(wa - wb * scale) >= scale):
        raise DataError(f"{path_b}: expected 1/{scale} of the shape of its pair {path_a.name} "
                        f"(about {ha // scale} x {wa // scale} px), found {hb} x {wb}")


def cut_tiles(paths: dict[str, Path], rasters: dict[str, tuple], tile: int) -> Iterator[tuple[str, dict[str, Tile]]]:
    """Cut co-registered rasters {key: (data, crs, Affine)} into tiles; yields (suffix, {key: Tile})."""
    first = next(iter(rasters))
    h, w = rasters[first][0].shape[-2:]
    need_tiles(paths[first], (h, w), tile)
    for r in tile_offsets(h, tile):
        for c in tile_offsets(w, tile):
            yield f"r{r}_c{c}", {k: Tile(np.ascontiguousarray(d[:, r:r + tile, c:c + tile]), crs,
                                         affine_tuple(window_transform(t, r, c)))
                                 for k, (d, crs, t) in rasters.items()}


def nbands(spec: DatasetSpec, key: str) -> int:
    return len(spec.modalities[key].bands)



def picture_sample(path: Path, sample_id: str, split: str, tile: int) -> dict:
    """A picture centre-cropped to a square and resized to tile x tile (its transform follows)."""
    data, crs, t = read_picture(path)
    h, w = data.shape[-2:]
    s = min(h, w)
    r, c = (h - s) // 2, (w - s) // 2
    data = resize(np.ascontiguousarray(data[:, r:r + s, c:c + s]), tile)
    t = window_transform(t, r, c) @ Affine.scale(s / tile)
    return {"id": sample_id, "split": split, "modalities": {"rgb": Tile(data, crs, affine_tuple(t))}, "labels": {}}


def pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


