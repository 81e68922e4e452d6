"""``pretrain.augment_on: device`` (issue 12): the loader returns raw stored tiles plus the boxes and flips it drew,
and ``StepData.finish`` crops, resizes and normalises them on the training device. The same step gives the same
batch as the loader path (up to float rounding), and a short pretraining run in each mode gives the same losses."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_pretrain import TINY, read_metrics, write_store

# tiles of other sizes per dataset (two RGB datasets of one group at 80 and 96 px: the device path works per dataset)
TILES = {"geopile": 80, "millionaid": 96, "sen12ms": 96, "mdas": 72}
COUNTS = {"geopile": 4, "millionaid": 4, "sen12ms": 4, "mdas": 3}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The four pretraining stores, with SAR NaNs in an S1 tile and DSM nodata (-9999) in a DSM tile, so the value
    convention runs on both paths."""
    import zarr

    root = tmp_path_factory.mktemp("zarr")
    for i, (ds, size) in enumerate(TILES.items()):
        write_store(root / f"{ds}.zarr", ds, COUNTS[ds], seed=i, size=size)
    s1 = zarr.open_array(str(root / "sen12ms.zarr" / "s1" / "data"), mode="r+")
    tile = s1[1]
    tile[:, 10:30, 20:60] = np.nan
    s1[1] = tile
    dsm = zarr.open_array(str(root / "mdas.zarr" / "dsm" / "data"), mode="r+")
    tile = dsm[0]
    tile[:, 5:40, 5:40] = -9999.0
    dsm[0] = tile
    return root


def _step_data(params, augment_on, img_size=48):
    from xgeo.data.dataset import ZarrDataset
    from xgeo.pretrain.data import StepData, group_layouts, read_store_attrs
    from xgeo.pretrain.sampler import Group, PretrainSampler

    cfg = params["pretrain"]
    names = [d for g in cfg["groups"].values() for d in g["datasets"]]
    st = {d: read_store_attrs(params, d) for d in names}
    layouts = group_layouts(params, st)
    datasets = {d: ZarrDataset(st[d]["path"], split=None, raw=augment_on == "device") for d in names}
    groups = [Group(g, tuple(c["datasets"]), tuple(len(datasets[d]) for d in c["datasets"]), c["batch_size"])
              for g, c in cfg["groups"].items()]
    return StepData(PretrainSampler(groups, seed=params["seed"]), datasets, layouts, cfg["mask_patch"], 4,
                    cfg["mask_ratio"], cfg["cross_ratio"], params["seed"], 0, 100, img_size=img_size, crop=cfg["crop"],
                    augment_on=augment_on)


def test_crop_resize_equals_interpolate_per_image():
    """xgeo.data.device.crop_resize (two batched matrix products) = F.interpolate of each window, antialiased when
    shrinking (as xgeo.pretrain.data.resized_crop), with horizontal / vertical flips."""
    from xgeo.data.device import crop_resize

    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, 61, 90, generator=g)
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(24):
        h, w = int(rng.integers(1, 62)), int(rng.integers(1, 91))
        boxes.append([int(rng.integers(0, 62 - h)), int(rng.integers(0, 91 - w)), h, w])
    boxes = torch.tensor(boxes)
    flips = torch.from_numpy(rng.random((24, 2)) < 0.5)
    out = crop_resize(x, boxes, flips, 32)
    assert out.shape == (24, 3, 32, 32)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        want = F.interpolate(x[i:i + 1, :, t:t + h, l:l + w], size=(32, 32), mode="bilinear", align_corners=False,
                             antialias=h > 32 or w > 32)[0]
        want = want.flip(-1) if flips[i, 0] else want
        want = want.flip(-2) if flips[i, 1] else want
        torch.testing.assert_close(out[i], want, atol=5e-5, rtol=1e-5)
    big = (boxes[:, 2] > 40) & (boxes[:, 3] > 40)
    assert big.any() and ((boxes[:, 2] < 32) & (boxes[:, 3] < 32)).any()  # both shrunk and enlarged windows
    # antialiasing matters for the shrunk ones: plain bilinear differs from the result by far more than the tolerance
    i = int(torch.nonzero(big)[0])
    t, l, h, w = boxes[i].tolist()
    plain = F.interpolate(x[i:i + 1, :, t:t + h, l:l + w], size=(32, 32), mode="bilinear", align_corners=False)[0]
    plain = plain.flip(-1) if flips[i, 0] else plain
    plain = plain.flip(-2) if flips[i, 1] else plain
    assert float((plain - out[i]).abs().max()) > 0.1


