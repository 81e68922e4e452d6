"""Inference on GeoTIFF scenes: xgeo.load, xgeo embed, xgeo predict (windows, blending, alignment, outputs).

Models are tiny demo-size XGeo networks built and saved directly (no training); one test finetunes one step on a
tiny synthetic Vaihingen store to check that ``xgeo finetune`` writes a ``model.pt`` that ``xgeo predict`` reads.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.transform import Affine, from_origin

from xgeo.errors import CheckpointError, DataError, XGeoError
from xgeo.sensors import get_sensor

ROOT = Path(__file__).resolve().parents[1]
CRS = "EPSG:32632"
S2_STATS = (np.linspace(800, 2000, 13).astype(np.float32), np.linspace(300, 900, 13).astype(np.float32))
S1_STATS = (np.array([-12.0, -18.0], np.float32), np.array([3.0, 4.0], np.float32))


def write_tif(path, data, transform=None, crs=CRS, nodata=None, descriptions=None):
    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=str(data.dtype), crs=crs, nodata=nodata,
                       transform=transform or from_origin(500000, 4000000, 10, 10)) as ds:
        ds.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, d)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A demo-size pretraining checkpoint (random weights; MoE in stage 3) with sensors rgb, s2, s1, dsm."""
    from xgeo.config import load_params
    from xgeo.model import build_model
    from xgeo.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(load_params(ROOT / "params.yaml"))
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="module")
def encoder(ckpt):
    import xgeo

    return xgeo.load(ckpt, stats={"s2": S2_STATS, "s1": S1_STATS}, device="cpu")


def vaihingen_run(directory: Path, image_size: int = 32) -> Path:
    """A finetuning run directory of Vaihingen (IRRG + DSM stacked, UPerNet head) with random weights."""
    from xgeo.config import load_params
    from xgeo.finetune.backbone import Backbone
    from xgeo.finetune.heads import UPerHead
    from xgeo.finetune.run import save_model
    from xgeo.finetune.tasks import FinetuneNet, InputSpec
    from xgeo.model import build_model
    from xgeo.model.embed import adapt_embedding

    torch.manual_seed(1)
    model = build_model(load_params(ROOT / "params.yaml"))
    model.patch_embeds["irrg"] = adapt_embedding(model, "irrg")
    model.set_input_size(image_size)
    specs = [InputSpec("irrg", "irrg", ("NIR", "R", "G")), InputSpec("dsm", "dsm", ("height",))]
    backbone = Backbone(model, specs, 2, image_size)
    net = FinetuneNet(backbone, UPerHead(backbone.channels, 6, width=16)).eval()
    colours = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]
    task = SimpleNamespace(image_size=image_size, protocol=None, ignore_index=255, out_bands=None, target_sensor=None,
                           class_names=["impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"],
                           spec=SimpleNamespace(extra={"colours": colours}),
                           stats={"irrg": (np.array([120.0, 100.0, 90.0]), np.array([40.0, 30.0, 30.0])),
                                  "dsm": (np.array([10.0]), np.array([5.0]))})
    directory.mkdir(parents=True, exist_ok=True)
    save_model(directory / "model.pt", net, task, "vaihingen")
    (directory / "run.json").write_text(json.dumps({"task": "vaihingen"}))
    return directory


# ----------------------------------------------------------------------------------------------------- blending
def test_blend_weights_are_smooth_positive_and_sum_to_one():
    from xgeo.inference.windows import blend_grid, blend_weight

    w = blend_weight(32)
    assert w.min() > 0 and np.isclose(w.max(), w[15, 15]) and np.allclose(w, w.T)
    H, W, size, stride, margin = 75, 90, 32, 12, 8
    total = np.zeros((H + 2 * margin, W + 2 * margin))
    cover = np.zeros_like(total)
    for win in blend_grid(H, W, size, stride, margin):
        r, c = win.row + margin, win.col + margin
        total[r:r + size, c:c + size] += w
        cover[r:r + size, c:c + size] += 1
    assert cover.min() >= 1  # every padded pixel is covered, the last window end-aligned
    normalised = [w / total[win.row + margin:win.row + margin + size, win.col + margin:win.col + margin + size]
                  for win in blend_grid(H, W, size, stride, margin)]
    acc = np.zeros_like(total)
    for win, nw in zip(blend_grid(H, W, size, stride, margin), normalised):
        acc[win.row + margin:win.row + margin + size, win.col + margin:win.col + margin + size] += nw
    np.testing.assert_allclose(acc, 1.0, atol=1e-12)


