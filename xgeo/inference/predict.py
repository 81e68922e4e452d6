"""``xgeo predict``: a finetuned task applied to whole scenes.

Dense tasks (Vaihingen segmentation, SEN12MS-CR cloud removal, SpaceNet2 pan-sharpening): the scene is padded by
``margin`` pixels of reflection, covered by overlapping windows (``stride`` apart, the last end-aligned) and each
window's output is blended with a smooth weight (:func:`xgeo.inference.windows.blend_weight`); the blended sum is
divided by the summed weight, so the weights covering a pixel sum to one. Windows are processed in row order and
the output is written in strips as soon as no later window covers them: memory holds one strip of ``window`` rows
of the output, whatever the scene's height. The result is a Cloud Optimized GeoTIFF (tiled, DEFLATE, overviews)
on the input's grid (its CRS and transform), with:

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
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import CheckpointError, XGeoError
from ..sensors import get_sensor
from .align import InputSpec, Scene
from .windows import Window, blend_grid, blend_weight, check_scene, tile_grid
from .writers import RasterWriter, check_output, gdal_env

RESIDUAL_BASE = {"spacenet2": "mul"}  # tasks whose network predicts the residual over this input on [0, 1]
NODATA_CLASS = 255

WindowFn = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], np.ndarray]


class StripBlender:
    """Accumulates weighted window outputs over a strip of ``size`` padded rows and hands finished rows on.

    Windows must arrive in row order (as :func:`blend_grid` makes them). ``emit(rows, acc / weight, valid, row0)``
    gets the finished rows of the scene (padding excluded).
    """

    def __init__(self, channels: int, size: int, height: int, width: int, margin: int, emit) -> None:
        self.size, self.height, self.width, self.margin = size, height, width, margin
        wp = width + 2 * margin
        self.acc = np.zeros((channels, size, wp), np.float32)
        self.wsum = np.zeros((size, wp), np.float32)
        self.valid = np.zeros((size, wp), bool)
        self.base = -margin  # scene row of strip row 0
        self.weight = blend_weight(size).astype(np.float32)
        self.emit = emit

    def _flush(self, n: int) -> None:
        """Rows 0..n of the strip are final: emit the part inside the scene, shift the strip up by n."""
        r0, r1 = max(self.base, 0), min(self.base + n, self.height)
        if r1 > r0:
            s0, s1 = r0 - self.base, r1 - self.base
            cols = slice(self.margin, self.margin + self.width)
            w = self.wsum[s0:s1, cols]
            self.emit(self.acc[:, s0:s1, cols] / np.where(w > 0, w, 1.0), self.valid[s0:s1, cols] & (w > 0), r0)
        for buf, fill in ((self.acc, 0.0), (self.wsum, 0.0), (self.valid, False)):
            if n < self.size:
                buf[..., :self.size - n, :] = buf[..., n:, :]  # numpy copies overlapping slices safely
            buf[..., max(self.size - n, 0):, :] = fill
        self.base += n

    def add(self, win: Window, out: np.ndarray, valid: np.ndarray) -> None:
        """out (channels, size, size) of window ``win``; valid (size, size)."""
        if win.row > self.base:
            self._flush(win.row - self.base)  # stride <= size: the strip holds every unfinished row
        c = win.col + self.margin
        self.acc[:, :, c:c + self.size] += out * self.weight
        self.wsum[:, c:c + self.size] += self.weight
        self.valid[:, c:c + self.size] |= valid

    def close(self) -> None:
        while self.base < self.height:
            self._flush(self.size)


def blend_scene(scene: Scene, window_fn: WindowFn, channels: int, emit, *, size: int, stride: int, margin: int,
                batch_size: int = 8, progress: bool = True, desc: str = "predict",
                on_batch: Callable[[int], None] | None = None) -> int:
    """Run ``window_fn`` (raw inputs {key: (B, C, s, s)}, valid {key: (B, s, s)} -> (B, channels, s, s)) over the
    overlapping windows of ``scene`` and blend. Returns the number of windows skipped (no valid pixel)."""
    check_scene(scene.height, scene.width, size, scene.path)
    wins = blend_grid(scene.height, scene.width, size, stride, margin)
    blender = StripBlender(channels, size, scene.height, scene.width, margin, emit)
    skipped = 0
    with tqdm(total=len(wins), desc=desc, unit="window", disable=not progress) as bar:
        for start in range(0, len(wins), batch_size):
            batch = wins[start:start + batch_size]
            reads = [scene.read(w) for w in batch]
            valid = [np.logical_and.reduce([v for _, v in r.values()]) for r in reads]
            keep = [i for i, v in enumerate(valid) if v.any()]
            outs = {}
            if keep:
                raw = {k: np.stack([reads[i][k][0] for i in keep]) for k in reads[0]}
                val = {k: np.stack([reads[i][k][1] for i in keep]) for k in reads[0]}
                res = window_fn(raw, val)
                outs = {i: res[j] for j, i in enumerate(keep)}
            skipped += len(batch) - len(keep)
            for i, win in enumerate(batch):
                out = outs.get(i)
                if out is None:
                    out = np.zeros((channels, size, size), np.float32)
                blender.add(win, out, valid[i] if i in outs else np.zeros((size, size), bool))
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(start + len(batch))
    blender.close()
    return skipped


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

            def emit(block, valid, row0):
                cls = block.argmax(0).astype(np.uint8)
                cls[~valid] = NODATA_CLASS
                writer.write(cls[None], row0, 0)
        else:
            bands = list(model.info["out_bands"] or [])
            channels = len(bands)
            target = model.info.get("target_sensor")
            lo, hi = get_sensor(target).valid_range
            writer = RasterWriter(out, crs=scene.crs, transform=scene.transform, width=scene.width,
                                  height=scene.height, count=channels, dtype="float32", nodata=float("nan"),
                                  descriptions=bands, cog=True, tags=dict(tags, xgeo_units=get_sensor(target).units))

            def emit(block, valid, row0):
                img = (block * (hi - lo) + lo).astype(np.float32)
                img[:, ~valid] = np.nan
                writer.write(img, row0, 0)

        with writer:
            skipped = blend_scene(scene, finetuned_window_fn(model), channels, emit, size=size, stride=stride,
                                  margin=margin, batch_size=batch_size, progress=progress,
                                  desc=f"predict {model.task}", on_batch=on_batch)
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
