"""The appendix's tasks: change detection (OSCD, DSIFN; F1 of the change class) and WHU building segmentation (IoU
of the building class), finetuned and evaluated end to end on tiny synthetic stores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xgeo.config import load_params
from xgeo.metrics import binary_scores, from_predictions

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("data.datasets.oscd.synth={size: [64, 64], cities: {train: 2, test: 2}}",
         "data.datasets.dsifn.synth={size: 64, pairs: {train: 2, val: 1, test: 2}}",
         "data.datasets.whu.synth={size: 64, tiles: {train: 2, val: 1, test: 2}}")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from xgeo.data.convert import convert
    from xgeo.data.synth import synthesize

    root = tmp_path_factory.mktemp("appendix")
    params = load_params(ROOT / "params.yaml", list(SMALL))
    for ds in ("oscd", "dsifn", "whu"):
        synthesize(ds, root / "raw" / ds, params, seed=0)
        convert(ds, root / "raw" / ds, root / "zarr" / f"{ds}.zarr", params)
    return root


# 32 px crops, batches of 4, a narrow head, no MLflow store (creating one costs seconds): a test step is cheap
FAST = ["finetune.eval_batch_size=8", "mlflow.enabled=false"] + [
    f"finetune.{t}.{k}" for t in ("oscd", "dsifn", "whu")
    for k in ("image_size=32", "batch_size=4", "warmup_steps=1", "head_width=16")]


def _params(stores: Path, *more: str) -> dict:
    return load_params(ROOT / "params.yaml", [*SMALL, *FAST, f"paths.zarr={stores / 'zarr'}", *more])


@pytest.mark.parametrize("task", ["oscd", "dsifn"])
def test_change_f1_equals_scikit_learn_on_saved_predictions(stores, tmp_path, task):
    from sklearn.metrics import f1_score, precision_score, recall_score

    from xgeo.finetune.run import finetune

    result = finetune(task, "random", tmp_path, _params(stores), steps=2)
    pred = np.load(tmp_path / "predictions.npz")
    assert bool(pred["complete"])  # every tile saved, none overlapping: the saved masks are the whole test set
    y, p = pred["targets"].ravel(), pred["outputs"].ravel()
    assert 0 < y.sum() < y.size
    assert result["F1"] == pytest.approx(100 * f1_score(y, p, pos_label=1, zero_division=np.nan), abs=1e-9)
    assert result["precision"] == pytest.approx(100 * precision_score(y, p, zero_division=np.nan), abs=1e-9)
    assert result["recall"] == pytest.approx(100 * recall_score(y, p, zero_division=np.nan), abs=1e-9)
    assert from_predictions(task, tmp_path / "predictions.npz")["F1"] == pytest.approx(result["F1"], abs=1e-9)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metric"] == "F1" and saved["fusion"] == "diff"


def test_binary_scores_by_hand():
    cm = np.array([[50, 10], [5, 35]])  # rows: true no change / change
    s = binary_scores(cm)
    assert s["precision"] == pytest.approx(100 * 35 / 45) and s["recall"] == pytest.approx(100 * 35 / 40)
    assert s["F1"] == pytest.approx(100 * 70 / 85) and s["IoU"] == pytest.approx(100 * 35 / 50)
    assert np.isnan(binary_scores(np.array([[10, 0], [0, 0]]))["F1"])


@pytest.mark.parametrize("fusion", ["diff", "concat"])
def test_two_date_head_sees_both_dates(fusion):
    from xgeo.finetune.backbone import build_backbone
    from xgeo.finetune.change import ChangeHead, two_date_forward
    from xgeo.finetune.tasks import FinetuneNet, InputSpec

    torch.manual_seed(0)
    params = load_params(ROOT / "params.yaml")
    spec = InputSpec("t1", "rgb", ("R", "G", "B"))
    backbone, _ = build_backbone("random", params, [spec], 32, {})
    net = FinetuneNet(backbone, ChangeHead(backbone.channels, 2, width=16, fusion=fusion)).eval()
    x1 = torch.randn(2, 3, 32, 32)
    x2 = torch.randn(2, 3, 32, 32)
    x2b = x2.clone()
    x2b[:, :, 8:20, 8:20] += 2.0  # only the second date differs
    with torch.no_grad():
        a, _ = two_date_forward(net, x1, x2)
        b, _ = two_date_forward(net, x1, x2b)
        c, _ = two_date_forward(net, x1 + 1.0, x2)  # and only the first
    assert a.shape == (2, 2, 32, 32)
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3
    if fusion == "diff":  # |f1 - f2| is symmetric in the dates
        with torch.no_grad():
            assert torch.allclose(two_date_forward(net, x2, x1)[0], a, atol=1e-5)


def test_whu_iou_of_the_building_class(stores, tmp_path):
    from xgeo.finetune.run import finetune

    result = finetune("whu", "random", tmp_path, _params(stores), steps=2)
    pred = np.load(tmp_path / "predictions.npz")
    assert bool(pred["complete"])
    y, p = pred["targets"].ravel().astype(bool), pred["outputs"].ravel().astype(bool)
    assert result["IoU"] == pytest.approx(100 * (y & p).sum() / (y | p).sum(), abs=1e-9)
    assert result["IoU"] == pytest.approx(from_predictions("whu", pred)["IoU_per_class"]["building"], abs=1e-9)
