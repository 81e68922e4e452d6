"""``xgeo predict``: a finetuned task applied to whole scenes.

Dense tasks (Vaihingen segmentation, SEN12MS-CR cloud removal, SpaceNet2 pan-sharpening): the scene is padded by
``margin`` pixels of reflection, covered by overlapping windows (``stride`` apart, the last end-aligned) and each
window's output is blended with a smooth weight (:func:`xgeo.inference.windows.blend_weight`); the blended sum is
divided by the summed weight, so the weights covering a pixel sum to one. The scene's columns are cut into bands of
``BAND_WINDOWS`` windows; each band's windows are processed in row order and its output is written as soon as no
later window covers it; windows reaching into the next band wait in a temporary file (:class:`Spill`), so memory
holds one strip of ``window`` rows of one band, whatever the scene's width and height. The result is a Cloud
Optimized GeoTIFF (tiled, DEFLATE, overviews) on the input's grid (its CRS and transform), with:

- segmentation: uint8 class indexes (the argmax of the blended logits), 255 = nodata, the class names in the
  metadata (``xgeo_class_names``, band description) and the classes' colours as the colour table;
- image tasks: float32 in the target sensor's units (S2 reflectance x 10000, WorldView-3 DN), NaN = nodata, band
  descriptions = the target's band names. SpaceNet2's network predicts the residual over the upsampled MUL, so its
  MUL input is warped onto the PAN grid with cubic resampling (as the bicubic upsampling of training) and added.

BigEarthNet (scene classification): non-overlapping windows of ``window`` pixels (default the model's input size;
120 for a 10 m scene matches BigEarthNet's 1.2 km patches), each resized to the model's input size, give 19
sigmoid scores: a float32 GeoTIFF with one pixel per window, one band per class (descriptions = class names).

A pixel where any input is invalid (nodata, outside a warped footprint) is nodata in the output; windows with no
valid pixel are not run.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import CheckpointError, XGeoError
from ..sensors import get_sensor
from .align import InputSpec, Scene
from .windows import Window, blend_axes, blend_weight, check_scene, tile_grid
from .writers import RasterWriter, TileRows, check_output, gdal_env

RESIDUAL_BASE = {"spacenet2": "mul"}  # tasks whose network predicts the residual over this input on [0, 1]
NODATA_CLASS = 255

WindowFn = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], np.ndarray]


BAND_WINDOWS = 8  # a band of the scene is this many windows wide: memory holds one strip of one band


class BandBlender:
    """Accumulates weighted window outputs over a strip of ``size`` rows and the columns ``lo..hi`` of the
    windows of one band, and hands finished rows of the band's own columns ``col0..col1`` on.

    Windows must arrive in row order. ``emit(acc / weight, valid, row0, col0)`` gets the finished part of the
    scene (padding excluded): (channels, h, col1 - col0) and (h, col1 - col0).
    """

    def __init__(self, channels: int, size: int, height: int, top: int, lo: int, hi: int, col0: int, col1: int,
                 weight: np.ndarray, emit) -> None:
        self.size, self.height, self.lo, self.col0, self.col1 = size, height, lo, col0, col1
        self.acc = np.zeros((channels, size, hi - lo), np.float32)
        self.wsum = np.zeros((size, hi - lo), np.float32)
        self.valid = np.zeros((size, hi - lo), bool)
        self.base = top  # scene row of strip row 0
        self.weight = weight
        self._product = np.empty((channels, size, size), np.float32)
        self.emit = emit

    def _flush(self, n: int) -> None:
        """Rows 0..n of the strip are final: emit the part inside the scene, shift the strip up by n."""
        r0, r1 = max(self.base, 0), min(self.base + n, self.height)
        if r1 > r0:
            s0, s1 = r0 - self.base, r1 - self.base
            cols = slice(self.col0 - self.lo, self.col1 - self.lo)
            w = self.wsum[s0:s1, cols]
            self.emit(self.acc[:, s0:s1, cols] / np.where(w > 0, w, 1.0), self.valid[s0:s1, cols] & (w > 0), r0,
                      self.col0)
        for buf, fill in ((self.acc, 0.0), (self.wsum, 0.0), (self.valid, False)):
            if n < self.size:
                buf[..., :self.size - n, :] = buf[..., n:, :]  # numpy copies overlapping slices safely
            buf[..., max(self.size - n, 0):, :] = fill
        self.base += n

    def add(self, win: Window, out: np.ndarray | None, valid: np.ndarray | None) -> None:
        """out (channels, size, size) of window ``win``; valid (size, size); None: a window without valid pixels."""
        if win.row > self.base:
            self._flush(win.row - self.base)  # stride <= size: the strip holds every unfinished row
        c = win.col - self.lo
        if out is not None:
            np.multiply(out, self.weight, out=self._product)
            self.acc[:, :, c:c + self.size] += self._product
            self.valid[:, c:c + self.size] |= valid
        self.wsum[:, c:c + self.size] += self.weight

    def close(self) -> None:
        while self.base < self.height:
            self._flush(self.size)


class Spill:
    """The outputs of the windows that reach past a band's right edge, kept in an unnamed temporary file until the
    next band blends them in: memory stays flat whatever the scene's height, and no window runs twice."""

    def __init__(self, channels: int, size: int, directory: str | None) -> None:
        self.shape, self._where, self._end = (channels, size, size), {}, 0
        self._nout = channels * size * size * 4
        self._file = tempfile.TemporaryFile(prefix="xgeo-spill-", dir=directory)

    def put(self, win: Window, out: np.ndarray | None, valid: np.ndarray | None) -> None:
        if out is None:
            self._where[win] = None
            return
        data = np.ascontiguousarray(out, np.float32).tobytes() + np.ascontiguousarray(valid, np.uint8).tobytes()
        os.pwrite(self._file.fileno(), data, self._end)
        self._where[win] = self._end
        self._end += len(data)

    def get(self, win: Window) -> tuple[np.ndarray | None, np.ndarray | None]:
        at = self._where.pop(win)
        if at is None:
            return None, None
        data = os.pread(self._file.fileno(), self._nout + self.shape[1] * self.shape[2], at)
        out = np.frombuffer(data, np.float32, count=self._nout // 4).reshape(self.shape)
        valid = np.frombuffer(data, np.uint8, offset=self._nout).reshape(self.shape[1:]).astype(bool)
        return out, valid

    def close(self) -> None:
        self._file.close()


def blend_scene(scene: Scene, window_fn: WindowFn, channels: int, emit, *, size: int, stride: int, margin: int,
                batch_size: int = 8, progress: bool = True, desc: str = "predict",
                on_batch: Callable[[int], None] | None = None, band: int | None = None,
                spill_dir: str | None = None) -> int:
    """Run ``window_fn`` (raw inputs {key: (B, C, s, s)}, valid {key: (B, s, s)} -> (B, channels, s, s)) over the
    overlapping windows of ``scene`` and blend; ``emit(block (channels, h, w), valid (h, w), row0, col0)`` gets
    the blended scene piece by piece. Returns the number of windows skipped (no valid pixel).

    The scene's columns are cut into bands of ``band`` pixels (default ``BAND_WINDOWS`` windows); each band's
    windows run in row order, their inputs read one strip of ``size`` rows at a time, and its rows are emitted as
    soon as no later window covers them. A window reaching into the next band runs once: its output waits in a
    :class:`Spill` file (in ``spill_dir``, default the system's temporary directory; ``predict_scene`` puts it
    beside the output). Memory: one strip of one band (``size`` x ``band + 2 size`` pixels), whatever the scene's
    width and height."""
    check_scene(scene.height, scene.width, size, scene.path)
    rows, cols = blend_axes(scene.height, scene.width, size, stride, margin)
    band = int(band or BAND_WINDOWS * size)
    if band < size:
        raise XGeoError(f"band {band}: expected at least the window size {size}")
    edges = list(range(0, scene.width, band)) + [scene.width]
    n_bands = len(edges) - 1
    owner = {c: min(max(c, 0) // band, n_bands - 1) for c in cols}  # the band that runs the windows of column c
    weight = blend_weight(size).astype(np.float32)
    done = skipped = 0
    spill_in = spill_out = None
    with tqdm(total=len(rows) * len(cols), desc=desc, unit="window", disable=not progress) as bar:
        try:
            for j in range(n_bands):
                col0, col1 = edges[j], edges[j + 1]
                band_cols = [c for c in cols if c < col1 and c + size > col0]
                own = [c for c in band_cols if owner[c] == j]
                spill_in, spill_out = spill_out, (Spill(channels, size, spill_dir) if j + 1 < n_bands else None)
                blender = BandBlender(channels, size, scene.height, rows[0], band_cols[0], band_cols[-1] + size,
                                      col0, col1, weight, emit)
                queue: list = []  # (window, its inputs or None when spilled), in row order

                def run_queue() -> None:
                    nonlocal done, skipped
                    todo = [(i, reads) for i, (_, reads) in enumerate(queue) if reads is not None]
                    valid = {i: np.logical_and.reduce([v for _, v in reads.values()]) for i, reads in todo}
                    keep = [i for i, _ in todo if valid[i].any()]
                    outs = {}
                    if keep:
                        keys = list(queue[keep[0]][1])
                        raw = {k: np.stack([queue[i][1][k][0] for i in keep]) for k in keys}
                        val = {k: np.stack([queue[i][1][k][1] for i in keep]) for k in keys}
                        res = window_fn(raw, val)
                        outs = {i: res[n] for n, i in enumerate(keep)}
                    for i, (win, reads) in enumerate(queue):
                        if reads is None:
                            out, v = spill_in.get(win)
                        else:
                            out, v = (outs[i], valid[i]) if i in outs else (None, None)
                            if spill_out is not None and win.col + size > col1:
                                spill_out.put(win, out, v)
                        blender.add(win, out, v)
                    skipped += len(todo) - len(keep)
                    done += len(todo)
                    bar.update(len(todo))
                    queue.clear()
                    if todo and on_batch is not None:
                        on_batch(done)

                for r in rows:
                    strip = scene.read_box(r, own[0], size, own[-1] + size - own[0]) if own else {}
                    for c in band_cols:
                        if owner[c] != j:
                            queue.append((Window(r, c, size), None))
                            continue
                        x0 = c - own[0]
                        queue.append((Window(r, c, size),
                                      {k: (x[:, :, x0:x0 + size], v[:, x0:x0 + size]) for k, (x, v) in strip.items()}))
                        if sum(reads is not None for _, reads in queue) == batch_size:
                            run_queue()
                run_queue()
                blender.close()
                if spill_in is not None:
                    spill_in.close()
                    spill_in = None
        finally:
            for s in (spill_in, spill_out):
                if s is not None:
                    s.close()
    return skipped


def argmax_classes(logits: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (h, w) uint8 index of the largest channel (the first on ties, as ``argmax``): one pass per
    class over contiguous planes, faster than numpy's ``argmax(0)`` across planes."""
    best = logits[0].copy()
    cls = np.zeros(best.shape, np.uint8)
    more = np.empty(best.shape, bool)
    for c in range(1, len(logits)):
        np.greater(logits[c], best, out=more)
        np.copyto(cls, np.uint8(c), where=more)
        np.maximum(best, logits[c], out=best)
    return cls


def finetuned_window_fn(model) -> WindowFn:
    """The window function of a :class:`xgeo.inference.api.Finetuned` dense task: normalise each input, run the
    network, add the residual's base; outputs logits (segmentation) or the image on [0, 1]."""
    base_key = RESIDUAL_BASE.get(model.task)

    def fn(raw: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray]) -> np.ndarray:
        xs = [model.normalize(raw[k], k, valid[k]) for k in model.keys]
        out = model.forward(xs).float().cpu().numpy()
        if model.output == "image":
            if base_key is not None:
                lo, hi = get_sensor(_sensor_of(model, base_key)).valid_range
                out = out + np.clip((raw[base_key] - lo) / (hi - lo), 0.0, 1.0)
            out = np.clip(out, 0.0, 1.0)
        return out

    return fn


def _sensor_of(model, key: str) -> str:
    return next(i["sensor"] for i in model.inputs if i["key"] == key)


def scene_inputs(model, images: Mapping[str, str], file_bands: Mapping[str, Sequence[str]] | None = None
                 ) -> list[InputSpec]:
    """InputSpecs of a finetuned task from ``{input key: path}``; keys must be the task's inputs."""
    keys = model.keys
    unknown = [k for k in images if k not in keys]
    missing = [k for k in keys if k not in images]
    if unknown or missing:
        raise CheckpointError(f"{model.source}: a {model.task} run reads inputs {keys}; "
                              + (f"unknown --sensor keys {unknown}" if unknown else "")
                              + ("; " if unknown and missing else "")
                              + (f"missing --sensor {', '.join(f'{k}=IMAGE' for k in missing)}" if missing else "")
                              + (" (is this the run directory of the task you meant?)" if unknown else ""))
    base_key = RESIDUAL_BASE.get(model.task)
    return [InputSpec(i["key"], i["sensor"], images[i["key"]], i["bands"], (file_bands or {}).get(i["key"]),
                      resampling="cubic" if i["key"] == base_key else "bilinear") for i in model.inputs]


def predict_scene(model, images: Mapping[str, str], out: str | Path, *, window: int | None = None,
                  stride: int | None = None, margin: int | None = None, batch_size: int = 8,
                  file_bands: Mapping[str, Sequence[str]] | None = None, overwrite: bool = False,
                  expect_task: str | None = None, progress: bool = True,
                  on_batch: Callable[[int], None] | None = None) -> dict:
    """Apply the finetuned ``model`` (:class:`xgeo.inference.api.Finetuned`) to the scene ``images`` -> ``out``."""
    out = check_output(out, overwrite)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise XGeoError(f"{out}: expected a GeoTIFF output (.tif)")
    if expect_task is not None and expect_task != model.task:
        raise CheckpointError(f"{model.source}: a run of task {model.task!r}, not {expect_task!r}")
    specs = scene_inputs(model, images, file_bands)
    with gdal_env(), Scene(specs) as scene:
        tags = {"xgeo_task": model.task, "xgeo_run": str(model.source), "xgeo_alignment": scene.alignment}
        if model.output == "multilabel":
            return _predict_scores(model, scene, out, window, batch_size, tags, progress, on_batch)
        size = int(window or model.image_size)
        if size % 32:
            raise XGeoError(f"--window {size}: expected a multiple of 32 (the encoder stride)")
        stride = int(stride or size // 2)
        margin = size // 4 if margin is None else int(margin)
        if model.output == "classes":
            names = list(model.info["class_names"] or [])
            channels = len(names)
            colours = model.info.get("colours") or []
            writer = RasterWriter(out, crs=scene.crs, transform=scene.transform, width=scene.width,
                                  height=scene.height, count=1, dtype="uint8", nodata=NODATA_CLASS,
                                  descriptions=["class"], cog=True, overview_resampling="nearest",
                                  tags=dict(tags, xgeo_class_names=names, xgeo_class_colours=colours),
                                  colormap={i: tuple(c) + (255,) for i, c in enumerate(colours)} or None)

            def emit(block, valid, row0, col0):
                cls = argmax_classes(block)
                cls[~valid] = NODATA_CLASS
                rows.write(cls[None], row0, col0)
        else:
            bands = list(model.info["out_bands"] or [])
            channels = len(bands)
            target = model.info.get("target_sensor")
            lo, hi = get_sensor(target).valid_range
            writer = RasterWriter(out, crs=scene.crs, transform=scene.transform, width=scene.width,
                                  height=scene.height, count=channels, dtype="float32", nodata=float("nan"),
                                  descriptions=bands, cog=True, tags=dict(tags, xgeo_units=get_sensor(target).units))

            def emit(block, valid, row0, col0):
                img = (block * (hi - lo) + lo).astype(np.float32)
                img[:, ~valid] = np.nan
                rows.write(img, row0, col0)

        with writer:
            rows = TileRows(writer, scene.height)
            skipped = blend_scene(scene, finetuned_window_fn(model), channels, emit, size=size, stride=stride,
                                  margin=margin, batch_size=batch_size, progress=progress,
                                  desc=f"predict {model.task}", on_batch=on_batch, spill_dir=str(out.parent))
            rows.flush()
        return {"out": str(out), "task": model.task, "window": size, "stride": stride, "margin": margin,
                "skipped": skipped, "alignment": scene.alignment}


def _predict_scores(model, scene: Scene, out: Path, window, batch_size, tags, progress, on_batch) -> dict:
    size = int(window or model.image_size)
    check_scene(scene.height, scene.width, size, scene.path)
    wins = tile_grid(scene.height, scene.width, size)
    names = list(model.info["class_names"] or [])
    rows, cols = math.ceil(scene.height / size), math.ceil(scene.width / size)
    n = model.image_size
    skipped = 0
    with RasterWriter(out, crs=scene.crs, transform=scene.transform @ scene.transform.scale(size), width=cols,
                      height=rows, count=len(names), dtype="float32", nodata=float("nan"), descriptions=names,
                      tags=dict(tags, xgeo_class_names=names, xgeo_window=size), cog=True) as writer, \
            tqdm(total=len(wins), desc=f"predict {model.task}", unit="window", disable=not progress) as bar:
        for start in range(0, len(wins), batch_size):
            batch = wins[start:start + batch_size]
            reads = [scene.read(w) for w in batch]
            keep = [i for i, r in enumerate(reads) if all(v.any() for _, v in r.values())]
            scores = {}
            if keep:
                xs = []
                for k in model.keys:
                    x = model.normalize(np.stack([reads[i][k][0] for i in keep]), k,
                                        np.stack([reads[i][k][1] for i in keep]))
                    t = torch.from_numpy(x)
                    if size != n:  # as BigEarthNet's tiles were resized to the model's input in finetuning
                        t = F.interpolate(t, size=(n, n), mode="bilinear", align_corners=False)
                    xs.append(t)
                s = torch.sigmoid(model.forward(xs).float()).cpu().numpy()
                scores = {i: s[j] for j, i in enumerate(keep)}
            skipped += len(batch) - len(keep)
            for i, win in enumerate(batch):
                v = scores.get(i, np.full(len(names), np.nan, np.float32))
                writer.write(v.astype(np.float32)[:, None, None], win.row // size, win.col // size)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(start + len(batch))
    return {"out": str(out), "task": model.task, "window": size, "grid": (rows, cols), "skipped": skipped,
            "alignment": scene.alignment}
