"""Downstream metrics, computed over the WHOLE evaluation set (never averages of per-batch values).

One home for every number the paper's Tables 3-7 and 13-14 report:

- ``mAP_micro`` / ``mAP_macro`` (BigEarthNet): average precision as scikit-learn defines it (no interpolation:
  AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds, ties grouped). Micro: one AP over all
  (sample, class) pairs. Macro: the mean of the per-class APs over the classes that have at least one positive in
  the evaluation set; a class without positives has no defined AP, is reported as NaN in ``AP_per_class`` and is
  left out of the mean (scikit-learn would count it as 0 with a warning).
- ``mIoU`` / ``OA`` (Vaihingen): from one confusion matrix accumulated over every labelled pixel; IoU_c =
  TP / (TP + FP + FN); a class that never occurs in either labels or predictions (empty union) has IoU NaN and is
  left out of the mean; ``ignore_index`` pixels are not counted.
- ``MAE``, ``SAM``, ``SSIM``, ``PSNR`` (SEN12MS-CR, SpaceNet2) on images scaled to [0, 1]:
  MAE = mean |x - y| over every pixel and band of the set;
  SAM = mean over every pixel of the set of the angle, in degrees, between the predicted and the true spectrum,
  arccos(<x, y> / (|x| |y|)); pixels where either spectrum is all zero (angle undefined) are skipped;
  SSIM = mean over images of the mean over bands of Wang et al.'s SSIM: Gaussian window sigma 1.5, truncated at
  3.5 sigma (11 taps), population (not sample) covariances, K1 = 0.01, K2 = 0.03, ``data_range`` = 1, averaged
  over the pixels whose window lies inside the image; identical to
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1, channel_axis=0)``;
  PSNR = mean over images of 10 log10(data_range^2 / MSE_image), MSE over all bands and pixels of the image
  (= ``skimage.metrics.peak_signal_noise_ratio(y, x, data_range=1)`` per image); an exact match (+inf) or an image
  without valid pixel has no PSNR: it is left out of the mean and counted (``PSNR_undefined_images``).
- nodata: ``ImageMeter.update(..., valid=mask)`` leaves the target's nodata pixels out of MAE, SAM, SSIM and PSNR.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import XGeoError

# ------------------------------------------------------------------------------------------------- classification


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one ranking. scores, targets: (N,) (targets in {0, 1}). NaN when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel().astype(np.float64)
    if scores.shape != targets.shape:
        raise XGeoError(f"average_precision: scores {scores.shape} and targets {targets.shape} differ in shape")
    positives = targets.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], targets[order]
    # the last index of each run of tied scores: one threshold per distinct score
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multilabel_map(scores: np.ndarray, targets: np.ndarray) -> dict:
    """Dataset-level mAP. scores: (N, K) float, targets: (N, K) {0, 1}.

    Returns {"mAP_micro", "mAP_macro", "AP_per_class": [K floats, NaN for a class without positives],
    "classes_without_positives": [indices]} with mAP in percent (as the paper's tables).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise XGeoError(f"multilabel_map: expected scores and targets of one shape (N, K), found {scores.shape} "
                        f"and {targets.shape}")
    if scores.shape[0] == 0:
        raise XGeoError("multilabel_map: the evaluation set is empty")
    bad = ~np.isin(targets, (0, 1))
    if bad.any():
        raise XGeoError(f"multilabel_map: targets must be 0 or 1, found {np.unique(targets[bad])[:5].tolist()}")
    per_class = [average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])]
    valid = [ap for ap in per_class if not math.isnan(ap)]
    return {
        "mAP_micro": 100.0 * average_precision(scores, targets),
        "mAP_macro": 100.0 * float(np.mean(valid)) if valid else float("nan"),
        "AP_per_class": [100.0 * ap for ap in per_class],
        "classes_without_positives": [k for k, ap in enumerate(per_class) if math.isnan(ap)],
    }


