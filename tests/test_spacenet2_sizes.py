"""SpaceNet2 at sizes that are not multiples of the PAN/MUL ratio 4, as the released images are (650 px PAN,
163 px MUL): a 74 px PAN with its 19 px MUL (74 / 4 = 18.5) stands in for them. Whole images are stored with their
whole MUL, tiles sit on MUL's grid, MUL is upsampled on its own grid, Wald's protocol degrades onto MUL's grid, and
the sliding-window evaluation covers the whole image though 74 is no multiple of the window."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xgeo.catalog import get_dataset
from xgeo.data import scene as sc

ROOT = Path(__file__).resolve().parents[1]
PAN, MUL = 74, 19
SIZES = ["data.datasets.spacenet2.synth={aois: [AOI_2_Vegas], images_per_aoi: 5, pan_size: 74}",
         f"data.datasets.spacenet2.tile_size={PAN}"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    from xgeo.config import load_params
    from xgeo.data.synth import synthesize

    out = tmp_path_factory.mktemp("sn2_raw") / "spacenet2"
    synthesize("spacenet2", out, load_params(ROOT / "params.yaml", SIZES), seed=0)
    return out


@pytest.fixture(scope="module")
def zarr_dir(raw, tmp_path_factory) -> Path:
    from xgeo.config import load_params
    from xgeo.data.convert import convert

    out = tmp_path_factory.mktemp("sn2_zarr")
    convert("spacenet2", raw, out / "spacenet2.zarr", load_params(ROOT / "params.yaml", SIZES))
    return out


def _samples(raw, load, tile):
    from xgeo.data.readers import READERS

    return list(READERS["spacenet2"](raw, get_dataset("spacenet2"), load(*SIZES, f"data.datasets.spacenet2.tile_size={tile}")))


def _tif(path):
    import rasterio

    with rasterio.open(path) as f:
        return f.read(), f.transform


def test_synthetic_images_have_the_released_size_relation(raw):
    """PAN 74 px, MUL ceil(74 / 4) = 19 px from the same corner: MUL's last pixel reaches past PAN's edge."""
    root = raw / "AOI_2_Vegas_Train"
    for p in sorted((root / "PAN").iterdir()):
        name = p.name[len("PAN_"):]
        pan, tp = _tif(p)
        mul, tm = _tif(root / "MUL" / f"MUL_{name}")
        ps, _ = _tif(root / "MUL-PanSharpen" / f"MUL-PanSharpen_{name}")
        assert pan.shape == (1, PAN, PAN) and mul.shape == (8, MUL, MUL) and ps.shape == (8, PAN, PAN)
        assert (tm.c, tm.f) == (tp.c, tp.f) and tm.a == pytest.approx(4 * tp.a)
        # MUL pixel m is the area mean of PAN-grid pixels 4m .. 4m + 3 (the whole ones: the first 18)
        assert np.abs(sc.block_mean(ps.astype(float), 4) - mul[:, :18, :18]).mean() < 5


def test_whole_images_and_tiles_on_muls_grid(raw, load):
    root = raw / "AOI_2_Vegas_Train"
    whole = _samples(raw, load, PAN)
    assert len(whole) == 5
    for s in whole:
        m = s["modalities"]
        assert m["pan"].data.shape == (1, PAN, PAN) and m["mul_pansharpen"].data.shape == (8, PAN, PAN)
        assert m["mul"].data.shape == (8, MUL, MUL)  # the whole MUL, its 19th pixel included
        mul, _ = _tif(root / "MUL" / f"MUL_{s['id'].rsplit('_r', 1)[0]}.tif")
        np.testing.assert_array_equal(m["mul"].data, mul)
    # tiles of 30 px (not a multiple of 4 either): offsets on MUL's grid, MUL tiles of ceil(30 / 4) = 8 px
    tiles = _samples(raw, load, 30)
    assert len(tiles) == 5 * 9
    for s in tiles:
        image, rc = s["id"].rsplit("_r", 1)
        y, x = (int(v) for v in rc.split("_c"))
        assert y in (0, 28, 44) and x in (0, 28, 44)  # [0, 28, 44]: the last flush with 74 rounded down to 4
        pan, mul = s["modalities"]["pan"], s["modalities"]["mul"]
        assert pan.data.shape == (1, 30, 30) and mul.data.shape == (8, 8, 8)
        assert pan.transform[2] == pytest.approx(mul.transform[2]) and pan.transform[5] == pytest.approx(mul.transform[5])
        full, _ = _tif(root / "MUL" / f"MUL_{image}.tif")
        np.testing.assert_array_equal(mul.data, full[:, y // 4: y // 4 + 8, x // 4: x // 4 + 8])


def test_a_mul_short_of_the_pan_is_extended_by_its_edge(raw, load, tmp_path):
    """A MUL of 18 px for a 74 px PAN (floor instead of ceil): its last tile's missing pixel repeats the edge."""
    import shutil

    import rasterio

    short = tmp_path / "spacenet2"
    shutil.copytree(raw, short)
    path = next((short / "AOI_2_Vegas_Train" / "MUL").iterdir())
    with rasterio.open(path) as f:
        profile, data = f.profile, f.read()
    profile.update(width=18, height=18)
    with rasterio.open(path, "w", **profile) as f:
        f.write(data[:, :18, :18])
    name = path.name[len("MUL_"):-4]
    s = next(s for s in _samples(short, load, PAN) if s["id"].startswith(name))
    assert s["modalities"]["mul"].data.shape == (8, MUL, MUL)
    np.testing.assert_array_equal(s["modalities"]["mul"].data[:, :18, :18], data[:, :18, :18])
    np.testing.assert_array_equal(s["modalities"]["mul"].data[:, 18], s["modalities"]["mul"].data[:, 17])


