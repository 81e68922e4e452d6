"""Synthetic datasets: every real layout, real bands/dtypes/ranges, cross-sensor consistency, determinism, atomicity."""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from xgeo.catalog import CATALOG
from xgeo.data import scene as sc
from xgeo.data.synth import WRITERS, ben_labels, eroded, synthesize
from xgeo.errors import XGeoError

SMALL = {
    "geopile": {"images_per_class": 2, "size": 48},
    "millionaid": {"images_per_class": 2, "size": 48},
    "sen12ms": {"scenes_per_season": 1, "patches_per_scene": 4, "size": 32},
    "mdas": {"sub_areas": 1, "rgb_size": [150, 180]},
    "bigearthnet": {"patches": {"train": 6, "val": 3, "test": 3}, "size_10m": 120, "patches_per_tile": 8},
    "vaihingen": {"size": [160, 200], "areas": {"train": 2, "test": 2}},
    "sen12ms-cr": {"patches_per_roi": 2, "size": 32, "rois": {"train": 1, "val": 1, "test": 1}},
    "spacenet2": {"images_per_aoi": 3, "pan_size": 96},
}


def _small(params: dict) -> dict:
    params = copy.deepcopy(params)
    for ds, sizes in SMALL.items():
        params["data"]["datasets"][ds]["synth"].update(sizes)
    return params


@pytest.fixture(scope="module")
def params(root) -> dict:
    from xgeo.config import load_params

    return _small(load_params(root / "params.yaml"))


@pytest.fixture(scope="module")
def raw(params, tmp_path_factory) -> Path:
    """All eight datasets synthesised once (seed 0) under one directory."""
    out = tmp_path_factory.mktemp("raw")
    for ds in CATALOG:
        synthesize(ds, out / ds, params, seed=0)
    return out


def _read(path: Path):
    with rasterio.open(path) as f:
        return f.read(), f.crs, f.transform, f.res


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writers_cover_the_catalog():
    assert sorted(WRITERS) == sorted(CATALOG)


def test_unknown_dataset_names_the_catalog(params, tmp_path):
    with pytest.raises(XGeoError, match="bigearthnet.*spacenet2"):
        synthesize("eurosat", tmp_path / "x", params, seed=0)
    assert not (tmp_path / "x").exists()


def test_bigearthnet_layout(raw, params):
    root = raw / "bigearthnet"
    spec = CATALOG["bigearthnet"]
    lines = {s: (root / "splits" / f"{s}.csv").read_text().splitlines() for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in lines.items()} == SMALL["bigearthnet"]["patches"]
    sizes = {"B01": 20, "B02": 120, "B03": 120, "B04": 120, "B05": 60, "B06": 60, "B07": 60, "B08": 120,
             "B8A": 60, "B09": 20, "B11": 60, "B12": 60}
    for line in lines["train"] + lines["val"] + lines["test"]:
        s2, s1 = line.split(",")
        assert s2.startswith(("S2A_MSIL2A_", "S2B_MSIL2A_"))
        assert s1.startswith(("S1A_IW_GRDH_1SDV_", "S1B_IW_GRDH_1SDV_"))
        files = sorted(p.name for p in (root / "BigEarthNet-v1.0" / s2).iterdir())
        assert files == sorted([f"{s2}_{b}.tif" for b in spec.modalities["s2"].bands] + [f"{s2}_labels_metadata.json"])
        meta = json.loads((root / "BigEarthNet-v1.0" / s2 / f"{s2}_labels_metadata.json").read_text())
        assert set(meta) == {"labels", "coordinates", "projection", "tile_source", "acquisition_date"}
        assert meta["labels"] and set(meta["labels"]) <= set(spec.extra["labels43"])
        c = meta["coordinates"]
        assert (c["lrx"] - c["ulx"], c["uly"] - c["lry"]) == (1200, 1200)
        s1meta = json.loads((root / "BigEarthNet-S1-v1.0" / s1 / f"{s1}_labels_metadata.json").read_text())
        assert s1meta["corresponding_s2_patch"] == s2 and s1meta["labels"] == meta["labels"]
    s2 = lines["val"][0].split(",")[0]
    corner = json.loads((root / "BigEarthNet-v1.0" / s2 / f"{s2}_labels_metadata.json").read_text())["coordinates"]
    for band, n in sizes.items():
        data, crs, transform, res = _read(root / "BigEarthNet-v1.0" / s2 / f"{s2}_{band}.tif")
        assert data.shape == (1, n, n) and data.dtype == np.uint16 and data.max() <= 10000
        assert 32629 <= crs.to_epsg() <= 32635 and res == (1200 / n, 1200 / n)
        assert (transform.c, transform.f) == (corner["ulx"], corner["uly"])
    s1 = lines["val"][0].split(",")[1]
    vv, crs, _, _ = _read(root / "BigEarthNet-S1-v1.0" / s1 / f"{s1}_VV.tif")
    vh, _, _, _ = _read(root / "BigEarthNet-S1-v1.0" / s1 / f"{s1}_VH.tif")
    assert vv.shape == (1, 120, 120) and vv.dtype == np.float32 and crs.to_epsg() // 100 == 326
    assert np.mean((vv >= -25) & (vv <= 0)) > 0.9 and np.mean(vh < vv) > 0.9  # cross-pol weaker than co-pol


