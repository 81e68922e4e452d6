"""WHU aerial building dataset (WHU building dataset, aerial imagery part): 0.3 m RGB orthophotos of Christchurch,
New Zealand, cut into 8189 tiles of 512 x 512 px with a building mask; 4736 train, 1036 val and 2416 test tiles.

Modality: ``rgb`` (uint8). Label: ``mask`` (H, W) uint8, 0 background, 1 building.

Layout ``original`` (the "cropped aerial image tiles and raster labels" archive, unpacked)::

    {train,val,test}/image/<name>.tif     {train,val,test}/label/<name>.tif   (0 / 255)

An image without its label, or a label of another size or CRS than its image: one error naming the file. TorchGeo
has no WHU building dataset.

Citation: Ji, Wei and Lu, Fully Convolutional Networks for Multisource Building Extraction From an Open Aerial and
Satellite Imagery Data Set, IEEE TGRS 57(1), 2019.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import DataError
from .. import scene as sc
from ..raster import IGNORE_INDEX, IMAGE_SUFFIXES, check_pair, cut_tiles, dataset_params, need_dir, read_raster
from ..sink import Sink, bands_nm, from_origin
from ..spec import DatasetSpec, Layout, Source, modality

SPLITS = ("train", "val", "test")
CLASSES = ("background", "building")

SPEC = DatasetSpec(
    id="whu", title="WHU aerial building dataset (0.3 m RGB tiles of Christchurch, building masks)",
    citation="Ji, Wei and Lu, Fully Convolutional Networks for Multisource Building Extraction From an Open Aerial "
             "and Satellite Imagery Data Set, IEEE TGRS 57(1), 2019",
    role="downstream", task="segmentation", modalities={"rgb": modality("rgb")}, pairs=(),
    sources=(
        Source(None, "train", manual=True, extract=False, instructions=(
            "Download the aerial imagery part of the WHU building dataset (gpcv.whu.edu.cn/data/building_dataset.html: "
            "'cropped aerial image tiles and raster labels', 0.3 m; no checksums published) and unpack it so that "
            "DIR/train/image, DIR/train/label and the same for val and test exist.")),
        Source(None, "val", manual=True, extract=False, instructions="the val/ folder of the same archive"),
        Source(None, "test", manual=True, extract=False, instructions="the test/ folder of the same archive"),
    ),
    layout="{train,val,test}/image/<name>.tif (RGB uint8), {train,val,test}/label/<name>.tif (0 / 255)",
    splits="train (4736 tiles), val (1036), test (2416): the folders",
    extra={"classes": CLASSES, "colours": ((0, 0, 0), (255, 255, 255))},
)


def label_attrs(spec: DatasetSpec) -> dict[str, dict]:
    return {"mask": {"class_names": list(CLASSES), "ignore_index": IGNORE_INDEX}}


# ----------------------------------------------------------------------------------------------------- readers
def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    """(split, image file, label file) of every tile, by split then by name; a missing label is named."""
    units = []
    for split in SPLITS:
        if not (raw / split).is_dir():
            continue
        images = need_dir(raw / split / "image", f"the image folder of split {split}")
        labels = need_dir(raw / split / "label", f"the label folder of split {split}")
        for p in sorted(q for q in images.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES):
            lab = labels / p.name
            if not lab.is_file():
                raise DataError(f"{lab}: expected the building mask of {p}, found no such file")
            units.append((split, p.relative_to(raw).as_posix(), lab.relative_to(raw).as_posix()))
    if not units:
        raise DataError(f"{raw}: expected WHU split folders train/, val/, test/ with image/ and label/, found none")
    return units


def read_tile(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    split, ri, rl = unit
    tile = int(dataset_params(params, spec.id)["tile_size"])
    pi, pl = raw / ri, raw / rl
    image = read_raster(pi, (3, 4), "RGB")
    if image[0].dtype != np.uint8:
        raise DataError(f"{pi}: expected an 8-bit RGB image, found dtype {image[0].dtype}")
    image = (image[0][:3], image[1], image[2])
    label = read_raster(pl, (1, 3), "building mask")
    check_pair(pi, image, pl, label)
    mask = (label[0][0] > 127).astype(np.uint8)
    for suffix, tiles in cut_tiles({"rgb": pi}, {"rgb": image}, tile):
        r, c = (int(v.lstrip("rc")) for v in suffix.split("_"))
        yield {"id": f"{split}/{pi.stem}_{suffix}", "split": split, "modalities": tiles,
               "labels": {"mask": np.ascontiguousarray(mask[r:r + tile, c:c + tile])}}


LAYOUTS = {"original": Layout("original", "{train,val,test}/{image,label}/ of the WHU aerial archive",
                              expects=("*/image/*", "*/label/*"), plan=plan, read=read_tile)}


# ------------------------------------------------------------------------------------------------- synthetic copy
_WHU_COVER = dict(urban=0.7, built=0.3, urban_green=0.5, water=0.02, block_m=80.0, building_m=(10.0, 25.0),
                  height_m=(4.0, 10.0), relief_m=3.0, elevation_m=20.0)
_NZTM = 2193  # NZGD2000 / New Zealand Transverse Mercator, the CRS of the WHU aerial tiles


def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """<split>/image/<name>.tif and <split>/label/<name>.tif (0 / 255), 0.3 m, suburban Christchurch-like scenes."""
    from rasterio.crs import CRS

    size = int(cfg["size"])
    counts = {s: int(cfg["tiles"][s]) for s in SPLITS}
    sink.expect(2 * sum(counts.values()))
    wl, crs = bands_nm("rgb"), CRS.from_epsg(_NZTM)
    k = 0
    for split in SPLITS:
        for _ in range(counts[split]):
            scene = sc.make_scene(rng, (size, size), 0.3, sc.random_cover(rng, **_WHU_COVER))
            shadow = sc.cast_shadows(scene, azimuth_deg=float(rng.uniform(0, 60)), elevation_deg=50.0)
            rgb = sc.to_uint8(sc.reflectance(scene, wl, 0.9, shadow))
            t = from_origin(1565000.0 + 200.0 * (k % 40), 5185000.0 - 200.0 * (k // 40), 0.3, 0.3)
            name = f"{k // 40:03d}_{k % 40:03d}"
            sink.tif(f"{split}/image/{name}.tif", rgb, crs, t)
            sink.tif(f"{split}/label/{name}.tif", ((scene.classes == sc.BUILDING) * 255).astype(np.uint8), crs, t)
            k += 1
