"""Pretraining: step data (masks, pairs, cross-sensor choice), the objective, a short demo run whose loss falls,
and the bad inputs (missing store, unknown sensor, channel mismatch, NaN loss, resume from another configuration).

The stores are written here directly with zarr, following the store contract of docs/ARCHITECTURE.md, so these
tests do not depend on the synthetic-data writers. ``write_pretrain_stores`` is shared with test_resume and
test_distributed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from xgeo.catalog import get_dataset
from xgeo.errors import CheckpointError, DataError, TrainingError
from xgeo.sensors import get_sensor

SIZE = 64
COUNTS = {"geopile": 6, "millionaid": 5, "sen12ms": 6, "mdas": 4}

# a short, small run: batch 2 / 1 / 1, every step logged
TINY = [
    "pretrain.groups.rgb.batch_size=2", "pretrain.groups.sen12ms.batch_size=1", "pretrain.groups.mdas.batch_size=1",
    "pretrain.log_every=1", "pretrain.warmup_steps=2", "pretrain.base_lr=2.0e-3",
]


def _latent(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Scenes (n, 4, size, size) in [0, 1]: a layout shared by every scene (32-px periodic, so a decoder learns it
    within a few steps and the loss visibly falls) plus a smooth random field per scene."""
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    phase = np.arange(4)[:, None, None] * np.pi / 4
    shared = 0.5 + 0.5 * np.sin(2 * np.pi * xx / 32 + phase) * np.cos(2 * np.pi * yy / 32 + phase)
    coarse = rng.random((n, 4, 4, 4)).astype(np.float32)
    t = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear",
                                        align_corners=False)
    return (0.75 * shared[None] + 0.25 * t.numpy()).astype(np.float32)


def _render(sensor: str, scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor image (n, C, H, W) in the sensor's stored dtype and units from a latent scene (n, 4, H, W)."""
    s = get_sensor(sensor)
    n, _, h, w = scene.shape
    mix = rng.random((s.num_bands, 4)).astype(np.float32)
    x = np.einsum("ck,nkhw->nchw", mix / mix.sum(1, keepdims=True), scene)
    if sensor == "rgb":
        return (x * 255).round().astype(np.uint8)
    if sensor == "s2":
        return (x * 4000 + 200).round().astype(np.uint16)
    if sensor == "s1":
        return (-25 + 20 * x).astype(np.float32)
    if sensor == "dsm":
        return (400 + 30 * x).astype(np.float32)
    raise ValueError(sensor)


def write_store(path: Path, dataset: str, n: int, seed: int, *, modalities=None, pairs=None,
                std_override=None, size: int = SIZE) -> Path:
    """One Zarr v3 store per the contract (attrs, ids, split, <key>/data with stats, crs, transform)."""
    import zarr

    spec = get_dataset(dataset)
    modalities = modalities or {k: (m.sensor, list(m.bands)) for k, m in spec.modalities.items()}
    pairs = [list(p) for p in spec.pairs] if pairs is None else pairs
    rng = np.random.default_rng(seed)
    scene = _latent(rng, n, size)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update({
        "dataset": dataset, "title": spec.title, "source": "synthetic", "task": spec.task, "tile_size": size,
        "modalities": {k: {"sensor": s, "bands": b} for k, (s, b) in modalities.items()}, "pairs": pairs,
        "split_names": ["train", "val", "test"], "splits": {"train": n, "val": 0, "test": 0}, "xgeo_version": "test",
    })
    group.create_array("ids", shape=(n,), dtype=str)[:] = np.array([f"{dataset}_{i}" for i in range(n)])
    group.create_array("split", shape=(n,), dtype="uint8")[:] = np.zeros(n, np.uint8)
    for key, (sensor, bands) in modalities.items():
        data = _render(sensor, scene, rng)[:, : len(bands)]
        arr = group.create_array(f"{key}/data", shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]))
        arr[:] = data
        flat = data.astype(np.float64).transpose(1, 0, 2, 3).reshape(data.shape[1], -1)
        s = get_sensor(sensor)
        arr.attrs.update({
            "sensor": sensor, "bands": list(bands), "dtype": str(data.dtype), "nodata": s.nodata,
            "stats": {"count": [int(flat.shape[1])] * len(bands), "mean": np.nanmean(flat, 1).tolist(),
                      "std": ([std_override[key]] * len(bands) if std_override and key in std_override
                              else np.nanstd(flat, 1).tolist()), "min": np.nanmin(flat, 1).tolist(),
                      "max": np.nanmax(flat, 1).tolist(), "p1": np.nanpercentile(flat, 1, axis=1).tolist(),
                      "p99": np.nanpercentile(flat, 99, axis=1).tolist()},
        })
        group.create_array(f"{key}/crs", shape=(n,), dtype=str)[:] = np.array(["EPSG:32632"] * n)
        group.create_array(f"{key}/transform", shape=(n, 6), dtype="float64")[:] = np.tile(
            [10.0, 0, 500000.0, 0, -10.0, 5300000.0], (n, 1))
    return path


