"""OSCD, the Onera Satellite Change Detection dataset: 24 pairs of Sentinel-2 L1C images (13 bands, resampled to
10 m and co-registered, "rect") of cities between 2015 and 2018, with a pixel-wise urban change mask; 14 train and
10 test cities.

Modalities: ``t1`` and ``t2``, the two dates, both Sentinel-2 (13 bands, uint16), co-located. Label: ``mask``
(H, W) uint8, 0 no change, 1 change.

Layout ``original`` (the three archives, extracted; TorchGeo's ``OSCD`` downloads and extracts these same archives
into its root and reads this layout, so there is no second one)::

    Onera Satellite Change Detection dataset - Images/<city>/imgs_{1,2}_rect/B01.tif ... B12.tif, B8A.tif
    Onera Satellite Change Detection dataset - Images/<city>/dates.txt
    Onera Satellite Change Detection dataset - Images/{train,test}.txt        (comma-separated cities)
    Onera Satellite Change Detection dataset - {Train,Test} Labels/<city>/cm/cm.png   (0 / 255)

The split of a city is the label folder it lies in (as TorchGeo reads it). Bad input: a date whose bands differ in
size, dates that differ in size or CRS, a change mask of another size than the images: one error naming the file.

Citation: Caye Daudt et al., Urban Change Detection for Multispectral Earth Observation Using Convolutional Neural
Networks, IGARSS 2018.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import DataError
from .. import scene as sc
from ..raster import IGNORE_INDEX, Tile, affine_tuple, dataset_params, need_dir, need_tiles, read_raster, \
    tile_offsets, window_transform
from ..sink import Sink, draw_date, from_origin, month_greenness, s2_l1c, utm
from ..spec import DatasetSpec, Layout, Source, modality
from ..change import CHANGE_CLASSES, change_scenes, check_dates, read_change_mask

IMAGES = "Onera Satellite Change Detection dataset - Images"
LABELS = {"train": "Onera Satellite Change Detection dataset - Train Labels",
          "test": "Onera Satellite Change Detection dataset - Test Labels"}
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

SPEC = DatasetSpec(
    id="oscd", title="OSCD, Onera Satellite Change Detection (Sentinel-2 image pairs, urban change masks)",
    citation="Caye Daudt et al., Urban Change Detection for Multispectral Earth Observation Using Convolutional "
             "Neural Networks, IGARSS 2018",
    role="downstream", task="change_detection",
    modalities={"t1": modality("s2", BANDS), "t2": modality("s2", BANDS)}, pairs=(("t1", "t2"),),
    sources=(
        # the archives TorchGeo's OSCD fetches (same URLs and md5)
        Source("https://partage.imt.fr/index.php/s/gKRaWgRnLMfwMGo/download",
               f"{IMAGES}.zip", "c50d4a2941da64e03a47ac4dec63d915"),
        Source("https://partage.imt.fr/index.php/s/2D6n03k58ygBSpu/download",
               f"{LABELS['train']}.zip", "4d2965af8170c705ebad3d6ee71b6990"),
        Source("https://partage.imt.fr/index.php/s/gpStKn4Mpgfnr63/download",
               f"{LABELS['test']}.zip", "8177d437793c522653c442aa4e66c617"),
    ),
    layout=f"'{IMAGES}/<city>/imgs_{{1,2}}_rect/<band>.tif' (13 single-band GeoTIFFs per date), "
           f"'{LABELS['train']}/<city>/cm/cm.png' and the same under Test Labels (0 / 255)",
    splits="14 train cities (Train Labels), 10 test cities (Test Labels)",
    license="CC BY-NC-SA 4.0",
    extra={
        "classes": CHANGE_CLASSES,
        "train_cities": ("aguasclaras", "bercy", "bordeaux", "nantes", "paris", "rennes", "saclay_e", "abudhabi",
                         "cupertino", "pisa", "beihai", "hongkong", "beirut", "mumbai"),
        "test_cities": ("brasilia", "montpellier", "norcia", "rio", "saclay_w", "valencia", "dubai", "lasvegas",
                        "milano", "chongqing"),
    },
)


def label_attrs(spec: DatasetSpec) -> dict[str, dict]:
    return {"mask": {"class_names": list(CHANGE_CLASSES), "ignore_index": IGNORE_INDEX}}


# ----------------------------------------------------------------------------------------------------- readers
def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    """(city, split) of every city with a change mask, train cities first, each split by name."""
    need_dir(raw / IMAGES, "the OSCD image folder (the Images archive, extracted)")
    units = []
    for split, folder in LABELS.items():
        root = raw / folder
        if not root.is_dir():
            continue
        units += [(p.name, split) for p in sorted(root.iterdir()) if p.is_dir()]
    if not units:
        raise DataError(f"{raw}: expected '{LABELS['train']}/<city>/cm/cm.png' or the Test Labels folder, found "
                        "neither")
    return units


def _read_date(folder: Path) -> tuple[np.ndarray, str, object, Path]:
    """The 13 bands of one date -> ((13, H, W) uint16, crs, transform of the first band, its path)."""
    need_dir(folder, "the folder of one date's 13 bands")
    bands, first = [], None
    for name in BANDS:
        p = folder / f"{name}.tif"
        data, crs, t = read_raster(p, 1, f"Sentinel-2 {name}")
        if first is None:
            first = (p, data, crs, t)
        elif data.shape[-2:] != first[1].shape[-2:]:
            raise DataError(f"{p}: expected the size of {first[0].name} ({first[1].shape[-2]} x "
                            f"{first[1].shape[-1]} px; the rect bands are resampled to 10 m), found "
                            f"{data.shape[-2]} x {data.shape[-1]}")
        bands.append(data[0])
    stack = np.stack(bands)
    if stack.dtype != np.uint16:  # some copies store the rect bands as float or int16 reflectance x 10000
        stack = np.clip(np.rint(np.nan_to_num(stack.astype(np.float64))), 0, 65535).astype(np.uint16)
    return stack, first[2], first[3], first[0]


def read_city(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    """Both dates and the change mask of one city, cut into tiles (ids ``<city>_r<row>_c<col>``)."""
    city, split = unit
    tile = int(dataset_params(params, spec.id)["tile_size"])
    d1, crs1, t1, p1 = _read_date(raw / IMAGES / city / "imgs_1_rect")
    d2, crs2, t2, p2 = _read_date(raw / IMAGES / city / "imgs_2_rect")
    check_dates(p1, (d1, crs1, t1), p2, (d2, crs2, t2))
    mask = read_change_mask(raw / LABELS[split] / city / "cm" / "cm.png", d1.shape[-2:])
    h, w = d1.shape[-2:]
    need_tiles(p1, (h, w), tile)
    for r in tile_offsets(h, tile):
        for c in tile_offsets(w, tile):
            win = (slice(None), slice(r, r + tile), slice(c, c + tile))
            yield {"id": f"{city}_r{r}_c{c}", "split": split,
                   "modalities": {"t1": Tile(np.ascontiguousarray(d1[win]), crs1, affine_tuple(window_transform(t1, r, c))),
                                  "t2": Tile(np.ascontiguousarray(d2[win]), crs2, affine_tuple(window_transform(t2, r, c)))},
                   "labels": {"mask": np.ascontiguousarray(mask[r:r + tile, c:c + tile])}}


LAYOUTS = {"original": Layout("original", "the Images and Train/Test Labels archives, extracted (also TorchGeo's)",
                              expects=(f"{IMAGES}/*/imgs_1_rect", f"{LABELS['train']}/*|{LABELS['test']}/*"),
                              plan=plan, read=read_city)}


# ------------------------------------------------------------------------------------------------- synthetic copy
_OSCD_COVER = dict(urban=0.45, built=0.4, water=0.08, block_m=90.0, building_m=(15.0, 50.0), height_m=(6.0, 30.0))


def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """The first cities of the catalog's train and test lists: 13 band files per date, dates.txt, train.txt /
    test.txt, cm/cm.png (0 / 255) and cm/<city>-cm.tif (1 no change, 2 change), as the archives hold them."""
    lo, hi = (int(v) for v in cfg["size"])
    cities = {"train": list(spec.extra["train_cities"][: int(cfg["cities"]["train"])]),
              "test": list(spec.extra["test_cities"][: int(cfg["cities"]["test"])])}
    n = sum(len(v) for v in cities.values())
    sink.expect(n * (2 * len(BANDS) + 3) + 2)
    for split, names in cities.items():
        sink.text(f"{IMAGES}/{split}.txt", ",".join(names) + "\n")
        for city in names:
            shape = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
            cover = sc.random_cover(rng, **_OSCD_COVER)
            s1, s2, change = change_scenes(rng, shape, 10.0, cover)
            dates = sorted([draw_date(rng, "2015-08-01", "2016-10-31"), draw_date(rng, "2017-06-01", "2018-10-31")])
            crs = utm(int(rng.integers(10, 60)))
            transform = from_origin(float(rng.integers(2, 8)) * 1e5, float(rng.integers(5, 70)) * 1e5, 10.0, 10.0)
            for k, (scene, date) in enumerate(zip((s1, s2), dates), start=1):
                image = s2_l1c(scene, rng, month_greenness(date.month))
                for b, name in enumerate(BANDS):
                    sink.tif(f"{IMAGES}/{city}/imgs_{k}_rect/{name}.tif", image[b], crs, transform)
            sink.text(f"{IMAGES}/{city}/dates.txt",
                      "".join(f"date_{k}: {d:%Y%m%d}\n" for k, d in enumerate(dates, start=1)))
            sink.image(f"{LABELS[split]}/{city}/cm/cm.png", np.repeat((change * 255)[None], 3, 0))
            sink.tif(f"{LABELS[split]}/{city}/cm/{city}-cm.tif", (change + 1).astype(np.uint8), crs, transform)