def per_batch_micro_map(scores: np.ndarray, targets: np.ndarray, batch_size: int) -> float:
    """The cited papers' BigEarthNet number (GFM and SeCo's evaluation code): micro AP of each evaluation batch of
    ``batch_size`` consecutive samples, averaged over the batches that hold a positive (percent).

    It differs from :func:`multilabel_map`'s whole-set micro mAP (one ranking of every pair): a batch ranks only its
    own samples, so the mean of per-batch APs is usually higher and depends on the batch size and order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if batch_size < 1:
        raise XGeoError(f"per_batch_micro_map: batch_size must be >= 1, found {batch_size}")
    aps = [average_precision(scores[i:i + batch_size], targets[i:i + batch_size])
           for i in range(0, len(scores), batch_size)]
    aps = [a for a in aps if not math.isnan(a)]
    return 100.0 * float(np.mean(aps)) if aps else float("nan")


class MultiLabelMeter:
    """Collects every sample's scores and targets; mAP needs the whole ranking, so nothing is averaged early."""

    def __init__(self) -> None:
        self.scores: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """scores: (B, K) logits or probabilities (AP depends only on the order); targets: (B, K) {0, 1}."""
        self.scores.append(scores.detach().float().cpu().numpy())
        self.targets.append(targets.detach().cpu().numpy().astype(np.uint8))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.scores), np.concatenate(self.targets)

    def compute(self) -> dict:
        return multilabel_map(*self.arrays())


