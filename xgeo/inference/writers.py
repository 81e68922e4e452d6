"""Georeferenced outputs written piece by piece: a tiled GeoTIFF (optionally turned into a COG with overviews at
the end) and GeoParquet rows of one vector per window. Each is written under a temporary name beside the target
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