@pytest.mark.parametrize("size, stride, margin, band", [(32, 16, 8, None), (32, 32, 0, None), (64, 20, 31, None),
                                                        (32, 16, 8, 32), (32, 12, 8, 40), (64, 20, 31, 64)])
def test_blended_windows_reproduce_a_per_pixel_model_on_the_whole_scene(tmp_path, size, stride, margin, band):
    """A stand-in model that is a 1x1 convolution: the blended scene equals the convolution of the whole scene,
    in one band or cut into bands of columns (windows reaching across a band's edge are run once)."""
    from xgeo.inference.align import InputSpec, Scene
    from xgeo.inference.predict import blend_scene
    from xgeo.inference.windows import blend_grid

    rng = np.random.default_rng(0)
    H, W = 101, 77
    s1 = rng.normal(-12, 3, (2, H, W)).astype(np.float32)
    path = write_tif(tmp_path / "s1.tif", s1)
    weight = (0.05 * rng.normal(size=(3, 2))).astype(np.float32)  # outputs of order 1, as logits
    bias = np.array([0.5, -1.0, 2.0], np.float32)
    conv = torch.nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight)[:, :, None, None])
        conv.bias.copy_(torch.from_numpy(bias))

    def fn(raw, valid):
        with torch.no_grad():
            return conv(torch.from_numpy(raw["s1"])).numpy()

    out = np.full((3, H, W), np.nan, np.float32)
    seen = np.zeros((H, W), int)
    ran = []

    def emit(block, valid, row0, col0):
        out[:, row0:row0 + block.shape[1], col0:col0 + block.shape[2]] = block
        seen[row0:row0 + block.shape[1], col0:col0 + block.shape[2]] += 1

    def counted(raw, valid):
        ran.append(len(raw["s1"]))
        return fn(raw, valid)

    with Scene([InputSpec("s1", "s1", path, ("VV", "VH"))]) as scene:
        blend_scene(scene, counted, 3, emit, size=size, stride=stride, margin=margin, batch_size=5, progress=False,
                    band=band)
    expected = np.einsum("kc,chw->khw", weight, np.clip(s1, -25, 0)) + bias[:, None, None]
    assert (seen == 1).all()  # each pixel written exactly once
    assert sum(ran) == len(blend_grid(H, W, size, stride, margin)) and max(ran) <= 5  # each window run once
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_bands_blend_nodata_windows_as_one_band_does(tmp_path):
    """Nodata windows on band edges (skipped, spilled as empty): cut into bands of 32 px, the blended scene and its
    validity equal those of one band over the whole width."""
    from xgeo.inference.align import InputSpec, Scene
    from xgeo.inference.predict import blend_scene

    rng = np.random.default_rng(4)
    x = rng.normal(-12, 3, (2, 70, 100)).astype(np.float32)
    x[:, 10:60, 20:75] = -9999.0  # several whole windows without a valid pixel, across band edges
    path = write_tif(tmp_path / "s1.tif", x, nodata=-9999.0)
    results = {}
    for band in (32, 1024):
        out, valid = np.full((2, 70, 100), np.nan, np.float32), np.zeros((70, 100), bool)

        def emit(block, v, row0, col0):
            out[:, row0:row0 + block.shape[1], col0:col0 + block.shape[2]] = block
            valid[row0:row0 + block.shape[1], col0:col0 + block.shape[2]] = v

        with Scene([InputSpec("s1", "s1", path, ("VV", "VH"))]) as scene:
            skipped = blend_scene(scene, lambda raw, v: np.tanh(raw["s1"] / 10.0), 2, emit, size=32, stride=16,
                                  margin=8, batch_size=3, progress=False, band=band)
        results[band] = (out, valid, skipped)
    (a, va, sa), (b, vb, sb) = results[32], results[1024]
    assert sa == sb > 0
    np.testing.assert_array_equal(va, vb)
    assert not va[20:50, 35:60].any() and va[:5].all()
    np.testing.assert_allclose(a[:, va], b[:, vb], atol=1e-6, rtol=0)


