"""Georeferenced outputs written piece by piece: a tiled GeoTIFF (optionally turned into a COG with overviews at
the end), a Zarr store of a feature map, and GeoParquet rows of one vector per window. Each is written under a temporary name beside the target
and renamed over it only when complete (:func:`xgeo.io.atomic_path`)."""
from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import XGeoError
from ..io import atomic_path


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise XGeoError(f"{path}: the output exists; pass --overwrite to replace it")
    return path


GDAL_CACHE_MB = 64  # GDAL's block cache (default 5 % of RAM) kept small: memory stays flat as scenes grow


def gdal_env():
    """The GDAL settings inference reads and writes under (a bounded block cache)."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


def _block(n: int) -> int:
    return 256 if n >= 256 else max(16, -(-n // 16) * 16)


class RasterWriter(contextlib.AbstractContextManager):
    """A tiled, DEFLATE-compressed GeoTIFF written window by window; ``cog=True`` rewrites it as a Cloud
    Optimized GeoTIFF with overviews (GDAL's COG driver) before the final rename. ``block``: the tile side (a
    multiple of 16; default 256, less for small rasters): small tiles for many-band feature maps, whose pixel-
    interleaved tiles GDAL keeps in its cache until a whole tile is written."""

    def __init__(self, path: Path, *, crs, transform, width: int, height: int, count: int, dtype: str,
                 nodata=None, descriptions: Sequence[str] | None = None, tags: Mapping | None = None,
                 colormap: Mapping | None = None, cog: bool = False, overview_resampling: str = "average",
                 block: int | None = None) -> None:
        import rasterio

        self.path, self.cog, self.overview_resampling = Path(path), cog, overview_resampling
        self.block = (block or _block(height), block or _block(width))
        self._final = atomic_path(self.path)
        self._tmp = self._final.__enter__()
        self._work = self._tmp.with_name(self._tmp.name + ".gtiff") if cog else self._tmp
        # a COG is re-encoded from the working file at the end: that one only needs to be cheap to write and read
        codec = (dict(compress="zstd", zstd_level=1) if cog else
                 dict(compress="deflate", predictor=3 if np.dtype(dtype).kind == "f" else 2))
        try:
            self.ds = rasterio.open(
                self._work, "w", driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
                transform=transform, nodata=nodata, tiled=True, blockxsize=self.block[1], blockysize=self.block[0],
                bigtiff="if_safer", **codec)
            for i, d in enumerate(descriptions or [], start=1):
                self.ds.set_band_description(i, str(d))
            if tags:
                self.ds.update_tags(**{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in tags.items()})
            if colormap:
                self.ds.write_colormap(1, dict(colormap))
        except BaseException as exc:
            self._abort(exc)
            raise

    def write(self, block: np.ndarray, row: int, col: int) -> None:
        """block (count, h, w) at (row, col) of the output grid."""
        from rasterio.windows import Window

        self.ds.write(block, window=Window(col, row, block.shape[2], block.shape[1]))

    def _abort(self, exc: BaseException) -> None:
        with contextlib.suppress(Exception):
            self.ds.close()
        if self._work != self._tmp:
            Path(self._work).unlink(missing_ok=True)
        self._final.__exit__(type(exc), exc, exc.__traceback__)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self._abort(exc)
            return None
        try:
            self.ds.close()
            if self.cog:
                import rasterio.shutil

                rasterio.shutil.copy(self._work, self._tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256,
                                     OVERVIEWS="AUTO", OVERVIEW_RESAMPLING=self.overview_resampling.upper(),
                                     BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")
                Path(self._work).unlink(missing_ok=True)
        except BaseException as err:
            self._abort(err)
            raise
        self._final.__exit__(None, None, None)
        return None


GEOZARR_CONVENTIONS = [  # the GeoZarr conventions whose attributes ZarrWriter writes (zarr-conventions on GitHub)
    {"name": "spatial", "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
     "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
     "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4"},
    {"name": "proj", "schema_url": "https://raw.githubusercontent.com/zarr-conventions/geo-proj/refs/tags/v1/schema.json",
     "spec_url": "https://github.com/zarr-conventions/geo-proj/blob/v1/README.md",
     "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f"},
]


class ZarrWriter(contextlib.AbstractContextManager):
    """A georeferenced Zarr v3 store (a directory) written chunk by chunk: ``features`` (band, y, x) float32, NaN =
    nodata, chunks of (all bands, ``chunk``, ``chunk``) cells (one window's feature map each, so every ``write`` of
    a window fills whole chunks), ZSTD. Its georeference, in the forms readers look for:

    - CF / rioxarray / xarray / GDAL >= 3.9: ``x`` and ``y`` coordinate arrays (cell centres) and a ``spatial_ref``
      variable (``crs_wkt``, ``spatial_ref``, ``GeoTransform`` in GDAL's order) named by ``features``'
      ``grid_mapping`` attribute; band names in ``long_name``;
    - GeoZarr conventions (``spatial:`` and ``proj:`` attributes of ``features``, GDAL >= 3.13): the affine
      transform in rasterio's order (a, b, c, d, e, f), the shape, the bounding box, the CRS as WKT2 (and code);
    - GDAL's own ``_CRS`` attribute ({"wkt": ...}).

    Written under a temporary directory beside the target and renamed over it only when complete."""

    def __init__(self, path: Path, *, crs, transform, width: int, height: int, count: int,
                 descriptions: Sequence[str], tags: Mapping, chunk: int) -> None:
        import zarr
        from zarr.codecs import ZstdCodec

        self.path = Path(path)
        self._final = atomic_path(self.path, directory=True)
        self._tmp = self._final.__enter__()
        try:
            root = zarr.open_group(str(self._tmp), mode="w", zarr_format=3)
            root.attrs.update({k: (v if isinstance(v, (str, int, float)) else json.loads(json.dumps(v, default=str)))
                               for k, v in tags.items()})
            wkt = crs.to_wkt() if crs is not None else None
            t = transform
            x = t.c + t.a * (np.arange(width) + 0.5)  # cell centres (a north-up grid)
            y = t.f + t.e * (np.arange(height) + 0.5)
            xs, ys = (t.c, t.c + t.a * width), (t.f, t.f + t.e * height)
            geo = {"zarr_conventions": GEOZARR_CONVENTIONS, "spatial:dimensions": ["y", "x"],
                   "spatial:transform_type": "affine", "spatial:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
                   "spatial:shape": [height, width], "spatial:registration": "pixel",
                   "spatial:bbox": [min(xs), min(ys), max(xs), max(ys)]}
            if wkt is not None:
                geo["proj:wkt2"] = wkt
                if crs.to_epsg() is not None:
                    geo["proj:code"] = f"EPSG:{crs.to_epsg()}"
            self.array = root.create_array(
                "features", shape=(count, height, width), chunks=(count, min(chunk, height), min(chunk, width)),
                dtype="float32", fill_value=float("nan"), compressors=ZstdCodec(level=3),
                dimension_names=("band", "y", "x"),
                attributes={"grid_mapping": "spatial_ref", "long_name": [str(d) for d in descriptions],
                            **({"_CRS": {"wkt": wkt}} if wkt else {}), **geo})
            root.create_array("band", data=np.arange(1, count + 1, dtype=np.int32), dimension_names=("band",))
            root.create_array("x", data=x, dimension_names=("x",),
                              attributes={"standard_name": "projection_x_coordinate", "axis": "X"})
            root.create_array("y", data=y, dimension_names=("y",),
                              attributes={"standard_name": "projection_y_coordinate", "axis": "Y"})
            root.create_array("spatial_ref", data=np.array(0, np.int32), dimension_names=(),
                              attributes={"crs_wkt": wkt or "", "spatial_ref": wkt or "",
                                          "GeoTransform": " ".join(repr(float(v)) for v in t.to_gdal())})
        except BaseException as exc:
            self._final.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def write(self, block: np.ndarray, row: int, col: int) -> None:
        """block (count, h, w) at (row, col) of the grid."""
        self.array[:, row:row + block.shape[1], col:col + block.shape[2]] = block

    def __exit__(self, exc_type, exc, tb) -> None:
        self._final.__exit__(exc_type, exc, tb)
        return None


class TileRows:
    """Pieces of a raster arriving top to bottom in one column range at a time (``write(block, row, col)``), handed
    to ``writer`` in whole rows of its tiles: GDAL then encodes each tile once, not once per piece. Holds at most
    one row of tiles of one column range."""

    def __init__(self, writer: RasterWriter, height: int) -> None:
        self.writer, self.height, self.tile = writer, height, writer.block[0]
        self._pieces: list[np.ndarray] = []
        self._row = self._col = self._rows = 0

    def write(self, block: np.ndarray, row: int, col: int) -> None:
        if self._pieces and (col != self._col or block.shape[2] != self._pieces[0].shape[2]
                             or row != self._row + self._rows):
            self.flush()
        if not self._pieces:
            self._row, self._col, self._rows = row, col, 0
        self._pieces.append(block)
        self._rows += block.shape[1]
        end = self._row + self._rows
        edge = end if end == self.height else end // self.tile * self.tile  # the last tile edge reached
        if edge > self._row:
            self.flush(edge - self._row)

    def flush(self, rows: int | None = None) -> None:
        """Write the first ``rows`` buffered rows (default all), keep the rest."""
        if not self._pieces:
            return
        block = self._pieces[0] if len(self._pieces) == 1 else np.concatenate(self._pieces, axis=1)
        rows = block.shape[1] if rows is None else rows
        self.writer.write(np.ascontiguousarray(block[:, :rows]), self._row, self._col)
        rest = block[:, rows:]
        self._pieces = [rest] if rest.shape[1] else []
        self._row, self._rows = self._row + rows, rest.shape[1]


def polygon_wkb(left: float, bottom: float, right: float, top: float) -> bytes:
    """The WKB (little endian) of a rectangle, closed ring counter-clockwise."""
    ring = [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
    return struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring)) + b"".join(struct.pack("<dd", *p) for p in ring)


class ParquetWriter(contextlib.AbstractContextManager):
    """GeoParquet 1.1 (WKB geometry column ``geometry``, CRS as PROJJSON in the ``geo`` metadata), one row group per
    ``write`` call. Columns: window (row/col in windows), row_off, col_off, height, width (scene pixels), nodata,
    one ``embedding_<sensor>`` (list of float32, null for nodata windows) per sensor."""

    def __init__(self, path: Path, *, crs, sensors: Sequence[str], dims: Sequence[int], tags: Mapping) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path, self.sensors = Path(path), list(sensors)
        fields = [pa.field("window_row", pa.int32()), pa.field("window_col", pa.int32()),
                  pa.field("row_off", pa.int64()), pa.field("col_off", pa.int64()),
                  pa.field("height", pa.int32()), pa.field("width", pa.int32()), pa.field("nodata", pa.bool_())]
        fields += [pa.field(f"embedding_{s}", pa.list_(pa.float32()), metadata={"dim": str(int(d))}) for s, d in zip(self.sensors, dims)]
        fields.append(pa.field("geometry", pa.binary()))
        geo = {"version": "1.1.0", "primary_column": "geometry",
               "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"],
                                        "crs": crs.to_dict(projjson=True) if crs is not None else None}}}
        meta = {b"geo": json.dumps(geo).encode(), b"xgeo": json.dumps(dict(tags)).encode()}
        self.schema = pa.schema(fields, metadata=meta)
        self._final = atomic_path(self.path)
        self._tmp = self._final.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")

    def write(self, rows: Sequence[Mapping]) -> None:
        import pyarrow as pa

        if rows:
            cols = {f.name: [r[f.name] for r in rows] for f in self.schema}
            self._writer.write_table(pa.table(cols, schema=self.schema))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.close()
        finally:
            self._final.__exit__(exc_type, exc, tb)
        return None
