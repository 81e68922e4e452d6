"""Readers of the eight datasets' real on-disk layouts (whatever wrote them: a download or ``xgeo.data.synth``).

``READERS[dataset_id](raw_dir, spec, params)`` yields samples tile by tile::

    {"id": str, "split": "train" | "val" | "test",
     "modalities": {key: Tile(data (C, H, W) native dtype, crs: str, transform: (a, b, c, d, e, f))},
     "labels": {name: array}}   # e.g. "multilabel" (19,) uint8, "mask" (H, W) uint8

Modality keys and band orders are the catalog's (``xgeo.catalog``); tile sizes come from
``data.datasets.<id>.{tile_size, resize_to, val_fraction}`` in params. Every tile keeps its own CRS and transform
(a resized tile's transform is scaled accordingly). Bad input raises one :class:`~xgeo.errors.DataError` naming the
file, what was expected and what was found.

Tiling: tiles of ``tile_size`` on a grid that covers the whole image; the last row and column of tiles are aligned
with the image edge (they overlap their neighbour) so that no pixel is dropped.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine

from ..catalog import DatasetSpec
from ..errors import DataError
from ..sensors import SENSORS

IGNORE_INDEX = 255  # label value of pixels not scored (Vaihingen eroded boundaries)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


class Tile(NamedTuple):
    data: np.ndarray  # (C, H, W) in the sensor's native dtype
    crs: str  # 'EPSG:n', WKT, or '' when the source has none
    transform: tuple[float, float, float, float, float, float]  # affine (a, b, c, d, e, f), rasterio order


Sample = dict
Reader = Callable[[Path, DatasetSpec, dict], Iterator[Sample]]
READERS: dict[str, Reader] = {}


def reader(dataset_id: str):
    def register(fn: Reader) -> Reader:
        READERS[dataset_id] = fn
        return fn

    return register


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


def _affine_tuple(t: Affine) -> tuple[float, ...]:
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
    (rounded down to ``multiple``, for grids that must map onto a coarser one)."""
    if length < tile:
        return []
    last = (length - tile) // multiple * multiple
    offs = list(range(0, last + 1, tile))
    if offs[-1] != last:
        offs.append(last)
    return offs


def _window_transform(t: Affine, row: int, col: int, scale: float = 1.0) -> Affine:
    return t @ Affine.translation(col, row) @ Affine.scale(scale)


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: expected {what}, found no such folder")
    return path


def _need_tiles(path: Path, shape: tuple[int, int], tile: int) -> None:
    if min(shape) < tile:
        raise DataError(f"{path}: expected images of at least {tile} x {tile} px (tile_size), found "
                        f"{shape[0]} x {shape[1]}; choose a smaller --tile-size")


def _check_pair(path_a: Path, a: tuple, path_b: Path, b: tuple, scale: int = 1) -> None:
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


def _tiles(paths: dict[str, Path], rasters: dict[str, tuple], tile: int) -> Iterator[tuple[str, dict[str, Tile]]]:
    """Cut co-registered rasters {key: (data, crs, Affine)} into tiles; yields (suffix, {key: Tile})."""
    first = next(iter(rasters))
    h, w = rasters[first][0].shape[-2:]
    _need_tiles(paths[first], (h, w), tile)
    for r in tile_offsets(h, tile):
        for c in tile_offsets(w, tile):
            yield f"r{r}_c{c}", {k: Tile(np.ascontiguousarray(d[:, r:r + tile, c:c + tile]), crs,
                                         _affine_tuple(_window_transform(t, r, c)))
                                 for k, (d, crs, t) in rasters.items()}


def _nbands(spec: DatasetSpec, key: str) -> int:
    return len(spec.modalities[key].bands)


# ------------------------------------------------------------------------------------------------------- SEN12MS
def _split_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: expected a split list (one s2 file name per line), found no such file")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