def test_tile_rows_writes_whole_rows_of_tiles_and_argmax_matches_numpy():
    from xgeo.inference.predict import argmax_classes
    from xgeo.inference.writers import TileRows

    out, writes = np.zeros((2, 50, 48)), []
    writer = SimpleNamespace(block=(16, 16))
    writer.write = lambda b, r, c: (writes.append((r, b.shape[1], c)), out.__setitem__(
        (slice(None), slice(r, r + b.shape[1]), slice(c, c + b.shape[2])), b))
    rows = TileRows(writer, 50)
    data = np.random.default_rng(0).normal(size=(2, 50, 48))
    for c0, c1 in ((0, 32), (32, 48)):  # two bands of columns, each top to bottom in pieces of 7 rows
        for r in range(0, 50, 7):
            rows.write(data[:, r:r + 7, c0:c1], r, c0)
    rows.flush()
    np.testing.assert_array_equal(out, data)
    assert writes == [(r, h, c) for c in (0, 32) for r, h in ((0, 16), (16, 16), (32, 16), (48, 2))]
    logits = np.random.default_rng(1).normal(size=(6, 40, 30)).astype(np.float32)
    logits[2, :4] = logits[4, :4] = 9.0  # ties go to the first class, as numpy's
    np.testing.assert_array_equal(argmax_classes(logits), logits.argmax(0))


# -------------------------------------------------------------------------------------------------------- embed
def test_embed_array_normalises_with_the_given_statistics(encoder):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4000, (2, 13, 64, 64)).astype(np.uint16)
    got = encoder.embed(x, sensor="s2", stage=2)
    norm = (np.clip(x.astype(np.float32), 0, 10000) - S2_STATS[0][:, None, None]) / S2_STATS[1][:, None, None]
    with torch.no_grad():
        encoder.model.set_input_size(64)
        direct = encoder.model.forward_features(torch.from_numpy(norm), "s2")[0][2]
    assert tuple(got.shape) == (2, 128, 4, 4)
    torch.testing.assert_close(got, direct, atol=1e-5, rtol=0)
    pooled = encoder.embed(x[0], sensor="s2", pool="mean")
    assert tuple(pooled.shape) == (256,)


def test_embed_one_window_scene_equals_the_model_and_keeps_the_grid(encoder, tmp_path):
    from xgeo.inference.align import InputSpec
    from xgeo.inference.embed import embed_scene

    rng = np.random.default_rng(2)
    x = rng.integers(0, 4000, (13, 64, 64)).astype(np.uint16)
    transform = from_origin(600010.0, 5000020.0, 10, 10)
    path = write_tif(tmp_path / "s2.tif", x, transform)
    out = tmp_path / "f.tif"
    info = embed_scene(encoder, [InputSpec("s2", "s2", path, get_sensor("s2").band_names)], out, progress=False)
    assert info["windows"] == 1 and info["grid"] == (2, 2)
    with rasterio.open(out) as ds:
        got = ds.read()
        assert ds.crs.to_string() == CRS
        assert ds.transform == transform @ transform.scale(32)
        assert ds.descriptions[0] == "s2:0"
    direct = encoder.embed(x, sensor="s2").numpy()
    np.testing.assert_allclose(got, direct, atol=1e-5, rtol=0)