def test_ben_labels_from_fractions():
    names = CATALOG["bigearthnet"].extra["labels43"]
    f = np.zeros(len(sc.CLASSES))
    f[[sc.WATER, sc.BROADLEAF, sc.CONIFEROUS, sc.CROPLAND]] = [0.2, 0.3, 0.3, 0.2]
    assert ben_labels(f, names) == ["Non-irrigated arable land", "Mixed forest", "Water bodies"]
    f = np.zeros(len(sc.CLASSES))
    f[[sc.IMPERVIOUS, sc.BUILDING, sc.LOW_VEG]] = [0.5, 0.35, 0.15]
    assert ben_labels(f, names) == ["Continuous urban fabric", "Pastures"]
    f = np.zeros(len(sc.CLASSES))
    f[[sc.CONIFEROUS, sc.BARE, sc.WATER]] = [0.95, 0.03, 0.02]
    assert ben_labels(f, names) == ["Coniferous forest"]


def test_sen12ms_layout(raw):
    root = raw / "sen12ms"
    lists = {s: (root / "splits" / f"{s}_list.txt").read_text().split() for s in ("train", "test")}
    assert lists["train"] and lists["test"] and not set(lists["train"]) & set(lists["test"])
    seasons = set()
    nan_count, s1_values = 0, []
    for name in lists["train"] + lists["test"]:
        season, scene_id = name.split("_s2_")[0][4:], name.split("_s2_")[1].split("_p")[0]
        seasons.add(season)
        s2, crs2, t2, _ = _read(root / f"ROIs{season}" / f"s2_{scene_id}" / name)
        s1, crs1, t1, _ = _read(root / f"ROIs{season}" / f"s1_{scene_id}" / name.replace("_s2_", "_s1_"))
        lc, _, _, _ = _read(root / f"ROIs{season}" / f"lc_{scene_id}" / name.replace("_s2_", "_lc_"))
        assert s2.shape == (13, 32, 32) and s2.dtype == np.uint16 and s2.max() <= 10000
        assert s1.shape == (2, 32, 32) and s1.dtype == np.float32
        assert lc.shape == (4, 32, 32) and lc.dtype == np.uint16 and set(np.unique(lc[0])) <= set(range(1, 18))
        assert crs1 == crs2 and t1 == t2 and crs2.to_epsg() // 100 == 326 and t2.a == 10.0
        s1_values.append(s1[np.isfinite(s1)])
        nan_count += int(np.isnan(s1).sum())
    assert seasons == set(CATALOG["sen12ms"].extra["seasons"])
    valid = np.concatenate(s1_values)
    assert np.mean((valid >= -25) & (valid <= 0)) > 0.85  # mostly within the convention's range (water VH below)
    assert 0 < nan_count < 0.05 * len(lists["train"] + lists["test"]) * 2 * 32 * 32  # a few NaNs, the convention


