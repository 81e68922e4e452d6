"""The appendix's datasets (Tables 8 and 9): OSCD, DSIFN, WHU in their real layouts, synthetic copies drawn from the
latent change between two dates, conversion with the dates as co-located modalities, and one clear error per bad
input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from xgeo.catalog import get_dataset
from xgeo.config import load_params
from xgeo.data import scene as sc
from xgeo.data.change import change_scenes
from xgeo.data.readers import READERS, tile_offsets
from xgeo.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("data.datasets.oscd.synth={size: [64, 80], cities: {train: 2, test: 1}}",
         "data.datasets.dsifn.synth={size: 64, pairs: {train: 2, val: 1, test: 1}}",
         "data.datasets.whu.synth={size: 64, tiles: {train: 2, val: 1, test: 1}}",
         "data.datasets.oscd.tile_size=32", "data.datasets.dsifn.tile_size=32", "data.datasets.whu.tile_size=32")
_RAW: dict[str, Path] = {}


def params(*more: str) -> dict:
    return load_params(ROOT / "params.yaml", [*SMALL, *more])


def raw(tmp_path_factory, dataset: str) -> Path:
    if dataset not in _RAW:
        from xgeo.data.synth import synthesize

        d = tmp_path_factory.mktemp(f"raw-{dataset}")
        synthesize(dataset, d, params(), seed=0)
        _RAW[dataset] = d
    return _RAW[dataset]


def copy_of(tmp_path, tmp_path_factory, dataset: str) -> Path:
    dst = tmp_path / dataset
    shutil.copytree(raw(tmp_path_factory, dataset), dst)
    return dst


def read(dataset: str, folder: Path) -> list[dict]:
    return list(READERS[dataset](folder, get_dataset(dataset), params()))


# ------------------------------------------------------------------------------------------------- latent change
def test_change_scenes_label_exactly_the_changed_classes():
    rng = np.random.default_rng(3)
    s1, s2, mask = change_scenes(rng, (96, 96), 2.0, sc.random_cover(rng, urban=0.4, water=0.1))
    assert np.array_equal(mask.astype(bool), s1.classes != s2.classes)
    assert 0.005 < mask.mean() < 0.5
    assert np.array_equal(s1.terrain, s2.terrain)  # the ground does not move between dates


# ------------------------------------------------------------------------------------------------------ readers
@pytest.mark.parametrize("dataset,splits,n", [("oscd", {"train", "test"}, 3), ("dsifn", {"train", "val", "test"}, 4),
                                              ("whu", {"train", "val", "test"}, 4)])
def test_reader_on_synthetic_layout(tmp_path_factory, dataset, splits, n):
    spec = get_dataset(dataset)
    samples = read(dataset, raw(tmp_path_factory, dataset))
    assert {s["split"] for s in samples} == splits
    assert len({s["id"].split("_r")[0] for s in samples}) == n  # every city / pair / tile, once
    assert len({s["id"] for s in samples}) == len(samples)
    masks = np.stack([s["labels"]["mask"] for s in samples])
    assert masks.shape[1:] == (32, 32) and set(np.unique(masks)) == {0, 1}
    for s in samples:
        assert set(s["modalities"]) == set(spec.modalities)
        for key, tile in s["modalities"].items():
            assert tile.data.shape == (len(spec.modalities[key].bands), 32, 32)
    if spec.task == "change_detection":
        # the labelled change is what differs between the dates: the pixels marked changed differ more
        d = np.concatenate([np.abs(s["modalities"]["t2"].data.astype(float) - s["modalities"]["t1"].data).mean(0)
                            .ravel() for s in samples])
        m = masks.reshape(-1).astype(bool)
        assert d[m].mean() > 1.5 * d[~m].mean()
    else:
        # WHU: the building mask marks the roofs, brighter than the rest of a 0.3 m scene in red
        r = np.concatenate([s["modalities"]["rgb"].data[0].ravel() for s in samples]).astype(float)
        assert r[masks.reshape(-1) == 1].mean() > r[masks.reshape(-1) == 0].mean()


def test_conversion_keeps_the_dates_co_located(tmp_path_factory, tmp_path):
    from xgeo.data.convert import convert
    from xgeo.data.store import open_store

    out = tmp_path / "oscd.zarr"
    convert("oscd", raw(tmp_path_factory, "oscd"), out, params())
    root = open_store(out)
    assert list(root.attrs["modalities"]) == ["t1", "t2"]
    assert np.array_equal(root["t1/transform"][:], root["t2/transform"][:])
    assert root["labels/mask"].shape == (root["ids"].shape[0], 32, 32)
    assert dict(root["labels/mask"].attrs)["class_names"] == ["no_change", "change"]


# ---------------------------------------------------------------------------------------------------- bad input
def _rewrite(path: Path, data=None, crs=None) -> None:
    with rasterio.open(path) as f:
        profile, old = f.profile, f.read()
    data = old if data is None else data
    profile.update(height=data.shape[-2], width=data.shape[-1], crs=crs or profile["crs"])
    with rasterio.open(path, "w", **profile) as f:
        f.write(data)


def _city(folder: Path) -> tuple[str, Path]:
    images = folder / "Onera Satellite Change Detection dataset - Images"
    city = sorted((folder / "Onera Satellite Change Detection dataset - Train Labels").iterdir())[0].name
    return city, images / city


def test_oscd_dates_of_another_size(tmp_path, tmp_path_factory):
    folder = copy_of(tmp_path, tmp_path_factory, "oscd")
    _, city = _city(folder)
    for band in city.glob("imgs_2_rect/*.tif"):
        with rasterio.open(band) as f:
            data = f.read()
        _rewrite(band, data[:, :-3, :])
    with pytest.raises(DataError, match=r"imgs_2_rect/B01\.tif: expected the size of the first date .*imgs_1_rect"):
        read("oscd", folder)


def test_oscd_dates_of_another_crs(tmp_path, tmp_path_factory):
    folder = copy_of(tmp_path, tmp_path_factory, "oscd")
    _, city = _city(folder)
    for band in city.glob("imgs_2_rect/*.tif"):
        _rewrite(band, crs=CRS.from_epsg(3857))
    with pytest.raises(DataError, match=r"imgs_2_rect/B01\.tif: expected the CRS of the first date .*found EPSG:3857"):
        read("oscd", folder)


def test_oscd_change_mask_of_another_size(tmp_path, tmp_path_factory):
    from PIL import Image

    folder = copy_of(tmp_path, tmp_path_factory, "oscd")
    name, _ = _city(folder)
    cm = folder / "Onera Satellite Change Detection dataset - Train Labels" / name / "cm" / "cm.png"
    Image.new("L", (10, 12)).save(cm)
    with pytest.raises(DataError, match=rf"{name}/cm/cm\.png: expected a change mask of the image size .*found 12 x 10"):
        read("oscd", folder)


def test_dsifn_date_missing(tmp_path, tmp_path_factory):
    folder = copy_of(tmp_path, tmp_path_factory, "dsifn")
    (folder / "val" / "t2" / "0.jpg").unlink()
    with pytest.raises(DataError, match=r"val/t2/0\.jpg: expected the second date of .*val/t1/0\.jpg, found no such"):
        read("dsifn", folder)


def test_whu_label_missing(tmp_path, tmp_path_factory):
    folder = copy_of(tmp_path, tmp_path_factory, "whu")
    label = sorted((folder / "test" / "label").iterdir())[0]
    label.unlink()
    with pytest.raises(DataError, match=rf"{label.name}: expected the building mask of .*found no such file"):
        read("whu", folder)


# ------------------------------------------------------------------------------------------- pretraining sets
def test_pretraining_sets_on_their_layouts(tmp_path):
    from xgeo.data.synth import synthesize

    p = params("data.datasets.imagenet.synth={classes: 2, images_per_class: 2, val_images: 2, size: 48}",
               "data.datasets.geolifeclef.synth={patches_per_region: 2, size: 48}",
               "data.datasets.fmow.synth={categories: 2, instances_per_category: 1, size: [40, 130]}",
               "data.datasets.fmow.tile_px=64", "data.datasets.imagenet.tile_size=32",
               "data.datasets.geolifeclef.tile_size=32", "data.datasets.fmow.tile_size=32")
    for ds in ("imagenet", "geolifeclef", "fmow"):
        synthesize(ds, tmp_path / ds, p, seed=0)
    imagenet = list(READERS["imagenet"](tmp_path / "imagenet", get_dataset("imagenet"), p))
    assert len(imagenet) == 6 and {s["split"] for s in imagenet} == {"train", "val"}
    assert all(s["id"].startswith(("train/n", "val/ILSVRC2012_val_")) for s in imagenet)
    glc = list(READERS["geolifeclef"](tmp_path / "geolifeclef", get_dataset("geolifeclef"), p))
    assert sorted(s["id"][:3] for s in glc) == ["fr/", "fr/", "us/", "us/"]  # RGB patches only, not the NIR ones
    for s in glc:  # the id's last digits name the folders, as the competition lays them out
        oid = s["id"][3:]
        assert (tmp_path / "geolifeclef" / f"patches-{s['id'][:2]}" / oid[-2:] / oid[-4:-2] / f"{oid}_rgb.jpg").is_file()
    fmow = list(READERS["fmow"](tmp_path / "fmow", get_dataset("fmow"), p))
    from PIL import Image

    expected = 0
    for img in sorted((tmp_path / "fmow").glob("*/*/*/*_rgb.jpg")):
        w, h = Image.open(img).size
        expected += 1 if min(h, w) < 64 else len(tile_offsets(h, 64)) * len(tile_offsets(w, 64))
    assert len(fmow) == expected > 4  # every 64 px tile of every image (a small image: one tile)
    for s in imagenet + glc + fmow:
        assert s["modalities"]["rgb"].data.shape == (3, 32, 32) and s["modalities"]["rgb"].data.dtype == np.uint8