def test_device_mode_gives_the_loader_batches(load, stores):
    """Same seed and step: the device mode's loader returns raw tiles in their stored dtype, and finish() makes the
    loader mode's images (max abs difference < 1e-4 on normalised values, equal statistics), the same masks and
    cross choices; a pair keeps one box and flip (it equals the loader path, which crops a pair with one box)."""
    params = load(f"paths.zarr={stores}", *TINY, "pretrain.crop={scale: [0.1, 1.0], ratio: [0.75, 1.333]}",
                  "pretrain.groups.rgb.batch_size=4", "pretrain.groups.sen12ms.batch_size=3")
    loader, device = _step_data(params, "loader"), _step_data(params, "device")
    dtypes, worst, sizes = set(), 0.0, set()
    for step in range(6):
        a = loader[step]
        raw = device[step]
        for gb in raw.values():
            assert "images" not in gb
            for part in gb["raw"]["parts"].values():
                dtypes |= {str(t.dtype) for t in part["tiles"].values()}
                if len(part["boxes"]) == 2:  # a pair (tiles of one size here): one window for both images
                    assert torch.equal(*part["boxes"].values())
                sizes |= {int(b[:, 2].max()) for b in part["boxes"].values()} | {
                    int(b[:, 2].min()) for b in part["boxes"].values()}
        b = device.finish(raw)
        assert set(a) == set(b)
        for g in a:
            assert set(a[g]) == set(b[g]) == {"images", "masks", "cross", "count"}
            assert a[g]["count"] == b[g]["count"]
            for key in a[g]["masks"]:
                assert torch.equal(a[g]["masks"][key], b[g]["masks"][key])
            for key in a[g]["cross"]:
                assert torch.equal(a[g]["cross"][key], b[g]["cross"][key])
            for key, x in a[g]["images"].items():
                y = b[g]["images"][key]
                assert x.shape == y.shape and y.dtype == torch.float32
                worst = max(worst, float((x - y).abs().max()))
                assert float(x.mean()) == pytest.approx(float(y.mean()), abs=1e-5)
                assert float(x.std()) == pytest.approx(float(y.std()), rel=1e-5)
    assert worst < 1e-4, worst
    assert {"torch.uint8", "torch.uint16", "torch.float32"} <= dtypes  # rgb, s2, s1 / dsm as stored
    assert min(sizes) < 48 < max(sizes)  # windows enlarged and shrunk (antialiased) were both compared


def test_device_mode_runs_on_the_nodata_tiles(load, stores):
    """The NaN S1 tile and the DSM nodata tile go through the device path's value convention: finite images, and
    the nodata pixels of a whole-tile crop take the band mean (0 after normalisation) as in the loader path."""
    params = load(f"paths.zarr={stores}", *TINY, "pretrain.crop=null", "pretrain.mask_patch=8",
                  "pretrain.groups.sen12ms.batch_size=4",
                  "pretrain.groups.mdas.batch_size=3")  # every SEN12MS and MDAS sample in step 0
    raw = _step_data(params, "device", img_size=72)[0]
    s1 = raw["sen12ms"]["raw"]["parts"]["sen12ms"]
    dsm = raw["mdas"]["raw"]["parts"]["mdas"]
    assert torch.isnan(s1["tiles"]["s1"]).any() and (dsm["tiles"]["dsm"] == -9999).any()
    out = _step_data(params, "device", img_size=72).finish(raw)
    for gb in out.values():
        for x in gb["images"].values():
            assert bool(torch.isfinite(x).all())
    pos = int(dsm["positions"][[i for _, i in raw["mdas"]["raw"]["items"]].index(0)])
    flip = bool(dsm["flips"][[i for _, i in raw["mdas"]["raw"]["items"]].index(0)])
    hole = out["mdas"]["images"]["dsm"][pos, 0, 5:40]
    hole = hole[:, 32:67] if flip else hole[:, 5:40]  # 72 px tile, no crop: pixels map one to one
    assert float(hole.abs().max()) < 1e-5


def test_augment_on_is_checked(load, stores):
    from xgeo.errors import XGeoError

    params = load(f"paths.zarr={stores}", *TINY)
    with pytest.raises(XGeoError, match="pretrain.augment_on: expected one of \\['loader', 'device'\\], found 'gpu'"):
        _step_data(params, "gpu")
    with pytest.raises(XGeoError, match="augment_on"):
        load("pretrain.augment_on=gpu")


def test_pretraining_in_both_modes_gives_the_same_losses(load, stores, tmp_path):
    """Two steps of pretraining with augment_on loader and device (on this CPU): finite losses, equal to 1e-4."""
    from xgeo.pretrain.train import pretrain

    losses = {}
    for mode in ("loader", "device"):
        params = load(f"paths.zarr={stores}", "mlflow.enabled=false", *TINY, f"pretrain.augment_on={mode}")
        pretrain(params, tmp_path / mode, steps=2, checkpoint_every=2)
        rows = read_metrics(tmp_path / mode / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2]
        losses[mode] = [(r["loss"], r["rec_loss"], r["loss/s1"], r["loss/dsm"]) for r in rows]
    assert all(math.isfinite(v) for row in losses["device"] for v in row)
    for a, b in zip(losses["loader"], losses["device"]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert losses["device"][0] != losses["device"][1]  # it trains: the batches and weights change between steps


def test_a_run_resumes_across_augment_on():
    """augment_on changes where the batches are made, not what they are: a checkpoint of either mode (or of before the
    key existed) resumes in the other; a key that changes the computation still blocks."""
    from xgeo.pretrain.state import config_diff

    saved = {"seed": 0, "pretrain": {"mask_ratio": 0.6}}
    assert config_diff(saved, {"seed": 0, "pretrain": {"mask_ratio": 0.6, "augment_on": "device"}}) == []
    assert config_diff(saved, {"seed": 0, "pretrain": {"mask_ratio": 0.5, "augment_on": "device"}}) == [
        "pretrain.mask_ratio"]
