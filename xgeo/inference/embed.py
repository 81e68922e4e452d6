"""``xgeo embed``: the encoder's features of whole scenes, read window by window.

The scene (the first ``--sensor`` image's grid; further sensors aligned onto it, :mod:`xgeo.inference.align`)
is cut into ``window`` x ``window`` windows side by side (:func:`xgeo.inference.windows.tile_grid`), read in
batches, normalised, and run through the encoder once per sensor (each with its own patch embedding). Outputs:

- ``OUT.tif`` with ``pool=none``: the stage's feature map on its own grid (the input's CRS, its transform scaled
  by the stage stride 4 x 2^stage; ceil(H / stride) x ceil(W / stride) cells), float32, the sensors' channels one
  after another (band descriptions ``<sensor>:<channel>``); nodata windows NaN.
- ``OUT.zarr`` (``pool=none``): the same feature map as a Zarr v3 store, one chunk per window, georeferenced for
  xarray / rioxarray / GDAL and by the GeoZarr conventions (:class:`xgeo.inference.writers.ZarrWriter`).
- ``OUT.tif`` with ``pool=mean``: one pixel per window (transform scaled by the window), the window's mean vector.
- ``OUT.parquet`` (``pool=mean``): GeoParquet, one row per window with its polygon and one vector per sensor.

A window where some sensor has no valid pixel is skipped (not embedded) and marked: NaN in a GeoTIFF,
``nodata = true`` with null vectors in GeoParquet. Invalid pixels inside a valid window take the band mean, as in
the stores. Memory holds one batch of windows and its features, whatever the scene's size.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import XGeoError
from .align import InputSpec, Scene
from .windows import Window, check_scene, tile_grid
from .writers import ParquetWriter, RasterWriter, ZarrWriter, check_output, gdal_env


def embed_scene(encoder, inputs: Sequence[InputSpec], out: str | Path, *, stage: int = -1, pool: str = "none",
                window: int | None = None, batch_size: int = 8, overwrite: bool = False,
                progress: bool = True, on_batch: Callable[[int], None] | None = None) -> dict:
    """Embed the scene of ``inputs`` with ``encoder`` (an :class:`xgeo.inference.api.Encoder`) into ``out``.

    Returns a summary {out, windows, skipped, grid (rows, cols), stride, channels, alignment}. ``on_batch`` is
    called with the number of windows done after each batch (benchmarks, tests).
    """
    out = check_output(out, overwrite)
    fmt = {".tif": "tif", ".tiff": "tif", ".zarr": "zarr", ".parquet": "parquet",
           ".geoparquet": "parquet"}.get(out.suffix.lower())
    if fmt is None:
        raise XGeoError(f"{out}: expected an output ending in .tif (GeoTIFF), .zarr (Zarr feature map) or .parquet "
                        f"(GeoParquet, --pool mean)")
    if pool not in ("none", "mean"):
        raise XGeoError(f"--pool {pool!r}: expected none or mean")
    if fmt == "parquet" and pool != "mean":
        raise XGeoError(f"{out}: GeoParquet holds one vector per window; pass --pool mean (or write a .tif)")
    if fmt == "zarr" and pool != "none":
        raise XGeoError(f"{out}: a Zarr output holds the feature map (--pool none); write pooled vectors to .parquet "
                        f"or .tif")
    size = int(window or encoder.model.config["img_size"])
    if size % 32:
        raise XGeoError(f"--window {size}: expected a multiple of 32 (the encoder stride)")
    n_stages = len(encoder.feature_strides)
    stage = stage % n_stages if -n_stages <= stage < n_stages else None
    if stage is None:
        raise XGeoError(f"--stage: expected 0..{n_stages - 1} (or -1, the last)")
    for spec in inputs:
        encoder.check_sensor(spec.sensor)
        encoder.stats(spec.sensor)
    stride, ch = encoder.feature_strides[stage], encoder.feature_channels[stage]
    sensors = [s.key for s in inputs]
    with gdal_env(), Scene(inputs) as scene:
        check_scene(scene.height, scene.width, size, scene.path)
        wins = tile_grid(scene.height, scene.width, size)
        n_rows, n_cols = math.ceil(scene.height / size), math.ceil(scene.width / size)
        tags = {"xgeo_source": str(encoder.source), "xgeo_sensors": sensors, "xgeo_stage": stage,
                "xgeo_window": size, "xgeo_pool": pool, "xgeo_alignment": scene.alignment}
        if fmt == "parquet":
            writer = ParquetWriter(out, crs=scene.crs, sensors=sensors, dims=[ch] * len(sensors), tags=tags)
            grid = (n_rows, n_cols)
        elif pool == "mean":
            grid = (n_rows, n_cols)
            writer = RasterWriter(out, crs=scene.crs, transform=scene.transform @ scene.transform.scale(size),
                                  width=n_cols, height=n_rows, count=ch * len(sensors), dtype="float32",
                                  nodata=float("nan"), descriptions=[f"{s}:{c}" for s in sensors for c in range(ch)],
                                  tags=tags, block=16)
        elif fmt == "zarr":
            grid = (math.ceil(scene.height / stride), math.ceil(scene.width / stride))
            writer = ZarrWriter(out, crs=scene.crs, transform=scene.transform @ scene.transform.scale(stride),
                                width=grid[1], height=grid[0], count=ch * len(sensors),
                                descriptions=[f"{s}:{c}" for s in sensors for c in range(ch)], tags=tags,
                                chunk=size // stride)
        else:
            grid = (math.ceil(scene.height / stride), math.ceil(scene.width / stride))
            writer = RasterWriter(out, crs=scene.crs, transform=scene.transform @ scene.transform.scale(stride),
                                  width=grid[1], height=grid[0], count=ch * len(sensors), dtype="float32",
                                  nodata=float("nan"), descriptions=[f"{s}:{c}" for s in sensors for c in range(ch)],
                                  tags=tags, block=16)
        skipped = 0
        with writer, tqdm(total=len(wins), desc=f"embed {Path(scene.path).name}", unit="window",
                          disable=not progress) as bar:
            for start in range(0, len(wins), batch_size):
                batch = wins[start:start + batch_size]
                skipped += _embed_batch(encoder, scene, inputs, batch, size, stage, stride, ch, pool, fmt, writer)
                bar.update(len(batch))
                if on_batch is not None:
                    on_batch(start + len(batch))
    return {"out": str(out), "windows": len(wins), "skipped": skipped, "grid": grid, "stride": stride,
            "channels": ch * len(sensors), "alignment": scene.alignment}


def _embed_batch(encoder, scene: Scene, inputs, batch: list[Window], size: int, stage: int, stride: int, ch: int,
                 pool: str, fmt: str, writer) -> int:
    reads = [scene.read(w) for w in batch]
    keep = [i for i, r in enumerate(reads) if all(v.any() for _, v in r.values())]
    feats = {}
    if keep:
        for spec in inputs:
            raw = np.stack([reads[i][spec.key][0] for i in keep])
            valid = np.stack([reads[i][spec.key][1] for i in keep])
            x = encoder.normalize(raw, spec.sensor, spec.bands, valid)
            bands = None if list(spec.bands) == list(encoder.model.patch_embeds[spec.sensor].band_names) \
                else spec.bands
            feats[spec.key] = encoder.features(x, spec.sensor, bands)[stage].float().cpu().numpy()
    rows = []
    for i, win in enumerate(batch):
        h = min(size, scene.height - win.row)  # the part of the window inside the scene
        w = min(size, scene.width - win.col)
        j = keep.index(i) if i in keep else None
        if j is None:
            maps = None
        else:
            maps = np.concatenate([feats[s.key][j] for s in inputs])  # (channels, size / stride, size / stride)
        if pool == "none":
            gh, gw = math.ceil(h / stride), math.ceil(w / stride)
            block = np.full((ch * len(inputs), gh, gw), np.nan, np.float32) if maps is None else maps[:, :gh, :gw]
            writer.write(np.ascontiguousarray(block), win.row // stride, win.col // stride)
            continue
        gh, gw = math.ceil(h / stride), math.ceil(w / stride)
        vec = None if maps is None else maps[:, :gh, :gw].mean(axis=(1, 2))
        if fmt == "tif":
            block = np.full((ch * len(inputs), 1, 1), np.nan, np.float32) if vec is None else vec[:, None, None]
            writer.write(block.astype(np.float32), win.row // size, win.col // size)
        else:
            from .writers import polygon_wkb

            t = scene.transform
            x0, y0 = t * (win.col, win.row)
            x1, y1 = t * (win.col + w, win.row + h)
            row = {"window_row": win.row // size, "window_col": win.col // size, "row_off": win.row,
                   "col_off": win.col, "height": h, "width": w, "nodata": vec is None,
                   "geometry": polygon_wkb(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))}
            for k, spec in enumerate(inputs):
                row[f"embedding_{spec.key}"] = None if vec is None else vec[k * ch:(k + 1) * ch].astype(
                    np.float32).tolist()
            rows.append(row)
    if rows:
        writer.write(rows)
    return len(batch) - len(keep)