@pytest.fixture
def task(load, zarr_dir):
    from xgeo.finetune import tasks as ft_tasks

    return lambda *o: ft_tasks.get_task("spacenet2", load(*SIZES, f"paths.zarr={zarr_dir}", *o))


def test_mul_is_upsampled_on_its_own_grid(task):
    """A ramp along MUL's rows, upsampled to the 74 px PAN grid: MUL pixel m covers PAN rows 4m .. 4m + 3, whose
    upsampled values sit symmetrically about m (MUL coordinates m -+ 0.375, m -+ 0.125), so their mean is m exactly
    wherever bicubic's four taps lie inside MUL (m = 2 .. 16). A resize of 19 to 74 px puts PAN row y at
    19 / 74 (y + 0.5) - 0.5 instead: the block means drift to half a MUL px (2 PAN px) off at the far edge."""
    t = task()
    mul = torch.arange(MUL, dtype=torch.float64).view(1, 1, MUL, 1).expand(1, 8, MUL, MUL).contiguous()
    up = t._up(mul, (PAN, PAN))
    assert up.shape == (1, 8, PAN, PAN)
    blocks = up[0, 0, 8:68, 10].view(15, 4).mean(1)
    torch.testing.assert_close(blocks, torch.arange(2, 17, dtype=torch.float64), rtol=0, atol=1e-9)
    resized = torch.nn.functional.interpolate(mul, size=(PAN, PAN), mode="bicubic", align_corners=False)
    assert float((resized[0, 0, 8:68, 10].view(15, 4).mean(1) - blocks).abs().max()) > 0.3
    from xgeo.errors import XGeoError

    with pytest.raises(XGeoError, match="does not cover a PAN tile"):
        t._up(mul[..., :18, :18], (PAN, PAN))


def test_wald_protocol_degrades_onto_muls_grid(task):
    t = task("finetune.spacenet2.protocol=wald")
    t.bind(t.make_dataset(None))  # the store's normalisation statistics
    g = torch.Generator().manual_seed(0)
    batch = {"pan": torch.rand(2, 1, PAN, PAN, generator=g) * 2047, "mul": torch.rand(2, 8, MUL, MUL, generator=g) * 2047}
    (pan, up), target, base = t.prepare(batch)
    assert pan.shape == (2, 1, MUL, MUL) and up.shape == (2, 8, MUL, MUL) and target.shape == (2, 8, MUL, MUL)
    # the degraded PAN's pixel m is the mean of PAN pixels 4m .. 4m + 3; the last (PAN 72, 73) repeats PAN's edge
    torch.testing.assert_close(pan[:, :, 3, 5], batch["pan"][:, :, 12:16, 20:24].mean((-2, -1)))
    edge = torch.cat([batch["pan"][:, :, 72:74, :4], batch["pan"][:, :, 73:74, :4].expand(2, 1, 2, 4)], 2)
    torch.testing.assert_close(pan[:, :, 18, 0], edge.mean((-2, -1)))


def test_finetune_evaluates_whole_images_not_multiples_of_the_window(zarr_dir, load, tmp_path, monkeypatch):
    """32 px training crops of the 74 px images; evaluation by 32 px windows at stride 16 (rows [0, 16, 32, 42])
    predicts each whole image."""
    from xgeo.data.store import open_store
    from xgeo.finetune import tasks as ft_tasks
    from xgeo.finetune.run import finetune

    root = open_store(zarr_dir / "spacenet2.zarr")
    assert root["pan/data"].shape[1:] == (1, PAN, PAN) and root["mul/data"].shape[1:] == (8, MUL, MUL)
    params = load(*SIZES, f"paths.zarr={zarr_dir}", "mlflow.enabled=false", "finetune.eval_batch_size=8",
                  "finetune.spacenet2.image_size=32", "finetune.spacenet2.batch_size=2",
                  "finetune.spacenet2.warmup_steps=1")
    calls = []
    forward = ft_tasks.FinetuneNet.forward

    def spy(self, xs):
        calls.append((self.training, tuple(xs[0].shape)))
        return forward(self, xs)

    monkeypatch.setattr(ft_tasks.FinetuneNet, "forward", spy)
    res = finetune("spacenet2", "random", tmp_path / "run", params, steps=1)
    npz = np.load(tmp_path / "run" / "predictions.npz")
    n = res["eval_samples"]
    assert n >= 1 and npz["outputs"].shape == (n, 8, PAN, PAN) and npz["targets"].shape == (n, 8, PAN, PAN)
    assert np.isfinite(npz["outputs"]).all() and np.isfinite(res["PSNR"])
    train = [c for c in calls if c[0]]
    windows = [c[1] for c in calls if not c[0]]
    assert train == [(True, (2, 1, 32, 32))]
    assert all(w[1:] == (1, 32, 32) for w in windows) and sum(w[0] for w in windows) == n * 4 * 4