def test_embed_zarr_equals_the_geotiff_and_carries_its_georeference(encoder, tmp_path):
    """A 96 x 160 px scene (2 x 3 windows of 64, the last row and column partial, one nodata window) -> the same
    feature map as the GeoTIFF output, with the transform and CRS read back by zarr attributes, rioxarray and GDAL."""
    import zarr

    from xgeo.inference.align import InputSpec
    from xgeo.inference.embed import embed_scene

    rng = np.random.default_rng(3)
    x = rng.normal(-12, 3, (2, 96, 160)).astype(np.float32)
    x[:, 64:, 128:] = -9999.0  # the bottom-right window has no valid pixel
    transform = from_origin(600010.0, 5000020.0, 10, 10)
    path = write_tif(tmp_path / "s1.tif", x, transform, nodata=-9999.0)
    spec = [InputSpec("s1", "s1", path, ("VV", "VH"))]
    tif, store = tmp_path / "f.tif", tmp_path / "f.zarr"
    a = embed_scene(encoder, spec, tif, window=64, progress=False)
    b = embed_scene(encoder, spec, store, window=64, progress=False)
    assert a["grid"] == b["grid"] == (3, 5) and b["skipped"] == 1
    with rasterio.open(tif) as ds:
        expected, grid_transform = ds.read(), ds.transform
    assert grid_transform == transform @ transform.scale(32)
    assert not list(tmp_path.glob(".f.zarr.*"))  # the temporary directory was renamed
    root = zarr.open_group(str(store), mode="r")
    feats = root["features"]
    assert feats.shape == expected.shape and feats.chunks == (256, 2, 2)  # one window's feature map per chunk
    np.testing.assert_array_equal(feats[:], expected)  # NaN where the nodata window is, as in the GeoTIFF
    assert np.isnan(feats[:, 2:, 4:]).all() and not np.isnan(feats[:, :2, :4]).any()
    attrs = dict(feats.attrs)
    assert Affine(*attrs["spatial:transform"]) == grid_transform and attrs["spatial:shape"] == [3, 5]
    assert attrs["proj:code"] == CRS and attrs["long_name"][:2] == ["s1:0", "s1:1"]
    if tuple(map(int, rasterio.__gdal_version__.split(".")[:2])) >= (3, 11):  # GDAL 3.10 reads pre-final Zarr v3
        with rasterio.open(f'ZARR:"{store}":/features:0') as gd:  # GDAL's Zarr driver, band 0 of the feature map
            assert gd.crs.to_string() == CRS and gd.transform == grid_transform
            np.testing.assert_array_equal(gd.read(1), expected[0])
    with pytest.raises(XGeoError, match="the output exists"):
        embed_scene(encoder, spec, store, window=64, progress=False)
    with pytest.raises(XGeoError, match="--pool none"):
        embed_scene(encoder, spec, tmp_path / "g.zarr", window=64, pool="mean", progress=False)
    pytest.importorskip("rioxarray", reason="xarray / rioxarray are not part of the pinned stack")
    import xarray as xr
    da = xr.open_zarr(store, consolidated=False, decode_coords="all")["features"]
    assert da.rio.crs.to_string() == CRS and da.rio.transform() == grid_transform
    np.testing.assert_allclose(da.x.values, grid_transform.c + 320 * (np.arange(5) + 0.5))
    np.testing.assert_array_equal(da.values, expected)


