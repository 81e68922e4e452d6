"""Bad input: one clear DataError naming the file, what was expected and what was found; no half-written store;
an earlier good store survives a failed rebuild. NaNs in SAR follow the sensor's convention."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from test_convert import demo_params, raw_of, store_of
from xgeo.data.convert import convert
from xgeo.data.dataset import ZarrDataset
from xgeo.data.store import open_store
from xgeo.errors import DataError


def _copy(tmp_path_factory, tmp_path: Path, dataset: str) -> Path:
    dst = tmp_path / "raw"
    shutil.copytree(raw_of(tmp_path_factory, dataset), dst)
    return dst


def _first_s2(raw: Path) -> Path:
    name = (raw / "splits" / "train_list.txt").read_text().split()[0]
    season, scene = name.split("_s2_")[0], name.split("_s2_")[1].rsplit("_p", 1)[0]
    return raw / season / f"s2_{scene}" / name


def _s1_of(s2: Path) -> Path:
    return s2.parent.parent / s2.parent.name.replace("s2_", "s1_") / s2.name.replace("_s2_", "_s1_")


def _rewrite(path: Path, data: np.ndarray | None = None, crs=None, shape=None) -> None:
    with rasterio.open(path) as src:
        profile, arr = src.profile, src.read()
    if data is None:
        data = arr
    if shape is not None:
        data = data[:, : shape[0], : shape[1]]
    profile.update(count=data.shape[0], height=data.shape[1], width=data.shape[2])
    if crs is not None:
        profile.update(crs=crs)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _convert_fails(raw: Path, out: Path, dataset: str, *patterns: str) -> str:
    with pytest.raises(DataError) as exc:
        convert(dataset, raw, out, demo_params())
    msg = str(exc.value)
    for p in patterns:
        assert p in msg, msg
    assert not out.exists() or (out / "zarr.json").exists()  # never a half-written store at OUT
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # temp folders removed
    return msg


def test_failed_rebuild_keeps_good_store_truncated_tiff(tmp_path_factory, tmp_path):
    raw = _copy(tmp_path_factory, tmp_path, "sen12ms")
    out = tmp_path / "out" / "sen12ms.zarr"
    convert("sen12ms", raw, out, demo_params())
    before = open_store(out)["s2/data"][:]
    victim = _s1_of(_first_s2(raw))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    _convert_fails(raw, out, "sen12ms", str(victim), "expected", "found")
    np.testing.assert_array_equal(open_store(out)["s2/data"][:], before)
    victim.write_bytes(b"II*\x00garbage")
    _convert_fails(raw, out, "sen12ms", str(victim), "truncated or corrupt")
    assert ZarrDataset(out, split=None)[0]["s2"].shape[0] == 13


def test_wrong_band_count(tmp_path_factory, tmp_path):
    raw = _copy(tmp_path_factory, tmp_path, "sen12ms")
    victim = _first_s2(raw)
    with rasterio.open(victim) as src:
        arr = src.read()
    _rewrite(victim, arr[:12])
    msg = _convert_fails(raw, tmp_path / "s.zarr", "sen12ms", str(victim), "expected 13 band(s)", "found 12")
    assert "Sentinel-2" in msg


def test_pair_shape_and_crs_disagree(tmp_path_factory, tmp_path):
    raw = _copy(tmp_path_factory, tmp_path, "sen12ms")
    s2 = _first_s2(raw)
    s1 = _s1_of(s2)
    with rasterio.open(s2) as src:
        h, w = src.shape
        crs = src.crs
    _rewrite(s1, shape=(h - 8, w))
    _convert_fails(raw, tmp_path / "s.zarr", "sen12ms", str(s1), f"expected the shape of its pair {s2.name}",
                   f"({h} x {w} px), found {h - 8} x {w}")
    # restore the full file from the session copy, then break the CRS instead
    shutil.copy(raw_of(tmp_path_factory, "sen12ms") / s1.relative_to(raw), s1)
    other = "EPSG:32633" if crs.to_epsg() != 32633 else "EPSG:32632"
    _rewrite(s1, crs=other)
    _convert_fails(raw, tmp_path / "s.zarr", "sen12ms", str(s1), "expected the CRS of its pair", f"found {other}")


def test_missing_file_named_by_split_list(tmp_path_factory, tmp_path):
    raw = _copy(tmp_path_factory, tmp_path, "sen12ms")
    victim = _first_s2(raw)
    victim.unlink()
    _convert_fails(raw, tmp_path / "s.zarr", "sen12ms", str(victim), "found no such file")


def test_missing_modality_vaihingen_without_dsm(tmp_path_factory, tmp_path):
    raw = _copy(tmp_path_factory, tmp_path, "vaihingen")
    shutil.rmtree(raw / "dsm")
    _convert_fails(raw, tmp_path / "v.zarr", "vaihingen", str(raw / "dsm"), "DSM folder", "found no such folder")


def test_unknown_label_colour(tmp_path_factory, tmp_path):
    raw = _copy(tmp_path_factory, tmp_path, "vaihingen")
    victim = sorted((raw / "gts_for_participants").glob("*.tif"))[0]
    with rasterio.open(victim) as src:
        arr = src.read()
    arr[:, 0, 0] = (12, 34, 56)
    _rewrite(victim, arr)
    _convert_fails(raw, tmp_path / "v.zarr", "vaihingen", str(victim), "expected label colours", "(12, 34, 56)")


def test_sar_nans_follow_convention(tmp_path_factory, tmp_path):
    raw = _copy(tmp_path_factory, tmp_path, "sen12ms")
    s2 = _first_s2(raw)
    s1 = _s1_of(s2)
    with rasterio.open(s1) as src:
        arr = src.read()
    arr[0, :5, :7] = np.nan
    _rewrite(s1, arr)
    out = tmp_path / "s.zarr"
    convert("sen12ms", raw, out, demo_params())
    root = open_store(out)
    ids = list(root["ids"][:])
    i = ids.index(f"{s2.stem}_r0_c0")
    stored = root["s1/data"][i]
    assert np.isnan(stored[0, :5, :7]).all()  # the store keeps native values
    stats = root["s1/data"].attrs["stats"]
    assert stats["min"][0] == -25.0 and stats["count"][0] == stats["count"][1]  # NaN -> nan_value, counted
    ds = ZarrDataset(out, split="train", indices=[i])
    x = ds[0]["s1"]
    mean, std = ds.stats("s1")
    np.testing.assert_allclose(x[0, :5, :7].numpy(), (-25.0 - mean[0]) / std[0], rtol=1e-6)
    reference = open_store(store_of(tmp_path_factory, "sen12ms"))["s1/data"].attrs["stats"]
    assert stats["count"] == reference["count"]