def test_sen12ms_cr_layout_and_clouds(raw):
    root = raw / "sen12ms-cr"
    extra = CATALOG["sen12ms-cr"].extra
    rois = {"train": 0, "val": 0, "test": 0}
    brighter = []
    for season in extra["seasons"]:
        stems = {k: sorted(p.name.replace(f"_{k}_", "_X_") for p in (root / f"ROIs{season}_{k}").rglob("*.tif"))
                 for k in ("s1", "s2", "s2_cloudy")}
        assert stems["s1"] == stems["s2"] == stems["s2_cloudy"] and stems["s2"]
        for folder in (root / f"ROIs{season}_s2").iterdir():
            roi = int(folder.name.split("_")[1])
            split = ("test" if roi in extra["test"].get(season, ()) else
                     "val" if roi in extra["val"].get(season, ()) else "train")
            rois[split] += 1
            for f in folder.iterdir():
                clear, _, _, _ = _read(f)
                cloudy, _, _, _ = _read(root / f"ROIs{season}_s2_cloudy" / folder.name.replace("s2", "s2_cloudy")
                                        / f.name.replace("_s2_", "_s2_cloudy_"))
                assert clear.shape == cloudy.shape == (13, 32, 32) and cloudy.dtype == np.uint16
                brighter.append(cloudy[1:4].astype(float).mean() - clear[1:4].astype(float).mean())
    assert all(v == 4 for v in rois.values())  # one ROI per split and season
    assert np.mean(brighter) > 500  # clouds raise visible reflectance (x 10000)


def test_vaihingen_layout_and_labels(raw):
    root = raw / "vaihingen"
    extra = CATALOG["vaihingen"].extra
    areas = sorted(int(p.stem.split("area")[1]) for p in (root / "top").iterdir())
    assert areas == sorted(extra["train_areas"][:2] + extra["test_areas"][:2])
    colours = {tuple(c) for c in extra["colours"]}
    gap = []
    for a in areas:
        irrg, crs, t, _ = _read(root / "top" / f"top_mosaic_09cm_area{a}.tif")
        dsm, crs_d, t_d, _ = _read(root / "dsm" / f"dsm_09cm_matching_area{a}.tif")
        gt, _, _, _ = _read(root / "gts_for_participants" / f"top_mosaic_09cm_area{a}.tif")
        ero, _, _, _ = _read(root / "gts_eroded_for_participants" / f"top_mosaic_09cm_area{a}_noBoundary.tif")
        assert irrg.dtype == np.uint8 and irrg.shape[0] == 3 and 160 <= irrg.shape[1] <= 200
        assert dsm.dtype == np.float32 and dsm.shape[1:] == irrg.shape[1:] == gt.shape[1:] and gt.shape[0] == 3
        assert crs == crs_d and t == t_d and crs.to_epsg() == 32632 and t.a == pytest.approx(0.09)
        seen = {tuple(c) for c in gt.reshape(3, -1).T}
        assert seen <= colours and (0, 0, 255) in seen  # every area has buildings
        black = (ero == 0).all(axis=0)
        assert 0 < black.mean() < 0.5 and ((ero == gt).all(axis=0) | black).all()
        building = (gt == np.array([0, 0, 255])[:, None, None]).all(axis=0)
        ground = (gt == 255).all(axis=0)
        gap.append(np.median(dsm[0][building]) - np.median(dsm[0][ground]))
        # vegetation is bright in the NIR channel of IRRG, roofs and streets are not
        veg = (gt == np.array([0, 255, 255])[:, None, None]).all(axis=0)
        if veg.any():
            assert irrg[0][veg].mean() > irrg[0][ground].mean() + 20
    assert min(gap) > 3.0  # buildings stand above the street in the DSM


def test_eroded_boundaries():
    labels = np.zeros((9, 9), np.uint8)
    labels[:, 5:] = 1
    out = eroded(labels, radius=2, ignore=255)
    assert (out[:, 3:7] == 255).all() and (out[:, :3] == 0).all() and (out[:, 7:] == 1).all()