@reader("sen12ms")
def read_sen12ms(raw: Path, spec: DatasetSpec, params: dict) -> Iterator[Sample]:
    """ROIs{season}/s2_<scene>/ROIs{season}_s2_<scene>_p<n>.tif and its s1 pair (swap _s2_ for _s1_);
    splits from splits/{train,test}_list.txt (s2 file names)."""
    tile = int(dataset_params(params, spec.id)["tile_size"])
    pattern = re.compile(r"^(ROIs\d+_[a-z]+)_s2_(\w+?)_p(\d+)\.tif$")
    for split in ("train", "test"):
        for name in _split_list(raw / "splits" / f"{split}_list.txt"):
            m = pattern.match(name)
            if m is None:
                raise DataError(f"{raw / 'splits' / f'{split}_list.txt'}: expected s2 file names like "
                                f"ROIs1158_spring_s2_1_p30.tif, found {name!r}")
            season, scene = m.group(1), m.group(2)
            p2 = raw / season / f"s2_{scene}" / name
            p1 = raw / season / f"s1_{scene}" / name.replace("_s2_", "_s1_")
            s2 = read_raster(p2, _nbands(spec, "s2"), "Sentinel-2")
            s1 = read_raster(p1, _nbands(spec, "s1"), "Sentinel-1")
            _check_pair(p2, s2, p1, s1)
            for suffix, tiles in _tiles({"s1": p1, "s2": p2}, {"s1": s1, "s2": s2}, tile):
                yield {"id": f"{Path(name).stem}_{suffix}", "split": split, "modalities": tiles, "labels": {}}


# ---------------------------------------------------------------------------------------------------- SEN12MS-CR
def _roi_split(spec: DatasetSpec, season: str, roi: int) -> str:
    for split in ("test", "val"):
        if roi in spec.extra[split].get(season, ()):
            return split
    return "train"


@reader("sen12ms-cr")
def read_sen12ms_cr(raw: Path, spec: DatasetSpec, params: dict) -> Iterator[Sample]:
    """ROIs{season}_{s1,s2,s2_cloudy}/{kind}_<roi>/ROIs{season}_{kind}_<roi>_p<n>.tif; split by ROI (catalog)."""
    tile = int(dataset_params(params, spec.id)["tile_size"])
    seasons = [s for s in spec.extra["seasons"] if (raw / f"ROIs{s}_s2").is_dir()]
    if not seasons:
        raise DataError(f"{raw}: expected SEN12MS-CR folders ROIs<season>_s2 (seasons {list(spec.extra['seasons'])}), "
                        f"found none")
    pattern = re.compile(r"_s2_(\d+)_p(\d+)\.tif$")
    for season in seasons:
        for kind in ("s1", "s2_cloudy"):
            _need_dir(raw / f"ROIs{season}_{kind}", f"the {kind} folder of season {season} (missing modality)")
        for p2 in sorted((raw / f"ROIs{season}_s2").glob("s2_*/*.tif")):
            m = pattern.search(p2.name)
            if m is None:
                raise DataError(f"{p2}: expected a name like ROIs{season}_s2_<roi>_p<n>.tif, found {p2.name!r}")
            roi = int(m.group(1))
            paths = {"s1": raw / f"ROIs{season}_s1" / f"s1_{roi}" / p2.name.replace("_s2_", "_s1_"),
                     "s2_cloudy": raw / f"ROIs{season}_s2_cloudy" / f"s2_cloudy_{roi}" / p2.name.replace("_s2_", "_s2_cloudy_"),
                     "s2": p2}
            sensors = {"s1": "Sentinel-1", "s2_cloudy": "cloudy Sentinel-2", "s2": "Sentinel-2"}
            rasters = {k: read_raster(p, _nbands(spec, k), sensors[k]) for k, p in paths.items()}
            for k in ("s1", "s2_cloudy"):
                _check_pair(p2, rasters["s2"], paths[k], rasters[k])
            for suffix, tiles in _tiles(paths, rasters, tile):
                yield {"id": f"{p2.stem}_{suffix}", "split": _roi_split(spec, season, roi), "modalities": tiles,
                       "labels": {}}


