"""fMoW-RGB (Functional Map of the World): about 360K (train + val) WorldView / QuickBird RGB images of 62 facility
classes at 0.3-3 m, of very different sizes; the appendix tiles them into 384 px tiles (about 6M in the paper's
count) as a pretraining set (XGeoSet-RGB + FMoW). Each tile is resized to ``tile_size``.

Tiling: ``data.datasets.fmow.tile_px`` (paper 384) on the regular grid of :func:`xgeo.data.raster.tile_offsets`
(the last row and column aligned with the image edge); an image smaller than ``tile_px`` on a side gives one tile,
its centre square.

Bands: RGB (uint8, JPEG). The train and val folders are pretraining data; the split is kept.

Layout ``original`` (the public fmow-rgb bucket, synced): ``{train,val}/<category>/<category>_<n>/
<category>_<n>_<k>_rgb.jpg`` with a ``<...>_rgb.json`` metadata file beside each image.

Citation: Christie et al., Functional Map of the World, CVPR 2018.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
from rasterio.transform import Affine

from ...errors import DataError
from ..raster import Tile, affine_tuple, dataset_params, read_picture, resize, tile_offsets, window_transform
from ..sink import Sink, scene_image
from ..spec import DatasetSpec, Layout, Source, modality

SPEC = DatasetSpec(
    id="fmow", title="fMoW-RGB (Functional Map of the World), tiled into 384 px tiles",
    citation="Christie et al., Functional Map of the World, CVPR 2018",
    role="pretrain", task=None, modalities={"rgb": modality("rgb")}, pairs=(),
    sources=(
        Source(None, "train", manual=True, extract=False, instructions=(
            "fMoW-RGB lies in the public bucket s3://spacenet-dataset/Hosted-Datasets/fmow/fmow-rgb/ (no "
            "checksums published; about 200 GB). Sync its train/ and val/ folders into DIR, e.g. 'aws s3 sync "
            "--no-sign-request s3://spacenet-dataset/Hosted-Datasets/fmow/fmow-rgb/train DIR/train'.")),
        Source(None, "val", manual=True, extract=False, instructions="the val/ folder of the same bucket"),
    ),
    layout="{train,val}/<category>/<category>_<n>/<category>_<n>_<k>_rgb.jpg (+ _rgb.json)",
    splits="train and val folders; both are used for pretraining",
    license="fMoW license (CC BY 4.0 with the DigitalGlobe terms)",
    extra={"categories": ("airport", "dam", "golf_course", "multi-unit_residential", "park", "port", "road_bridge",
                          "solar_farm", "stadium", "wind_farm")},
)


# ----------------------------------------------------------------------------------------------------- readers
def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    units = []
    for split in ("train", "val"):
        if (raw / split).is_dir():
            units += [(p.relative_to(raw).as_posix(), split) for p in sorted((raw / split).glob("*/*/*_rgb.jpg"))]
    if not units:
        raise DataError(f"{raw}: expected train/<category>/<category>_<n>/*_rgb.jpg (or val/...), found none")
    return units


def read_image(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    """The ``tile_px`` tiles of one image, each resized to ``tile_size`` (ids ``<category>_<n>_<k>_r<row>_c<col>``)."""
    rel, split = unit
    dp = dataset_params(params, spec.id)
    size, tile = int(dp["tile_size"]), int(dp.get("tile_px", 384))
    data, crs, t = read_picture(raw / rel)
    h, w = data.shape[-2:]
    stem = Path(rel).stem[: -len("_rgb")]
    if min(h, w) < tile:  # a small image: its centre square, one tile
        s = min(h, w)
        boxes, tile = [((h - s) // 2, (w - s) // 2)], s
    else:
        boxes = [(r, c) for r in tile_offsets(h, tile) for c in tile_offsets(w, tile)]
    for r, c in boxes:
        crop = resize(np.ascontiguousarray(data[:, r:r + tile, c:c + tile]), size)
        tt = window_transform(t, r, c) @ Affine.scale(tile / size)
        yield {"id": f"{stem}_r{r}_c{c}", "split": split, "modalities": {"rgb": Tile(crop, crs, affine_tuple(tt))},
               "labels": {}}


LAYOUTS = {"original": Layout("original", "{train,val}/<category>/<category>_<n>/*_rgb.jpg",
                              expects=("train/*/*/*_rgb.jpg|val/*/*/*_rgb.jpg",), plan=plan, read=read_image)}


# ------------------------------------------------------------------------------------------------- synthetic copy
_RECIPES = {"airport": "road", "dam": "lake", "golf_course": "golf", "multi-unit_residential": "dense_residential",
            "park": "park", "port": "harbor", "road_bridge": "river", "solar_farm": "industrial",
            "stadium": "commercial", "wind_farm": "farm"}


def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """<split>/<category>/<category>_<n>/<category>_<n>_<k>_rgb.jpg (+ .json) of a few categories, images of
    different sizes (some smaller than one tile), 0.3-3 m."""
    cats = list(spec.extra["categories"][: int(cfg["categories"])])
    n, lo, hi = int(cfg["instances_per_category"]), *(int(v) for v in cfg["size"])
    splits = ["train"] * n + ["val"]
    sink.expect(2 * len(cats) * len(splits))
    import json

    for cat in cats:
        for i, split in enumerate(splits):
            hh, ww = (int(rng.integers(lo, hi + 1)) for _ in range(2))
            gsd = float(rng.uniform(0.3, 3.0))
            rgb = scene_image(rng, max(hh, ww), gsd, _RECIPES.get(cat, cat))[:, :hh, :ww]
            base = f"{split}/{cat}/{cat}_{i}/{cat}_{i}_0_rgb"
            sink.image(f"{base}.jpg", np.ascontiguousarray(rgb))
            sink.text(f"{base}.json", json.dumps({"img_width": ww, "img_height": hh, "gsd": round(gsd, 3),
                                                  "bounding_boxes": [{"category": cat, "box": [0, 0, ww, hh]}]}))