def test_mdas_same_extent_two_pixel_sizes(raw):
    area = raw / "mdas" / "Augsburg_data_4_publication" / "sub_area_1"
    with rasterio.open(area / "3K_RGB.tif") as r, rasterio.open(area / "3K_DSM.tif") as d:
        assert (r.count, r.dtypes[0], d.count, d.dtypes[0]) == (4, "uint8", 1, "float32")
        assert (r.height, r.width, d.height, d.width) == (150, 180, 100, 120)
        assert r.bounds == pytest.approx(d.bounds) and r.crs == d.crs and r.crs.to_epsg() == 32632
        assert r.res == pytest.approx((0.2, 0.2)) and d.res == pytest.approx((0.3, 0.3))
        rgb, dsm = r.read(), d.read(1)
    assert (rgb[3] == 255).all() and 400 < np.median(dsm) < 600  # Augsburg lies about 490 m above sea level
    # co-registration: bright roofs (seen in the RGB grid, averaged onto the DSM grid) stand high
    grey = rgb[:3].astype(float).mean(axis=0)
    coarse = sc.block_mean(np.repeat(np.repeat(grey, 2, 0), 2, 1), 3)
    assert coarse.shape == dsm.shape
    assert np.corrcoef(coarse.ravel(), dsm.ravel())[0, 1] != pytest.approx(0.0, abs=0.02)


def test_spacenet2_layout_and_pan_mul(raw):
    root = raw / "spacenet2" / "AOI_2_Vegas_Train"
    names = sorted(p.name[len("PAN_"):-4] for p in (root / "PAN").iterdir())
    assert len(names) == 3 and all(n.startswith("AOI_2_Vegas_img") for n in names)
    rows = list(csv.reader((root / "summaryData" / "AOI_2_Vegas_Train_Building_Solutions.csv").open()))
    assert rows[0] == ["ImageId", "BuildingId", "PolygonWKT_Pix", "PolygonWKT_Geo"]
    assert {r[0] for r in rows[1:]} == set(names)
    for n in names:
        pan, crs, t, _ = _read(root / "PAN" / f"PAN_{n}.tif")
        mul, _, tm, _ = _read(root / "MUL" / f"MUL_{n}.tif")
        ps, _, _, _ = _read(root / "MUL-PanSharpen" / f"MUL-PanSharpen_{n}.tif")
        rgb, _, _, _ = _read(root / "RGB-PanSharpen" / f"RGB-PanSharpen_{n}.tif")
        assert (pan.shape, mul.shape, ps.shape, rgb.shape) == ((1, 96, 96), (8, 24, 24), (8, 96, 96), (3, 96, 96))
        for a in (pan, mul, ps, rgb):
            assert a.dtype == np.uint16 and 1 <= a.min() and a.max() <= 2047
        assert crs.to_epsg() == 4326 and tm.a == pytest.approx(4 * t.a) and (tm.c, tm.f) == (t.c, t.f)
        # PAN agrees with the MUL bands inside its 450-800 nm response, upsampled
        up = np.repeat(np.repeat(mul[1:6].astype(float).mean(axis=0), 4, 0), 4, 1)
        assert np.corrcoef(up.ravel(), pan[0].astype(float).ravel())[0, 1] > 0.8
        # MUL is the pan-sharpened product area-averaged by the ratio 4
        assert np.abs(sc.block_mean(ps.astype(float), 4) - mul).mean() < 5
        gj = json.loads((root / "geojson" / "buildings" / f"buildings_{n}.geojson").read_text())
        assert gj["type"] == "FeatureCollection"
        for feat in gj["features"]:
            lon, lat, _ = feat["geometry"]["coordinates"][0][0]
            eps = 1e-8  # coordinates are written to 9 decimals
            assert t.c - eps <= lon <= t.c + 96 * t.a + eps and t.f + 96 * t.e - eps <= lat <= t.f + eps


def test_rgb_sets_layout(raw):
    files = sorted((raw / "geopile" / "GeoPileV0").rglob("*.*"))
    sources = {p.relative_to(raw / "geopile" / "GeoPileV0").parts[0] for p in files}
    assert sources == {"NAIP", "RESISC45", "PatternNet"}
    assert len(files) == 2 + 2 * 2 * 2  # NAIP has one folder; 2 classes of the others; 2 images each
    for p in files:
        head = p.read_bytes()[:8]
        assert head[:3] == b"\xff\xd8\xff" if p.suffix == ".jpg" else head == b"\x89PNG\r\n\x1a\n"
        assert len(p.relative_to(raw / "geopile").parts) == 4  # GeoPileV0/<source>/<class>/<image>
    assert all(p.suffix == ".png" for p in files if "NAIP" in p.parts)
    mil = sorted((raw / "millionaid").rglob("*.jpg"))
    assert {str(p.parent.relative_to(raw / "millionaid")) for p in mil} == {
        "train/agriculture_land/arable_land/dry_field", "train/water_area/beach",
        "train/transportation_land/highway_area/road"}
    from PIL import Image

    with Image.open(mil[0]) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (48, 48)