# ---------------------------------------------------------------------------------------------------- BigEarthNet
def bigearthnet_class_names(spec: DatasetSpec) -> list[str]:
    """The 19 class names: catalog ``labels19`` when given, else each 19-class index named by its 43-class sources."""
    if "labels19" in spec.extra:
        return list(spec.extra["labels19"])
    l43 = _labels43(spec)
    groups: dict[int, list[str]] = {}
    for i43, i19 in sorted(spec.extra["labels43_to_19"].items()):
        groups.setdefault(i19, []).append(l43[i43])
    return [" / ".join(groups[i]) for i in sorted(groups)]


def _labels43(spec: DatasetSpec) -> list[str]:
    if "labels43" not in spec.extra:
        raise DataError("xgeo/catalog.py: expected extra['labels43'] (the 43 BigEarthNet class names) in the "
                        "bigearthnet entry, found none")
    return list(spec.extra["labels43"])


@reader("bigearthnet")
def read_bigearthnet(raw: Path, spec: DatasetSpec, params: dict) -> Iterator[Sample]:
    """BigEarthNet-v1.0/<S2>/<S2>_<band>.tif (12 bands; 20/60 m bands resampled bilinear to the 10 m grid),
    BigEarthNet-S1-v1.0/<S1>/<S1>_{VV,VH}.tif; labels (43 names) from <S2>_labels_metadata.json mapped to 19;
    splits from splits/{train,val,test}.csv ('S2name,S1name'). Patches are resized to tile_size."""
    tile = int(dataset_params(params, spec.id)["tile_size"])
    s2_root = _need_dir(raw / "BigEarthNet-v1.0", "the BigEarthNet Sentinel-2 folder (missing modality)")
    s1_root = _need_dir(raw / "BigEarthNet-S1-v1.0", "the BigEarthNet Sentinel-1 folder (missing modality)")
    index43 = {name: i for i, name in enumerate(_labels43(spec))}
    to19 = spec.extra["labels43_to_19"]
    n19 = max(to19.values()) + 1
    s2_bands, s1_bands = spec.modalities["s2"].bands, spec.modalities["s1"].bands
    s2_sensor = SENSORS[spec.modalities["s2"].sensor]
    fine = [b for b in s2_bands if s2_sensor.band(b).gsd_m == min(s2_sensor.band(x).gsd_m for x in s2_bands)][0]
    for split in ("train", "val", "test"):
        csv = raw / "splits" / f"{split}.csv"
        if not csv.is_file():
            raise DataError(f"{csv}: expected a split file with 'S2name,S1name' lines, found no such file")
        for ln, line in enumerate(csv.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2:
                raise DataError(f"{csv}: line {ln}: expected 'S2name,S1name', found {line!r}")
            s2n, s1n = parts
            ref = read_raster(s2_root / s2n / f"{s2n}_{fine}.tif", 1, f"Sentinel-2 {fine}")
            hw = ref[0].shape[-2:]
            bands = []
            for b in s2_bands:
                p = s2_root / s2n / f"{s2n}_{b}.tif"
                data, crs, _ = ref if b == fine else read_raster(p, 1, f"Sentinel-2 {b}", out_shape=hw)
                if crs != ref[1]:
                    raise DataError(f"{p}: expected the CRS of band {fine} ({ref[1]}), found {crs}")
                bands.append(data[0])
            s2 = (np.stack(bands), ref[1], ref[2])
            s1_files = [s1_root / s1n / f"{s1n}_{b}.tif" for b in s1_bands]
            s1_parts = [read_raster(p, 1, f"Sentinel-1 {b}") for p, b in zip(s1_files, s1_bands)]
            s1 = (np.concatenate([d for d, _, _ in s1_parts]), s1_parts[0][1], s1_parts[0][2])
            for p, part in zip(s1_files[1:], s1_parts[1:]):
                _check_pair(s1_files[0], s1_parts[0], p, part)
            _check_pair(s2_root / s2n / f"{s2n}_{fine}.tif", s2, s1_files[0], s1)
            meta_path = s2_root / s2n / f"{s2n}_labels_metadata.json"
            if not meta_path.is_file():
                raise DataError(f"{meta_path}: expected the patch's labels metadata (JSON), found no such file")
            try:
                names = json.loads(meta_path.read_text())["labels"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{meta_path}: expected JSON with a 'labels' list, found {exc!r}") from None
            multilabel = np.zeros(n19, dtype=np.uint8)
            for name in names:
                if name not in index43:
                    raise DataError(f"{meta_path}: expected labels of the 43-class nomenclature, found {name!r}")
                i19 = to19.get(index43[name])
                if i19 is not None:
                    multilabel[i19] = 1
            tiles = {}
            for key, (data, crs, t) in (("s1", s1), ("s2", s2)):
                h, w = data.shape[-2:]
                tiles[key] = Tile(resize(data, tile), crs, _affine_tuple(t @ Affine.scale(w / tile, h / tile)))
            yield {"id": s2n, "split": split, "modalities": tiles, "labels": {"multilabel": multilabel}}


# ------------------------------------------------------------------------------------------------------ Vaihingen
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


@reader("vaihingen")
def read_vaihingen(raw: Path, spec: DatasetSpec, params: dict) -> Iterator[Sample]:
    """top/top_mosaic_09cm_area{N}.tif (IRRG) + dsm/dsm_09cm_matching_area{N}.tif + colour-coded ground truth
    (gts_for_participants/) decoded to class indices; eroded labels (gts_eroded_for_participants/) when present."""
    tile = int(dataset_params(params, spec.id)["tile_size"])
    top = _need_dir(raw / "top", "the IRRG orthophoto folder top/ (missing modality)")
    dsm_dir = _need_dir(raw / "dsm", "the DSM folder dsm/ (missing modality)")
    gts = _need_dir(raw / "gts_for_participants", "the ground-truth folder gts_for_participants/")
    eroded = raw / "gts_eroded_for_participants"
    colours = spec.extra["colours"]
    train, test = set(spec.extra["train_areas"]), set(spec.extra["test_areas"])
    files = sorted(top.glob("top_mosaic_09cm_area*.tif"), key=lambda p: int(re.findall(r"\d+$", p.stem)[0]))
    if not files:
        raise DataError(f"{top}: expected top_mosaic_09cm_area<N>.tif files, found none")
    for p in files:
        area = int(re.findall(r"\d+$", p.stem)[0])
        split = "train" if area in train else "test" if area in test else None
        if split is None:
            raise DataError(f"{p}: expected an area of the catalog's train or test lists, found area {area}")
        irrg = read_raster(p, _nbands(spec, "irrg"), "IRRG")
        pd = dsm_dir / f"dsm_09cm_matching_area{area}.tif"
        dsm = read_raster(pd, _nbands(spec, "dsm"), "DSM")
        _check_pair(p, irrg, pd, dsm)
        pg = gts / p.name
        gt = read_raster(pg, 3, "colour-coded labels")
        _check_pair(p, irrg, pg, gt)
        labels = {"mask": _decode_colours(pg, gt[0], colours, allow_black=False)}
        pe = eroded / f"{p.stem}_noBoundary.tif"
        if eroded.is_dir():
            ge = read_raster(pe, 3, "eroded colour-coded labels")
            _check_pair(p, irrg, pe, ge)
            labels["mask_eroded"] = _decode_colours(pe, ge[0], colours, allow_black=True)
        for suffix, tiles in _tiles({"irrg": p, "dsm": pd}, {"irrg": irrg, "dsm": dsm}, tile):
            r, c = (int(v) for v in re.findall(r"\d+", suffix))
            yield {"id": f"area{area}_{suffix}", "split": split, "modalities": tiles,
                   "labels": {k: np.ascontiguousarray(v[r:r + tile, c:c + tile]) for k, v in labels.items()}}


# ----------------------------------------------------------------------------------------------------------- MDAS
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


@reader("mdas")
def read_mdas(raw: Path, spec: DatasetSpec, params: dict) -> Iterator[Sample]:
    """Augsburg_data_4_publication/sub_area_<n>/{3K_RGB.tif, 3K_DSM.tif}: both resampled (bilinear) onto the finer
    grid over their common footprint; RGB's fourth band dropped; tiles of tile_size resized to resize_to."""
    dp = dataset_params(params, spec.id)
    tile, size = int(dp["tile_size"]), int(dp.get("resize_to") or dp["tile_size"])
    root = _need_dir(raw / "Augsburg_data_4_publication", "the MDAS folder Augsburg_data_4_publication")
    areas = sorted(root.glob("sub_area_*"), key=lambda p: int(re.findall(r"\d+$", p.name)[0]) if re.findall(r"\d+$", p.name) else 0)
    if not areas:
        raise DataError(f"{root}: expected sub_area_<n> folders, found none")
    dsm_nodata = SENSORS["dsm"].nodata
    for area in areas:
        p_rgb, p_dsm = area / "3K_RGB.tif", area / "3K_DSM.tif"
        rgb = read_raster(p_rgb, (3, 4), "3K RGB")
        dsm = read_raster(p_dsm, _nbands(spec, "dsm"), "3K DSM")
        grid, shape = _common_grid(p_rgb, rgb, p_dsm, dsm)
        rasters = {"rgb": (_warp(rgb[0][:3], rgb[1], rgb[2], grid, shape, None), rgb[1], grid),
                   "dsm": (_warp(dsm[0], dsm[1], dsm[2], grid, shape, dsm_nodata), dsm[1], grid)}
        for suffix, tiles in _tiles({"rgb": p_rgb, "dsm": p_dsm}, rasters, tile):
            resized = {k: Tile(resize(t.data, size), t.crs,
                               _affine_tuple(Affine(*t.transform) @ Affine.scale(tile / size)))
                       for k, t in tiles.items()}
            yield {"id": f"{area.name}_{suffix}", "split": "train", "modalities": resized, "labels": {}}


# ------------------------------------------------------------------------------------------------------ SpaceNet2
@reader("spacenet2")
def read_spacenet2(raw: Path, spec: DatasetSpec, params: dict) -> Iterator[Sample]:
    """AOI_<n>_<City>_Train/{PAN,MUL,MUL-PanSharpen}/<PRODUCT>_AOI_<n>_<City>_img<N>.tif: PAN and MUL-PanSharpen
    tiles of tile_size, MUL tiles of tile_size / 4 at the matching place; a seeded split by image id
    (``val_fraction`` of the images in val)."""
    dp = dataset_params(params, spec.id)
    tile = int(dp["tile_size"])
    ratio = int(spec.extra["ratio"])
    if tile % ratio:
        raise DataError(f"params data.datasets.spacenet2.tile_size: expected a multiple of {ratio}, found {tile}")
    aois = sorted(p for p in raw.glob("AOI_*_Train") if p.is_dir())
    if not aois:
        raise DataError(f"{raw}: expected AOI_<n>_<City>_Train folders, found none")
    pans = []
    for aoi in aois:
        for kind in ("PAN", "MUL", "MUL-PanSharpen"):
            _need_dir(aoi / kind, f"the {kind} folder (missing modality)")
        pans += sorted((aoi / "PAN").glob("PAN_*.tif"), key=lambda p: (p.stem.rsplit("img", 1)[0],
                                                                        int(re.findall(r"\d+$", p.stem)[0])))
    if not pans:
        raise DataError(f"{raw}: expected PAN_<AOI>_img<N>.tif files under AOI_*_Train/PAN, found none")
    image_ids = [p.stem[len("PAN_"):] for p in pans]
    rng = np.random.default_rng(int(params.get("seed", 0)))
    n_val = int(round(float(dp.get("val_fraction", 0.2)) * len(image_ids)))
    val = {image_ids[i] for i in rng.permutation(len(image_ids))[:n_val]}
    for p_pan, image_id in zip(pans, image_ids):
        aoi = p_pan.parent.parent
        paths = {"pan": p_pan, "mul": aoi / "MUL" / f"MUL_{image_id}.tif",
                 "mul_pansharpen": aoi / "MUL-PanSharpen" / f"MUL-PanSharpen_{image_id}.tif"}
        r = {k: read_raster(p, _nbands(spec, k), f"WorldView-3 {k}") for k, p in paths.items()}
        _check_pair(p_pan, r["pan"], paths["mul_pansharpen"], r["mul_pansharpen"])
        _check_pair(p_pan, r["pan"], paths["mul"], r["mul"], scale=ratio)
        h, w = r["pan"][0].shape[-2:]
        _need_tiles(p_pan, (h, w), tile)
        mh, mw = r["mul"][0].shape[-2:]
        mt = tile // ratio
        for y in tile_offsets(h, tile, ratio):
            for x in tile_offsets(w, tile, ratio):
                my, mx = min(y // ratio, mh - mt), min(x // ratio, mw - mt)
                tiles = {}
                for k, (d, crs, t) in r.items():
                    if k == "mul":
                        tiles[k] = Tile(np.ascontiguousarray(d[:, my:my + mt, mx:mx + mt]), crs,
                                        _affine_tuple(_window_transform(t, my, mx)))
                    else:
                        tiles[k] = Tile(np.ascontiguousarray(d[:, y:y + tile, x:x + tile]), crs,
                                        _affine_tuple(_window_transform(t, y, x)))
                yield {"id": f"{image_id}_r{y}_c{x}", "split": "val" if image_id in val else "train",
                       "modalities": tiles, "labels": {}}


# ---------------------------------------------------------------------------------------------- GeoPile, MillionAID
def _picture_sample(path: Path, sample_id: str, split: str, tile: int) -> Sample:
    """A picture centre-cropped to a square and resized to tile x tile (its transform follows)."""
    data, crs, t = read_picture(path)
    h, w = data.shape[-2:]
    s = min(h, w)
    r, c = (h - s) // 2, (w - s) // 2
    data = resize(np.ascontiguousarray(data[:, r:r + s, c:c + s]), tile)
    t = _window_transform(t, r, c) @ Affine.scale(s / tile)
    return {"id": sample_id, "split": split, "modalities": {"rgb": Tile(data, crs, _affine_tuple(t))}, "labels": {}}


def _pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@reader("geopile")
def read_geopile(raw: Path, spec: DatasetSpec, params: dict) -> Iterator[Sample]:
    """GeoPileV0/<source>/<class>/<image>.{jpg,png,tif}; every image resized to tile_size (split 'train')."""
    tile = int(dataset_params(params, spec.id)["tile_size"])
    root = _need_dir(raw / "GeoPileV0", "the GeoPile folder GeoPileV0/<source>/<class>/")
    files = _pictures(root)
    if not files:
        raise DataError(f"{root}: expected <source>/<class>/<image>.jpg|png|tif files, found none")
    for p in files:
        yield _picture_sample(p, p.relative_to(root).with_suffix("").as_posix(), "train", tile)


@reader("millionaid")
def read_millionaid(raw: Path, spec: DatasetSpec, params: dict) -> Iterator[Sample]:
    """<split>/<L1>/[<L2>/]<L3>/*.jpg for split in train, test; every image resized to tile_size."""
    tile = int(dataset_params(params, spec.id)["tile_size"])
    splits = [s for s in ("train", "test") if (raw / s).is_dir()]
    if not splits:
        raise DataError(f"{raw}: expected Million-AID folders train/ and/or test/, found neither")
    for split in splits:
        files = _pictures(raw / split)
        if not files:
            raise DataError(f"{raw / split}: expected <L1>/.../<class>/*.jpg files, found none")
        for p in files:
            yield _picture_sample(p, p.relative_to(raw).with_suffix("").as_posix(), split, tile)


# ------------------------------------------------------------------------------------------------------ label info
def label_attrs(spec: DatasetSpec) -> dict[str, dict]:
    """Attributes of each label array a dataset's reader yields: {name: {class_names, ignore_index}}."""
    if spec.id == "bigearthnet":
        return {"multilabel": {"class_names": bigearthnet_class_names(spec), "ignore_index": None}}
    if spec.id == "vaihingen":
        names = list(spec.extra["classes"])
        return {"mask": {"class_names": names, "ignore_index": IGNORE_INDEX},
                "mask_eroded": {"class_names": names, "ignore_index": IGNORE_INDEX}}
    return {}