def test_embed_geoparquet_marks_nodata_windows_and_writes_window_polygons(encoder, tmp_path):
    import pyarrow.parquet as pq

    from xgeo.inference.align import InputSpec
    from xgeo.inference.embed import embed_scene

    rng = np.random.default_rng(3)
    x = rng.normal(-12, 2, (2, 100, 140)).astype(np.float32)
    x[:, :64, 64:128] = np.nan  # one whole window of nodata (NaN is nodata for a float raster)
    path = write_tif(tmp_path / "s1.tif", x, nodata=float("nan"))
    out = tmp_path / "emb.parquet"
    info = embed_scene(encoder, [InputSpec("s1", "s1", path, ("VV", "VH"))], out, pool="mean", progress=False)
    table = pq.read_table(out)
    assert info["windows"] == 6 and info["skipped"] == 1 and table.num_rows == 6
    rows = table.to_pylist()
    nodata = [(r["window_row"], r["window_col"]) for r in rows if r["nodata"]]
    assert nodata == [(0, 1)] and rows[1]["embedding_s1"] is None and len(rows[0]["embedding_s1"]) == 256
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["columns"]["geometry"]["encoding"] == "WKB" and geo["columns"]["geometry"]["crs"]["id"]["code"] == 32632
    last = rows[-1]  # window (1, 2): rows 64..100, cols 128..140 of the scene
    coords = struct.unpack("<10d", last["geometry"][13:])
    xs, ys = coords[0::2], coords[1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (500000 + 1280, 500000 + 1400, 4000000 - 1000, 4000000 - 640)


# ---------------------------------------------------------------------------------------------------- alignment
def test_second_sensor_on_a_shifted_grid_is_aligned(tmp_path):
    from xgeo.inference.align import InputSpec, Scene
    from xgeo.inference.windows import Window

    rng = np.random.default_rng(4)
    ref = write_tif(tmp_path / "s2.tif", rng.integers(0, 3000, (13, 64, 96)).astype(np.uint16),
                    from_origin(500000, 4000000, 10, 10))
    # S1 on a grid shifted by 3 and 5 pixels (30 m, 50 m), starting inside the S2 scene
    ramp = (np.stack([np.add.outer(0.2 * np.arange(80.0), 0.01 * np.arange(120.0))] * 2) - 25).astype(np.float32)
    s1 = write_tif(tmp_path / "s1.tif", ramp, from_origin(500050, 3999970, 10, 10))
    with Scene([InputSpec("s2", "s2", ref, get_sensor("s2").band_names),
                InputSpec("s1", "s1", s1, ("VV", "VH"))]) as scene:
        assert scene.alignment["s1"].startswith("warped")
        x, valid = scene.read(Window(0, 0, 32))["s1"]
    # S2 pixel (r, c) is S1 pixel (r - 3, c - 5)
    np.testing.assert_allclose(x[0, 10, 12], ramp[0, 7, 7], atol=1e-4)
    np.testing.assert_allclose(x[1, 31, 31], ramp[1, 28, 26], atol=1e-4)
    assert not valid[:3].any() and not valid[:, :5].any() and valid[3:, 5:].all()


def test_band_descriptions_pick_and_reorder_bands(tmp_path):
    from xgeo.inference.align import InputSpec, Scene
    from xgeo.inference.windows import Window

    data = np.stack([np.full((32, 32), v, np.uint8) for v in (1, 2, 3, 4)])  # alpha, B, G, R
    path = write_tif(tmp_path / "rgb.tif", data, descriptions=["alpha", "blue", "green", "red"])
    with Scene([InputSpec("rgb", "rgb", path, ("R", "G", "B"))]) as scene:
        x, _ = scene.read(Window(0, 0, 32))["rgb"]
    assert x[:, 0, 0].tolist() == [4.0, 3.0, 2.0]
    plain = write_tif(tmp_path / "plain.tif", data)
    with Scene([InputSpec("rgb", "rgb", plain, ("R", "G", "B"), file_bands=["x", "B", "G", "R"])]) as scene:
        x, _ = scene.read(Window(0, 0, 32))["rgb"]
    assert x[:, 0, 0].tolist() == [4.0, 3.0, 2.0]


# ------------------------------------------------------------------------------------------------------ predict
def test_predict_one_window_equals_the_network_and_writes_a_cog(tmp_path):
    import xgeo
    from xgeo.inference.predict import predict_scene

    run = vaihingen_run(tmp_path / "run")
    model = xgeo.load(run, device="cpu")
    rng = np.random.default_rng(5)
    irrg = rng.integers(0, 255, (3, 32, 32)).astype(np.uint8)
    dsm = rng.normal(10, 5, (1, 32, 32)).astype(np.float32)
    transform = from_origin(497000.5, 5420000.25, 0.09, 0.09)
    paths = {"irrg": write_tif(tmp_path / "irrg.tif", irrg, transform),
             "dsm": write_tif(tmp_path / "dsm.tif", dsm, transform)}
    out = tmp_path / "pred.tif"
    predict_scene(model, paths, out, stride=32, margin=0, progress=False)
    xs = [(irrg.astype(np.float32) - np.array([120, 100, 90.0])[:, None, None]) / np.array([40, 30, 30.0])[:, None, None],
          (dsm - 10.0) / 5.0]
    with torch.no_grad():
        logits = model.net([torch.from_numpy(x[None].astype(np.float32)) for x in xs])[0]
    with rasterio.open(out) as ds:
        got = ds.read(1)
        assert ds.crs.to_string() == CRS and ds.transform == transform and ds.nodata == 255
        assert ds.profile["tiled"] and ds.compression.name.lower() == "deflate"
        assert json.loads(ds.tags()["xgeo_class_names"])[1] == "building"
        assert ds.colormap(1)[1] == (0, 0, 255, 255)
    np.testing.assert_array_equal(got, logits.argmax(1)[0].numpy())


def test_predict_large_scene_is_a_cog_with_overviews_and_propagates_nodata(tmp_path):
    import xgeo
    from xgeo.inference.predict import predict_scene

    model = xgeo.load(vaihingen_run(tmp_path / "run"), device="cpu")
    rng = np.random.default_rng(6)
    dsm = rng.normal(10, 5, (1, 100, 300)).astype(np.float32)
    dsm[0, 50:60, 200:230] = -9999.0  # the DSM sensor's nodata value
    paths = {"irrg": write_tif(tmp_path / "irrg.tif", rng.integers(0, 255, (3, 100, 300)).astype(np.uint8)),
             "dsm": write_tif(tmp_path / "dsm.tif", dsm)}
    out = tmp_path / "pred.tif"
    info = predict_scene(model, paths, out, window=64, stride=48, batch_size=16, progress=False)
    with rasterio.open(out) as ds:
        got = ds.read(1)
        assert ds.overviews(1)[:1] == [2]  # COG: overviews down to one 256 px block
        assert ds.block_shapes[0] == (256, 256)
    assert info["stride"] == 48 and info["margin"] == 16
    assert (got[50:60, 200:230] == 255).all() and (got[:50] < 6).all() and (got[60:] < 6).all()


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_each_get_one_clear_error(encoder, ckpt, tmp_path):
    from xgeo.cli import main

    runner = CliRunner()
    rng = np.random.default_rng(7)
    s2 = write_tif(tmp_path / "s2.tif", rng.integers(0, 3000, (13, 64, 64)).astype(np.uint16))
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({s: {"mean": m.tolist(), "std": sd.tolist()} for s, (m, sd) in
                                 {"s2": S2_STATS, "s1": S1_STATS}.items()}))

    def err(*args):
        res = runner.invoke(main, ["embed", str(ckpt), *args, "--stats", str(stats)])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        return res.output

    small = write_tif(tmp_path / "small.tif", rng.integers(0, 3000, (13, 40, 64)).astype(np.uint16))
    assert "smaller than one 64 x 64 px window" in err(f"--sensor=s2={small}", str(tmp_path / "a.tif"))
    s2_12 = write_tif(tmp_path / "s2_12.tif", rng.integers(0, 3000, (12, 64, 64)).astype(np.uint16),
                      descriptions=[b for b in get_sensor("s2").band_names if b != "B10"])
    assert "bands ['B10'] of sensor s2 are missing" in err(f"--sensor=s2={s2_12}", str(tmp_path / "b.tif"))
    far = write_tif(tmp_path / "far.tif", rng.normal(-12, 2, (2, 64, 64)).astype(np.float32),
                    from_origin(700000, 4000000, 10, 10))
    assert "do not overlap" in err(f"--sensor=s2={s2}", f"--sensor=s1={far}", str(tmp_path / "c.tif"))
    nocrs = write_tif(tmp_path / "nocrs.tif", rng.normal(-12, 2, (2, 70, 64)).astype(np.float32), crs=None)
    assert "has no CRS" in err(f"--sensor=s2={s2}", f"--sensor=s1={nocrs}", str(tmp_path / "d.tif"))
    irrg = write_tif(tmp_path / "irrg.tif", rng.integers(0, 255, (3, 64, 64)).astype(np.uint8))
    assert "no patch embedding for sensor 'irrg'" in err(f"--sensor=irrg={irrg}", str(tmp_path / "e.tif"))
    truncated = tmp_path / "truncated.tif"
    big = write_tif(tmp_path / "big.tif", rng.integers(0, 3000, (13, 256, 256)).astype(np.uint16))
    truncated.write_bytes(Path(big).read_bytes()[:600_000])
    assert "truncated or corrupt" in err(f"--sensor=s2={truncated}", str(tmp_path / "f.tif"))
    assert not list(tmp_path.glob("f.tif*")) and not list(tmp_path.glob(".f.tif*"))  # no partial output left
    exists = tmp_path / "exists.tif"
    exists.write_bytes(b"keep")
    assert "pass --overwrite" in err(f"--sensor=s2={s2}", str(exists))
    assert exists.read_bytes() == b"keep"
    res = runner.invoke(main, ["embed", str(ckpt), f"--sensor=s2={s2}", str(exists), "--stats", str(stats),
                               "--overwrite"])
    assert res.exit_code == 0, res.output
    with rasterio.open(exists) as ds:
        assert ds.count == 256

    # predict: a run of another task, keys it does not read
    run = vaihingen_run(tmp_path / "run")
    res = runner.invoke(main, ["predict", str(run), f"--sensor=s2={s2}", str(tmp_path / "p.tif")])
    assert res.exit_code == 2 and "reads inputs ['irrg', 'dsm']" in res.output
    res = runner.invoke(main, ["predict", str(run), f"--sensor=irrg={irrg}", f"--sensor=dsm={irrg}", "--task",
                               "sen12ms-cr", str(tmp_path / "p.tif")])
    assert res.exit_code == 2 and "a run of task 'vaihingen', not 'sen12ms-cr'" in res.output
    res = runner.invoke(main, ["predict", str(ckpt), f"--sensor=s2={s2}", str(tmp_path / "p.tif")])
    assert res.exit_code == 2 and "not a finetuning run directory" in res.output


