"""GeoPile: the GFM pretraining corpus, about 600K RGB images from five sources (NAIP, RSD46-WHU, MLRSNet, RESISC45,
PatternNet), each image resized to ``tile_size``.

Bands: RGB (uint8). JPEG, PNG or TIFF, by source. All images are pretraining data (split 'train'); a sample's id is
``<source>/<class>/<image stem>`` whatever the layout.

Layouts (detected; ``--layout`` when ambiguous):

* ``original``: ``GeoPileV0/<source>/<class>/<image>`` (torchvision ImageFolder per source), as the GFM authors share it;
* ``torchgeo``: GeoPile's parts with stable mirrors, as TorchGeo's download leaves them at the root:
  RESISC45 as ``NWPU-RESISC45/<class>/<image>.jpg`` and PatternNet as ``PatternNet/images/<class>/<image>.jpg``
  (or ``images/<class>/...``, TorchGeo's ``PatternNet`` root).

Citation: Mendieta et al., Towards Geospatial Foundation Models via Continual Pretraining (GFM), ICCV 2023.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import DataError, XGeoError
from ..raster import dataset_params, picture_sample, pictures
from ..sink import Sink, scene_image
from ..spec import DatasetSpec, Layout, Source, modality

SPEC = DatasetSpec(
    id="geopile", title="GeoPile (GFM pretraining corpus, about 600K RGB images)",
    citation="Mendieta et al., GFM: Building Geospatial Foundation Models via Continual Pretraining, ICCV 2023",
    role="pretrain", task=None, modalities={"rgb": modality("rgb")}, pairs=(),
    sources=(
        Source(None, "GeoPileV0", manual=True, extract=False, instructions=(
            "GeoPile is distributed by the GFM authors as a OneDrive share linked from the README of "
            "github.com/mmendiet/GFM (no checksums published). Download it and unpack it so that "
            "DIR/GeoPileV0/<source>/<class>/<image> exists (sources: NAIP, RSD46-WHU, MLRSNet, RESISC45, PatternNet).")),
        Source("https://hf.co/datasets/isaaccorley/resisc45/resolve/883edc0eee77b2c84225472f10f126e3ed83fa6e/NWPU-RESISC45.zip",
               "NWPU-RESISC45.zip", "75206b2e16446591afa88e2628744886", manual=False,
               instructions="optional part with a stable mirror: RESISC45"),
        Source("https://hf.co/datasets/torchgeo/PatternNet/resolve/2dbd901b00e301967a5c5146b25454f5d3455ad0/PatternNet.zip",
               "PatternNet.zip", "96d54b3224c5350a98d55d5a7e6984ad", manual=False,
               instructions="optional part with a stable mirror: PatternNet"),
    ),
    layout="GeoPileV0/<source>/<class>/<image>.{jpg,png,tif} (torchvision ImageFolder per source), RGB",
    splits="all images are pretraining data (split 'train')",
    notes="Sizes vary by source; images are resized to the tile size.",
)


# ----------------------------------------------------------------------------------------------------- readers
# TorchGeo's folder of each part with a mirror -> the GeoPile source it is
_TORCHGEO_PARTS = {"NWPU-RESISC45": "RESISC45", "PatternNet/images": "PatternNet", "images": "PatternNet"}


def plan_original(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    root = raw / "GeoPileV0"
    if not root.is_dir():
        raise DataError(f"{root}: expected the GeoPile folder GeoPileV0/<source>/<class>/, found no such folder")
    files = pictures(root)
    if not files:
        raise DataError(f"{root}: expected <source>/<class>/<image>.jpg|png|tif files, found none")
    return [(p.relative_to(raw).as_posix(), p.relative_to(root).with_suffix("").as_posix()) for p in files]


def plan_torchgeo(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    units = []
    for folder, source in _TORCHGEO_PARTS.items():
        if folder == "images" and (raw / "PatternNet" / "images").is_dir():
            continue
        root = raw / folder
        if root.is_dir():
            units += [(p.relative_to(raw).as_posix(), f"{source}/{p.relative_to(root).with_suffix('').as_posix()}")
                      for p in pictures(root)]
    if not units:
        raise DataError(f"{raw}: expected NWPU-RESISC45/<class>/*.jpg or PatternNet/images/<class>/*.jpg, found none")
    return sorted(units, key=lambda u: u[1])  # the original layout's order: by <source>/<class>/<stem>


def read_image(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    rel, sample_id = unit
    yield picture_sample(raw / rel, sample_id, "train", int(dataset_params(params, spec.id)["tile_size"]))


LAYOUTS = {
    "original": Layout("original", "GeoPileV0/<source>/<class>/<image>", expects=("GeoPileV0/*/*",),
                       plan=plan_original, read=read_image),
    "torchgeo": Layout("torchgeo", "NWPU-RESISC45/<class>/ and PatternNet/images/<class>/ (TorchGeo)",
                       expects=("NWPU-RESISC45/*|PatternNet/images/*|images/*",), plan=plan_torchgeo, read=read_image),
}


# ------------------------------------------------------------------------------------------------- synthetic copy
# Per GeoPile source: some of its real class folders, the file type, the GSD range (m) and the file-name pattern.
_GEOPILE_SOURCES = {
    "NAIP": (("naip",), "png", (1.0, 1.0), "naip_{i:06d}"),
    "RSD46-WHU": (("dense_tall_building", "natural_dense_forest_land", "regular_farmland", "water", "overpass",
                   "low_scattered_building", "grassland"), "jpg", (0.5, 2.0), "{i:05d}"),
    "MLRSNet": (("dense_residential_area", "forest", "lake", "farmland", "freeway", "sparse_residential_area",
                 "meadow", "river"), "jpg", (0.1, 2.0), "{cls}_{i:05d}"),
    "RESISC45": (("dense_residential", "forest", "lake", "rectangular_farmland", "freeway", "sparse_residential",
                  "meadow", "river", "beach", "industrial_area"), "jpg", (0.3, 2.0), "{cls}_{i:03d}"),
    "PatternNet": (("dense_residential", "forest", "river", "freeway", "sparse_residential", "parking_lot", "beach",
                    "golf_course"), "jpg", (0.1, 0.8), "{cls}{i:03d}"),
}


def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """GeoPileV0/<source>/<class>/<image>: each source's own class folders, file type and file names."""
    sources, size = list(cfg["sources"]), int(cfg["size"])
    unknown = [s for s in sources if s not in _GEOPILE_SOURCES]
    if unknown:
        raise XGeoError(f"params data.datasets.geopile.synth.sources: unknown {unknown}; "
                        f"expected some of {sorted(_GEOPILE_SOURCES)}")
    k, n = int(cfg["classes_per_source"]), int(cfg["images_per_class"])
    plan = []
    for source in sources:
        classes, ext, (g0, g1), pattern = _GEOPILE_SOURCES[source]
        chosen = rng.choice(len(classes), size=min(k, len(classes)), replace=False)
        plan += [(source, classes[c], ext, (g0, g1), pattern) for c in sorted(chosen)]
    sink.expect(len(plan) * n)
    for source, cls, ext, (g0, g1), pattern in plan:
        for i in range(1, n + 1):
            rgb = scene_image(rng, size, float(rng.uniform(g0, g1)), cls)
            sink.image(f"GeoPileV0/{source}/{cls}/{pattern.format(cls=cls, i=i)}.{ext}", rgb)


def to_torchgeo(root: Path) -> None:
    """Re-arrange the original layout (in place) into TorchGeo's parts: the RESISC45 and PatternNet sources only
    (the other sources have no TorchGeo download; call it on a copy synthesised with just those two)."""
    others = sorted(p.name for p in (root / "GeoPileV0").iterdir() if p.name not in ("RESISC45", "PatternNet"))
    if others:
        raise XGeoError(f"{root}: the torchgeo layout of GeoPile holds RESISC45 and PatternNet only, found {others}")
    if (root / "GeoPileV0" / "RESISC45").is_dir():
        shutil.move(root / "GeoPileV0" / "RESISC45", root / "NWPU-RESISC45")
    if (root / "GeoPileV0" / "PatternNet").is_dir():
        (root / "PatternNet").mkdir()
        shutil.move(root / "GeoPileV0" / "PatternNet", root / "PatternNet" / "images")
    (root / "GeoPileV0").rmdir()


ARRANGE = {"torchgeo": to_torchgeo}
