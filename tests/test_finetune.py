"""Downstream finetuning on tiny synthetic stores (synthesised in each dataset's real layout, then converted).

Each task trains a few steps and beats its untrained self on its headline metric; predictions.npz reproduces
metrics.json; subsets, initialisations and bad inputs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from xgeo import metrics
from xgeo.errors import CheckpointError, DataError, XGeoError

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.datasets.bigearthnet.synth.patches={train: 40, val: 24, test: 4}",
    "data.datasets.vaihingen.synth.size=[128, 128]",  # areas of whole 64 px tiles: no overlapping tiles
    "data.datasets.sen12ms-cr.synth.patches_per_roi=1",
    "data.datasets.sen12ms-cr.synth.rois={train: 1, val: 1, test: 1}",
    "data.datasets.vaihingen.synth.areas={train: 3, test: 2}",
    "data.datasets.spacenet2.synth.images_per_aoi=8",
    "data.datasets.spacenet2.synth.pan_size=64",
]
# 32 px crops (the smallest multiple of the encoder stride), batches of 4, 2 warm-up steps: a test step is cheap
FAST = ["finetune.eval_batch_size=8"] + [f"finetune.{t}.{k}" for t in ("bigearthnet", "vaihingen", "sen12ms-cr",
                                                                        "spacenet2")
                                         for k in ("image_size=32", "batch_size=4", "warmup_steps=2")]


@pytest.fixture(scope="session")
def zarr_dir(tmp_path_factory) -> Path:
    """Tiny stores of the four downstream datasets (about 8 s, once per session)."""
    from xgeo.config import load_params
    from xgeo.data.convert import convert
    from xgeo.data.synth import synthesize

    base = tmp_path_factory.mktemp("finetune_stores")
    params = load_params(ROOT / "params.yaml", SMALL)
    for ds in ("bigearthnet", "vaihingen", "sen12ms-cr", "spacenet2"):
        synthesize(ds, base / "raw" / ds, params, seed=0)
        convert(ds, base / "raw" / ds, base / "zarr" / f"{ds}.zarr", params)
    return base / "zarr"


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One MLflow store for the module's tracked runs (creating a store costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('finetune_mlflow')}/mlflow.db"


@pytest.fixture
def ft(load, zarr_dir, tmp_path, mlflow_uri):
    """ft(task, *overrides, init="random", steps=N, fraction=None, tracked=False) -> (metrics, out dir)."""
    from xgeo.finetune.run import finetune

    def run(task, *overrides, init="random", steps=0, fraction=None, name="run", tracked=False):
        mlflow = [f"mlflow.tracking_uri={mlflow_uri}"] if tracked else ["mlflow.enabled=false"]
        params = load(f"paths.zarr={zarr_dir}", *SMALL, *FAST, *mlflow, *overrides)
        out = tmp_path / name
        return finetune(task, init, out, params, fraction=fraction, steps=steps), out

    return run


@pytest.mark.parametrize(
    "task, metric, steps, overrides",
    [
        ("bigearthnet", "mAP_micro", 12, ()),
        # the 8 test tiles of the tiny store hold two or three classes: score the 12 train tiles, which have more
        ("vaihingen", "mIoU", 12, ("finetune.vaihingen.eval_split=train", "finetune.vaihingen.eval_stride=32")),
        ("sen12ms-cr", "SAM", 12, ()),
        ("spacenet2", "PSNR", 12, ()),
    ],
)
def test_task_beats_its_untrained_self_and_predictions_reproduce_metrics(ft, mlflow_uri, task, metric, steps,
                                                                         overrides):
    before, _ = ft(task, *overrides, steps=0, name="untrained")
    after, out = ft(task, *overrides, steps=steps, name="trained", tracked=True)
    lower = metric in ("SAM", "MAE")
    assert (after[metric] < before[metric]) if lower else (after[metric] > before[metric]), (before[metric], after[metric])
    saved = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == task and run["steps"] == steps and run["init"] == "random"
    assert set(run) >= {"mlflow_run_id", "fraction", "experiment", "protocol", "seconds"}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    logged = client.get_run(run["mlflow_run_id"]).data
    assert logged.metrics[metric] == pytest.approx(after[metric]) and logged.params["task"] == task
    artifacts = {f.path for d in ("", "figures") for f in client.list_artifacts(run["mlflow_run_id"], d)}
    figure = {"vaihingen": "figures/segmentation.png", "sen12ms-cr": "figures/cloud_removal.png",
              "spacenet2": "figures/pansharpening.png", "bigearthnet": "metrics.json"}[task]
    assert figure in artifacts and "metrics.json" in artifacts
    npz = np.load(out / "predictions.npz")
    again = metrics.from_predictions(task, npz)
    names = {"bigearthnet": ["mAP_micro", "mAP_macro"], "vaihingen": ["mIoU", "OA", "mIoU_all", "OA_eval"],
             "sen12ms-cr": ["MAE", "SAM", "SSIM", "PSNR"], "spacenet2": ["MAE", "SAM", "SSIM", "PSNR"]}[task]
    for k in names:
        assert again[k] == pytest.approx(saved[k], rel=1e-9, abs=1e-12), k
    if task == "vaihingen":
        assert bool(npz["complete"])  # tiny store: every tile saved, so the tiles give the same matrix
        np.testing.assert_array_equal(metrics.tile_confusion(npz), npz["confusion"])
        assert set(saved["IoU_per_class"]) == {"impervious_surfaces", "building", "low_vegetation", "tree", "car",
                                               "clutter"}
        assert saved["eval_label"] == "mask_eroded" and "clutter" not in saved["class_set"]["mIoU"]
        assert saved["eval_samples"] == 12 and npz["outputs"].shape[-2:] == (64, 64)  # whole tiles, 32 px windows
    if task == "bigearthnet":
        assert len(saved["AP_per_class"]) == 19 and npz["scores"].shape == (24, 19)
    if task in ("sen12ms-cr", "spacenet2"):
        assert bool(npz["complete"]) and npz["outputs"].min() >= 0 and npz["outputs"].max() <= 1


def test_bigearthnet_fraction_is_drawn_without_replacement_and_saved(ft, zarr_dir):
    res, out = ft("bigearthnet", fraction=0.5, steps=0)
    ids = (out / "train_ids.txt").read_text().split()
    assert len(ids) == 20 and len(set(ids)) == 20
    run = json.loads((out / "run.json").read_text())
    assert run["fraction"] == 0.5 and run["subset"]["train_samples"] == 20
    res2, out2 = ft("bigearthnet", fraction=0.5, steps=0, name="again")
    assert (out2 / "train_ids.txt").read_text() == (out / "train_ids.txt").read_text()  # seeded


def test_per_class_subset_algorithm():
    from xgeo.finetune.bigearthnet import per_class_subset

    rng = np.random.default_rng(0)
    targets = (rng.random((300, 6)) < np.array([0.5, 0.3, 0.1, 0.05, 0.02, 0.0])).astype(np.uint8)
    keep = per_class_subset(targets, 5, np.random.default_rng(1))
    counts = targets[keep].sum(0)
    available = targets.sum(0)
    assert (counts >= np.minimum(5, available)).all() and counts[5] == 0
    assert len(set(keep.tolist())) == len(keep) <= 5 * 6
    # every kept sample was needed when it was taken: dropping the last kept one breaks the guarantee
    order = np.random.default_rng(1).permutation(300)
    last = max(keep, key=lambda i: int(np.flatnonzero(order == i)[0]))
    rest = targets[[i for i in keep if i != last]].sum(0)
    assert (rest < np.minimum(5, available)).any()
    np.testing.assert_array_equal(keep, per_class_subset(targets, 5, np.random.default_rng(1)))


def test_bigearthnet_per_class_and_method1_and_single_sensor(ft):
    res, out = ft("bigearthnet", "finetune.bigearthnet.per_class=2", "finetune.bigearthnet.method=1", steps=2)
    run = json.loads((out / "run.json").read_text())
    assert run["subset"]["per_class"] == 2 and run["method"] == 1 and run["fraction"] is None
    res, out = ft("bigearthnet", "finetune.bigearthnet.inputs=[s1]", steps=1, name="s1")
    assert json.loads((out / "run.json").read_text())["inputs"] == ["s1"] and 0 < res["mAP_micro"] <= 100


def test_spacenet2_wald_protocol_is_recorded(ft):
    res, out = ft("spacenet2", "finetune.spacenet2.protocol=wald", steps=1)
    assert res["protocol"] == "wald" and json.loads((out / "run.json").read_text())["protocol"] == "wald"
    npz = np.load(out / "predictions.npz")
    assert npz["targets"].shape[-1] == 16  # compared with the original MUL (tile 64 / 4)


def test_missing_store_empty_split_and_bad_labels(ft, zarr_dir, tmp_path, load):
    with pytest.raises(DataError, match=r"nowhere/vaihingen\.zarr.*xgeo data convert vaihingen"):
        ft("vaihingen", f"paths.zarr={tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="split 'test' has no samples"):
        ft("spacenet2", "finetune.spacenet2.eval_split=test")
    import zarr

    bad = tmp_path / "bad"
    shutil.copytree(zarr_dir / "vaihingen.zarr", bad / "vaihingen.zarr")
    root = zarr.open_group(bad / "vaihingen.zarr", mode="r+")
    mask = root["labels/mask_eroded"][:]
    mask[:, 0, 0] = 9
    root["labels/mask_eroded"][:] = mask
    with pytest.raises(DataError, match=r"labels/mask_eroded: expected classes 0..5.*found \[9\]"):
        ft("vaihingen", f"paths.zarr={bad}")


def test_named_weights_nobody_supplied(ft):
    with pytest.raises(XGeoError, match=r"finetune\.weights\.in22k"):
        ft("bigearthnet", init="in22k")
    with pytest.raises(XGeoError, match="no such file"):
        ft("bigearthnet", init="/nonexistent/model.ckpt")


def _timm_demo_swinv2(in_chans=3):
    """A timm SwinV2 of the demo size (the dims of xgeo.model.MODEL_SIZES['demo'])."""
    import timm

    from xgeo.model import MODEL_SIZES

    d = MODEL_SIZES["demo"]
    return timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=d["img_size"],
                             window_size=d["window_size"], embed_dim=d["embed_dim"], depths=tuple(d["depths"]),
                             num_heads=tuple(d["num_heads"]), in_chans=in_chans)


def test_timm_state_dict_init_loads_the_encoder_and_adapts_rgb(load, zarr_dir, tmp_path):
    from xgeo.finetune.backbone import build_backbone
    from xgeo.finetune.tasks import get_task

    torch.manual_seed(1)
    timm_model = _timm_demo_swinv2()
    path = tmp_path / "in22k.pth"
    torch.save(timm_model.state_dict(), path)
    params = load(f"paths.zarr={zarr_dir}", *SMALL, *FAST, f"finetune.weights.in22k={path}")
    t = get_task("vaihingen", params)
    backbone, info = build_backbone("in22k", params, t.input_specs(), 32, t.s)
    assert info["kind"] == "timm" and info["init"] == "in22k" and set(info["adapted"]) == {"irrg", "dsm"}
    enc = backbone.model.encoder
    ref = timm_model.state_dict()
    assert torch.equal(enc.layers[0].blocks[0].attn.qkv.weight, ref["layers.0.blocks.0.attn.qkv.weight"])
    # stacked [IRRG, DSM] embedding: NIR (842 nm) has no RGB match -> mean kernel; R, G copy timm's R, G kernels;
    # each input's kernels are scaled by 1 / (number of stacked inputs)
    w = backbone.model.patch_embeds["irrg+dsm"].proj.weight
    rgb = ref["patch_embed.proj.weight"]
    assert torch.allclose(w[:, 1], rgb[:, 0] / 2) and torch.allclose(w[:, 2], rgb[:, 1] / 2)
    assert torch.allclose(w[:, 0], rgb.mean(1) / 2) and torch.allclose(w[:, 3], rgb.mean(1) / 2)


def test_xgeo_checkpoint_init_matches_sensors_and_adapts_irrg(load, zarr_dir, tmp_path, ft):
    from xgeo.finetune.backbone import build_backbone
    from xgeo.finetune.tasks import get_task
    from xgeo.model import build_model
    from xgeo.model.checkpoint import save_checkpoint

    params = load(f"paths.zarr={zarr_dir}", *SMALL, *FAST)
    torch.manual_seed(2)
    model = build_model(params)
    ckpt = tmp_path / "exp" / "last.ckpt"
    save_checkpoint(ckpt, model)
    t = get_task("vaihingen", params)
    backbone, info = build_backbone(str(ckpt), params, t.input_specs(), 32, t.s)
    assert info == {"init": "exp", "kind": "xgeo", "adapted": ["irrg"]}
    assert torch.equal(backbone.model.encoder.layers[1].blocks[0].attn.qkv.weight,
                       model.encoder.layers[1].blocks[0].attn.qkv.weight)
    # stacked [IRRG, DSM]: DSM's kernel is the checkpoint's DSM kernel / 2 (two stacked inputs);
    # IRRG's R and G bands take the RGB sensor's R and G kernels (nearest wavelength), NIR Sentinel-2's B08
    w = backbone.model.patch_embeds["irrg+dsm"].proj.weight
    assert torch.allclose(w[:, 3], model.patch_embeds["dsm"].proj.weight[:, 0] / 2)
    assert torch.allclose(w[:, 1], model.patch_embeds["rgb"].proj.weight[:, 0] / 2)
    assert torch.allclose(w[:, 0], model.patch_embeds["s2"].proj.weight[:, 7] / 2)
    res, out = ft("vaihingen", init=str(ckpt), steps=1)
    assert json.loads((out / "run.json").read_text())["init_kind"] == "xgeo"


def test_checkpoint_with_other_sensors_or_channel_counts(load, zarr_dir, tmp_path, ft):
    from xgeo.model import build_model
    from xgeo.model.checkpoint import save_checkpoint

    optical = tmp_path / "optical" / "last.ckpt"
    save_checkpoint(optical, build_model(load("model.sensors=[rgb, s2]")))
    with pytest.raises(CheckpointError, match=r"not for 's1', whose bands \['VV', 'VH'\] have no wavelength"):
        ft("bigearthnet", init=str(optical))
    # Table 10's RGB row: finetune.new_sensors=adapt starts S1 from the mean of the checkpoint's kernels
    _, out = ft("bigearthnet", "finetune.new_sensors=adapt", init=str(optical), steps=1, name="adapted")
    assert "s1" in json.loads((out / "run.json").read_text())["adapted"]
    model = build_model(load())
    state = model.state_dict()
    state["patch_embeds.s2.proj.weight"] = state["patch_embeds.s2.proj.weight"][:, :12]
    narrow = tmp_path / "narrow" / "last.ckpt"
    save_checkpoint(narrow, {"model": state, "model_config": model.config})
    with pytest.raises(CheckpointError, match=r"narrow/last\.ckpt.*patch_embeds\.s2\.proj\.weight"):
        ft("bigearthnet", init=str(narrow))


def test_a_run_is_bit_identical_on_the_same_machine_and_thread_count(ft):
    """Same params, seed and thread count: metrics.json and predictions.npz are bit-identical (the README's claim);
    another finetuning seed gives another run, and run.json's settings digest tells them apart."""
    a, da = ft("bigearthnet", steps=3, name="a")
    b, db = ft("bigearthnet", steps=3, name="b")
    assert (da / "metrics.json").read_bytes() == (db / "metrics.json").read_bytes()
    npa, npb = np.load(da / "predictions.npz"), np.load(db / "predictions.npz")
    assert npa.files == npb.files
    for k in npa.files:
        np.testing.assert_array_equal(npa[k], npb[k])
    c, dc = ft("bigearthnet", "seed=1", steps=3, name="c")
    assert c["mAP_micro"] != a["mAP_micro"]
    ra, rb, rc = (json.loads((d / "run.json").read_text()) for d in (da, db, dc))
    assert ra["settings_digest"] == rb["settings_digest"] != rc["settings_digest"]
    assert ra["settings"]["seed"] == 0 and rc["settings"]["seed"] == 1 and ra["settings"]["steps_override"] == 3
    assert ra["settings"]["profile"] == "demo" and ra["settings"]["model"]["size"] == "demo"
    assert ra["train_samples"] == 40 and ra["eval_samples"] == 24
