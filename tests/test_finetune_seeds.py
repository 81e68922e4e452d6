"""Several finetuning seeds in one process (``xgeo finetune TASK --seeds 0,1 --out DIR/seed{seed}``): each seed's
run is the one a process of its own with ``--set seed=K`` writes, byte for byte, while the store's training samples
are decoded once for all seeds."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import make_store

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.datasets.bigearthnet.synth.patches={train: 24, val: 8, test: 4}"]
FAST = ["finetune.eval_batch_size=8", "finetune.bigearthnet.image_size=32", "finetune.bigearthnet.batch_size=4",
        "finetune.bigearthnet.warmup_steps=2", "model.size=demo"]
STEPS = 3


@pytest.fixture(scope="module")
def zarr_dir(tmp_path_factory) -> Path:
    """A tiny BigEarthNet store (synthesised in its real layout, then converted)."""
    return make_store(tmp_path_factory.mktemp("seeds_store"), "bigearthnet", SMALL)


@pytest.fixture
def reads(monkeypatch):
    """Counter of (split, store index) of every sample read from a store."""
    from xgeo.data.dataset import ZarrDataset

    counts: Counter = Counter()
    getitem = ZarrDataset.__getitem__

    def counted(self, i):
        counts[(self.split, int(self.indices[i]))] += 1
        return getitem(self, i)

    monkeypatch.setattr(ZarrDataset, "__getitem__", counted)
    return counts


def test_seeds_in_one_process_write_what_separate_runs_write(load, zarr_dir, tmp_path, reads):
    from xgeo.finetune.run import finetune, finetune_seeds

    params = load(f"paths.zarr={zarr_dir}", *SMALL, *FAST)
    # seed 1 on its own first (nothing run before it in this module), then seeds 0 and 1 in one call
    alone = {1: finetune("bigearthnet", "random", tmp_path / "alone1", dict(params, seed=1), steps=STEPS)}
    separate_train_reads = sum(n for (split, _), n in reads.items() if split == "train")
    reads.clear()
    both = finetune_seeds("bigearthnet", "random", str(tmp_path / "both" / "seed{seed}"), params, [0, 1],
                          steps=STEPS)
    train_reads = {idx: n for (split, idx), n in reads.items() if split == "train"}
    alone[0] = finetune("bigearthnet", "random", tmp_path / "alone0", dict(params, seed=0), steps=STEPS)

    # the training samples were decoded once for both seeds: none twice, fewer than two separate runs read
    assert max(train_reads.values()) == 1
    assert sum(train_reads.values()) < 2 * separate_train_reads
    for seed in (0, 1):
        one, many = tmp_path / f"alone{seed}", tmp_path / "both" / f"seed{seed}"
        for name in ("metrics.json", "predictions.npz", "train_ids.txt"):
            assert (many / name).read_bytes() == (one / name).read_bytes(), (seed, name)
        assert both[seed]["mAP_micro"] == alone[seed]["mAP_micro"]
        run = json.loads((many / "run.json").read_text())
        assert run["seed"] == seed and run["settings"]["seed"] == seed
        assert run["settings_digest"] == json.loads((one / "run.json").read_text())["settings_digest"]
        assert (many / "model.pt").exists()
    runs = [json.loads((tmp_path / "both" / f"seed{k}" / "run.json").read_text()) for k in (0, 1)]
    assert runs[0]["settings_digest"] != runs[1]["settings_digest"]  # each seed its own provenance
    assert runs[0]["mlflow_run_id"] != runs[1]["mlflow_run_id"]  # and its own MLflow run
    # the seeds did train differently (otherwise the comparison above proves nothing)
    assert both[0]["final_train_loss"] != both[1]["final_train_loss"]


def test_a_cached_sample_is_the_fresh_read(zarr_dir):
    from xgeo.data.dataset import ZarrDataset
    from xgeo.finetune.run import SampleCache

    read = dict(modalities=["s2", "s1"], split="train", labels=("multilabel",))
    cache = SampleCache(ZarrDataset(zarr_dir / "bigearthnet.zarr", **read), 1 << 30)
    first, hit = cache[3], cache[3]
    assert hit is first and 3 in cache.samples  # the second read is served from memory
    fresh = ZarrDataset(zarr_dir / "bigearthnet.zarr", **read)[3]
    assert set(hit) == set(fresh) and hit["index"] == fresh["index"]
    for k, v in fresh.items():
        if torch.is_tensor(v):
            assert hit[k].dtype == v.dtype and torch.equal(hit[k], v), k


def test_several_seeds_need_a_seed_placeholder_in_out(tmp_path):
    from click.testing import CliRunner

    from xgeo.cli import main

    res = CliRunner().invoke(main, ["finetune", "bigearthnet", "--init", "random", "--out", str(tmp_path / "run"),
                                    "--seeds", "0,1"])
    assert res.exit_code == 2 and "{seed}" in res.output and "2 seeds" in res.output
    res = CliRunner().invoke(main, ["finetune", "bigearthnet", "--init", "random", "--out", str(tmp_path / "r{seed}"),
                                    "--seeds", "0,x"])
    assert res.exit_code == 2 and "expected integers separated by commas" in res.output


def test_predictions_archive_is_the_same_bytes_for_the_same_arrays():
    import io
    import zipfile

    import numpy as np

    from xgeo.io import npz_bytes

    arrays = {"scores": np.arange(6, dtype=np.float32).reshape(2, 3), "class_names": np.asarray(["a", "bc"]),
              "complete": np.bool_(True), "data_range": np.float64(1.0)}
    data = npz_bytes(arrays)
    assert {i.date_time for i in zipfile.ZipFile(io.BytesIO(data)).infolist()} == {(1980, 1, 1, 0, 0, 0)}
    back = np.load(io.BytesIO(data))
    assert sorted(back.files) == sorted(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == np.asarray(v).dtype and np.array_equal(back[k], v), k
    assert npz_bytes(dict(arrays, scores=arrays["scores"] + 1)) != data