def test_cross_sensor_consistency():
    rng = np.random.default_rng(3)
    cover = sc.Cover(water=0.2, forest=0.3, low_vegetation=0.2, cropland=0.1, bare_soil=0.05, urban=0.15)
    scene = sc.make_scene(rng, (256, 256), 10.0, cover)
    wl = [664.6, 832.8]
    red, nir = sc.reflectance(scene, wl)
    ndvi = (nir - red) / (nir + red)
    vv, vh = sc.sar_backscatter(scene, rng)
    water, veg = scene.classes == sc.WATER, np.isin(scene.classes, (sc.BROADLEAF, sc.CONIFEROUS, sc.LOW_VEG))
    assert ndvi[water].mean() < 0 < 0.5 < ndvi[veg].mean()
    assert vv[veg].mean() - vv[water].mean() > 8.0  # open water is a specular (dark) surface
    smooth = sc.block_mean(vv, 8).ravel()  # speckle averaged out
    assert np.corrcoef(smooth, -sc.block_mean(water, 8).ravel())[0, 1] > 0.6
    built = scene.classes == sc.BUILDING
    assert vv[built].mean() > vv[scene.classes == sc.IMPERVIOUS].mean() + 5  # double bounce
    # speckle: one-look-ish gamma noise, but the underlying field is spatially coherent
    pure = sc.reflectance(scene, [664.6])[0]
    assert np.corrcoef(pure[:, :-1].ravel(), pure[:, 1:].ravel())[0, 1] > 0.7
    # the DSM stands higher on buildings and trees than on open ground
    fine = sc.make_scene(rng, (200, 200), 0.3, sc.Cover(urban=0.8, forest=0.0, water=0.0, cropland=0.0))
    surface = sc.dsm(fine, rng)[0]
    ground = np.isin(fine.classes, (sc.IMPERVIOUS, sc.LOW_VEG))
    assert surface[fine.classes == sc.BUILDING].mean() - surface[ground].mean() > 3.0


def test_same_seed_same_bytes_other_seed_differs(params, raw, tmp_path):
    for ds in ("bigearthnet", "spacenet2", "geopile", "sen12ms-cr"):
        synthesize(ds, tmp_path / "a" / ds, params, seed=0)
        assert _files(tmp_path / "a" / ds) == _files(raw / ds), ds
    synthesize("spacenet2", tmp_path / "b", params, seed=1)
    other = _files(tmp_path / "b")
    same = _files(raw / "spacenet2")
    tifs = lambda files: {v for k, v in files.items() if k.endswith(".tif")}  # noqa: E731
    assert len(tifs(other)) == len(tifs(same)) and not tifs(other) & tifs(same)


def test_interrupted_synth_leaves_nothing(params, tmp_path, monkeypatch):
    target = tmp_path / "geo"
    synthesize("geopile", target, params, seed=0)
    before = _files(target)

    def broken(sink, spec, cfg, rng):
        sink.text("GeoPileV0/half.txt", "half")
        raise RuntimeError("interrupted")

    monkeypatch.setitem(WRITERS, "geopile", broken)
    with pytest.raises(RuntimeError):
        synthesize("geopile", target, params, seed=1)
    assert _files(target) == before  # the earlier good copy survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["geo"]  # no temporary left behind


def test_cli_synth(root, tmp_path):
    from click.testing import CliRunner

    from xgeo.cli import main

    args = ["data", "synth", "millionaid", str(tmp_path / "m"), "--seed", "2", "--params", str(root / "params.yaml"),
            "--set", "data.datasets.millionaid.synth.images_per_class=1",
            "--set", "data.datasets.millionaid.synth.size=32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "m" / "train").rglob("*.jpg"))) == 3
    bad = CliRunner().invoke(main, ["data", "synth", "nope", str(tmp_path / "n"),
                                    "--params", str(root / "params.yaml")])
    assert bad.exit_code == 2 and "geopile" in bad.output
