"""DSIFN (the change-detection dataset of the deeply supervised image fusion network): bi-temporal Google Earth RGB
images of six Chinese cities, 512 x 512 px, with binary change masks; 3600 train, 340 val and 48 test pairs (the
train and val pairs are augmented crops of Beijing, Chengdu, Shenzhen, Chongqing and Wuhan, the test pairs Xi'an).

Modalities: ``t1`` and ``t2``, the two dates, RGB (uint8), co-located. Label: ``mask`` (H, W) uint8, 0 no change,
1 change.

Layout ``original`` (the authors' share, unpacked)::

    {train,val,test}/t1/<n>.jpg    {train,val,test}/t2/<n>.jpg
    {train,val}/mask/<n>.png       test/mask/<n>.tif        (0 / 255)

A pair is matched by file stem; a first date without its second (or without its mask) is one error naming the
missing file. TorchGeo has no DSIFN.

Citation: Zhang et al., A deeply supervised image fusion network for change detection in high resolution
bi-temporal remote sensing images, ISPRS J. Photogramm. Remote Sens. 166, 2020.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import DataError
from .. import scene as sc
from ..raster import IGNORE_INDEX, IMAGE_SUFFIXES, cut_tiles, dataset_params, need_dir
from ..sink import Sink, bands_nm
from ..spec import DatasetSpec, Layout, Source, modality
from ..change import CHANGE_CLASSES, change_scenes, check_dates, read_change_mask, read_rgb

SPLITS = ("train", "val", "test")

SPEC = DatasetSpec(
    id="dsifn", title="DSIFN (Google Earth RGB image pairs of six Chinese cities, change masks)",
    citation="Zhang et al., A deeply supervised image fusion network for change detection in high resolution "
             "bi-temporal remote sensing images, ISPRS J. Photogramm. Remote Sens. 166, 2020",
    role="downstream", task="change_detection",
    modalities={"t1": modality("rgb"), "t2": modality("rgb")}, pairs=(("t1", "t2"),),
    sources=(
        Source(None, "train", manual=True, extract=False, instructions=(
            "DSIFN is shared by its authors through Baidu Cloud (link and password in dataset/README.md of "
            "github.com/GeoZcx/A-deeply-supervised-image-fusion-network-for-change-detection-in-remote-sensing-images; "
            "no checksums published). Unpack it so that DIR/train/t1, DIR/train/t2, DIR/train/mask and the same "
            "for val and test exist.")),
        Source(None, "val", manual=True, extract=False, instructions="the val/ folder of the same archive"),
        Source(None, "test", manual=True, extract=False, instructions="the test/ folder of the same archive"),
    ),
    layout="{train,val,test}/t1/<n>.jpg, {train,val,test}/t2/<n>.jpg, {train,val}/mask/<n>.png, "
           "test/mask/<n>.tif (0 / 255)",
    splits="train (3600 augmented pairs), val (340), test (48, Xi'an): the folders",
    extra={"classes": CHANGE_CLASSES},
)


def label_attrs(spec: DatasetSpec) -> dict[str, dict]:
    return {"mask": {"class_names": list(CHANGE_CLASSES), "ignore_index": IGNORE_INDEX}}


# ----------------------------------------------------------------------------------------------------- readers
def _by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _key(stem: str):
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    """(split, t1 file, t2 file, mask file) of every pair, by split then by number; a missing date or mask is named."""
    units = []
    for split in SPLITS:
        if not (raw / split).is_dir():
            continue
        first = _by_stem(need_dir(raw / split / "t1", f"the first-date folder of split {split}"))
        second = _by_stem(need_dir(raw / split / "t2", f"the second-date folder of split {split}"))
        masks = _by_stem(need_dir(raw / split / "mask", f"the change-mask folder of split {split}"))
        for stem in sorted(set(first) | set(second), key=_key):
            if stem not in second:
                raise DataError(f"{raw / split / 't2' / first[stem].name}: expected the second date of "
                                f"{first[stem]}, found no such file")
            if stem not in first:
                raise DataError(f"{raw / split / 't1' / second[stem].name}: expected the first date of "
                                f"{second[stem]}, found no such file")
            if stem not in masks:
                raise DataError(f"{raw / split / 'mask' / (stem + '.png')}: expected the change mask of "
                                f"{first[stem]} (.png, or .tif in test), found no such file")
            units.append((split, *(p.relative_to(raw).as_posix() for p in (first[stem], second[stem], masks[stem]))))
    if not units:
        raise DataError(f"{raw}: expected DSIFN split folders train/, val/, test/ with t1/, t2/, mask/, found none")
    return units


def read_pair(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    """One pair and its mask, cut into tiles (ids ``<split>/<n>_r<row>_c<col>``)."""
    split, r1, r2, rm = unit
    tile = int(dataset_params(params, spec.id)["tile_size"])
    p1, p2 = raw / r1, raw / r2
    a, b = read_rgb(p1), read_rgb(p2)
    check_dates(p1, a, p2, b)
    mask = read_change_mask(raw / rm, a[0].shape[-2:])
    for suffix, tiles in cut_tiles({"t1": p1, "t2": p2}, {"t1": a, "t2": b}, tile):
        r, c = (int(v.lstrip("rc")) for v in suffix.split("_"))
        yield {"id": f"{split}/{p1.stem}_{suffix}", "split": split, "modalities": tiles,
               "labels": {"mask": np.ascontiguousarray(mask[r:r + tile, c:c + tile])}}


LAYOUTS = {"original": Layout("original", "{train,val,test}/{t1,t2,mask}/ of the authors' share",
                              expects=("*/t1/*", "*/t2/*", "*/mask/*"), plan=plan, read=read_pair)}


# ------------------------------------------------------------------------------------------------- synthetic copy
_DSIFN_COVER = dict(urban=0.5, built=0.35, block_m=70.0, building_m=(10.0, 40.0), height_m=(6.0, 40.0))


def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """<split>/t1/<n>.jpg, <split>/t2/<n>.jpg, <split>/mask/<n>.png (test: .tif), Google-Earth-like RGB, ~2 m."""
    size = int(cfg["size"])
    counts = {s: int(cfg["pairs"][s]) for s in SPLITS}
    sink.expect(3 * sum(counts.values()))
    wl = bands_nm("rgb")
    for split in SPLITS:
        for n in range(counts[split]):
            gsd = float(rng.uniform(1.0, 2.5))
            s1, s2, change = change_scenes(rng, (size, size), gsd, sc.random_cover(rng, **_DSIFN_COVER))
            for k, scene in ((1, s1), (2, s2)):
                shadow = sc.cast_shadows(scene, azimuth_deg=float(rng.uniform(120, 220)),
                                         elevation_deg=float(rng.uniform(35, 70)))
                rgb = sc.to_uint8(sc.reflectance(scene, wl, float(rng.uniform(0.4, 1.0)), shadow))
                sink.image(f"{split}/t{k}/{n}.jpg", rgb)
            mask = np.repeat((change * 255)[None], 3, 0)
            if split == "test":
                import warnings

                from rasterio.errors import NotGeoreferencedWarning
                from rasterio.transform import Affine

                with warnings.catch_warnings():  # the real test masks are plain TIFFs without georeferencing
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    sink.tif(f"{split}/mask/{n}.tif", (change * 255).astype(np.uint8), None, Affine.identity())
            else:
                sink.image(f"{split}/mask/{n}.png", mask)