def test_missing_statistics_name_how_to_pass_them(ckpt, tmp_path, monkeypatch):
    import xgeo

    monkeypatch.chdir(tmp_path)  # no data/zarr stores here
    enc = xgeo.load(ckpt, device="cpu")
    with pytest.raises(DataError, match="no normalisation statistics for sensor 's2'.*stats="):
        enc.embed(np.zeros((13, 64, 64), np.uint16), sensor="s2")
    with pytest.raises(CheckpointError, match="no patch embedding for sensor 'wv3_pan'"):
        enc.embed(np.zeros((1, 64, 64), np.uint16), sensor="wv3_pan")
    with pytest.raises(XGeoError, match="multiple of 32"):
        xgeo.load(ckpt, stats={"s2": S2_STATS}, device="cpu").embed(np.zeros((13, 60, 60)), sensor="s2")


# ------------------------------------------------------------------------------------------------------- memory
MEMORY_SCRIPT = r"""
import sys, tracemalloc, numpy as np, rasterio
from rasterio.transform import from_origin
from xgeo.inference.align import InputSpec, Scene
from xgeo.inference.predict import blend_scene
side, path, band = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=2, dtype="float32", crs="EPSG:32632",
                   transform=from_origin(0, 0, 10, 10), tiled=True) as ds:
    for r in range(0, side, 256):
        ds.write(np.full((2, min(256, side - r), side), -10, np.float32), window=((r, min(r + 256, side)), (0, side)))
rows = []
tracemalloc.start()
with Scene([InputSpec("s1", "s1", path, ("VV", "VH"))]) as scene:
    blend_scene(scene, lambda raw, valid: raw["s1"] * 2.0, 2, lambda b, v, r0, c0: rows.append(b[0].size),
                size=128, stride=64, margin=32, batch_size=8, progress=False, band=band)
print(tracemalloc.get_traced_memory()[1], sum(rows))
"""


