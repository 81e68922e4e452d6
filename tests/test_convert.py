"""Readers of the eight real layouts (on xgeo.data.synth output), conversion to Zarr, streaming statistics, info.

The helpers ``raw_of`` / ``store_of`` synthesise and convert each dataset once per test session; tests/test_dataset.py
and tests/test_bad_inputs.py import them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xgeo.catalog import CATALOG, get_dataset
from xgeo.config import load_params
from xgeo.data.convert import SPLIT_NAMES, convert
from xgeo.data.readers import READERS, resize, tile_offsets
from xgeo.data.stats import StreamingStats, apply_value_convention
from xgeo.data.store import ChunkReader, format_info, open_store, store_info
from xgeo.sensors import SENSORS

ROOT = Path(__file__).resolve().parents[1]
_RAW: dict[str, Path] = {}
_STORES: dict[str, Path] = {}
_SAMPLES: dict[str, list] = {}


# smaller synthetic scales than the demo's, to keep these tests within their time budget
TEST_SCALE = ("data.datasets.bigearthnet.synth.patches={train: 12, val: 6, test: 6}",
              "data.datasets.spacenet2.synth.images_per_aoi=8",
              "data.datasets.sen12ms-cr.synth.patches_per_roi=6",
              "data.datasets.sen12ms-cr.synth.rois={train: 1, val: 1, test: 1}",
              "data.datasets.vaihingen.synth.areas={train: 3, test: 2}")


def demo_params(*overrides: str) -> dict:
    return load_params(ROOT / "params.yaml", [*TEST_SCALE, *overrides])


def raw_of(tmp_path_factory, dataset: str) -> Path:
    """The synthetic raw layout of ``dataset`` (seed 0), written once per session."""
    if dataset not in _RAW:
        from xgeo.data.synth import synthesize

        d = tmp_path_factory.mktemp(f"raw-{dataset}")
        synthesize(dataset, d, demo_params(), seed=0)
        _RAW[dataset] = d
    return _RAW[dataset]


def store_of(tmp_path_factory, dataset: str) -> Path:
    """The Zarr store converted from ``raw_of(dataset)``, written once per session."""
    if dataset not in _STORES:
        out = tmp_path_factory.mktemp(f"zarr-{dataset}") / f"{dataset}.zarr"
        convert(dataset, raw_of(tmp_path_factory, dataset), out, demo_params())
        _STORES[dataset] = out
    return _STORES[dataset]


def samples_of(tmp_path_factory, dataset: str) -> list:
    if dataset not in _SAMPLES:
        _SAMPLES[dataset] = list(READERS[dataset](raw_of(tmp_path_factory, dataset), get_dataset(dataset), demo_params()))
    return _SAMPLES[dataset]


def _expected_hw(dataset: str, key: str) -> int:
    dp = demo_params()["data"]["datasets"][dataset]
    size = int(dp.get("resize_to") or dp["tile_size"])
    return size // get_dataset(dataset).extra["ratio"] if (dataset, key) == ("spacenet2", "mul") else size


# ------------------------------------------------------------------------------------------------------- readers
@pytest.mark.parametrize("dataset", sorted(CATALOG))
def test_reader_on_synthetic_layout(tmp_path_factory, dataset):
    spec = get_dataset(dataset)
    samples = samples_of(tmp_path_factory, dataset)
    assert len(samples) >= 4
    ids = [s["id"] for s in samples]
    assert len(set(ids)) == len(ids)
    for s in samples:
        assert s["split"] in SPLIT_NAMES
        assert set(s["modalities"]) == set(spec.modalities)
        for key, tile in s["modalities"].items():
            sensor = SENSORS[spec.modalities[key].sensor]
            hw = _expected_hw(dataset, key)
            assert tile.data.shape == (len(spec.modalities[key].bands), hw, hw), (key, tile.data.shape)
            assert tile.data.dtype == np.dtype(sensor.dtype)
            assert len(tile.transform) == 6 and all(np.isfinite(tile.transform))
            if dataset not in ("geopile", "millionaid", "dsifn", "imagenet", "geolifeclef", "fmow"):  # JPEGs: no CRS
                assert tile.crs.startswith("EPSG:") or "PROJCS" in tile.crs or "PROJCRS" in tile.crs
                assert tile.transform[0] > 0 and tile.transform[4] < 0
        # co-located modalities cover the same ground: identical upper-left corners
        corners = {(round(t.transform[2], 6), round(t.transform[5], 6)) for t in s["modalities"].values()}
        assert len(corners) == 1, corners


def test_sen12ms_splits_and_pairs(tmp_path_factory):
    raw = raw_of(tmp_path_factory, "sen12ms")
    samples = samples_of(tmp_path_factory, "sen12ms")
    for split in ("train", "test"):
        names = (raw / "splits" / f"{split}_list.txt").read_text().split()
        got = {s["id"].rsplit("_r", 1)[0] for s in samples if s["split"] == split}
        assert got == {Path(n).stem for n in names}
    # the s1 tile is the matching window of the file found by swapping _s2_ for _s1_
    import rasterio

    s = samples[0]
    name, rest = s["id"].rsplit("_r", 1)
    r, c = (int(v) for v in rest.split("_c"))
    season, scene = name.split("_s2_")[0], name.split("_s2_")[1].rsplit("_p", 1)[0]
    with rasterio.open(raw / season / f"s1_{scene}" / f"{name.replace('_s2_', '_s1_')}.tif") as src:
        ref = src.read()
    ts = s["modalities"]["s1"].data.shape[-1]
    np.testing.assert_array_equal(s["modalities"]["s1"].data, ref[:, r:r + ts, c:c + ts])


def test_bigearthnet_labels_43_to_19(tmp_path_factory):
    raw = raw_of(tmp_path_factory, "bigearthnet")
    spec = get_dataset("bigearthnet")
    samples = samples_of(tmp_path_factory, "bigearthnet")
    names43 = list(spec.extra["labels43"])
    assert len(names43) == 43 and len(spec.extra["labels19"]) == 19
    for split in ("train", "val", "test"):
        lines = (raw / "splits" / f"{split}.csv").read_text().split()
        assert [s["id"] for s in samples if s["split"] == split] == [ln.split(",")[0] for ln in lines]
    positives = 0
    for s in samples:
        meta = json.loads((raw / "BigEarthNet-v1.0" / s["id"] / f"{s['id']}_labels_metadata.json").read_text())
        want = np.zeros(19, np.uint8)
        for name in meta["labels"]:
            i19 = spec.extra["labels43_to_19"].get(names43.index(name))
            if i19 is not None:
                want[i19] = 1
        np.testing.assert_array_equal(s["labels"]["multilabel"], want)
        positives += int(want.sum())
    assert positives > 0


def test_bigearthnet_bands_resampled_to_10m_grid(tmp_path_factory):
    import rasterio
    from rasterio.enums import Resampling

    raw = raw_of(tmp_path_factory, "bigearthnet")
    s = samples_of(tmp_path_factory, "bigearthnet")[0]
    folder = raw / "BigEarthNet-v1.0" / s["id"]
    with rasterio.open(folder / f"{s['id']}_B02.tif") as src:
        hw = src.shape
    with rasterio.open(folder / f"{s['id']}_B05.tif") as src:  # a 20 m band
        assert src.shape == (hw[0] // 2, hw[1] // 2)
        b05 = src.read(1, out_shape=hw, resampling=Resampling.bilinear)
    tile = s["modalities"]["s2"].data.shape[-1]
    bands = get_dataset("bigearthnet").modalities["s2"].bands
    np.testing.assert_array_equal(s["modalities"]["s2"].data[bands.index("B05")], resize(b05, tile))


def test_vaihingen_labels_decode_catalog_colours(tmp_path_factory):
    import rasterio

    raw = raw_of(tmp_path_factory, "vaihingen")
    spec = get_dataset("vaihingen")
    s = samples_of(tmp_path_factory, "vaihingen")[0]
    area, rest = s["id"].split("_", 1)
    r, c = (int(v) for v in rest[1:].split("_c"))
    with rasterio.open(raw / "gts_for_participants" / f"top_mosaic_09cm_{area}.tif") as src:
        rgb = src.read()
    ts = s["labels"]["mask"].shape[-1]
    window = rgb[:, r:r + ts, c:c + ts]
    for k, colour in enumerate(spec.extra["colours"]):
        hit = np.all(window == np.array(colour, np.uint8)[:, None, None], axis=0)
        assert np.all(s["labels"]["mask"][hit] == k)
    assert s["labels"]["mask"].max() < len(spec.extra["classes"])
    all_eroded = np.concatenate([x["labels"]["mask_eroded"].ravel() for x in samples_of(tmp_path_factory, "vaihingen")])
    assert (all_eroded == 255).any() and (all_eroded < 6).any()
    splits = {x["split"] for x in samples_of(tmp_path_factory, "vaihingen")}
    assert splits <= {"train", "test"}


def test_sen12ms_cr_split_by_roi(tmp_path_factory):
    spec = get_dataset("sen12ms-cr")
    for s in samples_of(tmp_path_factory, "sen12ms-cr"):
        season = s["id"].split("ROIs", 1)[1].split("_s2_")[0]
        roi = int(s["id"].split("_s2_")[1].split("_p")[0])
        want = "test" if roi in spec.extra["test"].get(season, ()) else "val" if roi in spec.extra["val"].get(season, ()) else "train"
        assert s["split"] == want


def test_spacenet2_mul_tile_matches_pan_and_split_by_image(tmp_path_factory):
    samples = samples_of(tmp_path_factory, "spacenet2")
    by_image: dict[str, set] = {}
    for s in samples:
        image = s["id"].rsplit("_r", 1)[0]
        by_image.setdefault(image, set()).add(s["split"])
        pan, mul = s["modalities"]["pan"], s["modalities"]["mul"]
        # the MUL tile covers the PAN tile's ground: same corner, 4x the pixel size
        assert mul.transform[0] == pytest.approx(4 * pan.transform[0], rel=0.02)
    assert all(len(v) == 1 for v in by_image.values())
    frac = demo_params()["data"]["datasets"]["spacenet2"]["val_fraction"]
    n_val = sum("val" in v for v in by_image.values())
    assert n_val == round(frac * len(by_image))


def test_mdas_common_grid_and_resize(tmp_path_factory):
    dp = demo_params()["data"]["datasets"]["mdas"]
    for s in samples_of(tmp_path_factory, "mdas"):
        rgb, dsm = s["modalities"]["rgb"], s["modalities"]["dsm"]
        assert rgb.transform == dsm.transform and rgb.crs == dsm.crs
        assert rgb.data.shape[0] == 3
        assert np.isfinite(dsm.data).all()
    raw = raw_of(tmp_path_factory, "mdas")
    import rasterio

    with rasterio.open(next(raw.rglob("3K_RGB.tif"))) as a, rasterio.open(next(raw.rglob("3K_DSM.tif"))) as b:
        fine = min(abs(a.transform.a), abs(b.transform.a))
    assert s["modalities"]["rgb"].transform[0] == pytest.approx(fine * dp["tile_size"] / dp["resize_to"])


def test_tile_offsets_cover_the_image():
    assert tile_offsets(200, 64) == [0, 64, 128, 136]
    assert tile_offsets(650, 64, 4) == [0, 64, 128, 192, 256, 320, 384, 448, 512, 576, 584]
    assert tile_offsets(64, 64) == [0] and tile_offsets(63, 64) == []


# ---------------------------------------------------------------------------------------------------- statistics
def test_streaming_stats_equal_numpy_adaptive_histogram():
    """DSM (no valid range): the histogram grows both ways; merge of many small batches vs numpy on all data."""
    rng = np.random.default_rng(1)
    sensor = SENSORS["dsm"]
    batches = [rng.normal(300 + 40 * i, 5 + 20 * i, (1, 8, 16)).astype(np.float32) for i in range(6)]
    batches[3][0, 0, :4] = sensor.nodata
    batches[4][0, 1, :2] = np.nan
    batches.append(rng.normal(-50, 1, (1, 4, 4)).astype(np.float32))  # forces growth to the left
    st = StreamingStats(sensor, 1, (1, 99))
    kept = []
    for b in batches:
        x, valid = apply_value_convention(b, sensor)
        st.update(x, valid)
        kept.append(x[valid] if valid is not None else x.ravel())
    ref = np.concatenate(kept).astype(np.float64)
    res = st.result()
    assert res["count"] == [ref.size] and ref.size == sum(b.size for b in batches) - 6
    assert res["mean"][0] == pytest.approx(ref.mean(), rel=1e-9)
    assert res["std"][0] == pytest.approx(ref.std(), rel=1e-9)
    assert (res["min"][0], res["max"][0]) == (ref.min(), ref.max())
    for q in (1, 99):
        assert abs(res[f"p{q}"][0] - np.percentile(ref, q, method="inverted_cdf")) <= res["p_error"][0] + 1e-9
    assert res["p_error"][0] < (ref.max() - ref.min()) / 4000


def test_stats_of_integer_sensor_are_exact_percentiles():
    rng = np.random.default_rng(2)
    sensor = SENSORS["s2"]
    x = rng.integers(0, 12000, (3, 2, 32, 32)).astype(np.uint16)  # some above the valid range: clipped
    st = StreamingStats(sensor, 2, (1, 99))
    for b in x:
        st.update(*apply_value_convention(b, sensor))
    ref = np.clip(x.transpose(1, 0, 2, 3).reshape(2, -1).astype(np.float64), 0, 10000)
    res = st.result()
    for c in range(2):
        for q in (1, 99):
            assert res[f"p{q}"][c] == np.percentile(ref[c], q, method="inverted_cdf")
        assert res["mean"][c] == pytest.approx(ref[c].mean(), rel=1e-12)
    assert res["p_error"] == [0.5, 0.5]


@pytest.mark.parametrize("dataset", ["sen12ms", "vaihingen"])
def test_store_stats_equal_numpy_on_train_tiles(tmp_path_factory, dataset):
    spec = get_dataset(dataset)
    root = open_store(store_of(tmp_path_factory, dataset))
    train = root["split"][:] == SPLIT_NAMES.index("train")
    for key, mod in spec.modalities.items():
        sensor = SENSORS[mod.sensor]
        data = root[f"{key}/data"][:][train]
        stats = dict(root[f"{key}/data"].attrs)["stats"]
        for c in range(data.shape[1]):
            x, valid = apply_value_convention(data[:, c], sensor)
            v = (x[valid] if valid is not None else x.ravel()).astype(np.float64)
            assert stats["count"][c] == v.size
            assert stats["mean"][c] == pytest.approx(v.mean(), rel=1e-9)
            assert stats["std"][c] == pytest.approx(v.std(), rel=1e-9)
            assert (stats["min"][c], stats["max"][c]) == (v.min(), v.max())
            for q in (1, 99):
                assert abs(stats[f"p{q}"][c] - np.percentile(v, q, method="inverted_cdf")) <= stats["p_error"][c] + 1e-9


# ---------------------------------------------------------------------------------------------------------- store
@pytest.mark.parametrize("dataset", ["sen12ms", "bigearthnet", "vaihingen", "spacenet2"])
def test_zarr_round_trip_exact(tmp_path_factory, dataset):
    spec = get_dataset(dataset)
    samples = samples_of(tmp_path_factory, dataset)
    path = store_of(tmp_path_factory, dataset)
    root = open_store(path)
    assert list(root["ids"][:]) == [s["id"] for s in samples]
    assert [SPLIT_NAMES[i] for i in root["split"][:]] == [s["split"] for s in samples]
    for key in spec.modalities:
        arr = root[f"{key}/data"]
        assert arr.chunks == (1, *arr.shape[1:]) and arr.shards[0] == demo_params()["data"]["convert"]["samples_per_shard"]
        data = arr[:]
        fast = ChunkReader(path, f"{key}/data")
        assert fast.per_shard is not None
        crs, transform = root[f"{key}/crs"][:], root[f"{key}/transform"][:]
        for i, s in enumerate(samples):
            tile = s["modalities"][key]
            np.testing.assert_array_equal(data[i], tile.data)
            np.testing.assert_array_equal(fast[i], tile.data)
            assert crs[i] == tile.crs
            np.testing.assert_array_equal(transform[i], tile.transform)
    for name in samples[0]["labels"]:
        lab = root[f"labels/{name}"][:]
        for i, s in enumerate(samples):
            np.testing.assert_array_equal(lab[i], s["labels"][name])
    attrs = dict(root.attrs)
    assert attrs["dataset"] == dataset and attrs["pairs"] == [list(p) for p in spec.pairs]
    assert attrs["splits"] == {n: sum(s["split"] == n for s in samples) for n in SPLIT_NAMES}


def test_tile_size_override(tmp_path_factory, tmp_path):
    out = tmp_path / "s.zarr"
    convert("sen12ms", raw_of(tmp_path_factory, "sen12ms"), out, demo_params(), tile_size=32)
    root = open_store(out)
    assert root["s2/data"].shape[1:] == (13, 32, 32) and root.attrs["tile_size"] == 32
    n64 = open_store(store_of(tmp_path_factory, "sen12ms"))["s2/data"].shape[0]
    assert root["s2/data"].shape[0] == 4 * n64  # each 64 px tile splits into four 32 px tiles (sizes divide)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_store_info_and_cli(tmp_path_factory):
    from click.testing import CliRunner

    from xgeo.cli import main

    path = store_of(tmp_path_factory, "bigearthnet")
    info = store_info(path)
    root = open_store(path)
    assert info["samples"] == root["ids"].shape[0] == sum(info["splits"].values())
    s2 = info["modalities"]["s2"]
    assert s2["sensor"] == "s2" and s2["dtype"] == "uint16" and len(s2["bands"]) == 12 and "B10" not in s2["bands"]
    assert s2["shape"] == list(root["s2/data"].shape) and len(s2["stats"]["mean"]) == 12
    assert info["labels"]["multilabel"]["shape"][1] == 19
    text = format_info(info)
    assert "[s2] sensor s2, uint16" in text and "B8A" in text and f"{info['samples']} samples" in text
    assert info["layout"] == "original" and "(original layout)" in text
    mean_b02 = s2["stats"]["mean"][s2["bands"].index("B02")]
    assert f"{mean_b02:.5g}" in text
    res = CliRunner().invoke(main, ["data", "info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["splits"] == info["splits"]