def write_pretrain_stores(root: Path, counts: dict | None = None) -> Path:
    """The four pretraining stores of params.yaml (geopile, millionaid, sen12ms, mdas) under root."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (ds, n) in enumerate((counts or COUNTS).items()):
        write_store(root / f"{ds}.zarr", ds, n, seed=i)
    return root


@pytest.fixture(scope="module")
def zarr_root(tmp_path_factory) -> Path:
    return write_pretrain_stores(tmp_path_factory.mktemp("zarr"))


@pytest.fixture
def tiny(load, zarr_root):
    def _tiny(*overrides: str, mlflow: bool = False) -> dict:
        return load(f"paths.zarr={zarr_root}", f"mlflow.enabled={str(mlflow).lower()}", *TINY, *overrides)

    return _tiny


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- step data
def _step_data(params, total=200, img_size=SIZE):
    from xgeo.data.dataset import ZarrDataset
    from xgeo.pretrain.sampler import Group, PretrainSampler
    from xgeo.pretrain.data import StepData, group_layouts, read_store_attrs

    cfg = params["pretrain"]
    names = [d for g in cfg["groups"].values() for d in g["datasets"]]
    stores = {d: read_store_attrs(params, d) for d in names}
    layouts = group_layouts(params, stores)
    datasets = {d: ZarrDataset(stores[d]["path"], split=None) for d in names}
    groups = [Group(g, tuple(c["datasets"]), tuple(len(datasets[d]) for d in c["datasets"]), c["batch_size"])
              for g, c in cfg["groups"].items()]
    sampler = PretrainSampler(groups, seed=params["seed"])
    data = StepData(sampler, datasets, layouts, cfg["mask_patch"], 4, cfg["mask_ratio"], cfg["cross_ratio"],
                    params["seed"], 0, total, img_size=img_size, crop=cfg["crop"])
    return data, layouts


def test_step_data_masks_pairs_and_determinism(tiny):
    data, layouts = _step_data(tiny())
    assert layouts["sen12ms"].partner == {"s1": "s2", "s2": "s1"}
    assert layouts["mdas"].partner == {"rgb": "dsm", "dsm": "rgb"}
    assert layouts["rgb"].partner == {}
    batch = data[3]
    assert set(batch) == {"rgb", "sen12ms", "mdas"}
    assert batch["rgb"]["images"]["rgb"].shape == (2, 3, SIZE, SIZE)
    assert batch["sen12ms"]["images"]["s2"].shape == (1, 13, SIZE, SIZE)
    # one (B, H/4, W/4) mask per image: no channel axis, so every channel of a sensor shares it; 10 of 16 cells
    for gb in batch.values():
        for key, mask in gb["masks"].items():
            assert mask.shape == (gb["count"], SIZE // 4, SIZE // 4)
            assert (mask.reshape(gb["count"], -1).sum(1) == math.ceil(16 * 0.6) * 16).all()
    # independent masks for the two sensors of a pair: they differ in most steps
    differ = [not torch.equal(data[s]["sen12ms"]["masks"]["s1"], data[s]["sen12ms"]["masks"]["s2"]) for s in range(20)]
    assert sum(differ) >= 18
    # unpaired data carries no cross-sensor choice
    assert batch["rgb"]["cross"] == {}
    # deterministic in the step
    again = data[3]
    assert torch.equal(again["mdas"]["images"]["dsm"], batch["mdas"]["images"]["dsm"])
    assert torch.equal(again["sen12ms"]["masks"]["s1"], batch["sen12ms"]["masks"]["s1"])


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_cross_sensor_targets_reach_the_paired_decoder(tiny, ratio):
    """Which decoder reconstructs what: at cross_ratio 0 every sensor its own, at 1 always the paired one,
    at 0.5 about half; unpaired RGB always itself. Counted through the decoder calls of the objective."""
    from xgeo.model import build_model
    from xgeo.pretrain.objective import CrossSensorObjective

    params = tiny(f"pretrain.cross_ratio={ratio}", "pretrain.groups.sen12ms.batch_size=4")
    data, layouts = _step_data(params)
    torch.manual_seed(0)
    model = build_model(params)
    calls = []
    decode = model.forward_decoder

    def spy(z, sensor):
        calls.append((sensor, z.shape[0]))
        return decode(z, sensor)

    model.forward_decoder = spy
    objective = CrossSensorObjective(model, layouts, {"rgb": 1.0, "sen12ms": 2.0, "mdas": 0.5})
    counts = {"self": 0, "cross": 0}
    steps = 12 if ratio == 0.5 else 2
    with torch.no_grad():
        for s in range(steps):
            batch = data[s]
            calls.clear()
            objective(batch)
            # the 8 images of the s1/s2 pairs: decoder calls of the sen12ms group come after the rgb group's
            n_pairs = {k: int(v.sum()) for k, v in batch["sen12ms"]["cross"].items()}
            counts["cross"] += sum(n_pairs.values())
            counts["self"] += 8 - sum(n_pairs.values())
            decoded = {}
            for sensor, n in calls:
                decoded[sensor] = decoded.get(sensor, 0) + n
            # every image is decoded once, by its own decoder or its partner's
            assert sum(decoded.values()) == 2 + 8 + 2
            assert decoded.get("s1", 0) == (4 - n_pairs["s1"]) + n_pairs["s2"]
    frac = counts["cross"] / (counts["cross"] + counts["self"])
    if ratio in (0.0, 1.0):
        assert frac == ratio
    else:
        assert 0.3 < frac < 0.7


def test_grouped_decoding_equals_decoding_each_part(tiny):
    """The objective decodes all parts a sensor's decoder reconstructs in one call; losses and gradients are those
    of decoding every part on its own (the per-part formula of Eq. 1/2, through ``forward_loss``)."""
    from xgeo.model import build_model
    from xgeo.pretrain.objective import CrossSensorObjective

    params = tiny("pretrain.cross_ratio=0.5", "pretrain.groups.sen12ms.batch_size=6")
    data, layouts = _step_data(params)
    torch.manual_seed(0)
    model = build_model(params)
    objective = CrossSensorObjective(model, layouts, {"rgb": 1.0, "sen12ms": 2.0, "mdas": 0.5})
    batch = data[1]
    assert 0 < int(batch["sen12ms"]["cross"]["s1"].sum()) + int(batch["sen12ms"]["cross"]["s2"].sum()) < 12
    g = torch.Generator().manual_seed(0)
    jobs = []
    for gname, layout in layouts.items():
        for key in layout.sensors:
            gb = batch[gname]
            n = gb["images"][key].shape[0]
            z = torch.randn(n, model.num_features, 2, 2, generator=g, requires_grad=True)
            jobs.append((z, objective.targets(z, key, layout, gb)))
    grouped = objective.reconstruction_losses([parts for _, parts in jobs])
    grads = torch.autograd.grad(sum(grouped), [z for z, _ in jobs], retain_graph=True)  # parts' slices are reused
    for (z, parts), loss, grad in zip(jobs, grouped, grads):
        ref = sum(model.forward_loss(t.float(), model.forward_decoder(zp, s).float(), m) * share
                  for s, zp, t, m, share in parts)
        assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-7)
        assert torch.allclose(grad, torch.autograd.grad(ref, z)[0], rtol=1e-4, atol=1e-8)


# ---------------------------------------------------------------------------------------------- a short run
def test_demo_run_loss_falls_and_writes_everything(tiny, tmp_path):
    from xgeo.pretrain.train import pretrain

    # no crop: the stores' 32 px periodic layout keeps its period, so 16 steps visibly learn it
    params = tiny("pretrain.crop=null", mlflow=True)
    out = tmp_path / "run"
    result = pretrain(params, out, steps=16, checkpoint_every=8)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17))
    first = np.mean([r["loss"] for r in rows[:4]])
    last = np.mean([r["loss"] for r in rows[-4:]])
    assert last < 0.8 * first, (first, last)
    row = rows[-1]
    for key in ("loss", "rec_loss", "aux_loss", "lr", "samples_per_s", "loss/rgb", "loss/s1", "loss/s2", "loss/dsm",
                "weight/rgb", "weight/sen12ms", "weight/mdas"):
        assert key in row and math.isfinite(row[key]), key
    assert (row["weight/rgb"], row["weight/sen12ms"], row["weight/mdas"]) == (1.0, 0.5, 0.5)
    # warm-up from warmup_lr to base_lr over 2 steps, then constant (no milestones)
    assert rows[0]["lr"] == pytest.approx(5.0e-7) and rows[5]["lr"] == pytest.approx(2.0e-3)
    ckpt = torch.load(out / "last.ckpt", weights_only=False)
    assert ckpt["step"] == 16 and ckpt["sampler"]["step"] == 16
    assert set(ckpt) >= {"model", "model_config", "params", "optimizer", "scheduler", "sampler", "rng", "xgeo_version"}
    figures = sorted((out / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["reconstruction_step000008.png", "reconstruction_step000016.png"]
    assert result["step"] == 16 and result["mlflow_run_id"]
    from xgeo.tracking import get_run

    run = get_run(params, result["mlflow_run_id"])
    assert run.data.metrics["loss"] == pytest.approx(row["loss"])
    assert run.data.params["pretrain.cross_ratio"] == "0.5"


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_store_names_path_and_command(tiny, tmp_path):
    from xgeo.pretrain.train import pretrain

    params = tiny(f"paths.zarr={tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match=r"nowhere/geopile\.zarr.*xgeo data convert geopile"):
        pretrain(params, tmp_path / "run", steps=1)
    assert not (tmp_path / "run").exists()


def test_sensor_the_model_lacks(tiny, tmp_path):
    from xgeo.pretrain.train import pretrain

    # a group that names its modalities reads them all: a sensor the model lacks is an error, not a silent drop
    with pytest.raises(DataError, match=r"mdas\.zarr.*'dsm'.*model lacks"):
        pretrain(tiny("model.sensors=[rgb, s2, s1]", "pretrain.groups.mdas={datasets: [mdas], batch_size: 1, modalities: [rgb, dsm]}"),
                 tmp_path / "run", steps=1)
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_channel_count_mismatch(tiny, tmp_path):
    from xgeo.pretrain.train import pretrain

    root = tmp_path / "zarr"
    write_pretrain_stores(root, {"geopile": 2, "millionaid": 2, "mdas": 2})
    bands = [b for b in get_sensor("s2").band_names if b != "B10"]
    write_store(root / "sen12ms.zarr", "sen12ms", 2, seed=0,
                modalities={"s1": ("s1", ["VV", "VH"]), "s2": ("s2", bands)})
    with pytest.raises(DataError, match=r"sen12ms\.zarr.*'s2'.*12 channels.*13"):
        pretrain(tiny(f"paths.zarr={root}"), tmp_path / "run", steps=1)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path, zarr_root):
    from xgeo.pretrain.train import pretrain

    out = tmp_path / "run"
    pretrain(tiny(), out, steps=2, checkpoint_every=2)
    before = (out / "last.ckpt").read_bytes()
    bad = tmp_path / "bad"
    for ds in ("geopile", "millionaid", "sen12ms"):
        (bad / f"{ds}.zarr").parent.mkdir(parents=True, exist_ok=True)
        (bad / f"{ds}.zarr").symlink_to(zarr_root / f"{ds}.zarr")

    # a store whose DSM statistics are broken (std ~ 0): normalised heights overflow to inf
    write_store(bad / "mdas.zarr", "mdas", COUNTS["mdas"], seed=3, std_override={"dsm": 1e-38})
    with pytest.raises(TrainingError, match=r"step 3: non-finite input for sensor 'dsm'.*last good checkpoint .*last\.ckpt \(step 2\)"):
        pretrain(tiny(f"paths.zarr={bad}"), out, steps=4, checkpoint_every=1, resume=True)
    assert (out / "last.ckpt").read_bytes() == before
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_resume_refuses_another_configuration(tiny, tmp_path):
    from xgeo.pretrain.train import pretrain

    out = tmp_path / "run"
    pretrain(tiny(), out, steps=1)
    before = (out / "last.ckpt").read_bytes()
    with pytest.raises(CheckpointError, match=r"pretrain\.cross_ratio.*pretrain\.mask_ratio"):
        pretrain(tiny("pretrain.cross_ratio=1.0", "pretrain.mask_ratio=0.5"), out, steps=2, resume=True)
    with pytest.raises(CheckpointError, match="--resume"):
        pretrain(tiny(), out, steps=2)
    assert (out / "last.ckpt").read_bytes() == before


# ---------------------------------------------------------------------------------------------- Table 5 baselines
TEACHER_KWARGS = "{embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1], window_size: 4}"


@pytest.mark.parametrize("objective", ["distill", "eva"])
def test_distillation_objectives_regress_a_local_teacher(tiny, tmp_path, objective):
    import timm
    import yaml

    from xgeo.pretrain.train import pretrain

    kwargs = yaml.safe_load(TEACHER_KWARGS)
    torch.manual_seed(0)
    teacher = timm.create_model("swinv2_tiny_window8_256", pretrained=False, num_classes=0, img_size=SIZE, **kwargs)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    params = tiny(f"pretrain.objective={objective}", "pretrain.base_lr=5.0e-3",
                  f"pretrain.teacher={{arch: swinv2_tiny_window8_256, path: {tmp_path / 'teacher.pth'}, "
                  f"kwargs: {TEACHER_KWARGS}}}")
    out = tmp_path / "run"
    pretrain(params, out, steps=10, checkpoint_every=10)
    rows = read_metrics(out / "metrics.jsonl")
    feat = [r["feat_loss"] for r in rows]
    assert np.mean(feat[-3:]) < np.mean(feat[:3]), feat
    if objective == "eva":
        assert all(r["rec_loss"] == 0.0 for r in rows)  # features instead of pixels
    else:
        assert all(r["rec_loss"] > 0.0 for r in rows)
    ckpt = torch.load(out / "last.ckpt", weights_only=False)
    assert set(ckpt["objective"]) == {"proj.weight", "proj.bias"}


def test_missing_teacher_file_is_named(tiny, tmp_path):
    from xgeo.errors import XGeoError
    from xgeo.pretrain.train import pretrain

    params = tiny("pretrain.objective=distill",
                  f"pretrain.teacher={{arch: swinv2_base_window12_192, path: {tmp_path / 'in22k.pth'}}}")
    with pytest.raises(XGeoError, match=r"in22k\.pth not found: place the state dict of timm's 'swinv2_base_window12_192'"):
        pretrain(params, tmp_path / "run", steps=1)
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_model_sensors_select_the_groups_and_modalities_a_run_reads(load):
    """Table 10's modality subsets are one model.sensors override: groups keep what the model can read."""
    from xgeo.errors import XGeoError
    from xgeo.pretrain.groups import effective_groups

    full = effective_groups(load())
    assert set(full) == {"rgb", "sen12ms", "mdas"} and all("modalities" not in g for g in full.values())
    s1 = effective_groups(load(experiment="s1-only"))
    assert s1 == {"sen12ms": {"datasets": ["sen12ms"], "batch_size": s1["sen12ms"]["batch_size"], "modalities": ["s1"]}}
    no_rgb = effective_groups(load(experiment="no-rgb"))
    assert set(no_rgb) == {"sen12ms", "mdas"} and no_rgb["mdas"]["modalities"] == ["dsm"]
    with pytest.raises(XGeoError, match="no pretraining group reads"):
        effective_groups(load("model.sensors=[wv3_pan]"))
