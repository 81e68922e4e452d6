"""Million-AID: about 1M RGB scene images (Google Earth, 0.5-153 m) of 51 classes in a three-level hierarchy,
each image resized to ``tile_size``.

Bands: RGB (uint8, JPEG). Both archives (train, test) are pretraining data; the split is kept.

Layout ``original``: ``<split>/<L1>/<L2>/<L3>/*.jpg`` or ``<split>/<L1>/<L3>/*.jpg`` for split in train, test (the
leaf folder is the class). TorchGeo's ``MillionAID`` reads this same layout (its root holds ``train/`` and
``test/``), so there is no second one.

Citation: Long et al., On Creating Benchmark Dataset for Aerial Image Interpretation: Reviews, Guidances, and
Million-AID, IEEE JSTARS 14, 2021.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import DataError, XGeoError
from ..raster import dataset_params, picture_sample, pictures
from ..sink import Sink, scene_image
from ..spec import DatasetSpec, Layout, Source, modality

SPEC = DatasetSpec(
    id="millionaid", title="Million-AID (about 1M RGB scene images)",
    citation="Long et al., On Creating Benchmark Dataset for Aerial Image Interpretation, IEEE JSTARS 14, 2021",
    role="pretrain", task=None, modalities={"rgb": modality("rgb")}, pairs=(),
    sources=(
        Source(None, "train.zip", "1b40503cafa9b0601653ca36cd788852", manual=True, instructions=(
            "Million-AID is distributed through captain-whu.github.io/DiRS (cloud-drive links). Download train.zip and "
            "test.zip into DIR; they are verified against their md5 and extracted to DIR/train and DIR/test.")),
        Source(None, "test.zip", "51a63ee3eeb1351889eacff349a983d8", manual=True, instructions="see train.zip"),
    ),
    layout="<split>/<L1>/<L2>/<L3>/*.jpg or <split>/<L1>/<L3>/*.jpg; the leaf folder is one of 51 classes; JPEG",
    splits="train and test archives; both are used for pretraining",
)


# ----------------------------------------------------------------------------------------------------- readers
def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    splits = [s for s in ("train", "test") if (raw / s).is_dir()]
    if not splits:
        raise DataError(f"{raw}: expected Million-AID folders train/ and/or test/, found neither")
    units = []
    for split in splits:
        files = pictures(raw / split)
        if not files:
            raise DataError(f"{raw / split}: expected <L1>/.../<class>/*.jpg files, found none")
        units += [(p.relative_to(raw).as_posix(), split) for p in files]
    return units


def read_image(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    rel, split = unit
    yield picture_sample(raw / rel, Path(rel).with_suffix("").as_posix(), split,
                         int(dataset_params(params, spec.id)["tile_size"]))


LAYOUTS = {"original": Layout("original", "{train,test}/<L1>/[<L2>/]<L3>/*.jpg", expects=("train/*|test/*",),
                              plan=plan, read=read_image)}


# ------------------------------------------------------------------------------------------------- synthetic copy
def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """train/<L1>/<L2>/<L3>/P<id>.jpg (or train/<L1>/<L3>/ for two-level classes), JPEG, GSD 0.5-10 m."""
    classes = [list(c) for c in cfg["classes"]]
    bad = [c for c in classes if len(c) not in (2, 3)]
    if bad:
        raise XGeoError(f"params data.datasets.millionaid.synth.classes: expected [L1, L2, L3] or [L1, L3] lists, "
                        f"found {bad}")
    n, size = int(cfg["images_per_class"]), int(cfg["size"])
    sink.expect(len(classes) * n)
    ids = rng.choice(np.arange(1, 10**7), size=len(classes) * n, replace=False)
    for c, levels in enumerate(classes):
        for i in range(n):
            gsd = float(np.exp(rng.uniform(np.log(0.5), np.log(10.0))))
            rgb = scene_image(rng, size, gsd, levels[-1])
            sink.image(f"train/{'/'.join(levels)}/P{ids[c * n + i]:07d}.jpg", rgb)