def test_peak_memory_does_not_grow_with_the_scene(tmp_path):
    """Blending a 2048 px scene (32 MiB of input) in bands of 256 px peaks at the memory of a 512 px one: one strip
    of one band, neither the scene nor its width; in one band as wide as the scene, memory grows with the width."""
    peaks = {}
    for side, band in ((512, 256), (2048, 256), (2048, 2048)):
        res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(side), str(tmp_path / f"{side}.tif"),
                              str(band)], capture_output=True, text=True, check=True, cwd=ROOT)
        peak, pixels = map(int, res.stdout.split())
        assert pixels == side * side  # every pixel emitted once
        peaks[side, band] = peak
    scene_bytes = 2 * 2048 * 2048 * 4
    assert peaks[2048, 256] < scene_bytes / 5, peaks
    assert peaks[2048, 256] < 1.25 * peaks[512, 256], peaks  # 16x the area, 4x the width: flat
    assert peaks[2048, 2048] > 2 * peaks[2048, 256], peaks  # what the bands save


def test_xgeo_finetune_writes_the_model_that_xgeo_predict_reads(tmp_path, load):
    """One finetuning step on a tiny synthetic Vaihingen store; its run directory drives `xgeo predict`."""
    from xgeo.cli import main
    from xgeo.data.convert import convert
    from xgeo.data.synth import synthesize
    from xgeo.finetune.run import finetune

    params = load("data.datasets.vaihingen.synth.size=[128, 128]", "data.datasets.vaihingen.synth.areas={train: 1, test: 1}",
                  f"paths.zarr={tmp_path / 'zarr'}", "mlflow.enabled=false", "finetune.vaihingen.image_size=32",
                  "finetune.vaihingen.batch_size=2", "finetune.vaihingen.warmup_steps=0",
                  "finetune.vaihingen.head_width=16", "finetune.prediction_tiles=1")
    synthesize("vaihingen", tmp_path / "raw", params, seed=0)
    convert("vaihingen", tmp_path / "raw", tmp_path / "zarr" / "vaihingen.zarr", params)
    run = tmp_path / "run"
    finetune("vaihingen", "random", run, params, steps=1)
    assert (run / "model.pt").is_file() and json.loads((run / "run.json").read_text())["task"] == "vaihingen"

    import xgeo

    model = xgeo.load(run, device="cpu")
    assert model.task == "vaihingen" and model.keys == ["irrg", "dsm"] and model.output == "classes"
    rng = np.random.default_rng(8)
    irrg = write_tif(tmp_path / "irrg.tif", rng.integers(0, 255, (3, 70, 90)).astype(np.uint8),
                     descriptions=["NIR", "R", "G"])
    dsm = write_tif(tmp_path / "dsm.tif", rng.normal(10, 5, (1, 70, 90)).astype(np.float32))
    out = tmp_path / "map.tif"
    res = CliRunner().invoke(main, ["predict", str(run), f"--sensor=irrg={irrg}", f"--sensor=dsm={dsm}", str(out),
                                    "--task", "vaihingen"])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        got = ds.read(1)
        assert ds.shape == (70, 90) and ds.transform == from_origin(500000, 4000000, 10, 10)
    assert got.max() < 6


