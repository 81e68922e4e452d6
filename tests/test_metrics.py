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
