"""GeoLifeCLEF (2021): species observations in France and the US, each with a 256 x 256 px, 1 m patch of aerial
imagery around it; its RGB patches (about 1.9M) are a pretraining set of the appendix's rows (XGeoSet-RGB +
GeoLifeCLEF), each resized to ``tile_size``. The near-infrared, altitude and land-cover patches are not used.

Bands: RGB (uint8, JPEG). All patches are pretraining data (split 'train').

Layout ``original`` (the competition's patch archives, unpacked)::

    patches-{fr,us}/<CD>/<AB>/<observation_id>_rgb.jpg

where, for an observation id ending in the digits ...ABCD, ``CD`` are its last two digits and ``AB`` the two before
(the competition's loader builds the path the same way).

Citation: Cole et al., The GeoLifeCLEF 2020 Dataset, arXiv:2004.04192; Lorieul et al., Overview of GeoLifeCLEF 2021.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import DataError
from ..raster import dataset_params, picture_sample
from ..sink import Sink, scene_image
from ..spec import DatasetSpec, Layout, Source, modality

SPEC = DatasetSpec(
    id="geolifeclef", title="GeoLifeCLEF 2021 (RGB aerial patches of species observations, 1 m)",
    citation="Cole et al., The GeoLifeCLEF 2020 Dataset, arXiv:2004.04192, 2020",
    role="pretrain", task=None, modalities={"rgb": modality("rgb")}, pairs=(),
    sources=(
        Source(None, "patches-fr", manual=True, extract=False, instructions=(
            "GeoLifeCLEF 2021 is distributed through its Kaggle competition (geolifeclef-2021; login and rules "
            "acceptance). Download the patch archives and unpack them so that DIR/patches-fr/<CD>/<AB>/<id>_rgb.jpg "
            "and DIR/patches-us/... exist.")),
        Source(None, "patches-us", manual=True, extract=False, instructions="from the same competition"),
    ),
    layout="patches-{fr,us}/<CD>/<AB>/<observation_id>_rgb.jpg (CD: last two digits of the id, AB: the two before)",
    splits="all RGB patches are pretraining data (split 'train')",
    license="CC BY-NC (IGN, NAIP imagery; see the competition rules)",
)


def patch_path(region: str, observation_id: int) -> str:
    s = str(int(observation_id))
    return f"patches-{region}/{s[-2:]}/{s[-4:-2]}/{s}_rgb.jpg"


# ----------------------------------------------------------------------------------------------------- readers
def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    units = []
    for region in ("fr", "us"):
        folder = raw / f"patches-{region}"
        if folder.is_dir():
            units += sorted((p.relative_to(raw).as_posix(), f"{region}/{p.stem[:-4]}") for p in folder.glob("*/*/*_rgb.jpg"))
    if not units:
        raise DataError(f"{raw}: expected patches-fr/<CD>/<AB>/<id>_rgb.jpg or patches-us/..., found none")
    return units


def read_patch(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    rel, sample_id = unit
    yield picture_sample(raw / rel, sample_id, "train", int(dataset_params(params, spec.id)["tile_size"]))


LAYOUTS = {"original": Layout("original", "patches-{fr,us}/<CD>/<AB>/<id>_rgb.jpg",
                              expects=("patches-fr/*/*/*_rgb.jpg|patches-us/*/*/*_rgb.jpg",), plan=plan, read=read_patch)}


# ------------------------------------------------------------------------------------------------- synthetic copy
def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """patches-fr/ and patches-us/ RGB patches (1 m) of observations with ids in the competition's ranges (France
    10000000+, US 20000000+), with the near-infrared patch beside each as the archives have it."""
    n, size = int(cfg["patches_per_region"]), int(cfg["size"])
    sink.expect(4 * n)
    for region, base in (("fr", 10_000_000), ("us", 20_000_000)):
        for obs in np.sort(rng.choice(np.arange(base, base + 1_000_000), size=n, replace=False)):
            rgb = scene_image(rng, size, 1.0, "")
            path = patch_path(region, int(obs))
            sink.image(path, rgb)
            sink.image(path.replace("_rgb.jpg", "_near_ir.jpg"), np.repeat(rgb[:1], 3, 0))