def _task_run(directory: Path, task: str, head: str, image_size: int = 32) -> Path:
    """A run directory of an image task (SEN12MS-CR) or of BigEarthNet, random weights, inputs s2 (+ s1)."""
    from xgeo.config import load_params
    from xgeo.finetune.backbone import Backbone
    from xgeo.finetune.heads import ClassificationHead, SimMIMDecoder
    from xgeo.finetune.run import save_model
    from xgeo.finetune.tasks import FinetuneNet, InputSpec

    from xgeo.model import build_model

    torch.manual_seed(2)
    model = build_model(load_params(ROOT / "params.yaml"))
    model.set_input_size(image_size)
    key = "s2_cloudy" if task == "sen12ms-cr" else "s2"
    specs = [InputSpec(key, "s2", get_sensor("s2").band_names), InputSpec("s1", "s1", ("VV", "VH"))]
    backbone = Backbone(model, specs, 2, image_size)
    h = SimMIMDecoder(backbone.channels, 13) if head == "SimMIMDecoder" else ClassificationHead(backbone.channels, 19)
    net = FinetuneNet(backbone, h).eval()
    task_ns = SimpleNamespace(image_size=image_size, protocol=None, ignore_index=None, spec=SimpleNamespace(extra={}),
                              class_names=[f"c{i}" for i in range(19)] if head != "SimMIMDecoder" else None,
                              out_bands=get_sensor("s2").band_names if head == "SimMIMDecoder" else None,
                              target_sensor="s2" if head == "SimMIMDecoder" else None,
                              stats={key: S2_STATS, "s1": S1_STATS})
    directory.mkdir(parents=True)
    save_model(directory / "model.pt", net, task_ns, task)
    return directory


@pytest.mark.parametrize("task, head", [("sen12ms-cr", "SimMIMDecoder"), ("bigearthnet", "ClassificationHead")])
def test_image_and_scene_classification_tasks_on_one_window(tmp_path, task, head):
    import xgeo
    from xgeo.inference.predict import predict_scene

    model = xgeo.load(_task_run(tmp_path / "run", task, head), device="cpu")
    rng = np.random.default_rng(9)
    s2 = rng.integers(0, 4000, (13, 32, 32)).astype(np.uint16)
    s1 = rng.normal(-12, 3, (2, 32, 32)).astype(np.float32)
    key = model.keys[0]
    paths = {key: write_tif(tmp_path / "s2.tif", s2), "s1": write_tif(tmp_path / "s1.tif", s1)}
    out = tmp_path / "out.tif"
    predict_scene(model, paths, out, stride=32, margin=0, progress=False)
    xs = [(s2.astype(np.float32) - S2_STATS[0][:, None, None]) / S2_STATS[1][:, None, None],
          (np.clip(s1, -25, 0) - S1_STATS[0][:, None, None]) / S1_STATS[1][:, None, None]]
    with torch.no_grad():
        direct = model.net([torch.from_numpy(x[None].astype(np.float32)) for x in xs])[0][0].numpy()
    with rasterio.open(out) as ds:
        got = ds.read()
        if head == "SimMIMDecoder":  # S2 reflectance x 10000, the target's band names
            assert ds.descriptions[3] == "B04" and ds.shape == (32, 32)
            np.testing.assert_allclose(got, np.clip(direct, 0, 1) * 10000, atol=1e-2)
        else:  # one pixel per window, 19 sigmoid scores
            assert ds.shape == (1, 1) and ds.count == 19 and ds.transform.a == 320
            np.testing.assert_allclose(got[:, 0, 0], 1 / (1 + np.exp(-direct)), atol=1e-6)
