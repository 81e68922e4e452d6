"""ImageNet (ILSVRC 2012 classification): 1.28M training and 50K validation photographs of 1000 classes; a
pretraining set of the appendix's Table 8/9 rows (XGeoSet-RGB + ImageNet), each image resized to ``tile_size``.

Bands: RGB (uint8, JPEG). Both splits are pretraining data; the split is kept.

Layout ``original`` (the ILSVRC folder, as the ImageNet download page's object-localisation archive unpacks it)::

    ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG
    ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_<8 digits>.JPEG

Citation: Deng et al., ImageNet: A large-scale hierarchical image database, CVPR 2009.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import DataError
from ..raster import dataset_params, picture_sample, pictures
from ..sink import Sink, scene_image
from ..spec import DatasetSpec, Layout, Source, modality

ROOT = "ILSVRC/Data/CLS-LOC"

SPEC = DatasetSpec(
    id="imagenet", title="ImageNet (ILSVRC 2012 classification images)",
    citation="Deng et al., ImageNet: A large-scale hierarchical image database, CVPR 2009",
    role="pretrain", task=None, modalities={"rgb": modality("rgb")}, pairs=(),
    sources=(
        Source(None, "ILSVRC", manual=True, extract=False, instructions=(
            "ImageNet is distributed after registration at image-net.org (terms of access). Download the ILSVRC 2012 "
            "object localisation archive and unpack it so that DIR/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG and "
            "DIR/ILSVRC/Data/CLS-LOC/val/*.JPEG exist.")),
    ),
    layout=f"{ROOT}/train/<wnid>/<wnid>_<n>.JPEG, {ROOT}/val/ILSVRC2012_val_<n>.JPEG",
    splits="train and val folders; both are used for pretraining",
    license="ImageNet terms of access (non-commercial research)",
)


# ----------------------------------------------------------------------------------------------------- readers
def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    units = []
    for split in ("train", "val"):
        folder = raw / ROOT / split
        if folder.is_dir():
            units += [(p.relative_to(raw).as_posix(), split) for p in pictures(folder)]
    if not units:
        raise DataError(f"{raw / ROOT}: expected train/<wnid>/*.JPEG or val/*.JPEG, found none")
    return units


def read_image(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    rel, split = unit
    yield picture_sample(raw / rel, Path(rel).relative_to(ROOT).with_suffix("").as_posix(), split,
                         int(dataset_params(params, spec.id)["tile_size"]))


LAYOUTS = {"original": Layout("original", f"{ROOT}/{{train/<wnid>,val}}/*.JPEG", expects=(f"{ROOT}/train/*|{ROOT}/val/*",),
                              plan=plan, read=read_image)}


# ------------------------------------------------------------------------------------------------- synthetic copy
# Some real synsets; synthetic stand-ins are scene pictures of the nearest scene recipe (ImageNet has few aerial views)
_SYNSETS = (("n09332890", "lake"), ("n09428293", "beach"), ("n03028079", "building"), ("n11939491", "meadow"),
            ("n03788195", "dense"), ("n04465501", "forest"))


def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG and val/ILSVRC2012_val_<n>.JPEG of a few synsets."""
    k, n, n_val, size = int(cfg["classes"]), int(cfg["images_per_class"]), int(cfg["val_images"]), int(cfg["size"])
    chosen = [_SYNSETS[i] for i in sorted(rng.choice(len(_SYNSETS), size=min(k, len(_SYNSETS)), replace=False))]
    sink.expect(len(chosen) * n + n_val)
    for wnid, recipe in chosen:
        for i in rng.choice(np.arange(1, 1300), size=n, replace=False):
            sink.image(f"{ROOT}/train/{wnid}/{wnid}_{int(i)}.JPEG", scene_image(rng, size, float(rng.uniform(0.3, 5)), recipe))
    for i in range(1, n_val + 1):
        wnid, recipe = chosen[int(rng.integers(0, len(chosen)))]
        sink.image(f"{ROOT}/val/ILSVRC2012_val_{i:08d}.JPEG", scene_image(rng, size, float(rng.uniform(0.3, 5)), recipe))
