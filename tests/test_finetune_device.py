"""Finetuning's device, precision and processes: device selection (auto / cpu / cuda), autocast, and a
data-parallel finetune of two gloo processes under torchrun whose parameters stay identical after every step."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_store

from xgeo import runtime
from xgeo.errors import XGeoError

ROOT = Path(__file__).resolve().parents[1]
TINY_BEN = ["data.datasets.bigearthnet.synth.patches={train: 24, val: 8, test: 4}",
            "finetune.bigearthnet.image_size=32", "finetune.bigearthnet.batch_size=4",
            "finetune.bigearthnet.warmup_steps=1", "finetune.eval_batch_size=8", "mlflow.enabled=false"]


@pytest.fixture(scope="module")
def ben_zarr(tmp_path_factory) -> Path:
    """A tiny BigEarthNet store (synthesised in the real layout, converted)."""
    return make_store(tmp_path_factory.mktemp("ddp_stores"), "bigearthnet", TINY_BEN)


def test_device_selection_without_cuda(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    assert runtime.select_device("auto", "finetune.device") == torch.device("cpu")
    assert runtime.select_device("cpu", "finetune.device") == torch.device("cpu")
    with pytest.raises(XGeoError, match=r"finetune.device is 'cuda' but torch sees no CUDA device"):
        runtime.select_device("cuda", "finetune.device")
    with pytest.raises(XGeoError, match=r"finetune.device: expected one of \['auto', 'cpu', 'cuda'\], found 'gpu'"):
        runtime.select_device("gpu", "finetune.device")


def test_device_selection_with_cuda_takes_the_local_rank(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.select_device("auto", "k", local_rank=0) == torch.device("cuda", 0)
    assert runtime.select_device("cuda", "k", local_rank=3) == torch.device("cuda", 1)
    assert runtime.select_device("cpu", "k", local_rank=1) == torch.device("cpu")


def test_autocast_modes():
    cpu = torch.device("cpu")
    x = torch.ones(2, 2)
    with runtime.autocast("auto", cpu, "finetune.amp"):  # auto on the CPU: fp32
        assert (x @ x).dtype == torch.float32
    with runtime.autocast("bf16", cpu, "finetune.amp"):
        assert (x @ x).dtype == torch.bfloat16
    with runtime.autocast("fp32", cpu, "finetune.amp"):
        assert (x @ x).dtype == torch.float32
    with pytest.raises(XGeoError, match=r"finetune.amp: expected one of \['auto', 'bf16', 'fp32'\], found 'fp16'"):
        runtime.autocast("fp16", cpu, "finetune.amp")


def test_cuda_asked_on_a_machine_without_it_fails_before_writing(load, ben_zarr, tmp_path, monkeypatch):
    from xgeo.finetune.run import finetune

    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    params = load(f"paths.zarr={ben_zarr}", *TINY_BEN, "finetune.device=cuda")
    with pytest.raises(XGeoError, match="finetune.device is 'cuda'"):
        finetune("bigearthnet", "random", tmp_path / "run", params, steps=1)
    assert not (tmp_path / "run").exists()


def test_bf16_finetune_on_the_cpu_trains_and_evaluates(load, ben_zarr, tmp_path):
    """finetune.amp=bf16 runs the forward under autocast (here on the CPU) and still writes float32 scores."""
    from xgeo.finetune.run import finetune

    params = load(f"paths.zarr={ben_zarr}", *TINY_BEN, "finetune.amp=bf16")
    res = finetune("bigearthnet", "random", tmp_path / "run", params, steps=2)
    import numpy as np

    npz = np.load(tmp_path / "run" / "predictions.npz")
    assert npz["scores"].dtype == np.float32 and npz["scores"].shape == (8, 19)
    assert 0.0 <= res["mAP_micro"] <= 100.0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["device"] == "cpu" and run["processes"] == 1


def test_two_process_gloo_finetune_keeps_ranks_identical(ben_zarr, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    steps = 3
    out = tmp_path / "run"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "finetune_ddp_worker.py"),
           "bigearthnet", str(out), str(tmp_path / "checksum"), str(steps)]
    for o in [f"paths.zarr={ben_zarr}", *TINY_BEN]:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = (tmp_path / "checksum.rank0").read_text().split()
    r1 = (tmp_path / "checksum.rank1").read_text().split()
    assert len(r0) == 2 * steps and r0 == r1  # DDP: the same parameters on both ranks after every step
    assert len(set(r0[1::2])) == steps  # and they change at every step
    # rank 0 alone evaluated and wrote the run's files
    metrics = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert run["processes"] == 2 and run["steps"] == steps
    assert metrics["eval_samples"] == 8 and 0.0 <= metrics["mAP_micro"] <= 100.0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt", "predictions.npz", "run.json",
                                                     "train_ids.txt"]


def test_two_process_gloo_finetune_runs_several_seeds_as_separate_launches_do(ben_zarr, tmp_path):
    """Under torchrun, `xgeo finetune --seeds 0,1` (one process group for both seeds) writes each seed's run as a
    launch of its own with --set seed=K does: rank 0 writes both directories, byte-identical for seed 1."""
    sets = [a for o in [f"paths.zarr={ben_zarr}", *TINY_BEN] for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
              "xgeo.cli", "finetune", "bigearthnet", "--init", "random", "--steps", "2",
              "--params", str(ROOT / "params.yaml"), *sets]
    for extra in (["--out", str(tmp_path / "both" / "seed{seed}"), "--seeds", "0,1"],
                  ["--out", str(tmp_path / "alone1"), "--set", "seed=1"]):
        proc = subprocess.run(launch + extra, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
    for seed in (0, 1):
        run = json.loads((tmp_path / "both" / f"seed{seed}" / "run.json").read_text())
        assert run["processes"] == 2 and run["seed"] == seed
    for name in ("metrics.json", "predictions.npz"):
        assert (tmp_path / "both" / "seed1" / name).read_bytes() == (tmp_path / "alone1" / name).read_bytes(), name
    assert (tmp_path / "both" / "seed0" / "predictions.npz").read_bytes() != \
        (tmp_path / "alone1" / "predictions.npz").read_bytes()  # the seeds trained differently
