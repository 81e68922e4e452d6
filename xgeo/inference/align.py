"""The images of one place, read window by window on one pixel grid (the first image's).

Each input is a GeoTIFF (or any file or URL GDAL reads) of one sensor of :mod:`xgeo.sensors`. Its bands are
picked by name: the names given on the command line (``--bands SENSOR=B04,B03,...``, the file's bands in file
order), else the file's band descriptions, else -- when the file has exactly as many bands as the model reads --
file order. Every further input is checked against the first: same CRS, pixel size and extent are read as they
are; otherwise it is warped onto the first one's grid with rasterio's ``WarpedVRT`` (pixels outside its footprint
become invalid), unless it has no CRS, its CRS cannot be transformed to the first one's, or the footprints do not
overlap, each of which is a :class:`~xgeo.errors.DataError` naming both files.

Reading a window returns the raw values (the sensor's native units, float32) and a validity mask (the file's
mask/nodata, the sensor's nodata value, non-finite values, pixels outside a warped footprint); the parts of a
window outside the scene are filled by reflection (:mod:`xgeo.inference.windows`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import DataError
from ..sensors import get_sensor
from .windows import Window, clip_box, reflect_pad


@dataclass
class InputSpec:
    """One image to read: ``key`` (the sensor name for ``embed``, the task's input name for ``predict``)."""

    key: str
    sensor: str
    path: str
    bands: Sequence[str]  # the bands the model reads, in this order
    file_bands: Sequence[str] | None = None  # names of the file's bands in file order (--bands), else descriptions
    resampling: str = "bilinear"  # how a misaligned input is warped onto the reference grid


@dataclass
class _Opened:
    spec: InputSpec
    dataset: object  # rasterio dataset or WarpedVRT
    indexes: list[int]
    aligned: str  # how it reached the reference grid
    owned: list = field(default_factory=list)
    alpha: bool = False  # a warped input without nodata: its alpha band marks the footprint


def _canonical(sensor: str, name: str) -> str:
    aliases = get_sensor(sensor).aliases
    return aliases.get(name, aliases.get(name.lower(), name))


def band_indexes(spec: InputSpec, count: int, descriptions: Sequence[str | None]) -> list[int]:
    """1-based band indexes of ``spec.bands`` in the file (see the module doc); DataError naming what is missing."""
    sensor = get_sensor(spec.sensor)
    wanted = [_canonical(spec.sensor, b) for b in spec.bands]
    if spec.file_bands is not None:
        names, source = [_canonical(spec.sensor, b) for b in spec.file_bands], "--bands"
        if len(names) != count:
            raise DataError(f"{spec.path}: --bands {spec.key}= names {len(names)} bands ({list(spec.file_bands)}); "
                            f"the file has {count}")
    elif descriptions and all(descriptions):
        names, source = [_canonical(spec.sensor, str(d)) for d in descriptions], "band descriptions"
    else:
        if count == len(wanted):
            return list(range(1, count + 1))
        raise DataError(f"{spec.path}: {count} bands without names; sensor {spec.sensor} needs {len(wanted)} "
                        f"({list(spec.bands)}). Name the file's bands in order with "
                        f"--bands {spec.key}=NAME,NAME,... (names of {spec.sensor}: {list(sensor.band_names)})")
    missing = [b for b in wanted if b not in names]
    if missing:
        raise DataError(f"{spec.path}: bands {missing} of sensor {spec.sensor} are missing; the file's bands "
                        f"({source}) are {names}; expected {list(spec.bands)}")
    return [names.index(b) + 1 for b in wanted]


def _open(path: str):
    import rasterio

    try:
        return rasterio.open(path)
    except Exception as exc:  # RasterioIOError: missing, not a raster, truncated header
        raise DataError(f"{path}: cannot open as a raster ({exc}); expected a GeoTIFF or another file GDAL reads") \
            from None


def _same_grid(a, b) -> bool:
    return (a.crs == b.crs and a.width == b.width and a.height == b.height
            and a.transform.almost_equals(b.transform, precision=1e-9 * max(1.0, abs(a.transform.a))))


class Scene(contextlib.AbstractContextManager):
    """The inputs on the first one's grid. ``read(window) -> {key: (raw (C, s, s) float32, valid (s, s) bool)}``;
    ``read_box`` the same for any rectangle."""

    def __init__(self, specs: Sequence[InputSpec]) -> None:
        if not specs:
            raise DataError("no input image given (expected --sensor KEY=IMAGE.tif)")
        self._opened: list[_Opened] = []
        try:
            for i, spec in enumerate(specs):
                self._opened.append(self._open_aligned(spec, None if i == 0 else self._opened[0]))
        except BaseException:
            self.close()
            raise
        ref = self._opened[0].dataset
        self.height, self.width = ref.height, ref.width
        self.crs, self.transform = ref.crs, ref.transform
        self.path = specs[0].path
        # key -> how the input reached the reference grid (reference | same grid | warped ...)
        self.alignment = {o.spec.key: o.aligned for o in self._opened}

    def _open_aligned(self, spec: InputSpec, ref: _Opened | None) -> _Opened:
        src = _open(spec.path)
        opened = _Opened(spec, src, band_indexes(spec, src.count, src.descriptions), "reference", [src])
        if ref is None:
            return opened
        r = ref.dataset
        if _same_grid(src, r):
            opened.aligned = "same grid"
            return opened
        if src.crs is None or r.crs is None:
            which = spec.path if src.crs is None else ref.spec.path
            raise DataError(f"{which} has no CRS, so {spec.path} cannot be aligned to the grid of {ref.spec.path} "
                            f"(grids differ: {src.width} x {src.height} vs {r.width} x {r.height} px); give both "
                            f"images a CRS or the same pixel grid")
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT
        from rasterio.warp import transform_bounds

        try:
            left, bottom, right, top = transform_bounds(src.crs, r.crs, *src.bounds)
        except Exception as exc:
            raise DataError(f"{spec.path}: its CRS ({src.crs}) cannot be transformed to the CRS of {ref.spec.path} "
                            f"({r.crs}): {exc}; reproject one of them first (gdalwarp -t_srs)") from None
        rl, rb, rr, rt = r.bounds
        if not (np.isfinite([left, bottom, right, top]).all()):
            raise DataError(f"{spec.path}: its footprint has no finite coordinates in the CRS of {ref.spec.path} "
                            f"({r.crs}); the CRSs cannot be aligned")
        if min(right, rr) <= max(left, rl) or min(top, rt) <= max(bottom, rb):
            raise DataError(f"{spec.path} and {ref.spec.path} do not overlap: footprints {(left, bottom, right, top)} "
                            f"and {(rl, rb, rr, rt)} in {r.crs}; give images of the same place")
        kwargs = dict(crs=r.crs, transform=r.transform, width=r.width, height=r.height,
                      resampling=getattr(Resampling, spec.resampling))
        if src.nodata is None:
            kwargs["add_alpha"] = True  # pixels outside the footprint are then masked, not zero
        try:
            vrt = WarpedVRT(src, **kwargs)
        except Exception as exc:
            raise DataError(f"{spec.path}: cannot be warped onto the grid of {ref.spec.path} ({r.crs}): {exc}") \
                from None
        res = (abs(src.transform.a), abs(src.transform.e))
        opened.aligned = (f"warped ({spec.resampling}) from {src.crs} {res[0]:g} x {res[1]:g} onto {r.crs} "
                          f"{abs(r.transform.a):g} x {abs(r.transform.e):g}")
        opened.dataset, opened.owned, opened.alpha = vrt, [vrt, src], src.nodata is None
        return opened

    def read(self, win: Window) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self.read_box(win.row, win.col, win.size, win.size)

    def read_box(self, row: int, col: int, height: int, width: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The box of ``height`` x ``width`` pixels at (row, col), parts outside the scene filled by reflection:
        {key: (raw (C, height, width) float32, valid (height, width) bool)}."""
        from rasterio.windows import Window as RWindow

        row, col, h, w, pad = clip_box(row, col, height, width, self.height, self.width)
        out = {}
        for o in self._opened:
            rw = RWindow(col, row, w, h)
            try:
                raw = o.dataset.read(o.indexes, window=rw)
                masks = o.dataset.read_masks(o.indexes, window=rw)
                if o.alpha:
                    masks = np.concatenate([masks, o.dataset.read([o.dataset.count], window=rw)])
            except Exception as exc:  # RasterioIOError: a truncated or corrupt file
                raise DataError(f"{o.spec.path}: cannot read rows {row}..{row + h}, columns {col}..{col + w} "
                                f"({exc}); the file is truncated or corrupt") from None
            x, valid = _value_convention(raw, o.spec.sensor)
            valid &= (masks > 0).all(0)
            out[o.spec.key] = (reflect_pad(x, *pad), reflect_pad(valid[None], *pad)[0])
        return out

    def close(self) -> None:
        for o in self._opened:
            for ds in o.owned:
                with contextlib.suppress(Exception):
                    ds.close()
        self._opened = []

    def __exit__(self, *exc) -> None:
        self.close()


def _value_convention(raw: np.ndarray, sensor: str) -> tuple[np.ndarray, np.ndarray]:
    """The sensor's value convention (as for the stores) -> (float32 (C, h, w), valid (h, w): every band valid)."""
    from ..data.stats import apply_value_convention

    x, valid = apply_value_convention(raw, get_sensor(sensor))
    return x, (np.ones(raw.shape[1:], dtype=bool) if valid is None else valid.all(0))