# --------------------------------------------------------------------------------------------------- segmentation


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted class. pred, target: integer arrays of one shape."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    target = np.asarray(target).ravel().astype(np.int64)
    keep = np.ones_like(target, dtype=bool) if ignore_index is None else target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        found = np.unique(target[(target < 0) | (target >= num_classes)])[:5].tolist()
        raise XGeoError(f"confusion_matrix: labels must lie in 0..{num_classes - 1} (or be the ignore index "
                        f"{ignore_index}), found {found}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise XGeoError(f"confusion_matrix: predictions must lie in 0..{num_classes - 1}")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(confusion: np.ndarray, class_names: Sequence[str], eval_classes: Sequence[int] | None = None) -> dict:
    """mIoU, OA and per-class IoU from a confusion matrix (percent).

    ``mIoU`` averages IoU over ``eval_classes`` (default: all) with a defined IoU; ``OA`` is the fraction of correct
    pixels among all counted pixels; ``mIoU_all`` and ``OA_eval`` give the other class set (all classes / only pixels
    whose true class is in ``eval_classes``).
    """
    cm = np.asarray(confusion, dtype=np.float64)
    k = cm.shape[0]
    eval_classes = list(range(k)) if eval_classes is None else list(eval_classes)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = cm.sum()
    if total == 0:
        raise XGeoError("segmentation_scores: no labelled pixel was counted (every label is the ignore index?)")
    eval_rows = cm[eval_classes]

    def mean(values):
        values = [v for v in values if not math.isnan(v)]
        return 100.0 * float(np.mean(values)) if values else float("nan")

    return {
        "mIoU": mean(iou[eval_classes]),
        "OA": 100.0 * float(tp.sum() / total),
        "mIoU_all": mean(iou),
        "OA_eval": 100.0 * float(tp[eval_classes].sum() / eval_rows.sum()) if eval_rows.sum() else float("nan"),
        "IoU_per_class": {name: 100.0 * float(v) for name, v in zip(class_names, iou)},
    }


def binary_scores(confusion: np.ndarray, positive: int = 1) -> dict:
    """F1, precision, recall and IoU (percent) of class ``positive`` from a confusion matrix (rows = true class),
    and the overall accuracy ``OA``: the change class of change detection (OSCD, DSIFN). A score whose denominator
    is zero (no positive predicted or labelled) is NaN."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = cm[positive, positive]
    fp = cm[:, positive].sum() - tp
    fn = cm[positive, :].sum() - tp
    total = cm.sum()
    if total == 0:
        raise XGeoError("binary_scores: no labelled pixel was counted (every label is the ignore index?)")

    def ratio(a: float, b: float) -> float:
        return 100.0 * a / b if b > 0 else float("nan")

    return {"F1": ratio(2 * tp, 2 * tp + fp + fn), "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "IoU": ratio(tp, tp + fp + fn), "OA": ratio(float(np.trace(cm)), total)}


class ConfusionMeter:
    """Accumulates one confusion matrix over the whole evaluation set."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """pred, target: (..., H, W) integer class maps."""
        if isinstance(pred, torch.Tensor):
            pred = pred.detach().cpu().numpy()
        if isinstance(target, torch.Tensor):
            target = target.detach().cpu().numpy()
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)


# ----------------------------------------------------------------------------------------------- image regression

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _gaussian_kernel(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's radius: an 11-tap filter at sigma 1.5
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """pred, target: (B, C, H, W) -> (B,) SSIM averaged over bands and valid window positions (see module doc)."""
    return ssim_map(pred, target, data_range).mean(dim=(1, 2, 3))


def window_valid(valid: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool pixel mask -> (B, H', W') bool: the SSIM window positions whose every pixel is valid."""
    g = _gaussian_kernel()
    k = g.numel()
    v = (~valid).double()[:, None]
    # any invalid pixel inside the k x k window (box sum > 0)
    bad = F.conv2d(F.conv2d(v, torch.ones(1, 1, k, 1, dtype=v.dtype)), torch.ones(1, 1, 1, k, dtype=v.dtype))
    return bad[:, 0] == 0


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """pred, target: (B, C, H, W) -> (B, C, H - 10, W - 10) SSIM at every window position inside the image."""
    x = pred.double()
    y = target.double()
    b, c, h, w = x.shape
    g = _gaussian_kernel().to(x.device)
    if h < g.numel() or w < g.numel():
        raise XGeoError(f"SSIM needs images of at least {g.numel()} x {g.numel()} px, found {h} x {w}")

    def blur(t: torch.Tensor) -> torch.Tensor:
        # separable Gaussian, 'valid' positions only: the pixels skimage keeps after cropping the border
        t = t.reshape(b * c, 1, *t.shape[-2:])
        t = F.conv2d(t, g.view(1, 1, -1, 1))
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return t.reshape(b, c, *t.shape[-2:])

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """pred, target: (B, C, H, W) -> (B,) PSNR in dB; +inf for an exact match."""
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def sam_per_pixel(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pred, target: (B, C, H, W) -> (angles in degrees (B, H, W), defined (B, H, W) bool)."""
    x = pred.double()
    y = target.double()
    dot = (x * y).sum(1)
    norm = x.norm(dim=1) * y.norm(dim=1)
    defined = norm > 0
    cos = torch.where(defined, dot / torch.where(defined, norm, torch.ones_like(norm)), torch.ones_like(norm))
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))), defined


class ImageMeter:
    """Running sums for MAE, SAM, SSIM and PSNR over the whole evaluation set, plus per-band MAE and PSNR.

    Inputs must already be on the [0, 1] scale the metrics are defined on (``data_range`` = 1). ``valid`` (B, H, W)
    marks the pixels that count (nodata pixels of the target excluded): MAE and SAM over valid pixels, SSIM over
    the window positions whose every pixel is valid, PSNR from the MSE over an image's valid pixels. An image whose
    PSNR is undefined (no valid pixel, or an exact match: +inf) is left out of the PSNR mean and counted in
    ``PSNR_undefined_images``; likewise an image without a fully valid SSIM window in ``SSIM_undefined_images``.
    """

    def __init__(self, data_range: float = 1.0) -> None:
        self.data_range = data_range
        self.abs_sum = 0.0
        self.abs_count = 0
        self.band_abs_sum: torch.Tensor | None = None
        self.band_psnr_sum: torch.Tensor | None = None
        self.band_psnr_count: torch.Tensor | None = None
        self.band_count = 0
        self.sam_sum = 0.0
        self.sam_count = 0
        self.ssim_sum = 0.0
        self.ssim_images = 0
        self.psnr_sum = 0.0
        self.psnr_images = 0
        self.images = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """pred, target: (B, C, H, W) on [0, 1]; valid: (B, H, W) bool, None when every pixel counts."""
        if pred.shape != target.shape or pred.ndim != 4:
            raise XGeoError(f"ImageMeter: expected pred and target of one shape (B, C, H, W), found "
                            f"{tuple(pred.shape)} and {tuple(target.shape)}")
        pred = pred.detach().double().cpu()
        target = target.detach().double().cpu()
        b, c, h, w = pred.shape
        valid = torch.ones(b, h, w, dtype=torch.bool) if valid is None else valid.detach().cpu().bool()
        if valid.shape != (b, h, w):
            raise XGeoError(f"ImageMeter: expected a valid mask of shape {(b, h, w)}, found {tuple(valid.shape)}")
        m = valid[:, None].double()  # (B, 1, H, W)
        err = pred - target
        self.abs_sum += float((err.abs() * m).sum())
        self.abs_count += int(valid.sum()) * c
        band_abs = (err.abs() * m).sum(dim=(0, 2, 3))
        self.band_abs_sum = band_abs if self.band_abs_sum is None else self.band_abs_sum + band_abs
        self.band_count += int(valid.sum())
        pixels = valid.flatten(1).sum(1).double()  # (B,)
        band_mse = (err.pow(2) * m).flatten(2).sum(2) / pixels[:, None]  # (B, C); NaN for an image without pixels
        band_psnr = 10.0 * torch.log10(self.data_range**2 / band_mse)
        finite = torch.isfinite(band_psnr)
        band_sum = torch.where(finite, band_psnr, torch.zeros_like(band_psnr)).sum(0)
        self.band_psnr_sum = band_sum if self.band_psnr_sum is None else self.band_psnr_sum + band_sum
        self.band_psnr_count = finite.sum(0) if self.band_psnr_count is None else self.band_psnr_count + finite.sum(0)
        angles, defined = sam_per_pixel(pred, target)
        defined = defined & valid
        self.sam_sum += float(angles[defined].sum())
        self.sam_count += int(defined.sum())
        smap = ssim_map(pred, target, self.data_range)  # (B, C, H', W')
        wv = window_valid(valid)[:, None].double()
        windows = wv.flatten(1).sum(1)
        has = windows > 0
        ssim = (smap * wv).flatten(1).sum(1) / (windows * c).clamp(min=1)
        self.ssim_sum += float(ssim[has].sum())
        self.ssim_images += int(has.sum())
        mse = (err.pow(2) * m).flatten(1).sum(1) / (pixels * c)
        psnr = 10.0 * torch.log10(self.data_range**2 / mse)
        ok = torch.isfinite(psnr)
        self.psnr_sum += float(psnr[ok].sum())
        self.psnr_images += int(ok.sum())
        self.images += b

    def compute(self) -> dict:
        if self.images == 0:
            raise XGeoError("ImageMeter: the evaluation set is empty")
        out = {
            "MAE": self.abs_sum / self.abs_count if self.abs_count else float("nan"),
            "SAM": self.sam_sum / self.sam_count if self.sam_count else float("nan"),
            "SSIM": self.ssim_sum / self.ssim_images if self.ssim_images else float("nan"),
            "PSNR": self.psnr_sum / self.psnr_images if self.psnr_images else float("nan"),
            "MAE_per_band": (self.band_abs_sum / max(1, self.band_count)).tolist(),
            "PSNR_per_band": (self.band_psnr_sum / self.band_psnr_count.clamp(min=1)).tolist(),
            "PSNR_undefined_images": self.images - self.psnr_images,
            "SSIM_undefined_images": self.images - self.ssim_images,
        }
        notes = []
        if out["PSNR_undefined_images"]:
            notes.append(f"{out['PSNR_undefined_images']} of {self.images} images have no defined PSNR (no valid "
                         f"pixel, or an exact match) and are left out of the PSNR mean")
        if out["SSIM_undefined_images"]:
            notes.append(f"{out['SSIM_undefined_images']} of {self.images} images have no fully valid SSIM window "
                         f"and are left out of the SSIM mean")
        out["note"] = "; ".join(notes)
        return out


def image_scores(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0, batch: int = 16,
                 valid: np.ndarray | None = None) -> dict:
    """MAE, SAM, SSIM, PSNR of (N, C, H, W) arrays on [0, 1]; ``valid`` (N, H, W) bool: the pixels that count."""
    meter = ImageMeter(data_range)
    for i in range(0, len(pred), batch):
        meter.update(torch.from_numpy(np.asarray(pred[i:i + batch])), torch.from_numpy(np.asarray(target[i:i + batch])),
                     None if valid is None else torch.from_numpy(np.asarray(valid[i:i + batch])))
    return meter.compute()


# ------------------------------------------------------------------------------------------------ from predictions

TASK_KIND = {"bigearthnet": "classification", "vaihingen": "segmentation", "sen12ms-cr": "image", "spacenet2": "image"}
TASK_KIND.update({"oscd": "change", "dsifn": "change", "whu": "segmentation"})  # appendix A.1


def from_predictions(task: str, npz: str | Mapping) -> dict:
    """Recompute a run's metrics from its ``predictions.npz`` (a path or a loaded mapping).

    classification: ``scores`` (N, K), ``targets`` (N, K);
    segmentation: ``confusion`` (K, K) over the whole set (exact) and ``class_names``, ``eval_classes``; the saved
    tiles (``outputs`` (n, H, W) predicted classes, ``targets`` (n, H, W), ``ignore_index``) give the same numbers
    when ``complete`` is true;
    image: ``outputs`` and ``targets`` (n, C, H, W) on [0, 1], ``data_range``, ``valid`` (n, H, W) the pixels that
    count (nodata left out; every pixel when absent); the whole set when ``complete``.
    """
    if task not in TASK_KIND:
        raise XGeoError(f"from_predictions: unknown task {task!r}; known: {sorted(TASK_KIND)}")
    data = np.load(npz) if not isinstance(npz, Mapping) else npz
    kind = TASK_KIND[task]
    if kind == "classification":
        return multilabel_map(data["scores"], data["targets"])
    if kind == "change":
        # change detection: ``confusion`` (2, 2) over the whole set, or the saved ``outputs`` / ``targets`` masks
        cm = (np.asarray(data["confusion"]) if "confusion" in data else
              confusion_matrix(data["outputs"], data["targets"], len(data["class_names"]), int(data["ignore_index"])))
        return binary_scores(cm, int(data["positive"]))
    if kind == "segmentation":
        names = [str(n) for n in data["class_names"]]
        ignore = int(data["ignore_index"])
        if "confusion" in data:
            cm = np.asarray(data["confusion"])
        else:
            cm = confusion_matrix(data["outputs"], data["targets"], len(names), ignore)
        return segmentation_scores(cm, names, [int(i) for i in data["eval_classes"]])
    return image_scores(data["outputs"], data["targets"], float(data["data_range"]),
                        valid=data["valid"] if "valid" in data else None)


def tile_confusion(npz: str | Mapping) -> np.ndarray:
    """The confusion matrix of the tiles saved in a segmentation ``predictions.npz``."""
    data = np.load(npz) if not isinstance(npz, Mapping) else npz
    return confusion_matrix(data["outputs"], data["targets"], len(data["class_names"]), int(data["ignore_index"]))
