"""Each metric of xgeo.metrics against an independent reference (scikit-learn, scikit-image, a direct formula)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import average_precision_score, jaccard_score

from xgeo import metrics
from xgeo.errors import XGeoError


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """x, y: (C, H, W) on [0, 1]: the SSIM convention xgeo.metrics states."""
    return structural_similarity(y, x, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_sklearn_micro_macro_and_per_class(seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random((60, 7)) < 0.3).astype(np.uint8)
    targets[0] = 1  # every class has a positive
    scores = rng.normal(size=(60, 7))
    scores[:, 2] = np.round(scores[:, 2], 1)  # ties: sklearn groups them into one threshold
    out = metrics.multilabel_map(scores, targets)
    assert out["mAP_micro"] == pytest.approx(100 * average_precision_score(targets, scores, average="micro"), abs=1e-10)
    assert out["mAP_macro"] == pytest.approx(100 * average_precision_score(targets, scores, average="macro"), abs=1e-10)
    ref = average_precision_score(targets, scores, average=None)
    np.testing.assert_allclose(out["AP_per_class"], 100 * ref, atol=1e-10)


def test_map_class_without_positives_is_excluded_from_macro():
    rng = np.random.default_rng(3)
    targets = (rng.random((40, 5)) < 0.4).astype(np.uint8)
    targets[:, 3] = 0
    targets[0, [0, 1, 2, 4]] = 1
    scores = rng.random((40, 5))
    out = metrics.multilabel_map(scores, targets)
    assert math.isnan(out["AP_per_class"][3]) and out["classes_without_positives"] == [3]
    keep = [0, 1, 2, 4]
    ref = average_precision_score(targets[:, keep], scores[:, keep], average="macro")
    assert out["mAP_macro"] == pytest.approx(100 * ref, abs=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the empty class and counts it as AP 0
        assert out["mAP_macro"] > 100 * average_precision_score(targets, scores, average="macro")


def test_map_hand_computed_and_meter_is_batch_independent():
    # ranks: 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-): AP = 0.5 * 1 + 0.5 * 2/3
    assert metrics.average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    rng = np.random.default_rng(4)
    scores, targets = rng.random((30, 4)), (rng.random((30, 4)) < 0.5).astype(np.uint8)
    meter = metrics.MultiLabelMeter()
    for a, b in ((0, 7), (7, 9), (9, 30)):
        meter.update(torch.from_numpy(scores[a:b]), torch.from_numpy(targets[a:b]))
    assert meter.compute()["mAP_micro"] == metrics.multilabel_map(scores, targets)["mAP_micro"]
    with pytest.raises(XGeoError, match="0 or 1"):
        metrics.multilabel_map(scores, targets * 2)


def test_iou_and_oa_match_sklearn_with_ignore_index():
    rng = np.random.default_rng(5)
    target = rng.integers(0, 6, size=(3, 32, 32))
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 6, size=target.shape))
    target[:, :4] = 255
    meter = metrics.ConfusionMeter(6, ignore_index=255)
    meter.update(torch.from_numpy(pred[:1]), torch.from_numpy(target[:1]))
    meter.update(pred[1:], target[1:])
    names = [f"c{i}" for i in range(6)]
    out = metrics.segmentation_scores(meter.matrix, names, eval_classes=range(5))
    keep = target != 255
    t, p = target[keep], pred[keep]
    ref = jaccard_score(t, p, labels=list(range(6)), average=None)
    np.testing.assert_allclose([out["IoU_per_class"][n] for n in names], 100 * ref, atol=1e-10)
    assert out["mIoU"] == pytest.approx(100 * ref[:5].mean(), abs=1e-10)
    assert out["mIoU_all"] == pytest.approx(100 * ref.mean(), abs=1e-10)
    assert out["OA"] == pytest.approx(100 * (t == p).mean(), abs=1e-10)
    in5 = t < 5
    assert out["OA_eval"] == pytest.approx(100 * (t[in5] == p[in5]).mean(), abs=1e-10)


def test_iou_empty_class_and_empty_masks():
    target = np.zeros((8, 8), dtype=np.int64)
    pred = np.zeros((8, 8), dtype=np.int64)
    pred[0, 0] = 1
    out = metrics.segmentation_scores(metrics.confusion_matrix(pred, target, 3), ["a", "b", "c"])
    assert out["IoU_per_class"]["a"] == pytest.approx(100 * 63 / 64)
    assert out["IoU_per_class"]["b"] == 0.0  # predicted but absent: a defined IoU of 0
    assert math.isnan(out["IoU_per_class"]["c"])  # neither labelled nor predicted: left out of the mean
    assert out["mIoU"] == pytest.approx(100 * (63 / 64) / 2)
    with pytest.raises(XGeoError, match="no labelled pixel"):
        metrics.segmentation_scores(metrics.confusion_matrix(pred, np.full((8, 8), 255), 3, 255), ["a", "b", "c"])
    with pytest.raises(XGeoError, match=r"labels must lie in 0..2"):
        metrics.confusion_matrix(pred, target + 7, 3, 255)


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_psnr_match_skimage_and_sam_mae_direct(seed):
    rng = np.random.default_rng(seed)
    target = rng.random((3, 4, 24, 20))
    pred = np.clip(target + rng.normal(scale=0.1, size=target.shape), 0, 1)
    out = metrics.image_scores(pred, target, batch=2)
    ssim_ref = np.mean([_skimage_ssim(pred[i], target[i]) for i in range(3)])
    psnr_ref = np.mean([peak_signal_noise_ratio(target[i], pred[i], data_range=1.0) for i in range(3)])
    assert out["SSIM"] == pytest.approx(ssim_ref, abs=1e-12)
    assert out["PSNR"] == pytest.approx(psnr_ref, abs=1e-10)
    assert out["MAE"] == pytest.approx(np.abs(pred - target).mean(), abs=1e-12)
    angles = [
        math.degrees(math.acos(min(1.0, float(np.dot(pred[i, :, r, c], target[i, :, r, c])
                                            / (np.linalg.norm(pred[i, :, r, c]) * np.linalg.norm(target[i, :, r, c]))))))
        for i in range(3) for r in range(24) for c in range(20)
    ]
    assert out["SAM"] == pytest.approx(np.mean(angles), abs=1e-9)
    band_psnr = [np.mean([peak_signal_noise_ratio(target[i, b], pred[i, b], data_range=1.0) for i in range(3)])
                 for b in range(4)]
    np.testing.assert_allclose(out["PSNR_per_band"], band_psnr, atol=1e-10)


def test_image_metrics_constant_images_and_exact_match():
    a = np.full((1, 2, 16, 16), 0.25)
    b = np.full((1, 2, 16, 16), 0.75)
    out = metrics.image_scores(a, b)
    assert out["SSIM"] == pytest.approx(_skimage_ssim(a[0], b[0]), abs=1e-12)
    c1 = 0.01**2
    assert out["SSIM"] == pytest.approx((2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1))
    assert out["PSNR"] == pytest.approx(20 * math.log10(1 / 0.5))
    same = metrics.image_scores(a, a)
    # an exact match has no finite PSNR: left out of the mean and counted, never +inf in metrics.json
    assert same["SSIM"] == pytest.approx(1.0) and math.isnan(same["PSNR"]) and same["MAE"] == 0.0
    assert same["PSNR_undefined_images"] == 1 and "no defined PSNR" in same["note"]
    two = metrics.image_scores(np.concatenate([a, a]), np.concatenate([a, b]))
    assert two["PSNR"] == pytest.approx(20 * math.log10(1 / 0.5)) and two["PSNR_undefined_images"] == 1
    assert same["SAM"] == pytest.approx(0.0, abs=1e-5)
    # an all-zero spectrum has no angle: skipped, not counted as 0 or 90 degrees
    z = np.zeros((1, 2, 16, 16))
    z[0, :, 0, 0] = (1.0, 0.0)
    t = np.zeros((1, 2, 16, 16))
    t[0, :, 0, 0] = (0.0, 1.0)
    assert metrics.image_scores(z, t)["SAM"] == pytest.approx(90.0)


def test_nodata_pixels_are_left_out_of_every_image_metric():
    rng = np.random.default_rng(3)
    pred = rng.uniform(size=(2, 3, 24, 24))
    target = rng.uniform(size=(2, 3, 24, 24))
    valid = np.ones((2, 24, 24), dtype=bool)
    valid[0, :, 12:] = False          # the right half of image 0 is nodata
    valid[1] = False                  # image 1 is all nodata: no PSNR, no SSIM window
    wild = target.copy()
    wild[0, :, :, 12:] = 0.0           # whatever the nodata pixels hold does not matter
    wild[1] = 0.5
    out = metrics.image_scores(pred, wild, valid=valid)
    left_p, left_t = pred[0, :, :, :12], target[0, :, :, :12]
    assert out["MAE"] == pytest.approx(np.abs(left_p - left_t).mean(), rel=1e-12)
    mse = ((left_p - left_t) ** 2).mean()
    assert out["PSNR"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    assert out["PSNR_undefined_images"] == 1 and out["SSIM_undefined_images"] == 1
    # SSIM over the windows wholly inside the valid half: the SSIM of the valid 24 x 12 crop
    assert out["SSIM"] == pytest.approx(_skimage_ssim(left_p, left_t), abs=1e-10)
    cos = (left_p * left_t).sum(0) / (np.linalg.norm(left_p, axis=0) * np.linalg.norm(left_t, axis=0))
    assert out["SAM"] == pytest.approx(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean(), rel=1e-9)


def test_per_batch_micro_map_is_the_mean_of_each_batch_micro_ap():
    rng = np.random.default_rng(5)
    scores = rng.uniform(size=(10, 3))
    targets = (rng.uniform(size=(10, 3)) > 0.6).astype(np.uint8)
    targets[8:] = 0  # the last batch of 2 has no positive: no AP, left out of the mean
    want = np.mean([average_precision_score(targets[i:i + 4].ravel(), scores[i:i + 4].ravel()) for i in (0, 4)])
    assert metrics.per_batch_micro_map(scores, targets, 4) == pytest.approx(100 * want, rel=1e-12)
    # one batch holding everything is the whole-set micro mAP
    assert metrics.per_batch_micro_map(scores, targets, 10) == pytest.approx(
        metrics.multilabel_map(scores, targets)["mAP_micro"], rel=1e-12)


# ------------------------------------------------------------------ nodata through the store and the task evaluation

SN2_SMALL = ["data.datasets.spacenet2.synth.images_per_aoi=6", "data.datasets.spacenet2.synth.pan_size=64",
             "data.datasets.spacenet2.val_fraction=0.5", "finetune.spacenet2.image_size=32",
             "finetune.spacenet2.batch_size=4", "finetune.eval_batch_size=8", "mlflow.enabled=false"]


def test_spacenet2_nodata_pixels_are_left_out_of_the_evaluation(load, tmp_path):
    """SpaceNet 2 GeoTIFFs with zero-filled (nodata) regions: the task's MAE / PSNR / SAM are those of the valid
    pixels only (by hand from the GeoTIFFs), and an all-nodata tile is counted and skipped."""
    import rasterio

    from xgeo.data.convert import convert
    from xgeo.data.datasets.spacenet2 import SPEC, plan
    from xgeo.data.synth import synthesize
    from xgeo.finetune.run import finetune

    raw, store = tmp_path / "raw" / "spacenet2", tmp_path / "zarr" / "spacenet2.zarr"
    params = load(f"paths.zarr={tmp_path / 'zarr'}", *SN2_SMALL)
    synthesize("spacenet2", raw, params, seed=0)
    val = [(aoi, image_id) for aoi, image_id, split in plan(raw, SPEC, params) if split == "val"]
    assert len(val) == 3

    def zero(aoi, image_id, cols):  # a zero-filled border on the PAN grid (cols) and on MUL's (cols / 4)
        for kind, ratio in (("PAN", 1), ("MUL", 4), ("MUL-PanSharpen", 1)):
            with rasterio.open(raw / aoi / kind / f"{kind}_{image_id}.tif", "r+") as f:
                data = f.read()
                data[:, :, cols.start // ratio:] = 0
                f.write(data)

    zero(*val[0], slice(40, None))  # the right 24 of 64 columns are nodata
    zero(*val[1], slice(0, None))   # the whole tile is nodata
    convert("spacenet2", raw, store, params)
    m = finetune("spacenet2", "random", tmp_path / "run", params, steps=0)
    npz = np.load(tmp_path / "run" / "predictions.npz")
    assert bool(npz["complete"]) and m["eval_samples"] == 3

    ids = np.asarray(__import__("zarr").open_group(str(store), mode="r")["ids"][:])
    hand_valid = []
    for i in npz["index"]:
        aoi = next(a for a, image_id in val if str(ids[i]).startswith(image_id))
        image_id = str(ids[i]).rsplit("_r", 1)[0]
        with rasterio.open(raw / aoi / "PAN" / f"PAN_{image_id}.tif") as f:
            pan = f.read()
        with rasterio.open(raw / aoi / "MUL-PanSharpen" / f"MUL-PanSharpen_{image_id}.tif") as f:
            ps = f.read()
        hand_valid.append((pan != 0).all(0) & (ps != 0).all(0))
    hand_valid = np.stack(hand_valid)
    assert sorted(hand_valid.mean((1, 2)).round(3).tolist()) == [0.0, 0.625, 1.0]
    np.testing.assert_array_equal(npz["valid"], hand_valid)

    out, tgt = npz["outputs"].astype(np.float64), npz["targets"].astype(np.float64)
    v = hand_valid[:, None].repeat(out.shape[1], 1)
    assert m["MAE"] == pytest.approx(np.abs(out - tgt)[v].mean(), rel=1e-9)
    psnr = [10 * math.log10(1 / ((o - t)[:, k] ** 2).mean()) for o, t, k in zip(out, tgt, hand_valid) if k.any()]
    assert m["PSNR"] == pytest.approx(np.mean(psnr), rel=1e-9)
    assert m["PSNR_undefined_images"] == 1 and "1 of 3 images have no defined PSNR" in m["metrics_note"]
    norm = np.linalg.norm(out, axis=1) * np.linalg.norm(tgt, axis=1)
    defined = hand_valid & (norm > 0)  # SAM skips pixels with an all-zero spectrum (angle undefined)
    cos = (out * tgt).sum(1)[defined] / norm[defined]
    assert m["SAM"] == pytest.approx(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean(), rel=1e-9)
    # the masks matter: every pixel counted gives another MAE
    assert abs(metrics.image_scores(out, tgt)["MAE"] - m["MAE"]) > 1e-4
    # predictions.npz reproduces the masked numbers
    again = metrics.from_predictions("spacenet2", npz)
    for k in ("MAE", "SAM", "SSIM", "PSNR"):
        assert again[k] == pytest.approx(m[k], rel=1e-9), k


def test_sen12ms_cr_target_nodata_mask_from_the_stored_values(load, tmp_path):
    """SEN12MS-CR: a target (cloud-free S2) pixel with L1C's NODATA 0 in every band is invalid; one band at 0 (a
    value: the synthetic B10 reaches 0 as the real one does) leaves it valid."""
    import rasterio

    from xgeo.data.convert import convert
    from xgeo.data.synth import synthesize
    from xgeo.finetune.tasks import get_task

    raw, store = tmp_path / "raw" / "sen12ms-cr", tmp_path / "zarr" / "sen12ms-cr.zarr"
    params = load(f"paths.zarr={tmp_path / 'zarr'}", "data.datasets.sen12ms-cr.synth.patches_per_roi=1",
                  "data.datasets.sen12ms-cr.synth.rois={train: 1, val: 1, test: 1}")
    synthesize("sen12ms-cr", raw, params, seed=0)
    tifs = sorted(raw.glob("ROIs*_s2/*/*.tif"))
    for t in tifs:
        with rasterio.open(t, "r+") as f:
            data = f.read()
            data[:, :5] = 0     # a zero-filled top border
            data[3, 10, 10] = 0  # one band at 0: a value
            data[:, 20, 30] = 0  # a single nodata pixel
            f.write(data)
    convert("sen12ms-cr", raw, store, params)
    task = get_task("sen12ms-cr", params)
    ds = task.make_dataset(task.eval_split())
    sample = ds[0]
    valid = sample["valid/s2"].numpy()
    expect = np.ones(valid.shape, bool)
    expect[:5] = False
    expect[20, 30] = False
    np.testing.assert_array_equal(valid, expect)
    batch = {k: v[None] for k, v in sample.items() if k != "index"}
    np.testing.assert_array_equal(task.valid_mask(batch)[0].numpy(), expect)


# -------------------------------------------------------- BigEarthNet literature protocol: best epoch of per-batch AP

def test_bigearthnet_literature_protocol_keeps_the_best_evaluation_and_leaves_training_alone(load, tmp_path):
    """protocol literature, literature_eval_every 2, 6 steps: the per-batch micro mAP is evaluated at steps 2 and 4
    (checked against an own evaluation of the network at those steps) and of the final model, the column is their
    maximum, and the whole-set mAP_micro is bit-identical to the whole_set protocol's run (training untouched)."""
    from xgeo.data.convert import convert
    from xgeo.data.synth import synthesize
    from xgeo.finetune.run import finetune
    from xgeo.finetune.tasks import get_task

    small = ["data.datasets.bigearthnet.synth.patches={train: 16, val: 8, test: 2}", "mlflow.enabled=false",
             "finetune.bigearthnet.image_size=32", "finetune.bigearthnet.batch_size=4",
             "finetune.bigearthnet.warmup_steps=2", "finetune.eval_batch_size=4", f"paths.zarr={tmp_path / 'zarr'}"]
    params = load(*small)
    synthesize("bigearthnet", tmp_path / "raw", params, seed=0)
    convert("bigearthnet", tmp_path / "raw", tmp_path / "zarr" / "bigearthnet.zarr", params)

    lit = load(*small, "finetune.bigearthnet.protocol=literature", "finetune.bigearthnet.literature_eval_every=2")
    task = get_task("bigearthnet", lit)
    ds = task.make_dataset("val")
    task.bind(task.make_dataset("train"))
    seen = {}

    def own_eval(step, net):
        if step in (2, 4):
            net.eval()
            with torch.no_grad():
                batches = [ds[i] for i in range(len(ds))]
                scores = [torch.sigmoid(net(task._inputs({k: torch.stack([b[k] for b in batches[i:i + 4]])
                                                           for k in ("s2", "s1")}))[0]).numpy()
                          for i in range(0, len(batches), 4)]
                targets = np.stack([b["labels/multilabel"].numpy() for b in batches]).astype(np.uint8)
            seen[step] = metrics.per_batch_micro_map(np.concatenate(scores), targets, 4)
            net.train()

    m = finetune("bigearthnet", "random", tmp_path / "lit", lit, steps=6, on_step=own_eval)
    whole = finetune("bigearthnet", "random", tmp_path / "whole", params, steps=6)
    npz = np.load(tmp_path / "lit" / "predictions.npz")
    final = metrics.per_batch_micro_map(npz["scores"], npz["targets"], 4)
    assert m["mAP_micro_per_batch_final"] == pytest.approx(final, rel=1e-12)
    assert m["mAP_micro_per_batch_evaluations"] == 3 and sorted(seen) == [2, 4]
    history = {2: seen[2], 4: seen[4], 6: final}
    best_step = max(history, key=lambda k: (history[k], -k))
    assert m["mAP_micro_per_batch"] == pytest.approx(history[best_step], rel=1e-9)
    assert m["mAP_micro_per_batch_best_step"] == best_step
    assert m["mAP_micro"] == whole["mAP_micro"] and "mAP_micro_per_batch" not in whole
    assert len({round(v, 6) for v in history.values()}) > 1  # the evaluations differ: the choice is not trivial
