"""ZarrDataset: value convention + normalisation from store stats, labels, splits, DataLoader workers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_convert import store_of
from xgeo.data.dataset import ZarrDataset
from xgeo.data.store import open_store
from xgeo.errors import DataError
from xgeo.sensors import SENSORS


def test_normalisation_follows_convention_and_store_stats(tmp_path_factory):
    path = store_of(tmp_path_factory, "sen12ms")
    root = open_store(path)
    ds = ZarrDataset(path, split="train")
    train = np.flatnonzero(root["split"][:] == 0)
    assert len(ds) == len(train) == root.attrs["splits"]["train"]
    assert ds.modalities == {"s1": {"sensor": "s1", "bands": ["VV", "VH"]},
                             "s2": {"sensor": "s2", "bands": list(SENSORS["s2"].band_names)}}
    i = len(ds) // 2
    sample = ds[i]
    assert sample["index"] == int(train[i])
    for key in ("s1", "s2"):
        st = root[f"{key}/data"].attrs["stats"]
        sensor = SENSORS[key]
        raw = root[f"{key}/data"][int(train[i])].astype(np.float64)
        raw = np.clip(np.nan_to_num(raw, nan=sensor.nan_value if sensor.nan_value is not None else np.nan),
                      *sensor.valid_range)
        want = (raw - np.array(st["mean"])[:, None, None]) / np.array(st["std"])[:, None, None]
        assert sample[key].dtype == torch.float32 and sample[key].shape == raw.shape
        np.testing.assert_allclose(sample[key].numpy(), want, rtol=1e-5, atol=1e-5)
        mean, std = ds.stats(key)
        np.testing.assert_allclose(mean, st["mean"], rtol=1e-6)
        back = ds.denormalize(key, sample[key])
        np.testing.assert_allclose(back.numpy(), raw, rtol=1e-5, atol=1e-2)
    # over the whole train split the normalised bands have mean 0 and std 1 (stats are the train split's)
    x = torch.stack([ds[j]["s2"] for j in range(len(ds))]).double()
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3), correction=0).numpy(), 1, atol=1e-4)


def test_unnormalised_modality_subset_and_indices(tmp_path_factory):
    path = store_of(tmp_path_factory, "sen12ms")
    root = open_store(path)
    test_idx = np.flatnonzero(root["split"][:] == 2)
    ds = ZarrDataset(path, modalities=["s2"], split="test", indices=test_idx[::2], normalize=False)
    assert len(ds) == len(test_idx[::2]) and set(ds[0]) == {"s2", "index"}
    np.testing.assert_array_equal(ds[1]["s2"].numpy(), root["s2/data"][int(test_idx[2])].astype(np.float32))
    assert ds.sample_id(1) == root["ids"][int(test_idx[2])]
    with pytest.raises(DataError, match="outside"):
        ZarrDataset(path, split="train", indices=test_idx[:1])
    with pytest.raises(DataError, match="expected a modality"):
        ZarrDataset(path, modalities=["rgb"])


def test_labels_and_dsm_nodata(tmp_path_factory):
    ben = store_of(tmp_path_factory, "bigearthnet")
    ds = ZarrDataset(ben, split="val", labels=("multilabel",))
    s = ds[0]
    assert s["labels/multilabel"].dtype == torch.float32 and s["labels/multilabel"].shape == (19,)
    np.testing.assert_array_equal(s["labels/multilabel"].numpy(), open_store(ben)["labels/multilabel"][s["index"]])
    vai = store_of(tmp_path_factory, "vaihingen")
    ds = ZarrDataset(vai, split="train", labels=("mask", "mask_eroded"))
    s = ds[0]
    assert s["labels/mask"].dtype == torch.int64 and s["labels/mask"].shape == s["irrg"].shape[-2:]
    # a DSM nodata pixel becomes the band mean: 0 after normalisation
    raw = open_store(vai)["dsm/data"][s["index"]].copy()
    raw[0, :2, :3] = SENSORS["dsm"].nodata
    out = ds.load("dsm", raw)
    assert torch.all(out[0, :2, :3] == 0) and torch.isfinite(out).all()


def test_dataloader_workers_0_and_2_identical(tmp_path_factory):
    path = store_of(tmp_path_factory, "vaihingen")
    ds = ZarrDataset(path, split=None, labels=("mask",))
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False, num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == -(-len(ds) // 5)
    for a, b in zip(batches[0], batches[2]):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_crop_hook_runs_before_the_value_convention(tmp_path_factory):
    """crop sees the native tiles of every modality (one window for the pair); the result equals the full sample's
    window, so the convention and normalisation are per pixel and run on the crop only."""
    path = store_of(tmp_path_factory, "mdas")  # DSM nodata: replaced by the band mean within the crop too
    seen = []

    def window(raw: dict) -> dict:
        seen.append({k: (v.dtype, v.shape) for k, v in raw.items()})
        return {k: v[:, 5:37, 9:50] for k, v in raw.items()}

    full, cropped = ZarrDataset(path, split=None), ZarrDataset(path, split=None, crop=window)
    for i in (0, len(full) - 1):
        a, b = full[i], cropped[i]
        for key in ("rgb", "dsm"):
            assert b[key].shape == (a[key].shape[0], 32, 41)
            torch.testing.assert_close(b[key], a[key][:, 5:37, 9:50])
    assert seen[0]["rgb"][0] == np.uint8 and seen[0]["dsm"][0] == np.float32  # native dtypes


def test_device_crop_normalize_equals_the_cpu_path(tmp_path_factory):
    """raw=True tiles through xgeo.data.device.crop_normalize (one grid_sample a modality for the batch) equal the
    CPU path: crop hook on native tiles, convention + normalisation, bilinear resize, flips; the DSM's nodata too."""
    import torch.nn.functional as F

    from xgeo.data.device import crop_normalize, random_boxes

    path = store_of(tmp_path_factory, "mdas")
    raw_ds, ds = ZarrDataset(path, split=None, raw=True), ZarrDataset(path, split=None)
    idx = list(range(min(6, len(ds))))
    batch = torch.utils.data.default_collate([raw_ds[i] for i in idx])
    assert batch["rgb"].dtype == torch.uint8 and batch["dsm"].dtype == torch.float32
    g = torch.Generator().manual_seed(3)
    h, w = batch["rgb"].shape[-2:]
    boxes = random_boxes(len(idx), h, w, g, scale=(0.05, 1.0))  # small windows: upsampled, edges clamped
    flips = torch.tensor([[i % 2 == 0, i % 3 == 0] for i in idx])
    out = crop_normalize(batch, ds, 48, boxes=boxes, flips=flips)
    for j, i in enumerate(idx):
        top, left, ch, cw = boxes[j].tolist()
        for key in ("rgb", "dsm"):
            want = ds[i][key][:, top:top + ch, left:left + cw]
            want = F.interpolate(want[None], size=(48, 48), mode="bilinear", align_corners=False)[0]
            if flips[j, 0]:
                want = want.flip(-1)
            if flips[j, 1]:
                want = want.flip(-2)
            torch.testing.assert_close(out[key][j], want, atol=2e-4, rtol=1e-4)
    assert (boxes[:, 2] < 48).any() and (boxes[:, 2] > 48).any()  # both up- and downsampled windows were checked
